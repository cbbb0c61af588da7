//! Typed errors: each names the file, tensor or field at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error(transparent)]
    Merge(#[from] qtune_lora::merge::MergeError),
    #[error("adapter does not fit the model: {0}")]
    AdapterMismatch(String),
    #[error("{path}: {reason}")]
    Gguf { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid config.json")]
    Config {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: invalid config: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("{path}: invalid safetensors index")]
    Index {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: not a valid safetensors file (truncated or corrupt): {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: tensor `{name}` not found")]
    MissingTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("{path}: tensor `{name}` has dtype {got}, expected F32, F16 or BF16")]
    DType {
        path: PathBuf,
        name: String,
        got: String,
    },
    #[error(
        "{path}: PyTorch pickle checkpoints are refused (loading them executes code); convert to safetensors, e.g. `model.save_pretrained(dir, safe_serialization=True)`"
    )]
    PickleRefused { path: PathBuf },
    #[error(
        "{path}: tensor `{name}` holds a non-finite value ({value} at flat index {index}); \
         the weights are corrupt (NaN/inf), refusing to load them"
    )]
    NonFinite {
        path: PathBuf,
        name: String,
        index: usize,
        value: f32,
    },
    #[error(
        "adapter tensor `{key}` holds a non-finite value ({value} at flat index {index}); \
         refusing to apply it"
    )]
    NonFiniteAdapter {
        key: String,
        index: usize,
        value: f32,
    },
    #[error("{path}: no model.safetensors or model.safetensors.index.json found")]
    NoWeights { path: PathBuf },
    #[error("tensor `{name}`: quantization failed")]
    Quantize {
        name: String,
        source: Box<qtune_kernels::KernelError>,
    },
    #[error("Hugging Face Hub, {repo} file {file}: {reason}")]
    Hub {
        repo: String,
        file: String,
        reason: String,
    },
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("LoRA: {0}")]
    Lora(#[from] qtune_lora::LoraConfigError),
    #[error("LoRA config matches no linear layer of the model (target_modules = {0})")]
    NoLoraTarget(String),
    #[error("invalid input: {0}")]
    Input(String),
    /// The device refused work (a CUDA graph capture or replay, a read-back).
    #[error("device: {0}")]
    Device(String),
}

impl LmError {
    /// qtune-quant's host quantizer failed on the linear `name`.
    pub(crate) fn host_quantize(name: &str, source: qtune_quant::QuantError) -> Self {
        LmError::Quantize {
            name: name.to_string(),
            source: Box::new(qtune_kernels::KernelError::Quant {
                name: name.to_string(),
                source,
            }),
        }
    }
}
