//! Backward nodes of the GEMM ops: the quantized linear (dense-kept or not), the batched
//! matmul and the accumulate-GEMM.

use burn::backend::autodiff::{
    checkpoint::base::Checkpointer,
    grads::Gradients,
    ops::{Backward, Ops},
};
use burn::tensor::{backend::Backend, ops::FloatTensor, DType};

use crate::linear::dense_linear;
use crate::{FrozenPrimitive, GemmOptions, QBackend, QWeightPrimitive};

/// Backward of `y = x·dequant(W)ᵀ`: `dx = dy·dequant(W)`; `W` is frozen.
#[derive(Debug)]
pub(super) struct QLinearBackward;

/// The weight a quantized linear's backward multiplies by: the quantized one (dequantized
/// again), or the dense copy the forward made ([`crate::LinearBackward::Dense`]).
#[derive(Debug, Clone)]
pub(super) enum QLinearState<B: QBackend> {
    Quant(QWeightPrimitive<B>),
    Dense(FloatTensor<B>),
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
pub(super) struct MatmulState<B: Backend> {
    pub(super) a: Option<FloatTensor<B>>,
    pub(super) b: Option<FloatTensor<B>>,
    pub(super) ta: bool,
    pub(super) tb: bool,
    pub(super) dtype: DType,
    /// The product's scale: the gradients carry it too (folded into their GEMMs).
    pub(super) alpha: f32,
}

/// Backward of `c = alpha·op(a)·op(b)` (`op` = transpose when flagged), by the same op:
/// `da = alpha·dc·op(b)ᵀ` (stored transposed when `ta`), `db = alpha·op(a)ᵀ·dc` (likewise for `tb`).
/// `dc` is first cast to the inputs' dtype (an F32 output of bf16 inputs, e.g. attention scores).
#[derive(Debug)]
pub(super) struct MatmulBackward;

impl<B: QBackend> Backward<B, 2> for MatmulBackward {
    type State = MatmulState<B>;

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_a, node_b] = ops.parents;
        let dc = grads.consume::<B>(&ops.node);
        let ids = [node_a.map(|n| n.id), node_b.map(|n| n.id)];
        matmul_grads::<B>(ops.state, dc, ids, grads);
    }
}

/// Registers `alpha·da` and `alpha·db` of `c = alpha·op(a)·op(b)` for the parents that need
/// them; α is the gradient GEMMs' own (no scaling pass).
fn matmul_grads<B: QBackend>(
    s: MatmulState<B>,
    mut dc: FloatTensor<B>,
    [node_a, node_b]: [Option<burn::backend::autodiff::NodeId>; 2],
    grads: &mut Gradients,
) {
    dc = crate::lora::in_dtype::<B>(dc, s.dtype);
    let opts = |ta, tb| GemmOptions::new(ta, tb, s.dtype).scaled(s.alpha);
    if let (Some(node), Some(b)) = (node_a, s.b) {
        let da = if s.ta {
            B::q_gemm(b, dc.clone(), opts(s.tb, true))
        } else {
            B::q_gemm(dc.clone(), b, opts(false, !s.tb))
        };
        grads.register::<B>(node, da);
    }
    if let (Some(node), Some(a)) = (node_b, s.a) {
        let db = if s.tb {
            B::q_gemm(dc, a, opts(true, s.ta))
        } else {
            B::q_gemm(a, dc, opts(!s.ta, false))
        };
        grads.register::<B>(node, db);
    }
}

/// Backward of `y = c + alpha·op(a)·op(b)`: `dc = dy`, and the matmul gradients scaled by alpha
/// (for LoRA the small `[m, r]` and `[out, r]` ones).
#[derive(Debug)]
pub(super) struct GemmAccBackward;

impl<B: QBackend> Backward<B, 3> for GemmAccBackward {
    type State = MatmulState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_c, node_a, node_b] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let ids = [node_a.map(|n| n.id), node_b.map(|n| n.id)];
        matmul_grads::<B>(ops.state, dy.clone(), ids, grads);
        if let Some(node) = node_c {
            grads.register::<B>(node.id, dy);
        }
    }
}

/// Backward of a sum whose values nobody reads ([`crate::sum_unread`]): every part's gradient
/// is the sum's.
#[derive(Debug)]
pub(super) struct SumUnreadBackward;

impl<B: QBackend, const N: usize> Backward<B, N> for SumUnreadBackward {
    type State = ();

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<B>(&ops.node);
        for node in ops.parents.into_iter().flatten() {
            grads.register::<B>(node.id, dy.clone());
        }
    }
}

/// Backward of [`QBackend::q_mlp_gelu_new`] (`y = gelu_new(pre)·W_outᵀ`, `pre = x·W_inᵀ + b`):
/// `dpre = (dy·W_out) ⊙ gelu_new'(pre)`, `dx = dpre·W_in`; weights and bias frozen.
#[derive(Debug)]
pub(super) struct MlpGeluBackward;

/// The two frozen weights (`[W_in, W_out]`, quantized ones as such) and the pre-activation.
#[derive(Debug, Clone)]
pub(super) struct MlpGeluState<B: QBackend> {
    pub(super) w: [FrozenPrimitive<B>; 2],
    pub(super) pre: FloatTensor<B>,
}

impl<B: QBackend> Backward<B, 1> for MlpGeluBackward {
    type State = MlpGeluState<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            let MlpGeluState {
                w: [w_in, w_out],
                pre,
            } = ops.state;
            let dpre = B::q_linear_dx_dgelu(dy, w_out, pre);
            grads.register::<B>(node.id, crate::mlp::frozen_linear_dx::<B>(dpre, w_in));
        }
    }
}
