//! [`QBackend`] for `Autodiff<B, C>`: forward on the inner backend plus a hand-written backward.
//!
//! The backward state is the [`QWeightPrimitive`] only (refcounted handles to the quantized
//! tensors): `x` is not saved and no dense `W` outlives the forward, so a quantized layer costs
//! its quantized bytes between forward and backward, as in bitsandbytes' `MatMul4Bit`.

use burn::backend::autodiff::{
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
    Autodiff,
};
use burn::tensor::{
    backend::{AutodiffBackend, Backend},
    ops::{FloatTensor, IntTensor},
    DType,
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

impl<B: QBackend> Backward<B, 1> for QLinearBackward {
    type State = QWeightPrimitive<B>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x] = ops.parents;
        let dy = grads.consume::<B>(&ops.node);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::q_linear_dx(dy, ops.state));
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
            OpsKind::Tracked(prep) => {
                let y = B::q_linear(x.primitive, w.clone());
                prep.finish(w, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_linear(x.primitive, w)),
        }
    }

    fn q_linear_dx(dy: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self> {
        // No second-order gradient: computed on the inner backend and returned as a leaf.
        <Self as AutodiffBackend>::from_inner(B::q_linear_dx(dy.primitive, inner(w)))
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
