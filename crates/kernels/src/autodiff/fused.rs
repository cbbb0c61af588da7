//! Backward nodes of the fused element-wise and row ops (dropout, `gelu_new`, attention
//! softmax, attention, gradient seed, LayerNorm, GPT-J rotary, cross-entropy, the head's
//! linear cross-entropy).

use burn::backend::autodiff::{
    checkpoint::base::Checkpointer,
    grads::Gradients,
    ops::{Backward, Ops},
};
use burn::tensor::{
    ops::{BoolTensor, FloatTensor, IntTensor},
    DType, TensorMetadata,
};

use crate::{AttentionInput, AttnMask, NormInput, QBackend, RotaryOptions};

/// Backward of the counter-based dropout: the same mask and scale applied to `dy`.
#[derive(Debug)]
pub(super) struct DropoutBackward;

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
pub(super) struct GeluNewBackward;

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
pub(super) struct AttnSoftmaxBackward;

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
            grads.register::<B>(
                node.id,
                B::q_attn_softmax_backward(p, dp, AttnMask { mask, div }),
            );
        }
    }
}

/// What the attention backward needs: the inputs (with the mask and divisor) and the
/// probabilities.
type AttentionState<B> = (AttentionInput<B>, FloatTensor<B>);

/// Backward of the attention core: one call for all three input gradients.
#[derive(Debug)]
pub(super) struct AttentionBackward;

impl<B: QBackend> Backward<B, 3> for AttentionBackward {
    type State = AttentionState<B>;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_o = grads.consume::<B>(&ops.node);
        let (input, p) = ops.state;
        let [dq, dk, dv] = B::q_attention_backward(input, p, d_o);
        for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// Backward of the gradient seed: hands the stored `dy` to `y` (the scalar's own gradient is 1).
#[derive(Debug)]
pub(super) struct GradSeedBackward;

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

/// Which fused norm with a frozen weight: GPT-J's LayerNorm (its frozen bias needs no backward
/// state) or the Llama family's RMSNorm.
#[derive(Debug, Clone, Copy)]
pub(super) enum Norm {
    Layer,
    Rms,
}

impl Norm {
    /// The norm's input gradient for `dy` (`x`, `w`, `eps` as in its forward).
    pub(super) fn dx<B: QBackend>(
        self,
        x: FloatTensor<B>,
        w: FloatTensor<B>,
        dy: FloatTensor<B>,
        eps: f32,
    ) -> FloatTensor<B> {
        match self {
            Norm::Layer => B::q_layer_norm_backward(NormInput { x, w, eps }, dy),
            Norm::Rms => B::q_rms_norm_backward(NormInput { x, w, eps }, dy),
        }
    }
}

/// Backward of a fused norm (frozen weight): state is the input, the weight and eps.
#[derive(Debug)]
pub(super) struct NormBackward(pub(super) Norm);

impl<B: QBackend> Backward<B, 1> for NormBackward {
    type State = (FloatTensor<B>, (FloatTensor<B>, f32));

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, (w, eps)) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, self.0.dx::<B>(x, w, dy, eps));
        }
    }
}

/// Which fused rotation: GPT-J's interleaved pairs (`q_rotary`) or the Llama family's
/// rotate-half (`q_rotary_half`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Rotation {
    Interleaved,
    Half,
}

impl Rotation {
    pub(super) fn apply<B: QBackend>(
        self,
        x: FloatTensor<B>,
        cos: FloatTensor<B>,
        sin: FloatTensor<B>,
        inverse: bool,
    ) -> FloatTensor<B> {
        match self {
            Rotation::Interleaved => B::q_rotary(x, RotaryOptions { cos, sin, inverse }),
            Rotation::Half => B::q_rotary_half(x, RotaryOptions { cos, sin, inverse }),
        }
    }
}

/// Backward of a rotation: the inverse rotation of the output gradient (state: the tables,
/// `sin` already negated when the forward was itself the inverse).
#[derive(Debug)]
pub(super) struct RotaryBackward(pub(super) Rotation);

impl<B: QBackend> Backward<B, 1> for RotaryBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, self.0.apply::<B>(dy, cos, sin, true));
        }
    }
}

/// Backward of the fused cross-entropy: state is the logits and the targets.
#[derive(Debug)]
pub(super) struct CrossEntropyBackward;

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

/// Backward of [`crate::linear_cross_entropy`]: state is the input gradient for a unit upstream
/// gradient (f32, computed in the forward) and the input's dtype.
#[derive(Debug)]
pub(super) struct LinearCrossEntropyBackward;

impl<B: QBackend> Backward<B, 1> for LinearCrossEntropyBackward {
    type State = (FloatTensor<B>, DType);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let g = grads.consume::<B>(&ops.node);
        let (unit_dx, dtype) = ops.state;
        if let Some(node) = node_x {
            let dx = crate::head::scale_unit_dx::<B>(unit_dx, g, dtype);
            grads.register::<B>(node.id, dx);
        }
    }
}

/// Backward of [`crate::select_rows`]: state is the row indices and the input's row count.
#[derive(Debug)]
pub(super) struct SelectRowsBackward;

impl<B: QBackend> Backward<B, 1> for SelectRowsBackward {
    type State = (IntTensor<B>, usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (idx, rows) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::q_select_rows_backward(dy, idx, rows));
        }
    }
}
