//! Reading the HF-made parity fixtures (tests/fixtures/*: `reference.json` prompts,
//! `reference.safetensors` logits) and comparing logits with them: shared by the model
//! families' tests, qtune-train's PEFT check and the GPU check.
use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use qtune_kernels::QBackend;

use crate::error::LmError;
use crate::generate::{EarlyStopping, GenerationConfig};
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

impl FixturePrompts {
    /// Each prompt without its left padding.
    pub fn unpadded(&self) -> Vec<Vec<u32>> {
        let t = self.shape[1].max(1); // chunks(0) panics; an empty grid has no rows anyway
        self.input_ids
            .chunks(t)
            .zip(self.attention_mask.chunks(t))
            .map(|(row, mask)| {
                row.iter()
                    .zip(mask)
                    .filter(|(_, &m)| m == 1)
                    .map(|(&id, _)| id as u32)
                    .collect()
            })
            .collect()
    }
}

/// The fixture's reference.json.
pub fn reference_json(fixture: &Path) -> Result<serde_json::Value, LmError> {
    let path = fixture.join("reference.json");
    let text = std::fs::read_to_string(&path).map_err(|source| LmError::Io {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| bad(&path, e.to_string()))
}

/// A JSON array of integer arrays (reference.json's id grids); `None` for anything else.
pub fn int_rows(v: &serde_json::Value) -> Option<Vec<Vec<i64>>> {
    v.as_array()?
        .iter()
        .map(|r| r.as_array()?.iter().map(|x| x.as_i64()).collect())
        .collect()
}

/// HF `generate` arguments of a reference case (`max_new_tokens`, `num_beams`,
/// `repetition_penalty`, `length_penalty`, `early_stopping`; HF's defaults for the others), with
/// the fixtures' eos 2 and pad 0. `None` without `max_new_tokens`.
pub fn generation_config(args: &serde_json::Value) -> Option<GenerationConfig> {
    let f = |k: &str, d: f64| args.get(k).and_then(|v| v.as_f64()).unwrap_or(d);
    Some(GenerationConfig {
        max_new_tokens: args.get("max_new_tokens")?.as_u64()? as usize,
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
    })
}

/// reference.json's `perplexity`: HF's sliding-window perplexity of `input_ids`.
#[derive(Debug, Clone)]
pub struct PerplexityCase {
    pub input_ids: Vec<u32>,
    pub max_length: usize,
    pub stride: usize,
    pub ppl: f64,
    /// The tokens HF counts (one fewer per window than it scores).
    pub tokens: u64,
}

/// The `perplexity` object of reference.json; `None` when a field is missing.
pub fn perplexity_case(v: &serde_json::Value) -> Option<PerplexityCase> {
    let int = |k: &str| v.get(k)?.as_u64();
    Some(PerplexityCase {
        input_ids: v
            .get("input_ids")?
            .as_array()?
            .iter()
            .map(|x| x.as_u64().map(|t| t as u32))
            .collect::<Option<_>>()?,
        max_length: int("max_length")? as usize,
        stride: int("stride")? as usize,
        ppl: v.get("ppl")?.as_f64()?,
        tokens: int("tokens")?,
    })
}

pub fn fixture_prompts(fixture: &Path) -> Result<FixturePrompts, LmError> {
    let path = fixture.join("reference.json");
    let v = reference_json(fixture)?;
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
    Ok(reference_tensor_with_shape(fixture, key)?.0)
}

/// [`reference_tensor`] with the tensor's shape.
pub fn reference_tensor_with_shape(
    fixture: &Path,
    key: &str,
) -> Result<(Vec<f32>, Vec<usize>), LmError> {
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
    let values =
        qtune_lora::peft::decode_f32(&path, key, &view).map_err(|e| bad(&path, e.to_string()))?;
    Ok((values, view.shape().to_vec()))
}
