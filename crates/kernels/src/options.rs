//! The small argument structs of [`QBackend`]'s methods with several operands or flags.

use burn::tensor::{
    backend::Backend,
    ops::{BoolTensor, FloatTensor, IntTensor},
    DType,
};
use qtune_quant::QuantFormat;

// Named only in doc links.
#[cfg(doc)]
use crate::QBackend;

/// How [`QBackend::q_gemm`] multiplies: `alpha·op(a)·op(b)`, where `op` transposes the last
/// two dims of `a` when `ta` and of `b` when `tb`, written in `out`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmOptions {
    /// Transpose `a` (its last two dims).
    pub ta: bool,
    /// Transpose `b` (its last two dims).
    pub tb: bool,
    /// The output dtype: the inputs' dtype, or F32.
    pub out: DType,
    /// The product's scale, applied to the f32 accumulator before the output is rounded (the
    /// GEMM's own α on CUDA: no separate scaling pass).
    pub alpha: f32,
}

impl GemmOptions {
    /// `op(a)·op(b)` with the given transposes, written in `out`.
    pub const fn new(ta: bool, tb: bool, out: DType) -> Self {
        Self {
            ta,
            tb,
            out,
            alpha: 1.0,
        }
    }

    /// The same product scaled by `alpha`.
    pub const fn scaled(self, alpha: f32) -> Self {
        Self { alpha, ..self }
    }
}

/// How [`QBackend::q_gemm_acc`] adds its product: `c + alpha·op(a)·op(b)`, `op` as in
/// [`GemmOptions`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmAccOptions {
    /// Transpose `a` (its last two dims).
    pub ta: bool,
    /// Transpose `b` (its last two dims).
    pub tb: bool,
    /// The product's scale (LoRA's `scaling`).
    pub alpha: f32,
}

/// The mask and divisor of [`QBackend::q_attn_softmax`] and its backward.
#[derive(Clone, Debug)]
pub struct AttnMask<B: Backend> {
    /// `[B, 1, T, L]`, true = masked; `None` masks nothing.
    pub mask: Option<BoolTensor<B>>,
    /// The scores are divided by it before the softmax.
    pub div: f32,
}

/// The input of a fused norm with a frozen weight ([`QBackend::q_layer_norm`],
/// [`QBackend::q_rms_norm`]) and of its input gradient.
#[derive(Clone, Debug)]
pub struct NormInput<B: Backend> {
    /// The input, normalised over its last dim `D`.
    pub x: FloatTensor<B>,
    /// The frozen weight `[D]`.
    pub w: FloatTensor<B>,
    /// Added to the variance (or mean square) before the square root.
    pub eps: f32,
}

/// The tables of a fused rotary embedding ([`QBackend::q_rotary`], [`QBackend::q_rotary_half`]).
#[derive(Clone, Debug)]
pub struct RotaryOptions<B: Backend> {
    /// f32 cosines `[B, T, 1, half, 1]`.
    pub cos: FloatTensor<B>,
    /// f32 sines, shaped as `cos`.
    pub sin: FloatTensor<B>,
    /// Turn back (the inverse rotation, also the rotation's input gradient).
    pub inverse: bool,
}

/// One decode step's rotary and KV-cache writes ([`QBackend::q_rope_write_kv`]).
#[derive(Clone, Debug)]
pub struct RopeKvInput<B: Backend> {
    /// This step's queries `[B, 1, H, hd]`.
    pub q: FloatTensor<B>,
    /// Its keys `[B, 1, H_kv, hd]`, not yet rotated.
    pub k: FloatTensor<B>,
    /// Its values, shaped as `k`.
    pub v: FloatTensor<B>,
    /// The key cache `[R, H_kv·hd]`: row `row[s]` receives batch row `s`'s rotated keys.
    pub kc: FloatTensor<B>,
    /// The value cache, shaped as `kc`.
    pub vc: FloatTensor<B>,
    /// The cache row of each batch row, `[B]`.
    pub row: IntTensor<B>,
    /// The angle tables `[B, 1, 1, half, 1]` of this step's positions.
    pub rotary: RotaryOptions<B>,
    /// Rotate-half (the Llama family) instead of GPT-J's rotate-every-two.
    pub halves: bool,
}

/// A LoRA adapter's product as [`QBackend::q_lora_acc`] adds it: `scaling·(dropout(x)·Aᵀ)·Bᵀ`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraOptions {
    /// `lora_alpha / r` (or PEFT's rsLoRA scale).
    pub scaling: f32,
    /// Drop probability and counter seed of the input's dropout ([`QBackend::q_dropout`]);
    /// `None` (or `p = 0`) applies none.
    pub dropout: Option<(f32, u64)>,
}

/// What [`QBackend::q_quantize`] makes of a dense weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantizeOptions {
    /// The 4- or 8-bit code book.
    pub format: QuantFormat,
    /// Values per absmax block (one of `format.blocksizes()`).
    pub blocksize: usize,
}

/// The input of [`QBackend::q_attention`] (and, with its probabilities, of its backward), in
/// token-major layout.
#[derive(Clone, Debug)]
pub struct AttentionInput<B: Backend> {
    /// Queries `[B, T, H, hd]`.
    pub q: FloatTensor<B>,
    /// Keys `[B, L, H_kv, hd]` (`H_kv` divides `H`).
    pub k: FloatTensor<B>,
    /// Values `[B, L, H_kv, hd]`, in `q`'s and `k`'s dtype.
    pub v: FloatTensor<B>,
    /// `[B, 1, T, L]`, true = masked; `None` masks nothing.
    pub mask: Option<BoolTensor<B>>,
    /// The scores are divided by it before the softmax (usually `√hd`).
    pub div: f32,
}
