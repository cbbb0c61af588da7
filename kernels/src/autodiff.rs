//! [`QBackend`] for `Autodiff<B, C>`: forward on the inner backend plus a hand-written backward.
//!
//! The backward state is the [`QWeightPrimitive`] only (refcounted handles to the quantized
//! tensors): `x` is not saved and no dense `W` outlives the forward, so a quantized layer costs
//! its quantized bytes between forward and backward, as in bitsandbytes' `MatMul4Bit` — except
//! inside [`crate::with_dense_backward`] (a checkpointed block's recompute), where the dense
//! weight made for the forward is kept for the backward instead of dequantizing twice.

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    ops::{BoolTensor, FloatTensor, IntTensor},
    DType, TensorMetadata,
};
use qtune_quant::QuantFormat;

use crate::{AbsmaxPrimitive, KernelError, QBackend, QWeightPrimitive};

/// Drop the autodiff wrapper of the weight's float constants (they are never tracked).
fn inner<B: Backend, C: CheckpointStrategy>(
    w: QWeightPrimitive<Autodiff<B, C>>,
) -> QWeightPrimitive<B> {
    let absmax = match w.absmax {
        AbsmaxPrimitive::Plain(a) => AbsmaxPrimitive::Plain(a.primitive),
        AbsmaxPrimitive::Nested {
            codes,
            absmax,
            map,
            offset,
            blocksize,
        } => AbsmaxPrimitive::Nested {
            codes,
            absmax: absmax.primitive,
            map: map.primitive,
            offset,
            blocksize,
        },
    };
    QWeightPrimitive {
        codes: w.codes,
        code_map: w.code_map.primitive,
        absmax,
        layout: w.layout,
    }
}

/// Backward of `y = x·dequant(W)ᵀ`: `dx = dy·dequant(W)`; `W` is frozen.
#[derive(Debug)]
struct QLinearBackward;

/// The weight a quantized linear's backward multiplies by: the quantized one (dequantized
/// again), or the dense copy the forward made (inside [`crate::with_dense_backward`]).
#[derive(Debug, Clone)]
enum QLinearState<B: QBackend> {
    Quant(QWeightPrimitive<B>),
    Dense(FloatTensor<B>),
}

/// `x [m, in] · w [out, in]ᵀ` (or `· w` with `transposed_w`) for a dense `w`, via `q_gemm`.
fn dense_linear<B: QBackend>(x: FloatTensor<B>, w: FloatTensor<B>, dx: bool) -> FloatTensor<B> {
    use burn::tensor::Shape;
    let [m, k] = x.shape().dims::<2>();
    let [o, i] = w.shape().dims::<2>();
    let dtype = x.dtype();
    let x3 = B::float_reshape(x, Shape::new([1, m, k]));
    let w3 = B::float_reshape(w, Shape::new([1, o, i]));
    let y = B::q_gemm(x3, w3, false, !dx, dtype);
    B::float_reshape(y, Shape::new([m, if dx { i } else { o }]))
}

impl<B: QBackend> Backward<B, 1> for QLinearBackward {
    type State = QLinearState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            let dx = match ops.state {
                QLinearState::Quant(w) => B::q_linear_dx(dy, w),
                QLinearState::Dense(w) => dense_linear::<B>(dy, w, true),
            };
            grads.register::<B>(node.id, dx);
        }
    }
}

/// What the matmul backward needs: `a` only if `b` wants a gradient and vice versa, so a frozen
/// dense weight's input (the activation) is not kept alive for nothing.
#[derive(Debug, Clone)]
struct MatmulState<B: Backend> {
    a: Option<FloatTensor<B>>,
    b: Option<FloatTensor<B>>,
    ta: bool,
    tb: bool,
    dtype: DType,
}

/// Backward of `c = op(a)·op(b)` (`op` = transpose when flagged), by the same op:
/// `da = dc·op(b)ᵀ` (stored transposed when `ta`), `db = op(a)ᵀ·dc` (likewise for `tb`).
/// `dc` is first cast to the inputs' dtype (an F32 output of bf16 inputs, e.g. attention scores).
#[derive(Debug)]
struct MatmulBackward;

impl<B: QBackend> Backward<B, 2> for MatmulBackward {
    type State = MatmulState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let dc = grads.consume::<B>(&ops.node);
        let ids = [node_a.map(|n| n.id), node_b.map(|n| n.id)];
        matmul_grads::<B>(ops.state, dc, ids, 1.0, grads);
    }
}

/// Registers `alpha·da` and `alpha·db` of `c = op(a)·op(b)` for the parents that need them.
fn matmul_grads<B: QBackend>(
    s: MatmulState<B>,
    mut dc: FloatTensor<B>,
    [node_a, node_b]: [Option<burn::backend::autodiff::NodeId>; 2],
    alpha: f32,
    grads: &mut Gradients,
) {
    if dc.dtype() != s.dtype {
        dc = B::float_cast(dc, s.dtype.into());
    }
    let scaled = |g: FloatTensor<B>| {
        if alpha == 1.0 {
            g
        } else {
            B::float_mul_scalar(g, alpha.into())
        }
    };
    if let (Some(node), Some(b)) = (node_a, s.b) {
        let da = if s.ta {
            B::q_gemm(b, dc.clone(), s.tb, true, s.dtype)
        } else {
            B::q_gemm(dc.clone(), b, false, !s.tb, s.dtype)
        };
        grads.register::<B>(node, scaled(da));
    }
    if let (Some(node), Some(a)) = (node_b, s.a) {
        let db = if s.tb {
            B::q_gemm(dc, a, true, s.ta, s.dtype)
        } else {
            B::q_gemm(a, dc, !s.ta, false, s.dtype)
        };
        grads.register::<B>(node, scaled(db));
    }
}

/// Backward of `y = c + alpha·op(a)·op(b)`: `dc = dy`, and the matmul gradients scaled by alpha
/// (for LoRA the small `[m, r]` and `[out, r]` ones).
#[derive(Debug)]
struct GemmAccBackward;

impl<B: QBackend> Backward<B, 3> for GemmAccBackward {
    type State = (MatmulState<B>, f32);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_c, node_a, node_b] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (state, alpha) = ops.state;
        let ids = [node_a.map(|n| n.id), node_b.map(|n| n.id)];
        matmul_grads::<B>(state, dy.clone(), ids, alpha, grads);
        if let Some(node) = node_c {
            grads.register::<B>(node.id, dy);
        }
    }
}

/// Backward of the counter-based dropout: the same mask and scale applied to `dy`.
#[derive(Debug)]
struct DropoutBackward;

impl<B: QBackend> Backward<B, 1> for DropoutBackward {
    type State = (f32, u64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (p, seed) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::q_dropout(dy, p, seed));
        }
    }
}

/// Backward of the fused `gelu_new`: state is its input and the (frozen) bias.
#[derive(Debug)]
struct GeluNewBackward;

impl<B: QBackend> Backward<B, 1> for GeluNewBackward {
    type State = (FloatTensor<B>, Option<FloatTensor<B>>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, bias) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::q_gelu_new_backward(x, bias, dy));
        }
    }
}

/// Backward of the fused attention softmax: state is its output (the probabilities, which the
/// following `probs·v` GEMM keeps anyway) and the divisor.
#[derive(Debug)]
struct AttnSoftmaxBackward;

impl<B: QBackend> Backward<B, 1> for AttnSoftmaxBackward {
    type State = (FloatTensor<B>, Option<BoolTensor<B>>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_s] = ops.parents;
        let dp = grads.consume::<B>(&ops.node);
        let (p, mask, div) = ops.state;
        if let Some(node) = node_s {
            let dp = if dp.dtype() == p.dtype() {
                dp
            } else {
                B::float_cast(dp, p.dtype().into())
            };
            grads.register::<B>(node.id, B::q_attn_softmax_backward(p, dp, mask, div));
        }
    }
}

/// What the attention backward needs: the inputs, the probabilities, the mask and divisor.
type AttentionState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    Option<BoolTensor<B>>,
    f32,
);

/// Backward of the attention core: one call for all three input gradients.
#[derive(Debug)]
struct AttentionBackward;

impl<B: QBackend> Backward<B, 3> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_o = grads.consume::<B>(&ops.node);
        let (q, k, v, p, mask, div) = ops.state;
        let [dq, dk, dv] = B::q_attention_backward(q, k, v, p, d_o, mask, div);
        for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// Backward of the gradient seed: hands the stored `dy` to `y` (the scalar's own gradient is 1).
#[derive(Debug)]
struct GradSeedBackward;

impl<B: QBackend> Backward<B, 1> for GradSeedBackward {
    type State = FloatTensor<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_y] = ops.parents;
        let _ = grads.consume::<B>(&ops.node);
        if let Some(node) = node_y {
            grads.register::<B>(node.id, ops.state);
        }
    }
}

/// Backward of the fused LayerNorm (frozen weight and bias): state is the input, the weight
/// and eps.
#[derive(Debug)]
struct LayerNormBackward;

impl<B: QBackend> Backward<B, 1> for LayerNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, w, eps) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::q_layer_norm_backward(x, w, dy, eps));
        }
    }
}

/// Backward of the rotary embedding: the inverse rotation of the output gradient.
#[derive(Debug)]
struct RotaryBackward;

impl<B: QBackend> Backward<B, 1> for RotaryBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::q_rotary(dy, cos, sin, true));
        }
    }
}

/// Backward of the fused cross-entropy: state is the logits and the targets.
#[derive(Debug)]
struct CrossEntropyBackward;

impl<B: QBackend> Backward<B, 1> for CrossEntropyBackward {
    type State = (FloatTensor<B>, IntTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (x, t) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::q_cross_entropy_backward(x, t, g));
        }
    }
}

impl<B: QBackend, C: CheckpointStrategy> QBackend for Autodiff<B, C> {
    fn q_dequantize(w: QWeightPrimitive<Self>, dtype: DType) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q_dequantize(inner(w), dtype))
    }

    fn q_linear(x: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self> {
        let w = inner(w);
        // compute_bound: the output is kept rather than recomputed under BalancedCheckpointing.
        match QLinearBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) if crate::keep_dense() => {
                // The same dequant + GEMM as `q_linear`, keeping the dense weight.
                let wd = B::q_dequantize(w, x.primitive.dtype());
                let y = dense_linear::<B>(x.primitive, wd.clone(), false);
                prep.finish(QLinearState::Dense(wd), y)
            }
            OpsKind::Tracked(prep) => {
                let y = B::q_linear(x.primitive, w.clone());
                prep.finish(QLinearState::Quant(w), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_linear(x.primitive, w)),
        }
    }

    fn q_linear_dx(dy: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self> {
        // No second-order gradient: computed on the inner backend and returned as a leaf.
        <Self as AutodiffBackend>::from_inner(B::q_linear_dx(dy.primitive, inner(w)))
    }

    fn q_gemm(
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        ta: bool,
        tb: bool,
        out: DType,
    ) -> FloatTensor<Self> {
        let (need_a, need_b) = (!a.node.requirement.is_none(), !b.node.requirement.is_none());
        match MatmulBackward
            .prepare::<C>([a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = MatmulState {
                    a: need_b.then(|| a.primitive.clone()),
                    b: need_a.then(|| b.primitive.clone()),
                    ta,
                    tb,
                    dtype: a.primitive.dtype(),
                };
                prep.finish(state, B::q_gemm(a.primitive, b.primitive, ta, tb, out))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::q_gemm(a.primitive, b.primitive, ta, tb, out))
            }
        }
    }

    fn q_gemm_acc(
        c: FloatTensor<Self>,
        a: FloatTensor<Self>,
        b: FloatTensor<Self>,
        ta: bool,
        tb: bool,
        alpha: f32,
    ) -> FloatTensor<Self> {
        let (need_a, need_b) = (!a.node.requirement.is_none(), !b.node.requirement.is_none());
        match GemmAccBackward
            .prepare::<C>([c.node.clone(), a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = MatmulState {
                    a: need_b.then(|| a.primitive.clone()),
                    b: need_a.then(|| b.primitive.clone()),
                    ta,
                    tb,
                    dtype: a.primitive.dtype(),
                };
                let y = B::q_gemm_acc(c.primitive, a.primitive, b.primitive, ta, tb, alpha);
                prep.finish((state, alpha), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_gemm_acc(
                c.primitive,
                a.primitive,
                b.primitive,
                ta,
                tb,
                alpha,
            )),
        }
    }

    fn q_dropout(x: FloatTensor<Self>, p: f32, seed: u64) -> FloatTensor<Self> {
        match DropoutBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((p, seed), B::q_dropout(x.primitive, p, seed)),
            OpsKind::UnTracked(prep) => prep.finish(B::q_dropout(x.primitive, p, seed)),
        }
    }

    fn q_gelu_new(x: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        // The bias is a frozen base weight: no gradient, only its value for the backward.
        let bias = bias.map(|b| b.primitive);
        // compute_bound: qtune checkpoints per block itself (no Burn retro-forward needed).
        match GeluNewBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::q_gelu_new(x.primitive.clone(), bias.clone());
                prep.finish((x.primitive, bias), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_gelu_new(x.primitive, bias)),
        }
    }

    fn q_gelu_new_backward(
        x: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q_gelu_new_backward(
            x.primitive,
            bias.map(|b| b.primitive),
            dy.primitive,
        ))
    }

    fn q_attn_softmax(
        s: FloatTensor<Self>,
        mask: Option<BoolTensor<Self>>,
        div: f32,
        out: DType,
    ) -> FloatTensor<Self> {
        match AttnSoftmaxBackward
            .prepare::<C>([s.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let p = B::q_attn_softmax(s.primitive, mask.clone(), div, out);
                prep.finish((p.clone(), mask, div), p)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_attn_softmax(s.primitive, mask, div, out)),
        }
    }

    fn q_attn_softmax_backward(
        p: FloatTensor<Self>,
        dp: FloatTensor<Self>,
        mask: Option<BoolTensor<Self>>,
        div: f32,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q_attn_softmax_backward(
            p.primitive,
            dp.primitive,
            mask,
            div,
        ))
    }

    fn q_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        mask: Option<BoolTensor<Self>>,
        div: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [q.node.clone(), k.node.clone(), v.node.clone()];
        let (qp, kp, vp) = (q.primitive, k.primitive, v.primitive);
        match AttentionBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (o, p) = B::q_attention(qp.clone(), kp.clone(), vp.clone(), mask.clone(), div);
                let p_out = <Self as AutodiffBackend>::from_inner(p.clone());
                (prep.finish((qp, kp, vp, p, mask, div), o), p_out)
            }
            OpsKind::UnTracked(prep) => {
                let (o, p) = B::q_attention(qp, kp, vp, mask, div);
                (prep.finish(o), <Self as AutodiffBackend>::from_inner(p))
            }
        }
    }

    fn q_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        p: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
        mask: Option<BoolTensor<Self>>,
        div: f32,
    ) -> [FloatTensor<Self>; 3] {
        B::q_attention_backward(
            q.primitive,
            k.primitive,
            v.primitive,
            p.primitive,
            d_o.primitive,
            mask,
            div,
        )
        .map(<Self as AutodiffBackend>::from_inner)
    }

    fn q_grad_seed(y: FloatTensor<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        match GradSeedBackward
            .prepare::<C>([y.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let zero = B::q_grad_seed(y.primitive, dy.primitive.clone());
                prep.finish(dy.primitive, zero)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_grad_seed(y.primitive, dy.primitive)),
        }
    }

    fn q_layer_norm(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        b: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        let (w, b) = (w.primitive, b.primitive);
        match LayerNormBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::q_layer_norm(x.primitive.clone(), w.clone(), b, eps);
                prep.finish((x.primitive, w, eps), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_layer_norm(x.primitive, w, b, eps)),
        }
    }

    fn q_layer_norm_backward(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        eps: f32,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q_layer_norm_backward(
            x.primitive,
            w.primitive,
            dy.primitive,
            eps,
        ))
    }

    fn q_rotary(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
        inverse: bool,
    ) -> FloatTensor<Self> {
        let (cos, sin) = (cos.primitive, sin.primitive);
        match RotaryBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::q_rotary(x.primitive, cos.clone(), sin.clone(), inverse);
                // The backward turns the other way: swap the sign by storing -sin when inverse.
                let state = if inverse {
                    (cos, B::float_neg(sin))
                } else {
                    (cos, sin)
                };
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_rotary(x.primitive, cos, sin, inverse)),
        }
    }

    fn q_cross_entropy(x: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        match CrossEntropyBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let nll = B::q_cross_entropy(x.primitive.clone(), targets.clone());
                prep.finish((x.primitive, targets), nll)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_cross_entropy(x.primitive, targets)),
        }
    }

    fn q_cross_entropy_backward(
        x: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q_cross_entropy_backward(
            x.primitive,
            targets,
            g.primitive,
        ))
    }

    fn q_quantize(
        name: &str,
        w: FloatTensor<Self>,
        format: QuantFormat,
        blocksize: usize,
    ) -> Result<(IntTensor<Self>, FloatTensor<Self>), KernelError> {
        let (codes, absmax) = B::q_quantize(name, w.primitive, format, blocksize)?;
        Ok((codes, <Self as AutodiffBackend>::from_inner(absmax)))
    }
}
