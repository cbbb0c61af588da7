//! Fixture access shared by the tests.

use std::path::PathBuf;

use burn::backend::NdArray;
use qtune_llama::Llama;
use qtune_lm::fixtures;
use qtune_lm::{GenerationConfig, LoadOptions};

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
    fixtures::reference_json(&fixture_dir(name)).unwrap()
}

/// An f32 tensor of `{fixture}/reference.safetensors`, flattened, with its shape.
pub fn reference_tensor(fixture: &str, name: &str) -> (Vec<f32>, Vec<usize>) {
    fixtures::reference_tensor_with_shape(&fixture_dir(fixture), name).unwrap()
}

pub fn json_2d(v: &serde_json::Value) -> Vec<Vec<i64>> {
    fixtures::int_rows(v).unwrap()
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
    let p = fixtures::fixture_prompts(&fixture_dir(name)).unwrap();
    fixtures::fixture_logits(model, &p)
}

/// max |a − ref| / max |ref| over the non-pad positions (pad query rows attend to nothing in
/// HF; their logits are not compared).
pub fn max_rel_err_non_pad(name: &str, got: &[f32], reference: &[f32], vocab: usize) -> f32 {
    let p = fixtures::fixture_prompts(&fixture_dir(name)).unwrap();
    fixtures::max_rel_err(got, reference, &p.attention_mask, vocab) as f32
}

/// The fixture's prompts without their left padding.
pub fn fixture_prompts(name: &str) -> Vec<Vec<u32>> {
    fixtures::fixture_prompts(&fixture_dir(name))
        .unwrap()
        .unpadded()
}

/// HF `generate` arguments of a reference case.
pub fn hf_config(args: &serde_json::Value) -> GenerationConfig {
    fixtures::generation_config(args).unwrap()
}
