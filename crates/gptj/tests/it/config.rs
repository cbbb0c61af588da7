//! GptjConfig parsing and PEFT-style parameter counts.

use qtune_gptj::GptjConfig;
use qtune_lora::{LoraConfig, TargetModules};

use crate::common::fixture_dir;

#[test]
fn fixture_config_parses_with_unknown_fields() {
    let cfg = GptjConfig::from_file(&fixture_dir().join("fp32/config.json")).unwrap();
    assert_eq!(
        (
            cfg.n_embd,
            cfg.n_layer,
            cfg.n_head,
            cfg.rotary_dim(),
            cfg.inner_dim()
        ),
        (64, 3, 4, 8, 256)
    );
    assert_eq!(cfg.eos_token_id, Some(2));
}

#[test]
fn missing_required_field_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"vocab_size": 10, "n_positions": 8, "n_layer": 1, "n_head": 1}"#,
    )
    .unwrap();
    let err = GptjConfig::from_file(&path).unwrap_err();
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        msg.contains("n_embd") && msg.contains("config.json"),
        "{msg}"
    );
    std::fs::write(
        &path,
        r#"{"vocab_size": 10, "n_positions": 8, "n_embd": 6, "n_layer": 1, "n_head": 4}"#,
    )
    .unwrap();
    let msg = GptjConfig::from_file(&path).unwrap_err().to_string();
    assert!(msg.contains("n_head"), "{msg}");
}

#[test]
fn gptj_6b_counts_as_peft_prints_them() {
    let cfg = GptjConfig::gptj_6b();
    assert_eq!(cfg.num_params(), 6_050_882_784);
    let lora = LoraConfig {
        r: 16,
        lora_alpha: 32.0,
        lora_dropout: 0.05,
        target_modules: TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    };
    let counts = cfg.lora_param_counts(&lora);
    assert_eq!(
        counts.to_string(),
        "trainable params: 7,340,032 || all params: 6,058,222,816 || trainable%: 0.1212"
    );
}
