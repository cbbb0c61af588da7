//! Typed errors of qtune-optim. Each names the parameter path, field or file part at fault.

/// Everything that can go wrong configuring, stepping, saving or loading an optimizer.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A hyperparameter is out of its domain (e.g. `beta1 = 1.0`, `warmup_steps > total_steps`).
    #[error("invalid {field} = {value}: {reason}")]
    Config {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    /// Two trainable parameters map to the same module path, so their state would collide.
    #[error("two trainable parameters share the module path `{path}`")]
    DuplicatePath { path: String },
    /// A parameter's shape no longer matches the state kept for it (e.g. a changed LoRA rank).
    #[error("parameter `{path}` has {got} elements but its optimizer state has {expected}")]
    StateShape {
        path: String,
        expected: usize,
        got: usize,
    },
    /// A gradient's size differs from its parameter's.
    #[error("gradient of `{path}` has {got} elements but the parameter has {expected}")]
    GradShape {
        path: String,
        expected: usize,
        got: usize,
    },
    /// The serialized optimizer state cannot be parsed.
    #[error("optimizer state: {what}")]
    Format { what: String },
    /// A tensor in the serialized state has the wrong dtype or length.
    #[error("optimizer state tensor `{name}`: {what}")]
    Tensor { name: String, what: String },
    /// The safetensors container itself is malformed.
    #[error("optimizer state: invalid safetensors data")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// Gradient accumulation was finished without any target token.
    #[error("gradient accumulation saw {micro_batches} micro-batch(es) but 0 target tokens")]
    NoTokens { micro_batches: usize },
}
