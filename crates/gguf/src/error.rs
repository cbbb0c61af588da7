//! Errors of the GGUF reader; every variant names the file and, where there is one, the key or
//! tensor it is about.

use std::path::PathBuf;

use crate::GgmlType;

/// What went wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file (magic {found:02x?}, expected \"GGUF\")")]
    BadMagic { path: PathBuf, found: Vec<u8> },
    #[error("{path}: GGUF version {version} is not supported (2 and 3 are)")]
    UnsupportedVersion { path: PathBuf, version: u32 },
    /// The header ends before `what` could be read (a length or count runs past the file's end).
    #[error("{path}: truncated while reading {what}")]
    Truncated { path: PathBuf, what: String },
    /// A structurally invalid header: bad value type id, invalid UTF-8, duplicate key, ….
    #[error("{path}: malformed {what}: {reason}")]
    Malformed {
        path: PathBuf,
        what: String,
        reason: String,
    },
    #[error("{path}: tensor `{tensor}` has unknown ggml type id {type_id}")]
    UnknownType {
        path: PathBuf,
        tensor: String,
        type_id: u32,
    },
    #[error("{path}: tensor `{tensor}` has type {ggml_type}, which this reader cannot dequantize")]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ggml_type: GgmlType,
    },
    /// Shape, offset or byte range of a tensor is invalid (e.g. not a whole number of blocks, or
    /// its data runs past the end of the file).
    #[error("{path}: tensor `{tensor}`: {reason}")]
    BadTensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    #[error("{path}: metadata key `{key}` is missing")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata key `{key}` is {found}, expected {expected}")]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{path}: no tensor named `{name}`")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: cannot build the tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    /// `unpermute_qk` got a shape it cannot split into heads (no file involved).
    #[error(
        "un-permute: {len} values are not {rows}x{cols}, or {rows} rows are not 2*{n_head} halves"
    )]
    BadPermute {
        rows: usize,
        cols: usize,
        n_head: usize,
        len: usize,
    },
}
