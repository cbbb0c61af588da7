//! Backward node of [`crate::QBackend::q_lora_acc`]: `out = y + s·(xd·Aₕᵀ)·Bₕᵀ` with
//! `xd = dropout(x)` and `Aₕ`, `Bₕ` the factors in the activation dtype. With `U = xd·Aₕᵀ`:
//! `dy = dout`; `dB = s·doutᵀ·U` and `dA = dUᵀ·xd` written in the factors' dtype (f32 in
//! training) by the GEMMs themselves; `dU = s·dout·Bₕ`; `dx = dropout(dU·Aₕ)` (the same
//! counter mask, so the op again). Four GEMMs and at most one dropout pass, where the five
//! separate nodes (two casts, dropout, two GEMMs) also ran two scaling and two cast passes.

use burn::backend::autodiff::{
    checkpoint::base::Checkpointer,
    grads::Gradients,
    ops::{Backward, Ops},
};
use burn::tensor::{ops::FloatTensor, DType, Shape, TensorMetadata};

use crate::{GemmOptions, LoraOptions, QBackend};

#[derive(Debug)]
pub(super) struct LoraBackward;

/// What the backward keeps: the dropped input, the `A` product, both factors in the activation
/// dtype, the factors' own dtypes (their gradients' dtype) and the options.
#[derive(Debug, Clone)]
pub(super) struct LoraState<B: QBackend> {
    pub(super) xd: FloatTensor<B>,
    pub(super) u: FloatTensor<B>,
    pub(super) a: FloatTensor<B>,
    pub(super) b: FloatTensor<B>,
    /// The dtypes of `y`, `A` and `B` as passed in (each gradient goes back in its own).
    pub(super) dtypes: [DType; 3],
    pub(super) opts: LoraOptions,
}

fn d3<B: QBackend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let [m, n] = t.shape().dims::<2>();
    B::float_reshape(t, Shape::new([1, m, n]))
}

fn d2<B: QBackend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let [_, m, n] = t.shape().dims::<3>();
    B::float_reshape(t, Shape::new([m, n]))
}

impl<B: QBackend> Backward<B, 4> for LoraBackward {
    type State = LoraState<B>;

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_y, node_x, node_a, node_b] = ops.parents;
        let dout = grads.consume::<B>(&ops.node);
        let LoraState {
            xd,
            u,
            a,
            b,
            dtypes: [y_dtype, a_dtype, b_dtype],
            opts,
        } = ops.state;
        let dtype = xd.dtype();
        let s = opts.scaling;
        if let Some(node) = node_b {
            let db = B::q_gemm(
                d3::<B>(dout.clone()),
                d3::<B>(u),
                GemmOptions::new(true, false, b_dtype).scaled(s),
            );
            grads.register::<B>(node.id, d2::<B>(db));
        }
        if node_x.is_some() || node_a.is_some() {
            let du = B::q_gemm(
                d3::<B>(dout.clone()),
                d3::<B>(b),
                GemmOptions::new(false, false, dtype).scaled(s),
            );
            if let Some(node) = node_a {
                let da = B::q_gemm(
                    du.clone(),
                    d3::<B>(xd),
                    GemmOptions::new(true, false, a_dtype),
                );
                grads.register::<B>(node.id, d2::<B>(da));
            }
            if let Some(node) = node_x {
                let dxd = d2::<B>(B::q_gemm(
                    du,
                    d3::<B>(a),
                    GemmOptions::new(false, false, dtype),
                ));
                let dx = match opts.dropout {
                    Some((p, seed)) if p > 0.0 => B::q_dropout(dxd, p, seed),
                    _ => dxd,
                };
                grads.register::<B>(node.id, dx);
            }
        }
        if let Some(node) = node_y {
            grads.register::<B>(node.id, crate::lora::in_dtype::<B>(dout, y_dtype));
        }
    }
}
