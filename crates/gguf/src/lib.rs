//! GGUF reader for Llama-family checkpoints: metadata, tensor infos, zero-copy tensor bytes from
//! an mmap, dequantization bit-identical to ggml (F32/F16/BF16/Q8_0/Q4_0/Q4_1), the inverse of
//! llama.cpp's q/k row permutation, and the tokenizer HF transformers builds from the metadata.
//!
//! The header format is documented in `parse.rs`, the block formats in `dequant.rs`.
//!
//! Why not a crate: `gguf` 0.1 (nom parser, no mmap, no dequantization, unmaintained since 2023)
//! and `gguf-rs-lib` 0.3 (no dequantization, needs Rust 1.87 > our MSRV 1.85, ~10k lines) do not
//! dequantize; candle-core does, but pulls a tensor library. The format is small enough to read
//! here with every length checked against the file size.

mod dequant;
mod error;
mod parse;
mod permute;
mod tokenizer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use dequant::GgmlType;
pub use error::GgufError;
pub use permute::unpermute_qk;

/// One metadata value, as GGUF types it (value type ids 0..=12, see `parse.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    /// All elements have the same type (GGUF stores it once); arrays may nest.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::Str(_) => "string",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
            Self::Array(_) => "array",
        }
    }

    /// Any integer type, widened to i128 (which holds all of them); `None` otherwise.
    pub fn as_int(&self) -> Option<i128> {
        Some(match *self {
            Self::U8(v) => v.into(),
            Self::I8(v) => v.into(),
            Self::U16(v) => v.into(),
            Self::I16(v) => v.into(),
            Self::U32(v) => v.into(),
            Self::I32(v) => v.into(),
            Self::U64(v) => v.into(),
            Self::I64(v) => v.into(),
            _ => return None,
        })
    }
}

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: `ne[0]` (fastest-varying, the row length) first; HF's shape is the reverse.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section (`GgufFile::data_offset`).
    pub offset: u64,
}

enum Bytes {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// An opened GGUF file: its parsed header and its bytes (mmap'd, or owned for `from_bytes`).
/// Every tensor's byte range was checked to lie inside the file when it was opened.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` and parses its header (GGUF v2/v3).
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; like every mmap reader we rely on the file not being
        // truncated or rewritten while it is open (a modified file gives wrong values, and a
        // truncated one SIGBUS, as in llama.cpp and safetensors).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::build(path, Bytes::Mmap(map))
    }

    /// Parses a GGUF held in memory; `path` only labels errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::build(path, Bytes::Owned(bytes))
    }

    fn build(path: &Path, bytes: Bytes) -> Result<Self, GgufError> {
        let data: &[u8] = match &bytes {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        };
        let h = parse::parse(path, data)?;
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
            version: h.version,
            metadata: h.metadata,
            tensors: h.tensors,
            alignment: h.alignment,
            data_offset: h.data_offset,
        })
    }

    fn data(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mmap(m) => m,
            Bytes::Owned(v) => v,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> u32 {
        self.version
    }

    /// `general.alignment`, 32 when absent.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    fn wrong(&self, key: &str, expected: &'static str, v: &MetaValue) -> GgufError {
        GgufError::WrongType {
            path: self.path.clone(),
            key: key.to_string(),
            expected,
            found: v.type_name().to_string(),
        }
    }

    fn required<T>(&self, key: &str, v: Result<Option<T>, GgufError>) -> Result<T, GgufError> {
        v?.ok_or_else(|| GgufError::MissingKey {
            path: self.path.clone(),
            key: key.to_string(),
        })
    }

    /// An integer of any type whose value fits a u32; `None` when absent.
    pub fn get_u32_opt(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.int_opt(key, "an integer that fits u32")
    }

    /// An integer of any type whose value fits a u64; `None` when absent.
    pub fn get_u64_opt(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.int_opt(key, "an integer that fits u64")
    }

    fn int_opt<T: TryFrom<i128>>(
        &self,
        key: &str,
        expected: &'static str,
    ) -> Result<Option<T>, GgufError> {
        let Some(v) = self.metadata.get(key) else {
            return Ok(None);
        };
        match v.as_int().map(T::try_from) {
            Some(Ok(x)) => Ok(Some(x)),
            Some(Err(_)) => Err(GgufError::WrongType {
                path: self.path.clone(),
                key: key.to_string(),
                expected,
                found: format!("{} {:?}", v.type_name(), v.as_int().unwrap_or_default()),
            }),
            None => Err(self.wrong(key, expected, v)),
        }
    }

    /// An f32 (an f64 is narrowed as `as f32`); `None` when absent.
    pub fn get_f32_opt(&self, key: &str) -> Result<Option<f32>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::F32(x)) => Ok(Some(*x)),
            Some(MetaValue::F64(x)) => Ok(Some(*x as f32)),
            Some(v) => Err(self.wrong(key, "f32", v)),
        }
    }

    pub fn get_str_opt(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Str(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(key, "string", v)),
        }
    }

    pub fn get_bool_opt(&self, key: &str) -> Result<Option<bool>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(key, "bool", v)),
        }
    }

    pub fn get_array_opt(&self, key: &str) -> Result<Option<&[MetaValue]>, GgufError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(MetaValue::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong(key, "array", v)),
        }
    }

    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        self.required(key, self.get_u32_opt(key))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        self.required(key, self.get_u64_opt(key))
    }

    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        self.required(key, self.get_f32_opt(key))
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        self.required(key, self.get_str_opt(key))
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        self.required(key, self.get_bool_opt(key))
    }

    pub fn get_array(&self, key: &str) -> Result<&[MetaValue], GgufError> {
        self.required(key, self.get_array_opt(key))
    }

    /// `general.architecture` (`"llama"` for SmolLM2/Llama/Mistral files).
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// `tokenizer.chat_template` (Jinja), if the file has one as a string.
    pub fn chat_template(&self) -> Option<&str> {
        self.get_str_opt("tokenizer.chat_template").ok().flatten()
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor(name).ok_or_else(|| GgufError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    /// The shape as HF/PyTorch write it (row-major, slowest first): `dims` reversed.
    pub fn hf_shape(&self, name: &str) -> Result<Vec<usize>, GgufError> {
        let t = self.info(name)?;
        t.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| GgufError::BadTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                reason: format!("dims {:?} do not fit usize", t.dims),
            })
    }

    /// The tensor's raw bytes in the file (zero-copy), in its ggml type's layout.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], GgufError> {
        let t = self.info(name)?;
        let (start, end) = parse::byte_range(&self.path, t, self.alignment, self.data_offset)?;
        // `open` checked `end <= file length`, so both fit usize.
        let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
        range
            .and_then(|(s, e)| self.data().get(s..e))
            .ok_or_else(|| GgufError::BadTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                reason: format!("data bytes {start}..{end} lie outside the file"),
            })
    }

    /// The tensor dequantized to f32, row-major in `hf_shape` order (which is GGUF's memory
    /// order), bit-identical to ggml / gguf-py.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let t = self.info(name)?;
        let data = self.tensor_data(name)?;
        if !t.ggml_type.is_supported() {
            return Err(GgufError::UnsupportedType {
                path: self.path.clone(),
                tensor: name.to_string(),
                ggml_type: t.ggml_type,
            });
        }
        let n = parse::n_elements(&self.path, t)?;
        // The byte range was checked against the file, so `n` is bounded by the file size
        // (at most 32 values per 18 bytes).
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
        dequant::dequantize(t.ggml_type, data, &mut out);
        Ok(out)
    }

    /// A q (`n_head` = `attention.head_count`) or k (`n_head` = `head_count_kv`) projection in
    /// HF's row order: `read_f32` then `unpermute_qk`. Errors name the file and tensor.
    pub fn read_qk_f32(&self, name: &str, n_head: usize) -> Result<Vec<f32>, GgufError> {
        let shape = self.hf_shape(name)?;
        let w = self.read_f32(name)?;
        let (rows, cols) = match shape[..] {
            [rows, cols] => (rows, cols),
            _ => (0, 0),
        };
        unpermute_qk(&w, n_head, rows, cols).map_err(|e| GgufError::BadTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
            reason: format!("{e} (hf shape {shape:?})"),
        })
    }

    /// The tokenizer HF transformers builds from this file's metadata; see `tokenizer.rs`.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer, GgufError> {
        tokenizer::build(self)
    }
}
