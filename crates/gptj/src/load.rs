//! Loading HF GPT-J checkpoints: `config.json` + `model.safetensors` or a sharded
//! `model.safetensors.index.json`, memory-mapped, F32/F16/BF16. Tensors are converted one at a
//! time (host f32 → device dtype), and block linears are quantized right after upload when
//! [`LoadOptions::quant`] is set. `pytorch_model.bin` is refused: unpickling executes code.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData};
use memmap2::Mmap;
use qtune_kernels::QBackend;
use qtune_quant::QuantSpec;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use crate::build::{build, TensorSource};
use crate::config::GptjConfig;
use crate::error::GptjError;
use crate::model::Gptj;

/// How to materialize the weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadOptions {
    /// Device dtype of dense weights and activations (F32 on NdArray; BF16/F16/F32 on CUDA).
    pub dtype: DType,
    /// Quantize the block linears (q/k/v/out_proj, fc_in, fc_out) as they stream in;
    /// embeddings, LayerNorms and `lm_head` stay dense.
    pub quant: Option<QuantSpec>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            quant: None,
        }
    }
}

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// The memory-mapped safetensors files of a checkpoint folder.
pub struct WeightFiles {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name → index into `files`.
    by_name: HashMap<String, usize>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> GptjError + '_ {
    move |source| GptjError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn st_err(path: &Path, e: impl std::fmt::Display) -> GptjError {
    GptjError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl WeightFiles {
    /// Opens `dir/model.safetensors` or every shard named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, GptjError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(io(&index))?;
            let idx: Index = serde_json::from_str(&text).map_err(|source| GptjError::Index {
                path: index.clone(),
                source,
            })?;
            let mut shards: Vec<String> = idx.weight_map.into_values().collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else if single.is_file() {
            vec![single]
        } else if dir.join("pytorch_model.bin").is_file()
            || dir.join("pytorch_model.bin.index.json").is_file()
        {
            return Err(GptjError::PickleRefused {
                path: dir.join("pytorch_model.bin"),
            });
        } else {
            return Err(GptjError::NoWeights {
                path: dir.to_path_buf(),
            });
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut by_name = HashMap::new();
        for path in paths {
            let file = File::open(&path).map_err(io(&path))?;
            // SAFETY: the file is opened read-only and the map is only read; like every mmap
            // reader (safetensors, candle) we assume no one truncates it while we load.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io(&path))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| st_err(&path, e))?;
            for name in st.names() {
                by_name.insert(name.to_string(), files.len());
            }
            files.push((path, mmap));
        }
        Ok(Self { files, by_name })
    }

    /// Names of all tensors in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Path of the file holding `name` (or of the first file, for error messages).
    fn path_of(&self, name: &str) -> &Path {
        let i = self.by_name.get(name).copied().unwrap_or(0);
        &self.files[i].0
    }

    /// The tensor `name` as host f32 values, checked against `expected` shape.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, GptjError> {
        let Some(&i) = self.by_name.get(name) else {
            let path = if self.files.len() == 1 {
                self.files[0].0.clone()
            } else {
                self.path_of(name)
                    .parent()
                    .unwrap_or(Path::new("."))
                    .to_path_buf()
            };
            return Err(GptjError::MissingTensor {
                path,
                name: name.to_string(),
            });
        };
        let (path, mmap) = &self.files[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| st_err(path, e))?;
        let view = st.tensor(name).map_err(|e| st_err(path, e))?;
        if view.shape() != expected {
            return Err(GptjError::Shape {
                path: path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                got: view.shape().to_vec(),
            });
        }
        let bytes = view.data();
        let values = match view.dtype() {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(GptjError::DType {
                    path: path.clone(),
                    name: name.to_string(),
                    got: format!("{other:?}"),
                })
            }
        };
        Ok(values)
    }
}

struct FileSource<'a, B: QBackend> {
    files: &'a WeightFiles,
    dtype: DType,
    device: &'a B::Device,
}

impl<B: QBackend> FileSource<'_, B> {
    fn data(&self, name: &str, shape: &[usize]) -> Result<TensorData, GptjError> {
        let data = TensorData::new(self.files.read_f32(name, shape)?, shape.to_vec());
        Ok(if self.dtype == DType::F32 {
            data
        } else {
            data.convert_dtype(self.dtype)
        })
    }
}

impl<B: QBackend> TensorSource<B> for FileSource<'_, B> {
    fn tensor1(&mut self, name: &str, shape: [usize; 1]) -> Result<Tensor<B, 1>, GptjError> {
        Ok(Tensor::from_data(
            self.data(name, &shape)?,
            (self.device, self.dtype),
        ))
    }

    fn tensor2(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>, GptjError> {
        Ok(Tensor::from_data(
            self.data(name, &shape)?,
            (self.device, self.dtype),
        ))
    }

    fn contains(&self, name: &str) -> bool {
        self.files.by_name.contains_key(name)
    }

    fn quantized(
        &mut self,
        module: &str,
    ) -> Result<Option<qtune_quant::QuantizedTensor>, GptjError> {
        let Some(&i) = self.files.by_name.get(&format!("{module}.weight")) else {
            return Ok(None);
        };
        let (path, mmap) = &self.files.files[i];
        let st = SafeTensors::deserialize(mmap).map_err(|e| st_err(path, e))?;
        if qtune_quant::io::quant_format_of(&st, module).is_none() {
            return Ok(None);
        }
        qtune_quant::QuantizedTensor::from_safetensors(&st, module, path)
            .map(Some)
            .map_err(|e| GptjError::Safetensors {
                path: path.clone(),
                reason: e.to_string(),
            })
    }
}

impl<B: QBackend> Gptj<B> {
    /// Loads a checkpoint folder (`config.json` + safetensors); see [`crate::hub::resolve`] for
    /// Hub ids. Tensors the model does not use (e.g. old `attn.bias` buffers) are ignored.
    pub fn load(dir: &Path, opts: &LoadOptions, device: &B::Device) -> Result<Self, GptjError> {
        let cfg = GptjConfig::from_file(&dir.join("config.json"))?;
        let files = WeightFiles::open(dir)?;
        let mut src = FileSource::<B> {
            files: &files,
            dtype: opts.dtype,
            device,
        };
        let model = build(&cfg, &mut src, opts.quant, opts.dtype, device)?;
        tracing::info!(dir = %dir.display(), quant = ?opts.quant, dtype = ?opts.dtype, "loaded GPT-J");
        Ok(model)
    }
}
