//! safetensors I/O of [`QuantizedTensor`] under the names HF transformers + bitsandbytes use, so
//! a bnb NF4/FP4 checkpoint loads directly and ours load in HF. For a module path `p`
//! (e.g. `transformer.h.0.attn.q_proj`):
//!
//! | tensor                                 | dtype, shape                          |
//! |----------------------------------------|---------------------------------------|
//! | `p.weight`                             | U8 `[ceil(n/2), 1]` (4-bit), U8 `shape` (8-bit) |
//! | `p.weight.absmax`                      | F32 `[blocks]`, or U8 `[blocks]` when nested |
//! | `p.weight.quant_map`                   | F32 `[16]` / `[256]`                  |
//! | `p.weight.nested_absmax`               | F32 `[ceil(blocks/256)]` (double quant) |
//! | `p.weight.nested_quant_map`            | F32 `[256]` (double quant)            |
//! | `p.weight.quant_state.bitsandbytes__nf4` / `__fp4` | U8 JSON (bnb's packed state) |
//! | `p.weight.quant_state.qtune__blockwise8` | U8 JSON, same keys (ours: bnb has no 8-bit weight format of this kind) |
//!
//! The JSON keys are bnb's `QuantState.as_dict(packed=True)`: `quant_type`, `blocksize`,
//! `dtype` (torch name), `shape`, and with double quant `nested_blocksize`, `nested_dtype`,
//! `nested_offset` (the f32 offset written as a JSON number, which round-trips exactly).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};
use serde::{Deserialize, Serialize};

use crate::{
    Absmax, FloatDType, NestedAbsmax, QuantError, QuantFormat, QuantizedTensor, DYNAMIC_MAP,
};

/// A safetensors file's tensors by name: what [`QuantizedTensor::from_safetensors`] and
/// [`quant_format_of`] read. Implemented for an open [`SafeTensors`]; a loader that keeps its own
/// index of a file's tensors (qtune-lm's `WeightFiles`) implements it so that each weight does
/// not parse the file's JSON header again.
pub trait TensorLookup {
    /// The tensor `name`, if the file has it.
    fn lookup(&self, name: &str) -> Option<TensorView<'_>>;
}

impl TensorLookup for SafeTensors<'_> {
    fn lookup(&self, name: &str) -> Option<TensorView<'_>> {
        self.tensor(name).ok()
    }
}

/// Suffix of the JSON state tensor, after `{p}.weight.`, per format.
pub fn state_suffix(format: QuantFormat) -> &'static str {
    match format {
        QuantFormat::Nf4 => "quant_state.bitsandbytes__nf4",
        QuantFormat::Fp4 => "quant_state.bitsandbytes__fp4",
        QuantFormat::Blockwise8 => "quant_state.qtune__blockwise8",
    }
}

/// bnb's packed quant state (the JSON inside the `quant_state.*` U8 tensor).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantStateJson {
    pub quant_type: String,
    pub blocksize: usize,
    pub dtype: String,
    pub shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_blocksize: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_offset: Option<f64>,
}

impl QuantStateJson {
    /// JSON as Python's `json.dumps` writes it (`", "` and `": "` separators), so a state we
    /// write for a bnb weight has the same bytes as bnb's.
    pub fn to_python_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
        // Serializing this plain struct into a Vec cannot fail; an empty blob would fail loudly
        // on load rather than here.
        if self.serialize(&mut ser).is_err() {
            out.clear();
        }
        out
    }
}

/// serde_json formatter with Python's default separators.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        self.begin_array_value(w, first) // the same ", " between keys as between values
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// An owned tensor ready for `safetensors::serialize`.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl OwnedTensor {
    pub fn u8(shape: Vec<usize>, data: Vec<u8>) -> Self {
        Self {
            dtype: Dtype::U8,
            shape,
            data,
        }
    }

    pub fn f32(values: &[f32]) -> Self {
        Self {
            dtype: Dtype::F32,
            shape: vec![values.len()],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

impl QuantizedTensor {
    /// The tensors that store this weight under module path `prefix` (see the module docs).
    pub fn to_safetensors(&self, prefix: &str) -> Vec<(String, OwnedTensor)> {
        let w = format!("{prefix}.weight");
        let n = self.numel();
        let codes_shape = match self.format {
            QuantFormat::Blockwise8 => self.shape.clone(),
            QuantFormat::Nf4 | QuantFormat::Fp4 => vec![n.div_ceil(2), 1],
        };
        let mut state = QuantStateJson {
            quant_type: quant_type(self.format).to_string(),
            blocksize: self.blocksize,
            dtype: self.dtype.torch_name().to_string(),
            shape: self.shape.clone(),
            nested_blocksize: None,
            nested_dtype: None,
            nested_offset: None,
        };
        let mut out = vec![(w.clone(), OwnedTensor::u8(codes_shape, self.codes.clone()))];
        match &self.absmax {
            Absmax::Plain(a) => out.push((format!("{w}.absmax"), OwnedTensor::f32(a))),
            Absmax::Nested(nested) => {
                out.push((
                    format!("{w}.absmax"),
                    OwnedTensor::u8(vec![nested.codes.len()], nested.codes.clone()),
                ));
                out.push((
                    format!("{w}.nested_absmax"),
                    OwnedTensor::f32(&nested.absmax),
                ));
                out.push((
                    format!("{w}.nested_quant_map"),
                    OwnedTensor::f32(&DYNAMIC_MAP),
                ));
                state.nested_blocksize = Some(nested.blocksize);
                state.nested_dtype = Some(FloatDType::F32.torch_name().to_string());
                state.nested_offset = Some(f64::from(nested.offset));
            }
        }
        let mut map = self.code_map().to_vec();
        if self.format == QuantFormat::Fp4 {
            // bnb's Python FP4 map (what bnb files hold) has +0.0 where the kernel decodes -0.0.
            map[8] = 0.0;
        }
        out.push((format!("{w}.quant_map"), OwnedTensor::f32(&map)));
        let json = state.to_python_json();
        out.push((
            format!("{w}.{}", state_suffix(self.format)),
            OwnedTensor::u8(vec![json.len()], json),
        ));
        out
    }

    /// Reads the weight stored under module path `prefix` from an open safetensors file
    /// (`path` only names the file in errors). Works for bnb/HF NF4 and FP4 files and ours.
    pub fn from_safetensors<S: TensorLookup + ?Sized>(
        st: &S,
        prefix: &str,
        path: &Path,
    ) -> Result<Self, QuantError> {
        let w = format!("{prefix}.weight");
        let format = quant_format_of(st, prefix).ok_or_else(|| QuantError::MissingTensor {
            path: path.to_path_buf(),
            name: format!("{w}.quant_state.*"),
        })?;
        let state_name = format!("{w}.{}", state_suffix(format));
        let bad_state = |reason: String| QuantError::BadState {
            path: path.to_path_buf(),
            name: state_name.clone(),
            reason,
        };
        let state: QuantStateJson = serde_json::from_slice(&u8_tensor(st, &state_name, path)?)
            .map_err(|e| bad_state(e.to_string()))?;
        if state.quant_type != quant_type(format) {
            return Err(bad_state(format!(
                "quant_type `{}` in a `{state_name}` tensor",
                state.quant_type
            )));
        }
        let dtype = FloatDType::from_torch_name(&state.dtype)
            .ok_or_else(|| bad_state(format!("unsupported dtype `{}`", state.dtype)))?;
        let codes = u8_tensor(st, &w, path)?;
        let absmax_name = format!("{w}.absmax");
        let absmax = match state.nested_offset {
            None => Absmax::Plain(f32_tensor(st, &absmax_name, path)?),
            Some(offset) => {
                if state.nested_dtype.as_deref() != Some("float32") {
                    return Err(bad_state(format!(
                        "nested_dtype {:?} (only float32 is supported)",
                        state.nested_dtype
                    )));
                }
                let blocksize = state
                    .nested_blocksize
                    .ok_or_else(|| bad_state("nested_offset without nested_blocksize".into()))?;
                let map_name = format!("{w}.nested_quant_map");
                check_map(
                    &f32_tensor(st, &map_name, path)?,
                    &DYNAMIC_MAP,
                    &map_name,
                    path,
                )?;
                Absmax::Nested(NestedAbsmax {
                    codes: u8_tensor(st, &absmax_name, path)?,
                    absmax: f32_tensor(st, &format!("{w}.nested_absmax"), path)?,
                    offset: offset as f32,
                    blocksize,
                })
            }
        };
        let q = QuantizedTensor {
            format,
            shape: state.shape,
            blocksize: state.blocksize,
            codes,
            absmax,
            dtype,
        };
        let map_name = format!("{w}.quant_map");
        if st.lookup(&map_name).is_some() {
            check_map(
                &f32_tensor(st, &map_name, path)?,
                q.code_map(),
                &map_name,
                path,
            )?;
        }
        q.validate(&w).map_err(|e| QuantError::BadTensor {
            path: path.to_path_buf(),
            name: w.clone(),
            reason: e.to_string(),
        })?;
        Ok(q)
    }
}

/// bnb's `quant_type` string.
fn quant_type(format: QuantFormat) -> &'static str {
    match format {
        QuantFormat::Nf4 => "nf4",
        QuantFormat::Fp4 => "fp4",
        QuantFormat::Blockwise8 => "blockwise8",
    }
}

/// The format of the weight under module path `prefix`, if it is stored quantized.
pub fn quant_format_of<S: TensorLookup + ?Sized>(st: &S, prefix: &str) -> Option<QuantFormat> {
    [QuantFormat::Nf4, QuantFormat::Fp4, QuantFormat::Blockwise8]
        .into_iter()
        .find(|&f| {
            st.lookup(&format!("{prefix}.weight.{}", state_suffix(f)))
                .is_some()
        })
}

/// Module paths of every quantized weight in the file, sorted.
pub fn quantized_prefixes(st: &SafeTensors<'_>) -> Vec<String> {
    let mut out: Vec<String> = st
        .names()
        .iter()
        .filter_map(|n| {
            [QuantFormat::Nf4, QuantFormat::Fp4, QuantFormat::Blockwise8]
                .into_iter()
                .find_map(|f| n.strip_suffix(&format!(".weight.{}", state_suffix(f))))
                .map(str::to_string)
        })
        .collect();
    out.sort();
    out
}

/// Writes `tensors` (module path, weight) to one safetensors file.
pub fn save_file(tensors: &[(&str, &QuantizedTensor)], path: &Path) -> Result<(), QuantError> {
    for (p, q) in tensors {
        q.validate(p)?;
    }
    let owned: Vec<(String, OwnedTensor)> = tensors
        .iter()
        .flat_map(|(p, q)| q.to_safetensors(p))
        .collect();
    let views: Vec<(&str, &OwnedTensor)> = owned.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes = safetensors::serialize(views, None).map_err(|source| QuantError::Safetensors {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, bytes).map_err(|source| QuantError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the weight under module path `prefix` from the file at `path`.
pub fn load_file(path: &Path, prefix: &str) -> Result<QuantizedTensor, QuantError> {
    let bytes = read(path)?;
    let st = deserialize(&bytes, path)?;
    QuantizedTensor::from_safetensors(&st, prefix, path)
}

/// Reads several weights from one file (read once).
pub fn load_all(
    path: &Path,
    prefixes: &[&str],
) -> Result<HashMap<String, QuantizedTensor>, QuantError> {
    let bytes = read(path)?;
    let st = deserialize(&bytes, path)?;
    prefixes
        .iter()
        .map(|p| {
            Ok((
                p.to_string(),
                QuantizedTensor::from_safetensors(&st, p, path)?,
            ))
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, QuantError> {
    std::fs::read(path).map_err(|source| QuantError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn deserialize<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>, QuantError> {
    SafeTensors::deserialize(bytes).map_err(|source| QuantError::Safetensors {
        path: path.to_path_buf(),
        source,
    })
}

fn tensor<'a, S: TensorLookup + ?Sized>(
    st: &'a S,
    name: &str,
    path: &Path,
) -> Result<TensorView<'a>, QuantError> {
    st.lookup(name).ok_or_else(|| QuantError::MissingTensor {
        path: path.to_path_buf(),
        name: name.to_string(),
    })
}

fn bad(path: &Path, name: &str, reason: String) -> QuantError {
    QuantError::BadTensor {
        path: PathBuf::from(path),
        name: name.to_string(),
        reason,
    }
}

fn u8_tensor<S: TensorLookup + ?Sized>(
    st: &S,
    name: &str,
    path: &Path,
) -> Result<Vec<u8>, QuantError> {
    let t = tensor(st, name, path)?;
    if t.dtype() != Dtype::U8 {
        return Err(bad(
            path,
            name,
            format!("dtype {:?}, expected U8", t.dtype()),
        ));
    }
    Ok(t.data().to_vec())
}

fn f32_tensor<S: TensorLookup + ?Sized>(
    st: &S,
    name: &str,
    path: &Path,
) -> Result<Vec<f32>, QuantError> {
    let t = tensor(st, name, path)?;
    if t.dtype() != Dtype::F32 {
        return Err(bad(
            path,
            name,
            format!("dtype {:?}, expected F32", t.dtype()),
        ));
    }
    Ok(t.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// We decode with our built-in maps, so a file must carry the same map (compared by value:
/// bnb's Python FP4 map has +0.0 where the kernel decodes -0.0).
fn check_map(stored: &[f32], ours: &[f32], name: &str, path: &Path) -> Result<(), QuantError> {
    if stored != ours {
        return Err(bad(
            path,
            name,
            "custom code maps are not supported (differs from bnb's default)".into(),
        ));
    }
    Ok(())
}
