//! The GGUF header (llama.cpp `gguf.c`, ggml/docs/gguf.md), versions 2 and 3, little-endian:
//!
//! ```text
//! magic "GGUF" | version: u32 | n_tensors: u64 | n_kv: u64
//! n_kv × (key: str | value_type: u32 | value)
//! n_tensors × (name: str | n_dims: u32 | ne: [u64; n_dims] | ggml_type: u32 | offset: u64)
//! padding to `general.alignment` (u32, default 32) | tensor data
//! ```
//! `str` is `len: u64` + UTF-8 bytes (no NUL). Value types: 0 u8, 1 i8, 2 u16, 3 i16, 4 u32,
//! 5 i32, 6 f32, 7 bool (one byte, 0 or 1), 8 str, 9 array (`elem_type: u32 | count: u64 |
//! elements`, no per-element type tag), 10 u64, 11 i64, 12 f64. `ne[0]` is the fastest-varying
//! dimension; a tensor's `offset` is relative to the start of the data section and a multiple of
//! the alignment. Version 1 (u32 counts) is not supported.
//!
//! Every length and count is untrusted: allocations are capped by the bytes left in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{GgmlType, GgufError, MetaValue, TensorInfo};

/// GGML_MAX_DIMS.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays deeper than this are refused (each level costs a stack frame).
const MAX_NESTING: u32 = 8;
pub(crate) const DEFAULT_ALIGNMENT: u64 = 32;

/// The parsed header.
pub(crate) struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    pub data_offset: u64,
}

struct Cursor<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn path(&self) -> PathBuf {
        self.path.to_path_buf()
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn bytes(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                path: self.path(),
                what: what(),
            });
        }
        let out = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let b = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A count that needs at least `min_size` bytes per item still in the file.
    fn count(&mut self, min_size: usize, what: &dyn Fn() -> String) -> Result<usize, GgufError> {
        let n = self.u64(what)?;
        match usize::try_from(n) {
            Ok(n) if n.saturating_mul(min_size) <= self.remaining() => Ok(n),
            _ => Err(GgufError::Truncated {
                path: self.path(),
                what: format!("{} (count {n})", what()),
            }),
        }
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.count(1, what)?;
        let b = self.bytes(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|e| GgufError::Malformed {
            path: self.path(),
            what: what(),
            reason: format!("invalid UTF-8: {e}"),
        })
    }

    fn value(
        &mut self,
        ty: u32,
        depth: u32,
        what: &dyn Fn() -> String,
    ) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(what)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(self.malformed(what, format!("bool byte {b}"))),
            },
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                if depth >= MAX_NESTING {
                    return Err(
                        self.malformed(what, format!("arrays nested deeper than {MAX_NESTING}"))
                    );
                }
                let elem = self.u32(what)?;
                let min_size = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    t => {
                        return Err(self.malformed(what, format!("unknown array element type {t}")))
                    }
                };
                let n = self.count(min_size, what)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem, depth + 1, what)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(self.malformed(what, format!("unknown value type {t}"))),
        })
    }

    fn malformed(&self, what: &dyn Fn() -> String, reason: String) -> GgufError {
        GgufError::Malformed {
            path: self.path(),
            what: what(),
            reason,
        }
    }
}

/// Parses the header of `data` (the whole file) and checks every tensor's byte range.
pub(crate) fn parse(path: &Path, data: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { path, data, pos: 0 };
    let magic = c
        .bytes(4, &|| "magic".into())
        .map_err(|_| GgufError::BadMagic {
            path: path.to_path_buf(),
            found: data.to_vec(),
        })?;
    if magic != b"GGUF" {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            found: magic.to_vec(),
        });
    }
    let version = c.u32(&|| "version".into())?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    // A tensor info is at least 8 (name len) + 4 + 4 + 8 bytes; a key/value at least 8 + 4 + 1.
    let n_tensors = c.count(24, &|| "tensor count".into())?;
    let n_kv = c.count(13, &|| "metadata count".into())?;

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let what = || format!("metadata value `{key}`");
        let ty = c.u32(&what)?;
        let value = c.value(ty, 0, &what)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(c.malformed(&|| format!("metadata key `{key}`"), "duplicate key".into()));
        }
    }

    let mut tensors = Vec::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("name of tensor #{i}"))?;
        let what = || format!("info of tensor `{name}`");
        let n_dims = c.u32(&what)?;
        if n_dims > MAX_DIMS {
            return Err(bad_tensor(
                path,
                &name,
                format!("{n_dims} dimensions (at most {MAX_DIMS})"),
            ));
        }
        let dims = (0..n_dims)
            .map(|_| c.u64(&what))
            .collect::<Result<Vec<_>, _>>()?;
        let type_id = c.u32(&what)?;
        let offset = c.u64(&what)?;
        let ggml_type = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownType {
            path: path.to_path_buf(),
            tensor: name.clone(),
            type_id,
        })?;
        if tensors.iter().any(|t: &TensorInfo| t.name == name) {
            return Err(bad_tensor(path, &name, "duplicate tensor name".into()));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(MetaValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => {
            return Err(GgufError::Malformed {
                path: path.to_path_buf(),
                what: "metadata value `general.alignment`".into(),
                reason: format!("{v:?} is not a u32 power of two"),
            })
        }
    };
    let data_offset = (c.pos as u64).div_ceil(alignment) * alignment;
    let file_len = data.len() as u64;
    for t in &tensors {
        let (start, end) = byte_range(path, t, alignment, data_offset)?;
        if end > file_len {
            return Err(bad_tensor(
                path,
                &t.name,
                format!(
                    "data bytes {start}..{end} run past the end of the file ({file_len} bytes)"
                ),
            ));
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

fn bad_tensor(path: &Path, tensor: &str, reason: String) -> GgufError {
    GgufError::BadTensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        reason,
    }
}

/// Number of elements of `t` (product of `dims`), checked.
pub(crate) fn n_elements(path: &Path, t: &TensorInfo) -> Result<u64, GgufError> {
    t.dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            bad_tensor(
                path,
                &t.name,
                format!("element count of {:?} overflows", t.dims),
            )
        })
}

/// Absolute byte range of `t` in the file: `ne[0]` must be a whole number of blocks (ggml
/// quantizes rows), the offset a multiple of the alignment.
pub(crate) fn byte_range(
    path: &Path,
    t: &TensorInfo,
    alignment: u64,
    data_offset: u64,
) -> Result<(u64, u64), GgufError> {
    let (block, block_bytes) =
        t.ggml_type
            .block_geometry()
            .ok_or_else(|| GgufError::UnknownType {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                type_id: t.ggml_type.id(),
            })?;
    let n = n_elements(path, t)?;
    let ne0 = t.dims.first().copied().unwrap_or(1);
    if ne0 % block != 0 || n % block != 0 {
        return Err(bad_tensor(
            path,
            &t.name,
            format!(
                "dims {:?} are not a whole number of {}-element {} blocks per row",
                t.dims,
                block,
                t.ggml_type.name()
            ),
        ));
    }
    if t.offset % alignment != 0 {
        return Err(bad_tensor(
            path,
            &t.name,
            format!(
                "offset {} is not a multiple of the alignment {alignment}",
                t.offset
            ),
        ));
    }
    let size = (n / block).checked_mul(block_bytes);
    let start = data_offset.checked_add(t.offset);
    match (start, size.zip(start).and_then(|(s, st)| st.checked_add(s))) {
        (Some(start), Some(end)) => Ok((start, end)),
        _ => Err(bad_tensor(path, &t.name, "byte range overflows u64".into())),
    }
}
