//! The LM head's loss without its logits kept for the backward ([`linear_cross_entropy`]):
//! `nll[r] = CE(x[r]·Wᵀ + b, t[r])` for a frozen head. Under autodiff the op computes the input
//! gradient in the forward, chunk by chunk, as Liger-Kernel's fused linear cross-entropy does:
//! `dx₁ = (softmax(logits) − onehot(t))·W` in f32 (for a fixed power-of-two upstream gradient,
//! so that float16 keeps its precision), kept instead of the chunk's `[rows, vocab]` logits; the
//! backward scales it by the upstream gradient of each row. The logits of every
//! chunk (413 MB in bf16 for GPT-J-6B at 8 × 512 tokens, 1 GB for a 128k vocabulary) are then
//! never alive together, only one chunk's logits and their gradient.
//!
//! The forward values are the unfused ops' (the same product, bias add and cross-entropy
//! kernel, in order); the gradient is the same sum with the row's scale applied after the
//! product instead of before it (f32 rounding apart on the CPU).

use burn::tensor::{
    ops::{FloatTensor, IntTensor},
    DType, Int, Shape, Tensor, TensorMetadata, TensorPrimitive,
};

use crate::{GemmOptions, QBackend};

/// Per-row cross-entropy of the logits `x·wᵀ (+ bias)`: `x [rows, D]`, a frozen `w [V, D]` and
/// `bias [V]` in `x`'s dtype (the caller casts them; neither gets a gradient), targets `[rows]`
/// each in `[0, V)` → `[rows]` f32 negative log-likelihoods, through
/// [`QBackend::q_linear_cross_entropy`]. Only `x` is differentiated.
///
/// # Panics
/// On shapes that do not chain (a model wiring bug).
pub fn linear_cross_entropy<B: QBackend>(
    x: Tensor<B, 2>,
    w: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let ([rows, d], [v, dw]) = (x.dims(), w.dims());
    assert!(
        d == dw && targets.dims()[0] == rows && bias.as_ref().is_none_or(|b| b.dims()[0] == v),
        "linear_cross_entropy: x [{rows}, {d}] · W [{v}, {dw}] with bias {:?} and {} targets",
        bias.as_ref().map(|b| b.dims()),
        targets.dims()[0]
    );
    let nll = B::q_linear_cross_entropy(
        x.into_primitive().tensor(),
        w.into_primitive().tensor(),
        bias.map(|b| b.into_primitive().tensor()),
        targets.into_primitive(),
    );
    Tensor::from_primitive(TensorPrimitive::Float(nll))
}

/// The logits `x [rows, D] · w [V, D]ᵀ (+ bias)` in `x`'s dtype, by the ops a dense `Linear`
/// runs.
fn logits<B: QBackend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
) -> FloatTensor<B> {
    let ([rows, d], [v, _]) = (x.shape().dims::<2>(), w.shape().dims::<2>());
    let dtype = x.dtype();
    let y = B::q_gemm(
        B::float_reshape(x, Shape::new([1, rows, d])),
        B::float_reshape(w, Shape::new([1, v, d])),
        GemmOptions::new(false, true, dtype),
    );
    let y = B::float_reshape(y, Shape::new([rows, v]));
    match bias {
        Some(b) => B::float_add(y, B::float_reshape(b, Shape::new([1, v]))),
        None => y,
    }
}

/// The reference [`QBackend::q_linear_cross_entropy`] (no autodiff): the logits, then the
/// cross-entropy kernel.
pub(crate) fn linear_cross_entropy_ops<B: QBackend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    targets: IntTensor<B>,
) -> FloatTensor<B> {
    B::q_cross_entropy(logits::<B>(x, w, bias), targets)
}

/// The upstream gradient per row that the forward's input gradient assumes: a power of two
/// (scaling by it and back is exact), large enough that the logits' gradient
/// `(softmax − onehot)·UNIT` stays out of float16's subnormals for probabilities down to ~1e-8
/// (float16's smallest normal is 6.1e-5), as the loss scale of a float16 run keeps it; at most
/// 4,096 in magnitude, far below float16's maximum. bfloat16 and f32 get the same bits as with 1.
const UNIT: f32 = 4096.0;

/// The forward of a tracked [`linear_cross_entropy`]: the per-row losses and the input gradient
/// for an upstream gradient of [`UNIT`] per row, `(softmax(logits) − onehot(t))·UNIT·W`
/// accumulated and kept in f32 (`[rows, D]`). The logits and their gradient are dropped before
/// it returns.
pub(crate) fn loss_and_unit_dx<B: QBackend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    bias: Option<FloatTensor<B>>,
    targets: IntTensor<B>,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let ([rows, d], [v, _]) = (x.shape().dims::<2>(), w.shape().dims::<2>());
    let device = B::float_device(&x);
    let z = logits::<B>(x, w.clone(), bias);
    let nll = B::q_cross_entropy(z.clone(), targets.clone());
    let unit = B::float_full(Shape::new([rows]), UNIT.into(), &device, DType::F32.into());
    let dz = B::q_cross_entropy_backward(z, targets, unit);
    let dx = B::q_gemm(
        B::float_reshape(dz, Shape::new([1, rows, v])),
        B::float_reshape(w, Shape::new([1, v, d])),
        GemmOptions::new(false, false, DType::F32),
    );
    (nll, B::float_reshape(dx, Shape::new([rows, d])))
}

/// The backward of a tracked [`linear_cross_entropy`]: `dx[r] = (g[r] / UNIT)·dx₁[r]` in f32
/// (`g [rows]`), rounded once to `dtype`.
pub(crate) fn scale_unit_dx<B: QBackend>(
    unit_dx: FloatTensor<B>,
    g: FloatTensor<B>,
    dtype: DType,
) -> FloatTensor<B> {
    let rows = unit_dx.shape().dims::<2>()[0];
    let g = B::float_mul_scalar(B::float_cast(g, DType::F32.into()), (1.0 / UNIT).into());
    let dx = B::float_mul(unit_dx, B::float_reshape(g, Shape::new([rows, 1])));
    if dtype == DType::F32 {
        dx
    } else {
        B::float_cast(dx, dtype.into())
    }
}
