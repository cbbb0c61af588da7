//! PEFT parity on tests/fixtures/gptj_tiny (made with PEFT 0.21, see make.py): the fixture
//! adapter loads and gives PEFT's logits; merging gives PEFT's merged logits; an adapter we write
//! reloads to the same logits; a quantized base merges dense and says so.
use std::path::{Path, PathBuf};

use burn::backend::NdArray;
use qtune_gptj::CausalLm;
use qtune_gptj::{Gptj, LoadOptions, QuantSpec};
use qtune_lora::merge::ExportDType;
use qtune_lora::peft::PeftAdapter;
use qtune_train::peft_check::{
    fixture_logits, fixture_prompts, max_rel_err, reference_tensor, write_check_folder,
};

type N = NdArray;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gptj_tiny")
}

#[test]
fn fixture_adapter_and_merge_match_peft() {
    let dev = Default::default();
    let fx = fixture();
    let prompts = fixture_prompts(&fx).unwrap();
    let base = Gptj::<N>::load(&fx.join("fp32"), &LoadOptions::default(), &dev).unwrap();
    let vocab = base.config.vocab_size;
    let adapter = PeftAdapter::load(&fx.join("peft_adapter")).unwrap();
    let model = base.import_adapter(&adapter).unwrap();
    let ours = fixture_logits(&model, &prompts);
    let want = reference_tensor(&fx, "peft_logits").unwrap();
    let err = max_rel_err(&ours, &want, &prompts.attention_mask, vocab);
    println!("PEFT adapter logits: max rel err {err:e}");
    assert!(err <= 1e-4, "adapter logits vs PEFT: {err:e}");
    // The adapter changes the logits (else the comparison proves nothing).
    let plain = reference_tensor(&fx, "logits").unwrap();
    assert!(max_rel_err(&plain, &want, &prompts.attention_mask, vocab) > 1e-3);

    let dir = tempfile::tempdir().unwrap();
    let report = model.export_merged(dir.path(), ExportDType::F32).unwrap();
    assert_eq!(report.merged_modules.len(), 6);
    assert!(report.dequantized_weights.is_empty());
    let merged = Gptj::<N>::load(dir.path(), &LoadOptions::default(), &dev).unwrap();
    assert!(merged.linears().iter().all(|(_, l)| l.lora.is_none()));
    let got = fixture_logits(&merged, &prompts);
    let want = reference_tensor(&fx, "peft_merged_logits").unwrap();
    let err = max_rel_err(&got, &want, &prompts.attention_mask, vocab);
    println!("merged logits: max rel err {err:e}");
    assert!(
        err <= 1e-4,
        "merged logits vs PEFT merge_and_unload: {err:e}"
    );
}

#[test]
fn our_adapter_reloads_to_the_same_logits() {
    let dev = Default::default();
    let fx = fixture();
    let out = tempfile::tempdir().unwrap();
    let (adapter_dir, logits_file) = write_check_folder::<N>(&fx, out.path(), &dev).unwrap();
    let bytes = std::fs::read(&logits_file).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ours = qtune_lora::peft::decode_f32(&logits_file, "logits", &st.tensor("logits").unwrap())
        .unwrap();

    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter_dir.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["q_proj", "v_proj"])
    );
    let base = Gptj::<N>::load(&fx.join("fp32"), &LoadOptions::default(), &dev).unwrap();
    let model = base
        .import_adapter(&PeftAdapter::load(&adapter_dir).unwrap())
        .unwrap();
    let prompts = fixture_prompts(&fx).unwrap();
    let again = fixture_logits(&model, &prompts);
    assert_eq!(
        again, ours,
        "reloaded adapter computes the same logits bit for bit"
    );
    let plain = reference_tensor(&fx, "logits").unwrap();
    assert!(
        max_rel_err(&ours, &plain, &prompts.attention_mask, 512) > 1e-3,
        "adapter is not a no-op"
    );
}

#[test]
fn quantized_base_merges_dense_and_reports_it() {
    let dev = Default::default();
    let fx = fixture();
    let opts = LoadOptions {
        quant: Some(QuantSpec::nf4()),
        ..Default::default()
    };
    let base = Gptj::<N>::load(&fx.join("fp32"), &opts, &dev).unwrap();
    let model = base
        .import_adapter(&PeftAdapter::load(&fx.join("peft_adapter")).unwrap())
        .unwrap();
    let prompts = fixture_prompts(&fx).unwrap();
    let adapter_logits = fixture_logits(&model, &prompts);
    let dir = tempfile::tempdir().unwrap();
    let report = model.export_merged(dir.path(), ExportDType::F32).unwrap();
    assert_eq!(
        report.dequantized_weights.len(),
        3 * 6,
        "every block linear was NF4"
    );
    assert!(report
        .dequantized_weights
        .contains(&"transformer.h.2.mlp.fc_out.weight".to_string()));
    let note: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("qtune_merge.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(note["dequantized_weights"].as_array().unwrap().len(), 18);
    let merged = Gptj::<N>::load(dir.path(), &LoadOptions::default(), &dev).unwrap();
    let got = fixture_logits(&merged, &prompts);
    let err = max_rel_err(&got, &adapter_logits, &prompts.attention_mask, 512);
    println!("NF4 base: merged dense vs adapter logits max rel err {err:e}");
    assert!(err <= 1e-4, "{err:e}");
}
