//! Backward node of the Llama family's SwiGLU product `silu(gate)·up` (its RMSNorm and
//! rotate-half RoPE share GPT-J's norm and rotation nodes, `fused::NormBackward` and
//! `fused::RotaryBackward`).

use burn::backend::autodiff::{
    checkpoint::base::Checkpointer,
    grads::Gradients,
    ops::{Backward, Ops},
};
use burn::tensor::ops::FloatTensor;

use crate::QBackend;

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
