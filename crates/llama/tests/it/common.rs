//! Fixture access shared by the tests.

use std::path::PathBuf;

use burn::backend::NdArray;
use qtune_llama::Llama;
use qtune_lm::{EarlyStopping, GenerationConfig, LoadOptions};
use safetensors::SafeTensors;

pub type Nd = NdArray<f32>;

/// The four tiny HF fixtures: Llama (llama3 RoPE), tied Llama (linear RoPE), Qwen2 (q/k/v bias,
/// tied), Mistral (sliding window 4).
pub const FIXTURES: [&str; 4] = ["llama_tiny", "llama_tied", "qwen2_tiny", "mistral_tiny"];

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

pub fn reference_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture_dir(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// An f32 tensor of `{fixture}/reference.safetensors`, flattened, with its shape.
pub fn reference_tensor(fixture: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(fixture_dir(fixture).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    let data = v
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (data, v.shape().to_vec())
}

pub fn json_2d(v: &serde_json::Value) -> Vec<Vec<i64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect()
}

pub fn load(name: &str) -> Llama<Nd> {
    Llama::load(
        &fixture_dir(name).join("fp32"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap()
}

/// Logits of the fixture's left-padded batch.
pub fn fixture_logits(name: &str, model: &Llama<Nd>) -> Vec<f32> {
    let p = qtune_lm::fixtures::fixture_prompts(&fixture_dir(name)).unwrap();
    qtune_lm::fixtures::fixture_logits(model, &p)
}

/// max |a − ref| / max |ref| over the non-pad positions (pad query rows attend to nothing in
/// HF; their logits are not compared).
pub fn max_rel_err_non_pad(name: &str, got: &[f32], reference: &[f32], vocab: usize) -> f32 {
    let p = qtune_lm::fixtures::fixture_prompts(&fixture_dir(name)).unwrap();
    qtune_lm::fixtures::max_rel_err(got, reference, &p.attention_mask, vocab) as f32
}

/// The fixture's prompts without their left padding.
pub fn fixture_prompts(name: &str) -> Vec<Vec<u32>> {
    let r = reference_json(name);
    let ids = json_2d(&r["input_ids"]);
    let mask = json_2d(&r["attention_mask"]);
    ids.iter()
        .zip(&mask)
        .map(|(row, m)| {
            row.iter()
                .zip(m)
                .filter(|(_, &m)| m == 1)
                .map(|(&t, _)| t as u32)
                .collect()
        })
        .collect()
}

/// HF `generate` arguments of a reference case.
pub fn hf_config(args: &serde_json::Value) -> GenerationConfig {
    let f = |k: &str, d: f64| args.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    GenerationConfig {
        max_new_tokens: args["max_new_tokens"].as_u64().unwrap() as usize,
        num_beams: args.get("num_beams").and_then(|v| v.as_u64()).unwrap_or(1) as usize,
        repetition_penalty: f("repetition_penalty", 1.0),
        length_penalty: f("length_penalty", 1.0),
        early_stopping: match args.get("early_stopping").and_then(|v| v.as_bool()) {
            Some(true) => EarlyStopping::True,
            _ => EarlyStopping::False,
        },
        eos_token_id: Some(2),
        pad_token_id: Some(0),
        ..GenerationConfig::default()
    }
}
