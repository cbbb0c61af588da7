//! Reading the HF-made parity fixtures (tests/fixtures/*: `reference.json` prompts,
//! `reference.safetensors` logits) and comparing logits with them: shared by the model
//! families' tests, qtune-train's PEFT check and the GPU check.
use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use qtune_kernels::QBackend;

use crate::error::LmError;
use crate::lm::CausalLm;

fn bad(path: &Path, msg: impl Into<String>) -> LmError {
    LmError::Input(format!("{}: {}", path.display(), msg.into()))
}

/// `input_ids`, `attention_mask`, `position_ids` of reference.json (`[3, 12]`).
pub struct FixturePrompts {
    pub shape: [usize; 2],
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub position_ids: Vec<i64>,
}

pub fn fixture_prompts(fixture: &Path) -> Result<FixturePrompts, LmError> {
    let path = fixture.join("reference.json");
    let text = std::fs::read_to_string(&path).map_err(|source| LmError::Io {
        path: path.clone(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&path, e.to_string()))?;
    let grid = |key: &str| -> Result<(Vec<i64>, [usize; 2]), LmError> {
        let rows = v[key]
            .as_array()
            .ok_or_else(|| bad(&path, format!("`{key}` missing")))?;
        let cols = rows.first().and_then(|r| r.as_array()).map_or(0, Vec::len);
        let flat: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.as_array().cloned().unwrap_or_default())
            .filter_map(|x| x.as_i64())
            .collect();
        if flat.len() != rows.len() * cols {
            return Err(bad(&path, format!("`{key}` is not a rectangular int grid")));
        }
        Ok((flat, [rows.len(), cols]))
    };
    let (input_ids, shape) = grid("input_ids")?;
    let (attention_mask, _) = grid("attention_mask")?;
    let (position_ids, _) = grid("position_ids")?;
    Ok(FixturePrompts {
        shape,
        input_ids,
        attention_mask,
        position_ids,
    })
}

/// Logits `[B, T, V]` of `model` on the fixture prompts, flattened.
pub fn fixture_logits<B: QBackend, M: CausalLm<B>>(model: &M, p: &FixturePrompts) -> Vec<f32> {
    let dev = model.device();
    let t = |v: &[i64]| Tensor::<B, 2, Int>::from_data(TensorData::new(v.to_vec(), p.shape), &dev);
    let logits = model.forward(
        t(&p.input_ids),
        Some(t(&p.attention_mask)),
        Some(t(&p.position_ids)),
        None,
    );
    logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// `make.py`'s metric: max |ours − ref| over non-pad positions / max |ref| there.
pub fn max_rel_err(ours: &[f32], reference: &[f32], mask: &[i64], vocab: usize) -> f64 {
    let (mut err, mut scale) = (0f64, 0f64);
    for (pos, m) in mask.iter().enumerate() {
        if *m == 0 {
            continue;
        }
        for v in pos * vocab..(pos + 1) * vocab {
            err = err.max((ours[v] - reference[v]).abs() as f64);
            scale = scale.max(reference[v].abs() as f64);
        }
    }
    err / scale.max(f64::MIN_POSITIVE)
}

/// Reads a float tensor of reference.safetensors as f32.
pub fn reference_tensor(fixture: &Path, key: &str) -> Result<Vec<f32>, LmError> {
    let path = fixture.join("reference.safetensors");
    let bytes = std::fs::read(&path).map_err(|source| LmError::Io {
        path: path.clone(),
        source,
    })?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(&path, e.to_string()))?;
    let view = st
        .tensor(key)
        .map_err(|e| bad(&path, format!("`{key}`: {e}")))?;
    qtune_lora::peft::decode_f32(&path, key, &view).map_err(|e| bad(&path, e.to_string()))
}
