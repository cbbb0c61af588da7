//! Fixture access shared by the tests.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use qtune_gptj::{Gptj, LoadOptions};
use qtune_lm::fixtures;

pub type Nd = NdArray<f32>;

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gptj_tiny")
}

pub fn reference_json() -> serde_json::Value {
    fixtures::reference_json(&fixture_dir()).unwrap()
}

/// A `[B, T, V]` f32 tensor of reference.safetensors, flattened, with its shape.
pub fn reference_tensor(name: &str) -> (Vec<f32>, Vec<usize>) {
    fixtures::reference_tensor_with_shape(&fixture_dir(), name).unwrap()
}

pub fn json_2d(v: &serde_json::Value) -> Vec<Vec<i64>> {
    fixtures::int_rows(v).unwrap()
}

pub fn int_tensor(rows: &[Vec<i64>]) -> Tensor<Nd, 2, Int> {
    let (b, t) = (rows.len(), rows[0].len());
    Tensor::from_data(TensorData::new(rows.concat(), [b, t]), &Default::default())
}

pub fn load(sub: &str) -> Gptj<Nd> {
    Gptj::load(
        &fixture_dir().join(sub),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap()
}

/// Logits of the fixture's padded batch.
pub fn fixture_logits(model: &Gptj<Nd>) -> Vec<f32> {
    let p = qtune_lm::fixtures::fixture_prompts(&fixture_dir()).unwrap();
    qtune_lm::fixtures::fixture_logits(model, &p)
}

/// max |a − ref| / max |ref| over the non-pad positions (the check_adapter metric of make.py).
pub fn max_rel_err_non_pad(got: &[f32], reference: &[f32], vocab: usize) -> f32 {
    let p = qtune_lm::fixtures::fixture_prompts(&fixture_dir()).unwrap();
    qtune_lm::fixtures::max_rel_err(got, reference, &p.attention_mask, vocab) as f32
}

/// Prompts of the fixture without their left padding.
pub fn fixture_prompts() -> Vec<Vec<u32>> {
    fixtures::fixture_prompts(&fixture_dir())
        .unwrap()
        .unpadded()
}
