//! Quantized linear layers as a Burn backend extension.
//!
//! The frozen base weights of a QLoRA fine-tune stay quantized on the device (8-bit blockwise,
//! NF4 or FP4, optionally with double-quantized absmax, all in bitsandbytes' layout from
//! `qtune-quant`). [`q_linear`] computes `y = x·dequant(W)ᵀ`; under [`burn::backend::Autodiff`]
//! its backward is hand-written: `dx = dy·dequant(W)`, no gradient for `W`, and neither `x` nor a
//! dense copy of `W` is kept for the backward pass (the graph holds only the quantized tensors).
//!
//! Backends:
//! - [`burn::backend::NdArray`] (always compiled): the exact reference. It dequantizes on the host
//!   with `qtune-quant`, so it is bit-identical to bitsandbytes by construction.
//! - `burn_cubecl::CubeBackend<CudaRuntime, ..>` (feature `cuda`): CubeCL dequant kernels writing the
//!   activation's dtype, then cuBLAS `cublasGemmEx` (bf16/f16 in, fp32 accumulate) on Burn's own
//!   buffers. See [`cuda`]. Dequantization is bit-exact with bitsandbytes, and so is quantizing
//!   on the GPU ([`QuantWeight::quantize`]): it multiplies by bnb's approximate reciprocal of the
//!   absmax from `qtune-quant`'s measured table (`Reciprocal::BnbCuda`, as the CPU reference).
//! - `Autodiff<B, C>` for any of the above.

mod adam8;
mod attention;
mod autodiff;
mod backend;
mod decode;
mod dropout;
mod error;
mod head;
mod linear;
mod llama_ops;
mod lora;
mod mlp;
mod ops;
mod options;
mod park;
mod reference;
mod weight;

#[cfg(feature = "cuda")]
pub mod cuda;

pub use adam8::{Adam8Input, Adam8Scalars, Adam8State, ADAM8_BLOCK};
pub(crate) use backend::add_all;
pub use backend::{QAutodiffBackend, QBackend};
pub use decode::{
    first_argmax, graph_capture, greedy_advance, rope_write_kv, write_row, DeviceGraph,
};
pub use error::{switch_setting, KernelError};
pub use head::linear_cross_entropy;
pub use linear::{q_linear, q_linear_add, q_linear_parts, q_linear_unread, q_linear_with};
pub use lora::{lora_acc, lora_acc_parts};
pub use mlp::{
    linear_bias_gelu_new, mlp_fits, mlp_gelu_new, mlp_gelu_new_plus, BiasAct, Frozen,
    FrozenPrimitive,
};
pub use ops::{
    attention, attention_softmax, bias_gelu_new, cross_entropy, dropout, gelu_new, grad_seed,
    layer_norm, linear_t, linear_t_acc, linear_t_unread, matmul, rms_norm, rotary, rotary_half,
    select_rows, silu_mul, sum_all, sum_unread,
};
pub use options::{
    AttentionInput, AttnMask, GemmAccOptions, GemmOptions, LoraOptions, NormInput, QuantizeOptions,
    RopeKvInput, RotaryOptions,
};
pub use park::{park, HostCopy, Parked, Place};
pub use weight::{
    AbsmaxPrimitive, LinearBackward, NestedPrimitive, QLayout, QWeightPrimitive, QuantWeight,
};
