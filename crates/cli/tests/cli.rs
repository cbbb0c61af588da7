//! The `qtune` binary on the committed fixtures (no data, no network).
use std::path::PathBuf;
use std::process::Command;

fn fixture(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/gptj_tiny")
        .join(p)
}

#[test]
fn merge_writes_an_hf_folder_and_errors_are_clear() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("merged");
    let run = Command::new(env!("CARGO_BIN_EXE_qtune"))
        .args(["merge", "--model"])
        .arg(fixture("fp32"))
        .arg("--adapter")
        .arg(fixture("peft_adapter"))
        .arg("--out")
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for f in ["config.json", "model.safetensors", "qtune_merge.json"] {
        assert!(dest.join(f).is_file(), "{f} missing");
    }
    let report: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(report["merged_modules"].as_array().unwrap().len(), 6);

    let run = Command::new(env!("CARGO_BIN_EXE_qtune"))
        .args(["merge", "--model"])
        .arg(fixture("fp32"))
        .arg("--adapter")
        .arg(out.path().join("nope"))
        .arg("--out")
        .arg(&dest)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("nope") && err.contains("adapter_config.json"),
        "{err}"
    );
}
