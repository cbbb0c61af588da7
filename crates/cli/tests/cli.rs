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

// ---- `qtune quantize` ----

use std::path::Path;

use qtune_lm::fixtures::{fixture_logits, fixture_prompts};
use qtune_lm::{LoadOptions, QuantSpec};
use safetensors::SafeTensors;

type Cpu = burn::backend::NdArray;

fn fixtures(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(p)
}

fn quantize(args: &[&str], model: &Path, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qtune"))
        .arg("quantize")
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

fn ok(run: &std::process::Output) {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn logits(dir: &Path, fixture: &str, quant: Option<QuantSpec>) -> Vec<u32> {
    let opts = LoadOptions {
        quant,
        ..LoadOptions::default()
    };
    let model = qtune_models::load::<Cpu>(dir, &opts, &Default::default()).unwrap();
    let prompts = fixture_prompts(&fixtures(fixture)).unwrap();
    let l = fixture_logits(&model, &prompts);
    assert!(!l.is_empty() && l.iter().all(|x| x.is_finite()));
    l.iter().map(|x| x.to_bits()).collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The JSON quant state of weight `w`.
fn state(st: &SafeTensors<'_>, w: &str) -> serde_json::Value {
    let t = st
        .tensor(&format!("{w}.quant_state.bitsandbytes__nf4"))
        .unwrap();
    serde_json::from_slice(t.data()).unwrap()
}

/// tests/fixtures/gptj_tiny/nf4 is transformers 5.17 + bnb 0.50.2's `save_pretrained` of the
/// fp32 fixture loaded with `BitsAndBytesConfig(nf4, double quant, compute float32)` and
/// `dtype=float32` (make.py), so the unquantized tensors are F32 there: `--dtype float32`.
#[test]
fn quantize_gptj_nf4_equals_hf_bitsandbytes_and_loads_as_quantize_on_load() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nf4");
    let run = quantize(
        &["--load-in-4bit", "--double-quant", "--dtype", "float32"],
        &fixture("fp32"),
        &out,
    );
    ok(&run);
    let ours_bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let theirs_bytes = std::fs::read(fixture("nf4/model.safetensors")).unwrap();
    let ours = SafeTensors::deserialize(&ours_bytes).unwrap();
    let theirs = SafeTensors::deserialize(&theirs_bytes).unwrap();
    let mut names: Vec<String> = ours.names().into_iter().map(str::to_string).collect();
    let mut their_names: Vec<String> = theirs.names().into_iter().map(str::to_string).collect();
    names.sort();
    their_names.sort();
    assert_eq!(names, their_names);
    let (mut identical, mut offset_1ulp) = (0, Vec::new());
    for name in &names {
        let (a, b) = (ours.tensor(name).unwrap(), theirs.tensor(name).unwrap());
        assert_eq!(a.dtype(), b.dtype(), "{name}");
        if !name.contains("quant_state") {
            // (The JSON's length follows the offset's digits.)
            assert_eq!(a.shape(), b.shape(), "{name}");
        }
        if a.data() == b.data() {
            identical += 1;
            continue;
        }
        // Only the double-quant offset may differ: bnb takes torch's CUDA fp32 mean of the
        // absmax, we an f64 mean rounded once (1 ulp apart at most; qtune-quant's golden tests).
        // It changes `nested_absmax` and the JSON's `nested_offset`, nothing else.
        let w = name
            .strip_suffix(".nested_absmax")
            .or_else(|| name.strip_suffix(".quant_state.bitsandbytes__nf4"))
            .unwrap_or_else(|| panic!("{name} differs from bitsandbytes'"));
        let (mut sa, mut sb) = (state(&ours, w), state(&theirs, w));
        let (oa, ob) = (
            sa["nested_offset"].as_f64().unwrap() as f32,
            sb["nested_offset"].as_f64().unwrap() as f32,
        );
        assert_eq!(
            oa.to_bits().abs_diff(ob.to_bits()),
            1,
            "{w}: offsets {oa} vs {ob}"
        );
        sa["nested_offset"] = 0.into();
        sb["nested_offset"] = 0.into();
        assert_eq!(sa, sb, "{w}: quant state beyond the offset");
        offset_1ulp.push(name.clone());
    }
    // 18 weights × 6 tensors + 17 dense; 4 weights' offsets are 1 ulp off (2 tensors each).
    assert_eq!(names.len(), 125);
    assert!(
        identical >= 117,
        "{identical} identical; differ: {offset_1ulp:?}"
    );
    eprintln!("{identical}/125 tensors byte-identical to bnb's; offset-only: {offset_1ulp:?}");
    assert_eq!(
        json(&out.join("config.json")),
        json(&fixture("nf4/config.json"))
    );
    assert!(out.join("generation_config.json").is_file());

    // qtune reads the folder back: logits = quantize-on-load of the fp32 folder, bit for bit.
    let on_load = logits(&fixture("fp32"), "gptj_tiny", Some(QuantSpec::nf4()));
    assert_eq!(logits(&out, "gptj_tiny", None), on_load);

    // Sharded above --max-shard-size: HF's names + index; loads the same.
    let sharded = tmp.path().join("sharded");
    ok(&quantize(
        &[
            "--load-in-4bit",
            "--double-quant",
            "--dtype",
            "float32",
            "--max-shard-size",
            "100KB",
        ],
        &fixture("fp32"),
        &sharded,
    ));
    let index = json(&sharded.join("model.safetensors.index.json"));
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 125);
    assert!(sharded.join("model-00001-of-00004.safetensors").is_file());
    assert!(!sharded.join("model.safetensors").exists());
    assert_eq!(logits(&sharded, "gptj_tiny", None), on_load);
}

#[test]
fn quantize_llama_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixtures("llama_tiny/fp32");
    for (quant_type, spec) in [("nf4", QuantSpec::nf4()), ("fp4", QuantSpec::fp4())] {
        let out = tmp.path().join(quant_type);
        ok(&quantize(
            &[
                "--load-in-4bit",
                "--quant-type",
                quant_type,
                "--double-quant",
                "--dtype",
                "float32",
            ],
            &model,
            &out,
        ));
        let cfg = json(&out.join("config.json"));
        assert_eq!(
            cfg["quantization_config"]["bnb_4bit_quant_type"],
            quant_type
        );
        assert_eq!(
            logits(&out, "llama_tiny", None),
            logits(&model, "llama_tiny", Some(spec)),
            "{quant_type}"
        );
    }
    // The default dtype: bf16 dense tensors and quant state; it loads and runs.
    let out = tmp.path().join("bf16");
    ok(&quantize(&["--load-in-4bit"], &model, &out));
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        st.tensor("model.embed_tokens.weight").unwrap().dtype(),
        safetensors::Dtype::BF16
    );
    let s = st
        .tensor("model.layers.0.self_attn.q_proj.weight.quant_state.bitsandbytes__nf4")
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(s.data()).unwrap();
    assert_eq!(s["dtype"], "bfloat16");
    assert!(s.get("nested_offset").is_none());
    let cfg = json(&out.join("config.json"));
    assert_eq!(
        cfg["quantization_config"]["bnb_4bit_compute_dtype"],
        "bfloat16"
    );
    assert_eq!(
        cfg["quantization_config"]["bnb_4bit_use_double_quant"],
        false
    );
    logits(&out, "llama_tiny", None);
}

#[test]
fn quantize_refuses_bad_inputs_and_never_clobbers() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let four = ["--load-in-4bit", "--dtype", "float32"];
    let err = |run: &std::process::Output| {
        assert!(!run.status.success());
        String::from_utf8_lossy(&run.stderr).to_string()
    };
    let e = err(&quantize(&four, &fixture("fp32"), &out));
    assert!(e.contains("--overwrite") && e.contains("not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );

    let e = err(&quantize(
        &["--load-in-4bit", "--load-in-8bit"],
        &fixture("fp32"),
        &tmp.path().join("x"),
    ));
    assert!(e.contains("exclusive"), "{e}");
    let e = err(&quantize(
        &["--load-in-8bit"],
        &fixture("fp32"),
        &tmp.path().join("x"),
    ));
    assert!(e.contains("not bitsandbytes-loadable"), "{e}");
    let e = err(&quantize(&[], &fixture("fp32"), &tmp.path().join("x")));
    assert!(e.contains("--load-in-4bit"), "{e}");
    let e = err(&quantize(
        &["--load-in-4bit", "--quant-type", "int3"],
        &fixture("fp32"),
        &tmp.path().join("x"),
    ));
    assert!(
        e.contains("int3") && e.contains("nf4") && e.contains("fp4"),
        "{e}"
    );
    assert!(!tmp.path().join("x").exists());

    // The input model's own folder is never the output, --overwrite or not.
    let copy = tmp.path().join("model");
    std::fs::create_dir(&copy).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("fp32").join(f), copy.join(f)).unwrap();
    }
    let e = err(&quantize(&["--load-in-4bit", "--overwrite"], &copy, &copy));
    assert!(e.contains("input model"), "{e}");
    assert!(copy.join("model.safetensors").is_file());

    // --overwrite replaces the folder once the new one is complete; no temporary left over.
    ok(&quantize(
        &["--load-in-4bit", "--overwrite"],
        &fixture("fp32"),
        &out,
    ));
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `qtune quantize` quantizes each linear on the host as it loads (never the whole dense model):
/// an f32 checkpoint exported as bf16 has every weight rounded to bf16 first, as transformers
/// casts before bitsandbytes quantizes: the very bytes of qtune-quant on the rounded values.
#[test]
fn quantize_streams_each_linear_rounded_to_the_export_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("nf4-bf16");
    ok(&quantize(
        &["--load-in-4bit", "--double-quant", "--dtype", "bfloat16"],
        &fixture("fp32"),
        &out,
    ));
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let ours = SafeTensors::deserialize(&bytes).unwrap();
    let src_bytes = std::fs::read(fixture("fp32/model.safetensors")).unwrap();
    let src = SafeTensors::deserialize(&src_bytes).unwrap();
    for name in ["transformer.h.0.attn.q_proj", "transformer.h.1.mlp.fc_out"] {
        let w = src.tensor(&format!("{name}.weight")).unwrap();
        let shape = w.shape().to_vec();
        let values: Vec<f32> = w
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let want = qtune_quant::QuantizedTensor::quantize(
            name,
            &values,
            &shape,
            QuantSpec::nf4(),
            qtune_quant::FloatDType::BF16,
        )
        .unwrap();
        for (key, t) in want.to_safetensors(name) {
            let got = ours.tensor(&key).unwrap();
            assert_eq!(got.data(), &t.data[..], "{key}");
        }
    }
    // A checkpoint already quantized in another format is refused, naming the linear.
    let run = quantize(
        &["--load-in-4bit", "--quant-type", "fp4"],
        &fixture("nf4"),
        &tmp.path().join("fp4"),
    );
    assert!(!run.status.success());
    let e = String::from_utf8_lossy(&run.stderr);
    assert!(
        e.contains("already quantized") && e.contains("q_proj"),
        "{e}"
    );
}

/// A word-level tokenizer of the fixture's 512 ids, words `w0 … w511` (every generated id
/// decodes), written as `tokenizer.json` into `dir`.
fn word_tokenizer(dir: &Path) {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..512)
        .map(|i| (format!("w{i}"), serde_json::json!(i)))
        .collect();
    let t = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    });
    std::fs::write(dir.join("tokenizer.json"), t.to_string()).unwrap();
}

fn generate(args: &[&str], tok: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_qtune"))
        .args(["generate", "--model"])
        .arg(fixture("fp32"))
        .arg("--tokenizer")
        .arg(tok)
        .args(["--max-new-tokens", "6"])
        .args(args)
        .output()
        .unwrap()
}

/// `generate --prompts-file` in batches (longest first) writes one JSON line per prompt in the
/// file's order, each completion the one the prompt gets alone; bad input is refused before
/// any work, and an existing output file is never overwritten.
#[test]
fn generate_from_a_prompts_file_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    word_tokenizer(dir.path());
    let prompts = ["w5 w9 w2", "w7", "w1 w2 w3 w4 w5 w6", "w30 w31"];
    let file = dir.path().join("prompts.jsonl");
    let lines: Vec<String> = prompts
        .iter()
        .map(|p| serde_json::json!({"prompt": p}).to_string())
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = dir.path().join("out.jsonl");
    let run = generate(
        &[
            "--prompts-file",
            file.to_str().unwrap(),
            "--batch",
            "3",
            "--output",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    ok(&run);
    let got: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), prompts.len());
    for (i, (g, p)) in got.iter().zip(prompts).enumerate() {
        assert_eq!(g["index"], i);
        assert_eq!(g["prompt"], p);
        let alone = generate(&["--prompt", p], dir.path());
        ok(&alone);
        let text = String::from_utf8_lossy(&alone.stdout);
        let completion = g["completion"].as_str().unwrap();
        assert!(!completion.is_empty());
        assert_eq!(text.trim_end(), format!("{p}{completion}"), "prompt {i}");
    }
    // An existing output file is refused before any work, and left as it was.
    let before = std::fs::read(&out).unwrap();
    let again = generate(
        &[
            "--prompts-file",
            file.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ],
        dir.path(),
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // A line without a prompt is named.
    std::fs::write(&file, "{\"prompt\": \"w1\"}\n{\"text\": \"w2\"}\n").unwrap();
    let bad = generate(&["--prompts-file", file.to_str().unwrap()], dir.path());
    assert!(!bad.status.success());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("prompts.jsonl:2") && e.contains("prompt"), "{e}");
    let zero = generate(&["--prompt", "w1", "--batch", "0"], dir.path());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--batch"));
}
