//! Errors of the quant crate. Every variant names the tensor (and the file, for I/O) so a bad
//! weight in a 28-layer checkpoint can be found without a debugger.

use std::path::PathBuf;

use crate::QuantFormat;

/// Anything that can go wrong while quantizing, dequantizing, saving or loading.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    /// bitsandbytes would silently produce garbage codes for NaN/Inf; we refuse instead.
    #[error("tensor `{name}`: non-finite value {value} at flat index {index}")]
    NonFinite {
        name: String,
        index: usize,
        value: f32,
    },

    #[error("tensor `{name}`: block size {blocksize} is not supported for {format:?} (supported: {supported:?})")]
    UnsupportedBlocksize {
        name: String,
        format: QuantFormat,
        blocksize: usize,
        supported: &'static [usize],
    },

    /// Two buffers that must agree in length do not (values vs shape, codes vs absmax, ...).
    #[error("tensor `{name}`: {what} has length {got}, expected {expected}")]
    Length {
        name: String,
        what: &'static str,
        expected: usize,
        got: usize,
    },

    #[error("tensor `{name}`: empty tensors cannot be quantized")]
    Empty { name: String },

    #[error("tensor `{name}`: {reason}")]
    Invalid { name: String, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{path}: not a valid safetensors file: {source}")]
    Safetensors {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },

    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },

    /// A tensor exists but its dtype, shape or content does not fit the quant state.
    #[error("{path}: tensor `{name}`: {reason}")]
    BadTensor {
        path: PathBuf,
        name: String,
        reason: String,
    },

    /// The JSON quant state (`…quant_state.bitsandbytes__nf4`) cannot be understood.
    #[error("{path}: tensor `{name}`: invalid quant state JSON: {reason}")]
    BadState {
        path: PathBuf,
        name: String,
        reason: String,
    },
}

/// `Ok` when `ok` holds, else the unsupported-block-size error for `name` in `format`.
pub(crate) fn require_blocksize(
    ok: bool,
    name: &str,
    format: QuantFormat,
    blocksize: usize,
    supported: &'static [usize],
) -> Result<(), QuantError> {
    if ok {
        Ok(())
    } else {
        Err(QuantError::UnsupportedBlocksize {
            name: name.to_string(),
            format,
            blocksize,
            supported,
        })
    }
}
