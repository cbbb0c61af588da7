//! Merging an adapter into its base weight and writing HF-loadable safetensors.
//!
//! Merge is PEFT's `merge_and_unload`: `W' = W + scaling · B·A`, computed in f32 from the
//! (dequantized) base. A quantized base is exported **dense**: re-quantizing `W'` would round
//! the small update away block by block (users asked for the dense export), so the writer
//! records which weights were dequantized in the safetensors metadata
//! (`qtune_dequantized`, comma-separated tensor names) and the caller says so to the user.
//!
//! [`write_safetensors`] streams: it writes the header from the tensor list, then asks for
//! each tensor's values one at a time, so a 6B model never needs two full copies in memory.
use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor};

use qtune_kernels::QBackend;

use crate::linear::Linear;

/// Metadata key listing the tensors that were stored quantized and are exported dense.
pub const DEQUANTIZED_METADATA_KEY: &str = "qtune_dequantized";

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: tensor `{name}`: {msg}")]
    Tensor {
        path: PathBuf,
        name: String,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Header { path: PathBuf, msg: String },
}

/// The dtype of an exported tensor (the base model's dtype: HF `torch_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportDType {
    F32,
    F16,
    BF16,
}

impl ExportDType {
    fn st_name(self) -> &'static str {
        match self {
            ExportDType::F32 => "F32",
            ExportDType::F16 => "F16",
            ExportDType::BF16 => "BF16",
        }
    }
    fn size(self) -> usize {
        match self {
            ExportDType::F32 => 4,
            _ => 2,
        }
    }
    /// HF config.json `torch_dtype` spelling.
    pub fn torch_name(self) -> &'static str {
        match self {
            ExportDType::F32 => "float32",
            ExportDType::F16 => "float16",
            ExportDType::BF16 => "bfloat16",
        }
    }
    fn encode(self, values: &[f32], out: &mut Vec<u8>) {
        out.clear();
        out.reserve(values.len() * self.size());
        match self {
            ExportDType::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
            ExportDType::F16 => values
                .iter()
                .for_each(|v| out.extend(half::f16::from_f32(*v).to_le_bytes())),
            ExportDType::BF16 => values
                .iter()
                .for_each(|v| out.extend(half::bf16::from_f32(*v).to_le_bytes())),
        }
    }
}

/// Name and shape of one tensor to export, in file order.
#[derive(Debug, Clone)]
pub struct ExportEntry {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Writes a safetensors file with `entries` in `dtype`, pulling each tensor's f32 values from
/// `values(i)` in order (one tensor in memory at a time). `dequantized` lands in the metadata.
pub fn write_safetensors(
    path: &Path,
    entries: &[ExportEntry],
    dtype: ExportDType,
    dequantized: &[String],
    mut values: impl FnMut(usize) -> Result<Vec<f32>, MergeError>,
) -> Result<(), MergeError> {
    let io = |source| MergeError::Io {
        path: path.to_path_buf(),
        source,
    };
    // safetensors requires the data section in the order of the header's offsets; we lay
    // tensors out in `entries` order and serialize the header as a JSON object.
    let mut header = serde_json::Map::new();
    let mut meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    if !dequantized.is_empty() {
        meta.insert(DEQUANTIZED_METADATA_KEY.to_string(), dequantized.join(","));
    }
    header.insert(
        "__metadata__".into(),
        serde_json::to_value(&meta).unwrap_or_default(),
    );
    let mut offset = 0usize;
    let mut seen = BTreeMap::new();
    for e in entries {
        if seen.insert(e.name.clone(), ()).is_some() {
            return Err(MergeError::Header {
                path: path.to_path_buf(),
                msg: format!("duplicate tensor name `{}`", e.name),
            });
        }
        let bytes = e.shape.iter().product::<usize>() * dtype.size();
        header.insert(
            e.name.clone(),
            serde_json::json!({
                "dtype": dtype.st_name(),
                "shape": e.shape,
                "data_offsets": [offset, offset + bytes],
            }),
        );
        offset += bytes;
    }
    let mut text = serde_json::to_string(&header).map_err(|e| MergeError::Header {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    // Pad the header with spaces to an 8-byte boundary, as the reference writer does.
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut f = BufWriter::new(std::fs::File::create(path).map_err(io)?);
    f.write_all(&(text.len() as u64).to_le_bytes())
        .map_err(io)?;
    f.write_all(text.as_bytes()).map_err(io)?;
    let mut buf = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let v = values(i)?;
        let n: usize = e.shape.iter().product();
        if v.len() != n {
            return Err(MergeError::Tensor {
                path: path.to_path_buf(),
                name: e.name.clone(),
                msg: format!("{} values for shape {:?}", v.len(), e.shape),
            });
        }
        dtype.encode(&v, &mut buf);
        f.write_all(&buf).map_err(io)?;
    }
    f.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

impl<B: QBackend> Linear<B> {
    /// `W + scaling · B·A` (`[out, in]`, f32), or the (dequantized) base when no adapter is set.
    pub fn merged_weight(&self) -> Tensor<B, 2> {
        let w = self.base_weight(DType::F32);
        match &self.lora {
            Some(lora) => w + lora.delta_weight().cast(DType::F32),
            None => w,
        }
    }

    /// PEFT's `merge_and_unload` for one layer: a dense linear holding the merged weight and
    /// the same bias, without an adapter. Its forward equals the adapter forward (no dropout)
    /// up to f32 rounding.
    pub fn merge_and_unload(&self) -> Self {
        Linear::dense(self.merged_weight(), self.bias())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LoraConfig, TargetModules};
    use burn::backend::NdArray;
    use burn::tensor::{Distribution, Tolerance};
    use rand::SeedableRng;

    type B = NdArray;

    #[test]
    fn merged_forward_equals_adapter_forward() {
        let dev = Default::default();
        let w = Tensor::<B, 2>::random([6, 5], Distribution::Normal(0.0, 1.0), &dev);
        let bias = Tensor::<B, 1>::random([6], Distribution::Normal(0.0, 1.0), &dev);
        let cfg = LoraConfig {
            r: 2,
            lora_alpha: 4.0,
            lora_dropout: 0.0,
            target_modules: TargetModules::AllLinear,
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut lin = Linear::dense(w, Some(bias)).attach_lora(&cfg, &mut rng);
        // Non-zero B so the adapter matters.
        let lora = lin.take_adapter().unwrap();
        let b = Tensor::<B, 2>::random([6, 2], Distribution::Normal(0.0, 1.0), &dev);
        lin = lin.with_adapter(crate::LoraAdapter::from_tensors(
            lora.lora_a.val(),
            b,
            2.0,
            0.0,
        ));
        let x = Tensor::<B, 3>::random([2, 3, 5], Distribution::Normal(0.0, 1.0), &dev);
        let y = lin.forward(x.clone());
        let merged = lin.merge_and_unload();
        assert!(merged.lora.is_none());
        merged
            .forward(x)
            .into_data()
            .assert_approx_eq::<f32>(&y.into_data(), Tolerance::rel_abs(1e-5, 1e-6));
    }

    #[test]
    fn streamed_safetensors_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let entries = vec![
            ExportEntry {
                name: "a.weight".into(),
                shape: vec![2, 3],
            },
            ExportEntry {
                name: "b.bias".into(),
                shape: vec![3],
            },
        ];
        let data = [vec![1.0, -2.0, 3.5, 0.25, 5.0, 6.0], vec![0.5, 1.5, -1.0]];
        for dtype in [ExportDType::F32, ExportDType::BF16] {
            write_safetensors(&path, &entries, dtype, &["a.weight".into()], |i| {
                Ok(data[i].clone())
            })
            .unwrap();
            let bytes = std::fs::read(&path).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let a = st.tensor("a.weight").unwrap();
            assert_eq!(a.shape(), [2, 3]);
            let back = crate::peft::decode_f32(&path, "a.weight", &a).unwrap();
            assert_eq!(back, data[0]); // all exactly representable in bf16
            let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
            let m = meta.metadata().clone().unwrap();
            assert_eq!(m[DEQUANTIZED_METADATA_KEY], "a.weight");
        }
        let err = write_safetensors(&path, &entries, ExportDType::F32, &[], |_| Ok(vec![1.0]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.weight") && err.contains("model.safetensors"),
            "{err}"
        );
    }
}
