//! Typed errors: each names the tensor it is about.

/// Errors from building, quantizing or exporting a [`crate::QuantWeight`].
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The quantized tensor is not a 2-D `[out, in]` weight.
    #[error(
        "tensor `{name}`: a quantized linear weight must be 2-D [out, in], got shape {shape:?}"
    )]
    NotMatrix { name: String, shape: Vec<usize> },
    /// Codes or absmax have a length that does not fit the shape and block size.
    #[error("tensor `{name}`: {field} has {got} entries, expected {expected}")]
    Length {
        name: String,
        field: &'static str,
        expected: usize,
        got: usize,
    },
    /// Reading a device tensor back to the host failed.
    #[error("tensor `{name}`: could not read {field} from the device: {reason}")]
    Readback {
        name: String,
        field: &'static str,
        reason: String,
    },
    /// The CPU reference quantizer rejected the input (NaN/Inf, block size, lengths).
    #[error("tensor `{name}`: {source}")]
    Quant {
        name: String,
        #[source]
        source: qtune_quant::QuantError,
    },
    /// Block size not supported by the quantizer.
    #[error("tensor `{name}`: unsupported block size {blocksize} for {format:?}")]
    Blocksize {
        name: String,
        format: qtune_quant::QuantFormat,
        blocksize: usize,
    },
    /// NaN or Inf in a weight that is being quantized.
    #[error("tensor `{name}`: contains NaN or Inf, cannot quantize")]
    NonFinite { name: String },
    /// Recording or replaying a device graph (CUDA graph) failed.
    #[error("device graph: {reason}")]
    Graph { reason: String },
    /// The GPU cannot run what was asked (compute capability, dtype), said before any work.
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
}
