//! [`WeightFiles`]: a checkpoint folder's safetensors files, memory-mapped, and every tensor's
//! place in them; [`read_quantized`] for the bnb-quantized linears among them.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use qtune_quant::io::TensorLookup;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

use super::to_f32;
use crate::error::LmError;

#[derive(Deserialize)]
struct Index {
    weight_map: BTreeMap<String, String>,
}

/// The memory-mapped safetensors files of a checkpoint folder, with every tensor's place in
/// them. Each file's JSON header is parsed once, at [`WeightFiles::open`]: a bnb-quantized
/// GPT-J-6B file holds about 1,200 tensors, and parsing its header again for every tensor read
/// was one of the two costs that made loading it take 2.09 s instead of 0.90 s (BENCHMARKS.md,
/// session 11).
pub struct WeightFiles {
    files: Vec<(PathBuf, Mmap)>,
    /// Tensor name → where it is.
    by_name: HashMap<String, Entry>,
}

/// Where a tensor is stored: file (index into `files`), dtype, shape, and its bytes' range in the
/// file's map.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: std::ops::Range<usize>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LmError + '_ {
    move |source| LmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn st_err(path: &Path, e: impl std::fmt::Display) -> LmError {
    LmError::Safetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl WeightFiles {
    /// Opens `dir/model.safetensors` or every shard named by `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self, LmError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(io(&index))?;
            let idx: Index = serde_json::from_str(&text).map_err(|source| LmError::Index {
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
            return Err(LmError::PickleRefused {
                path: dir.join("pytorch_model.bin"),
            });
        } else {
            return Err(LmError::NoWeights {
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
            for (name, view) in st.iter() {
                // The view borrows the map: its offset in it is where the bytes are.
                let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
                let entry = Entry {
                    file: files.len(),
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: start..start + view.data().len(),
                };
                by_name.insert(name.to_string(), entry);
            }
            files.push((path, mmap));
        }
        Ok(Self { files, by_name })
    }

    /// Every tensor of the checkpoint: name, stored dtype and size in bytes, in no particular
    /// order.
    pub(crate) fn tensors(&self) -> impl Iterator<Item = (&str, Dtype, usize)> {
        self.by_name
            .iter()
            .map(|(name, e)| (name.as_str(), e.dtype, e.bytes.len()))
    }

    /// The bnb format of linear `module`'s weight if it is stored quantized (its quant_state
    /// companion sits in the weight's file), else `None`.
    pub(crate) fn quant_format(&self, module: &str) -> Option<qtune_quant::QuantFormat> {
        qtune_quant::io::quant_format_of(&self.weight_file(module)?, module)
    }

    /// The tensors of the file holding `module.weight`, if the checkpoint has it.
    fn weight_file(&self, module: &str) -> Option<FileTensors<'_>> {
        let e = self.by_name.get(&format!("{module}.weight"))?;
        Some(FileTensors {
            files: self,
            file: e.file,
        })
    }

    /// The shape tensor `name` is stored with.
    pub(crate) fn stored_shape(&self, name: &str) -> Result<Vec<usize>, LmError> {
        match self.by_name.get(name) {
            Some(e) => Ok(e.shape.clone()),
            None => Err(LmError::MissingTensor {
                path: self.path_of(name).to_path_buf(),
                name: name.to_string(),
            }),
        }
    }

    /// Whether the checkpoint has tensor `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Names of all tensors in the checkpoint.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Path of the file holding `name` (or of the first file, for error messages).
    fn path_of(&self, name: &str) -> &Path {
        let i = self.by_name.get(name).map_or(0, |e| e.file);
        &self.files[i].0
    }

    /// The stored bytes of tensor `name` (little-endian, in the file's dtype), checked against
    /// `expected` shape, with the file they come from.
    pub fn view(&self, name: &str, expected: &[usize]) -> Result<(&Path, Dtype, &[u8]), LmError> {
        let Some(e) = self.by_name.get(name) else {
            let path = if self.files.len() == 1 {
                self.files[0].0.clone()
            } else {
                self.path_of(name)
                    .parent()
                    .unwrap_or(Path::new("."))
                    .to_path_buf()
            };
            return Err(LmError::MissingTensor {
                path,
                name: name.to_string(),
            });
        };
        let (path, mmap) = &self.files[e.file];
        if e.shape != expected {
            return Err(LmError::Shape {
                path: path.clone(),
                name: name.to_string(),
                expected: expected.to_vec(),
                got: e.shape.clone(),
            });
        }
        Ok((path, e.dtype, &mmap[e.bytes.clone()]))
    }

    /// The tensor `name` as host f32 values, checked against `expected` shape. Large tensors
    /// are converted on all cores.
    pub fn read_f32(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, LmError> {
        let (path, dtype, bytes) = self.view(name, expected)?;
        to_f32(path, name, dtype, bytes)
    }
}

/// The linear `module` if its `.weight` is stored bnb-quantized, else `None`.
pub(crate) fn read_quantized(
    files: &WeightFiles,
    module: &str,
) -> Result<Option<qtune_quant::QuantizedTensor>, LmError> {
    let Some(st) = files.weight_file(module) else {
        return Ok(None);
    };
    if qtune_quant::io::quant_format_of(&st, module).is_none() {
        return Ok(None);
    }
    let path = &files.files[st.file].0;
    qtune_quant::QuantizedTensor::from_safetensors(&st, module, path)
        .map(Some)
        .map_err(|e| LmError::Safetensors {
            path: path.clone(),
            reason: e.to_string(),
        })
}

/// The tensors of one file of a [`WeightFiles`], for qtune-quant's bnb reader: a module's
/// companions (absmax, quant_map, quant_state, …) are read from the file holding its weight.
struct FileTensors<'a> {
    files: &'a WeightFiles,
    file: usize,
}

impl TensorLookup for FileTensors<'_> {
    fn lookup(&self, name: &str) -> Option<TensorView<'_>> {
        let e = self
            .files
            .by_name
            .get(name)
            .filter(|e| e.file == self.file)?;
        let mmap = &self.files.files[e.file].1;
        TensorView::new(e.dtype, e.shape.clone(), &mmap[e.bytes.clone()]).ok()
    }
}
