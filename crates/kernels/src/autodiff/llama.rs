//! Backward nodes of the Llama family's fused ops: RMSNorm (frozen weight), SwiGLU's
//! `silu(gate)·up` and the rotate-half RoPE.

use burn::backend::autodiff::{
    checkpoint::base::Checkpointer,
    grads::Gradients,
    ops::{Backward, Ops},
};
use burn::tensor::ops::FloatTensor;

use crate::QBackend;

/// Backward of the fused RMSNorm (frozen weight): state is the input, the weight and eps.
#[derive(Debug)]
pub(super) struct RmsNormBackward;

impl<B: QBackend> Backward<B, 1> for RmsNormBackward {
    type State = (FloatTensor<B>, FloatTensor<B>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (x, w, eps) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::q_rms_norm_backward(x, w, dy, eps));
        }
    }
}

/// Backward of `silu(gate)·up`: state is both inputs; one call gives both gradients.
#[derive(Debug)]
pub(super) struct SiluMulBackward;

impl<B: QBackend> Backward<B, 2> for SiluMulBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_gate, node_up] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (gate, up) = ops.state;
        let [dgate, dup] = B::q_silu_mul_backward(gate, up, dy);
        for (node, g) in [(node_gate, dgate), (node_up, dup)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

/// Backward of the rotate-half RoPE: the inverse rotation of the output gradient (state: the
/// tables, `sin` already negated when the forward was itself the inverse).
#[derive(Debug)]
pub(super) struct RotaryHalfBackward;

impl<B: QBackend> Backward<B, 1> for RotaryHalfBackward {
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        let (cos, sin) = ops.state;
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::q_rotary_half(dy, cos, sin, true));
        }
    }
}
