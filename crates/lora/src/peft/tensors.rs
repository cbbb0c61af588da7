//! The factors' bytes: `adapter_model.safetensors` read into [`LoraTensors`] by module path, and
//! f32 values encoded as F32/F16/BF16 for saving.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::{AdapterDType, LoraTensors, PeftError, PEFT_KEY_PREFIX};

/// f32 values as little-endian `dtype` bytes (round to nearest for F16/BF16).
pub(super) fn encode(data: &[f32], dtype: AdapterDType) -> Vec<u8> {
    match dtype {
        AdapterDType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        AdapterDType::F16 => data
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect(),
        AdapterDType::BF16 => data
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Decodes a safetensors float tensor to f32 (F32/F16/BF16); names the tensor on error.
pub fn decode_f32(
    path: &Path,
    name: &str,
    view: &safetensors::tensor::TensorView<'_>,
) -> Result<Vec<f32>, PeftError> {
    let data = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(PeftError::Tensor {
                path: path.to_path_buf(),
                name: name.to_string(),
                msg: format!("dtype {other:?}, expected F32, F16 or BF16"),
            })
        }
    })
}

pub(super) fn read_factors(
    path: &Path,
    bytes: &[u8],
    r: usize,
) -> Result<BTreeMap<String, LoraTensors>, PeftError> {
    let st = SafeTensors::deserialize(bytes).map_err(|source| PeftError::Safetensors {
        path: path.to_path_buf(),
        source,
    })?;
    type Half = Option<(Vec<f32>, [usize; 2])>;
    let mut pairs: BTreeMap<String, (Half, Half)> = BTreeMap::new();
    for (name, view) in st.tensors() {
        let bad = |msg: String| PeftError::Tensor {
            path: path.to_path_buf(),
            name: name.clone(),
            msg,
        };
        let Some(rest) = name.strip_prefix(PEFT_KEY_PREFIX) else {
            return Err(bad(format!("key does not start with `{PEFT_KEY_PREFIX}`")));
        };
        let (module, is_a) = if let Some(m) = rest.strip_suffix(".lora_A.weight") {
            (m, true)
        } else if let Some(m) = rest.strip_suffix(".lora_B.weight") {
            (m, false)
        } else {
            return Err(bad("not a `lora_A.weight`/`lora_B.weight` tensor".into()));
        };
        let shape: [usize; 2] = view
            .shape()
            .try_into()
            .map_err(|_| bad(format!("shape {:?} is not 2-D", view.shape())))?;
        let rank_dim = if is_a { shape[0] } else { shape[1] };
        if rank_dim != r {
            return Err(bad(format!(
                "shape {shape:?} does not have rank r = {r} from adapter_config.json"
            )));
        }
        let values = decode_f32(path, &name, &view)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!(
                "non-finite value {} at flat index {i}: the adapter is corrupt (NaN/inf)",
                values[i]
            )));
        }
        let entry = pairs.entry(module.to_string()).or_default();
        if is_a {
            entry.0 = Some((values, shape));
        } else {
            entry.1 = Some((values, shape));
        }
    }
    if pairs.is_empty() {
        return Err(PeftError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut modules = BTreeMap::new();
    for (module, pair) in pairs {
        let unpaired = |has, missing| PeftError::Unpaired {
            path: path.to_path_buf(),
            module: module.clone(),
            has,
            missing,
        };
        match pair {
            (Some((a, a_shape)), Some((b, b_shape))) => {
                modules.insert(
                    module,
                    LoraTensors {
                        a,
                        a_shape,
                        b,
                        b_shape,
                    },
                );
            }
            (Some(_), None) => return Err(unpaired("lora_A", "lora_B")),
            _ => return Err(unpaired("lora_B", "lora_A")),
        }
    }
    Ok(modules)
}
