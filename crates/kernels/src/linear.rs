//! The tensor-level quantized linear: [`q_linear`] and its variants over [`QBackend`]'s ops.

use burn::tensor::{ops::FloatTensor, Shape, Tensor, TensorMetadata, TensorPrimitive};

use crate::{GemmOptions, LinearBackward, QBackend, QWeightPrimitive, QuantWeight};

/// `x · dequant(W)ᵀ` over the last dimension of `x` (`in` → `out`); leading dimensions are kept.
///
/// # Panics
/// If the last dimension of `x` is not `w.shape()[1]` (a model wiring bug, like a Burn matmul
/// shape mismatch).
pub fn q_linear<B: QBackend, const D: usize>(x: Tensor<B, D>, w: &QuantWeight<B>) -> Tensor<B, D> {
    q_linear_with(x, w, LinearBackward::Quantized)
}

/// [`q_linear`] with the choice of what a tracked backward keeps (see [`LinearBackward`]); the
/// forward values are the same either way.
///
/// # Panics
/// As [`q_linear`].
pub fn q_linear_with<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w: &QuantWeight<B>,
    backward: LinearBackward,
) -> Tensor<B, D> {
    over_rows(x, w, |x2, w, elems| {
        if backward.keeps_dense(elems) {
            B::q_linear_dense_backward(x2, w)
        } else {
            B::q_linear(x2, w)
        }
    })
}

/// [`q_linear_with`] for a forward whose output **values are never read**, only its gradient
/// path: in a checkpointed block's recompute, the linears whose outputs only form the block's
/// output (Llama's `down_proj`, GPT-J's `out_proj` and `fc_out`), which exists to receive the
/// upstream gradient. The backward is exactly [`q_linear_with`]'s (it needs `dy` and `W`, never
/// `y`). Under autodiff the output is uninitialized memory and neither the GEMM nor the
/// dequantization runs (unless `backward` keeps the dense weight); without autodiff it is the
/// product.
///
/// # Panics
/// As [`q_linear`].
pub fn q_linear_unread<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w: &QuantWeight<B>,
    backward: LinearBackward,
) -> Tensor<B, D> {
    over_rows(x, w, |x2, w, elems| {
        B::q_linear_unread(x2, w, backward.keeps_dense(elems))
    })
}

/// `x [..., in]` as `[m, in]` rows through `op(rows, w, w's element count)` → `[..., out]`.
///
/// # Panics
/// As [`q_linear`].
fn over_rows<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w: &QuantWeight<B>,
    op: impl FnOnce(FloatTensor<B>, QWeightPrimitive<B>, usize) -> FloatTensor<B>,
) -> Tensor<B, D> {
    let [out_f, in_f] = w.shape();
    rows_through(x, [out_f, in_f], "q_linear", |x2| {
        let y = op(x2.into_primitive().tensor(), w.primitive(), out_f * in_f);
        Tensor::from_primitive(TensorPrimitive::Float(y))
    })
}

/// `x [..., in]` as `[m, in]` rows through `op` (a product with a weight `[out, in]`, `op`'s
/// result `[m, out]`) → `[..., out]`; shared by the quantized and the dense linears.
///
/// # Panics
/// If `x`'s last dim is not `in` (a model wiring bug), naming `what` and the weight's shape.
pub(crate) fn rows_through<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    [out_f, in_f]: [usize; 2],
    what: &str,
    op: impl FnOnce(Tensor<B, 2>) -> Tensor<B, 2>,
) -> Tensor<B, D> {
    let dims = x.dims();
    assert_eq!(
        dims[D - 1],
        in_f,
        "{what}: input last dim {} does not match the weight's in_features {in_f} (weight shape [{out_f}, {in_f}])",
        dims[D - 1]
    );
    let m = dims[..D - 1].iter().product::<usize>();
    let mut out = dims;
    out[D - 1] = out_f;
    op(x.reshape([m, in_f])).reshape(out)
}

/// `[q_linear(x, w) for w in ws]` through [`QBackend::q_linear_parts`] (one launch on CUDA for a
/// single row of `x` and two or three compatible weights), else one [`q_linear`] each.
///
/// # Panics
/// As [`q_linear`], for any of the weights.
pub fn q_linear_parts<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    ws: &[&QuantWeight<B>],
) -> Vec<Tensor<B, D>> {
    let dims = x.dims();
    let m = dims[..D - 1].iter().product::<usize>();
    let in_f = dims[D - 1];
    if m != 1 || ws.iter().any(|w| w.shape()[1] != in_f) {
        return ws.iter().map(|w| q_linear(x.clone(), w)).collect();
    }
    let x2 = x.reshape([1, in_f]).into_primitive().tensor();
    let ys = B::q_linear_parts(x2, ws.iter().map(|w| w.primitive()).collect());
    ys.into_iter()
        .zip(ws)
        .map(|(y, w)| {
            let mut out = dims;
            out[D - 1] = w.shape()[0];
            Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(out)
        })
        .collect()
}

/// [`q_linear`] plus `adds` (each of the output's shape, or broadcastable to it, in its dtype),
/// added in order after the product: through [`QBackend::q_linear_add`] (one kernel on CUDA
/// for a single row and up to three same-shape addends), else as tensor adds.
///
/// # Panics
/// As [`q_linear`]; on addends that do not broadcast to the output.
pub fn q_linear_add<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w: &QuantWeight<B>,
    adds: Vec<Tensor<B, D>>,
) -> Tensor<B, D> {
    let dims = x.dims();
    let [out_f, in_f] = w.shape();
    let m = dims[..D - 1].iter().product::<usize>();
    let mut out = dims;
    out[D - 1] = out_f;
    let fits = |a: &Tensor<B, D>| a.dims() == out && a.dtype() == x.dtype();
    if dims[D - 1] == in_f && m == 1 && adds.iter().all(fits) {
        let x2 = x.reshape([1, in_f]).into_primitive().tensor();
        let adds = adds
            .into_iter()
            .map(|a| a.reshape([1, out_f]).into_primitive().tensor())
            .collect();
        let y = B::q_linear_add(x2, w.primitive(), adds);
        return Tensor::<B, 2>::from_primitive(TensorPrimitive::Float(y)).reshape(out);
    }
    adds.into_iter().fold(q_linear(x, w), |y, a| y + a)
}

/// `x [m, in] · w [out, in]ᵀ` (or `· w` when `dx`: a linear's input gradient) for a dense `w`,
/// via `q_gemm`.
pub(crate) fn dense_linear<B: QBackend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    dx: bool,
) -> FloatTensor<B> {
    let [m, k] = x.shape().dims::<2>();
    let [o, i] = w.shape().dims::<2>();
    let dtype = x.dtype();
    let x3 = B::float_reshape(x, Shape::new([1, m, k]));
    let w3 = B::float_reshape(w, Shape::new([1, o, i]));
    let y = B::q_gemm(x3, w3, GemmOptions::new(false, !dx, dtype));
    B::float_reshape(y, Shape::new([m, if dx { i } else { o }]))
}
