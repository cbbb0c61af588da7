//! [`QBackend`] for `Autodiff<B, C>`: forward on the inner backend plus a hand-written backward.
//!
//! The backward state is the [`QWeightPrimitive`] only (refcounted handles to the quantized
//! tensors): `x` is not saved and no dense `W` outlives the forward, so a quantized layer costs
//! its quantized bytes between forward and backward, as in bitsandbytes' `MatMul4Bit` — except
//! in [`QBackend::q_linear_dense_backward`] ([`crate::LinearBackward::Dense`], a checkpointed
//! block's recompute), where the dense weight made for the forward is kept for the backward
//! instead of dequantizing twice.

use burn::backend::autodiff::{
    checkpoint::strategy::CheckpointStrategy,
    ops::{Backward, OpsKind},
    Autodiff,
};
use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    ops::FloatTensor,
    TensorMetadata,
};

use crate::{
    AbsmaxPrimitive, AttentionInput, FrozenPrimitive, NestedPrimitive, NormInput, QBackend,
    QWeightPrimitive, RotaryOptions,
};

mod fused;
mod linear;
mod llama;
mod lora;
mod qbackend;

use crate::linear::dense_linear;
use fused::{Norm, RotaryBackward, Rotation};
use linear::{MatmulState, QLinearBackward, QLinearState, SumUnreadBackward};

/// `forward(x, frozen)` recorded for `op`, whose backward state is `x` and `frozen`: values that
/// get no gradient (a bias, a norm's weight and eps, the targets), only kept for the backward.
/// compute_bound: qtune checkpoints per block itself (no Burn retro-forward needed).
fn recorded<B, C, Op, S>(
    op: Op,
    x: FloatTensor<Autodiff<B, C>>,
    frozen: S,
    forward: impl Fn(FloatTensor<B>, S) -> FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>>
where
    B: QBackend,
    C: CheckpointStrategy,
    Op: Backward<B, 1, State = (FloatTensor<B>, S)>,
    S: Clone + Send + std::fmt::Debug + 'static,
{
    match op.prepare::<C>([x.node.clone()]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => {
            let y = forward(x.primitive.clone(), frozen.clone());
            prep.finish((x.primitive, frozen), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive, frozen)),
    }
}

/// A fused rotation recorded for [`RotaryBackward`].
/// A norm's input gradient, computed on the inner backend and returned as a leaf (no
/// second-order gradient).
fn untracked_norm_dx<B: QBackend, C: CheckpointStrategy>(
    norm: Norm,
    n: NormInput<Autodiff<B, C>>,
    dy: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let dx = norm.dx::<B>(n.x.primitive, n.w.primitive, dy.primitive, n.eps);
    <Autodiff<B, C> as AutodiffBackend>::from_inner(dx)
}

fn rotated<B: QBackend, C: CheckpointStrategy>(
    rotation: Rotation,
    x: FloatTensor<Autodiff<B, C>>,
    r: RotaryOptions<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let (cos, sin, inverse) = (r.cos.primitive, r.sin.primitive, r.inverse);
    match RotaryBackward(rotation)
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let y = rotation.apply::<B>(x.primitive, cos.clone(), sin.clone(), inverse);
            // The backward turns the other way: swap the sign by storing -sin when inverse.
            let state = if inverse {
                (cos, B::float_neg(sin))
            } else {
                (cos, sin)
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => {
            prep.finish(rotation.apply::<B>(x.primitive, cos, sin, inverse))
        }
    }
}

/// What the backward of `op(a)·op(b)` keeps: each operand only where the other one needs a
/// gradient.
fn matmul_state<B: QBackend, C: CheckpointStrategy>(
    a: &FloatTensor<Autodiff<B, C>>,
    b: &FloatTensor<Autodiff<B, C>>,
    (ta, tb): (bool, bool),
    alpha: f32,
) -> MatmulState<B> {
    let (need_a, need_b) = (!a.node.requirement.is_none(), !b.node.requirement.is_none());
    MatmulState {
        a: need_b.then(|| a.primitive.clone()),
        b: need_a.then(|| b.primitive.clone()),
        ta,
        tb,
        dtype: a.primitive.dtype(),
        alpha,
    }
}

/// The attention input on the inner backend (the mask is never tracked).
fn inner_attention<B: QBackend, C: CheckpointStrategy>(
    a: AttentionInput<Autodiff<B, C>>,
) -> AttentionInput<B> {
    AttentionInput {
        q: a.q.primitive,
        k: a.k.primitive,
        v: a.v.primitive,
        mask: a.mask,
        div: a.div,
    }
}

/// Drop the autodiff wrapper of the weight's float constants (they are never tracked).
fn inner<B: Backend, C: CheckpointStrategy>(
    w: QWeightPrimitive<Autodiff<B, C>>,
) -> QWeightPrimitive<B> {
    let absmax = match w.absmax {
        AbsmaxPrimitive::Plain(a) => AbsmaxPrimitive::Plain(a.primitive),
        AbsmaxPrimitive::Nested(n) => AbsmaxPrimitive::Nested(NestedPrimitive {
            codes: n.codes,
            absmax: n.absmax.primitive,
            map: n.map.primitive,
            offset: n.offset,
            blocksize: n.blocksize,
        }),
    };
    QWeightPrimitive {
        codes: w.codes,
        code_map: w.code_map.primitive,
        absmax,
        layout: w.layout,
    }
}

/// [`inner`] for a frozen weight: a dense one's inner tensor (its autodiff node is dropped:
/// the MLP op gives frozen weights no gradient).
fn inner_frozen<B: Backend, C: CheckpointStrategy>(
    w: FrozenPrimitive<Autodiff<B, C>>,
) -> FrozenPrimitive<B> {
    match w {
        FrozenPrimitive::Quant(w) => FrozenPrimitive::Quant(inner(w)),
        FrozenPrimitive::Dense(w) => FrozenPrimitive::Dense(w.primitive),
    }
}

/// `q_linear` with autodiff. A tracked call keeps the dense weight for the backward when
/// `keep_dense` (else the quantized one), and with `unread` leaves its output uninitialized:
/// no GEMM, and no dequantization unless the dense weight is kept (`QBackend::q_linear_unread`).
fn tracked_q_linear<B: QBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    w: QWeightPrimitive<Autodiff<B, C>>,
    keep_dense: bool,
    unread: bool,
) -> FloatTensor<Autodiff<B, C>> {
    let w = inner(w);
    // compute_bound: the output is kept rather than recomputed under BalancedCheckpointing.
    match QLinearBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let x = x.primitive;
            let dtype = x.dtype();
            let out = w.layout.out_features;
            let (state, y) = match (keep_dense, unread) {
                // The same dequant + GEMM as `q_linear`, keeping the dense weight.
                (true, false) => {
                    let wd = B::q_dequantize(w, dtype);
                    let y = dense_linear::<B>(x, wd.clone(), false);
                    (QLinearState::Dense(wd), y)
                }
                (true, true) => (
                    QLinearState::Dense(B::q_dequantize(w, dtype)),
                    unread_output::<B>(&x, out),
                ),
                (false, false) => {
                    let y = B::q_linear(x, w.clone());
                    (QLinearState::Quant(w), y)
                }
                (false, true) => (QLinearState::Quant(w), unread_output::<B>(&x, out)),
            };
            prep.finish(state, y)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::q_linear(x.primitive, w)),
    }
}

/// `q_dense_linear_unread` with autodiff: `x` is the only parent (the weight is frozen; its
/// value is read, never differentiated). Tracked: an uninitialized output, no GEMM, and the
/// quantized linear's backward with the dense weight (`dx = dy · w`); untracked: the product.
fn tracked_dense_linear_unread<B: QBackend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    w: FloatTensor<Autodiff<B, C>>,
) -> FloatTensor<Autodiff<B, C>> {
    let w = w.primitive;
    match QLinearBackward
        .prepare::<C>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let out = w.shape().dims::<2>()[0];
            let y = unread_output::<B>(&x.primitive, out);
            prep.finish(QLinearState::Dense(w), y)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::q_dense_linear_unread(x.primitive, w)),
    }
}

/// The output of a tracked product whose values nobody reads: uninitialized `[m, out]` for a
/// 2-D input `x [m, ·]`, in its dtype (no GEMM runs; the backward needs only the gradient).
fn unread_output<B: QBackend>(x: &FloatTensor<B>, out: usize) -> FloatTensor<B> {
    let m = x.shape().dims::<2>()[0];
    B::float_empty([m, out].into(), &B::float_device(x), x.dtype().into())
}

/// `q_sum_unread` of `N` parts with autodiff: tracked, an uninitialized output and a node that
/// hands its gradient to every part; untracked, the sum.
fn tracked_sum_unread<B: QBackend, C: CheckpointStrategy, const N: usize>(
    parts: [FloatTensor<Autodiff<B, C>>; N],
) -> FloatTensor<Autodiff<B, C>> {
    let nodes = parts.each_ref().map(|p| p.node.clone());
    let prims = parts.map(|p| p.primitive);
    match SumUnreadBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let first = &prims[0];
            let out = B::float_empty(first.shape(), &B::float_device(first), first.dtype().into());
            prep.finish((), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::q_sum_unread(prims.into())),
    }
}
