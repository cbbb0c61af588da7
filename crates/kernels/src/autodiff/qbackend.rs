//! The [`QBackend`] impl for `Autodiff<B, C>`: each op's forward on the inner backend, recorded
//! with its backward node when tracked.

use burn::backend::autodiff::{
    checkpoint::strategy::CheckpointStrategy,
    ops::{Backward, OpsKind},
    Autodiff,
};
use burn::tensor::{
    backend::AutodiffBackend,
    ops::{FloatTensor, IntTensor},
    DType, TensorData, TensorMetadata,
};

use crate::{
    AttentionInput, AttnMask, BiasAct, FrozenPrimitive, GemmAccOptions, GemmOptions, KernelError,
    LoraOptions, NormInput, QBackend, QWeightPrimitive, QuantizeOptions, RotaryOptions,
};

use super::fused::{
    AttentionBackward, AttnSoftmaxBackward, CrossEntropyBackward, DropoutBackward, GeluNewBackward,
    GradSeedBackward, LinearCrossEntropyBackward, Norm, NormBackward, Rotation, SelectRowsBackward,
};
use super::linear::{GemmAccBackward, MatmulBackward, MlpGeluBackward, MlpGeluState};
use super::llama::SiluMulBackward;
use super::lora::{LoraBackward, LoraState};
use super::{
    inner, inner_attention, inner_frozen, matmul_state, recorded, rotated, tracked_q_linear,
    tracked_sum_unread, unread_output, untracked_norm_dx,
};

impl<B: QBackend, C: CheckpointStrategy> QBackend for Autodiff<B, C> {
    fn q_dequantize(w: QWeightPrimitive<Self>, dtype: DType) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q_dequantize(inner(w), dtype))
    }

    fn q_check_device(device: &Self::Device, dtype: DType) -> Result<(), KernelError> {
        B::q_check_device(device, dtype)
    }

    fn q_parks_to_host() -> bool {
        B::q_parks_to_host()
    }

    fn q_upload_float(data: TensorData, device: &Self::Device) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q_upload_float(data, device))
    }

    fn q_upload_int(data: TensorData, device: &Self::Device) -> IntTensor<Self> {
        B::q_upload_int(data, device)
    }

    fn q_linear(x: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self> {
        tracked_q_linear::<B, C>(x, w, false, false)
    }

    fn q_linear_dense_backward(
        x: FloatTensor<Self>,
        w: QWeightPrimitive<Self>,
    ) -> FloatTensor<Self> {
        tracked_q_linear::<B, C>(x, w, true, false)
    }

    fn q_linear_unread(
        x: FloatTensor<Self>,
        w: QWeightPrimitive<Self>,
        keep_dense: bool,
    ) -> FloatTensor<Self> {
        tracked_q_linear::<B, C>(x, w, keep_dense, true)
    }

    fn q_dense_linear_unread(x: FloatTensor<Self>, w: FloatTensor<Self>) -> FloatTensor<Self> {
        super::tracked_dense_linear_unread::<B, C>(x, w)
    }

    fn q_sum_unread(parts: Vec<FloatTensor<Self>>) -> FloatTensor<Self> {
        match parts.len() {
            2 => tracked_sum_unread::<B, C, 2>(parts.try_into().expect("two parts")),
            3 => tracked_sum_unread::<B, C, 3>(parts.try_into().expect("three parts")),
            _ => crate::add_all::<Self>(parts),
        }
    }

    fn q_mlp_gelu_new(
        x: FloatTensor<Self>,
        [w_in, w_out]: [FrozenPrimitive<Self>; 2],
        b_in: FloatTensor<Self>,
        unread: bool,
    ) -> FloatTensor<Self> {
        let (w, b) = ([inner_frozen(w_in), inner_frozen(w_out)], b_in.primitive);
        match MlpGeluBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) if unread => {
                let x = x.primitive;
                let y = unread_output::<B>(&x, w[1].shape()[0]);
                let (pre, _) = B::q_linear_bias_act(x, w[0].clone(), b, BiasAct::Bias);
                prep.finish(MlpGeluState { w, pre }, y)
            }
            OpsKind::Tracked(prep) => {
                let (h, pre) =
                    B::q_linear_bias_act(x.primitive, w[0].clone(), b, BiasAct::GeluNewAux);
                let pre = pre.expect("GeluNewAux returns the pre-activation");
                let y = crate::mlp::frozen_linear::<B>(h, w[1].clone());
                prep.finish(MlpGeluState { w, pre }, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_mlp_gelu_new(x.primitive, w, b, false)),
        }
    }

    fn q_linear_dx(dy: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self> {
        // No second-order gradient: computed on the inner backend and returned as a leaf.
        <Self as AutodiffBackend>::from_inner(B::q_linear_dx(dy.primitive, inner(w)))
    }

    fn q_gemm(a: FloatTensor<Self>, b: FloatTensor<Self>, opts: GemmOptions) -> FloatTensor<Self> {
        match MatmulBackward
            .prepare::<C>([a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = matmul_state::<B, C>(&a, &b, (opts.ta, opts.tb), opts.alpha);
                prep.finish(state, B::q_gemm(a.primitive, b.primitive, opts))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_gemm(a.primitive, b.primitive, opts)),
        }
    }

    fn q_gemm_acc(
        c: FloatTensor<Self>,
        [a, b]: [FloatTensor<Self>; 2],
        opts: GemmAccOptions,
    ) -> FloatTensor<Self> {
        match GemmAccBackward
            .prepare::<C>([c.node.clone(), a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let state = matmul_state::<B, C>(&a, &b, (opts.ta, opts.tb), opts.alpha);
                let y = B::q_gemm_acc(c.primitive, [a.primitive, b.primitive], opts);
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::q_gemm_acc(c.primitive, [a.primitive, b.primitive], opts))
            }
        }
    }

    fn q_lora_acc(
        y: FloatTensor<Self>,
        x: FloatTensor<Self>,
        [a, b]: [FloatTensor<Self>; 2],
        opts: LoraOptions,
    ) -> FloatTensor<Self> {
        let parents = [
            y.node.clone(),
            x.node.clone(),
            a.node.clone(),
            b.node.clone(),
        ];
        let ab = [a.primitive, b.primitive];
        match LoraBackward
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let dtypes = [y.primitive.dtype(), ab[0].dtype(), ab[1].dtype()];
                let f = crate::lora::forward::<B>(y.primitive, x.primitive, ab, opts);
                let state = LoraState {
                    xd: f.xd,
                    u: f.u,
                    a: f.a,
                    b: f.b,
                    dtypes,
                    opts,
                };
                prep.finish(state, f.out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::q_lora_acc(y.primitive, x.primitive, ab, opts))
            }
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
        recorded::<B, C, _, _>(GeluNewBackward, x, bias, B::q_gelu_new)
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

    fn q_attn_softmax(s: FloatTensor<Self>, m: AttnMask<Self>, out: DType) -> FloatTensor<Self> {
        let AttnMask { mask, div } = m;
        match AttnSoftmaxBackward
            .prepare::<C>([s.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let p = B::q_attn_softmax(
                    s.primitive,
                    AttnMask {
                        mask: mask.clone(),
                        div,
                    },
                    out,
                );
                prep.finish((p.clone(), mask, div), p)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::q_attn_softmax(s.primitive, AttnMask { mask, div }, out))
            }
        }
    }

    fn q_attn_softmax_backward(
        p: FloatTensor<Self>,
        dp: FloatTensor<Self>,
        m: AttnMask<Self>,
    ) -> FloatTensor<Self> {
        let m = AttnMask {
            mask: m.mask,
            div: m.div,
        }; // the inner backend's (same mask type)
        let ds = B::q_attn_softmax_backward(p.primitive, dp.primitive, m);
        <Self as AutodiffBackend>::from_inner(ds)
    }

    fn q_attention(a: AttentionInput<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [a.q.node.clone(), a.k.node.clone(), a.v.node.clone()];
        let a = inner_attention::<B, C>(a);
        match AttentionBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (o, p) = B::q_attention(a.clone());
                let p_out = <Self as AutodiffBackend>::from_inner(p.clone());
                (prep.finish((a, p), o), p_out)
            }
            OpsKind::UnTracked(prep) => {
                let (o, p) = B::q_attention(a);
                (prep.finish(o), <Self as AutodiffBackend>::from_inner(p))
            }
        }
    }

    fn q_attention_backward(
        a: AttentionInput<Self>,
        p: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        let a = inner_attention::<B, C>(a);
        B::q_attention_backward(a, p.primitive, d_o.primitive)
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

    fn q_layer_norm(n: NormInput<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        let b = b.primitive;
        // The weight and bias are frozen base weights: no gradient (the bias is not needed).
        let norm = NormBackward(Norm::Layer);
        recorded::<B, C, _, _>(norm, x, (w.primitive, eps), |x, (w, eps)| {
            B::q_layer_norm(NormInput { x, w, eps }, b.clone())
        })
    }

    fn q_layer_norm_backward(n: NormInput<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        untracked_norm_dx::<B, C>(Norm::Layer, n, dy)
    }

    fn q_rotary(x: FloatTensor<Self>, r: RotaryOptions<Self>) -> FloatTensor<Self> {
        rotated::<B, C>(Rotation::Interleaved, x, r)
    }

    fn q_rms_norm(n: NormInput<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        // The weight is a frozen base weight: no gradient, only its value for the backward.
        let norm = NormBackward(Norm::Rms);
        recorded::<B, C, _, _>(norm, x, (w.primitive, eps), |x, (w, eps)| {
            B::q_rms_norm(NormInput { x, w, eps })
        })
    }

    fn q_rms_norm_backward(n: NormInput<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        untracked_norm_dx::<B, C>(Norm::Rms, n, dy)
    }

    fn q_silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        match SiluMulBackward
            .prepare::<C>([gate.node.clone(), up.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::q_silu_mul(gate.primitive.clone(), up.primitive.clone());
                prep.finish((gate.primitive, up.primitive), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_silu_mul(gate.primitive, up.primitive)),
        }
    }

    fn q_silu_mul_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        B::q_silu_mul_backward(gate.primitive, up.primitive, dy.primitive)
            .map(<Self as AutodiffBackend>::from_inner)
    }

    fn q_rotary_half(x: FloatTensor<Self>, r: RotaryOptions<Self>) -> FloatTensor<Self> {
        rotated::<B, C>(Rotation::Half, x, r)
    }

    fn q_select_rows(x: FloatTensor<Self>, idx: IntTensor<Self>) -> FloatTensor<Self> {
        let rows = x.primitive.shape().dims::<2>()[0];
        match SelectRowsBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = B::q_select_rows(x.primitive, idx.clone());
                prep.finish((idx, rows), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::q_select_rows(x.primitive, idx)),
        }
    }

    fn q_select_rows_backward(
        dy: FloatTensor<Self>,
        idx: IntTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self> {
        <Self as AutodiffBackend>::from_inner(B::q_select_rows_backward(dy.primitive, idx, rows))
    }

    fn q_cross_entropy(x: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        recorded::<B, C, _, _>(CrossEntropyBackward, x, targets, B::q_cross_entropy)
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

    fn q_linear_cross_entropy(
        x: FloatTensor<Self>,
        w: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        // The head is frozen: only x's node is a parent, w and the bias are read as values.
        let (w, bias) = (w.primitive, bias.map(|b| b.primitive));
        match LinearCrossEntropyBackward
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let dtype = x.primitive.dtype();
                let (nll, unit_dx) =
                    crate::head::loss_and_unit_dx::<B>(x.primitive, w, bias, targets);
                prep.finish((unit_dx, dtype), nll)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::q_linear_cross_entropy(x.primitive, w, bias, targets))
            }
        }
    }

    fn q_quantize(
        name: &str,
        w: FloatTensor<Self>,
        opts: QuantizeOptions,
    ) -> Result<(IntTensor<Self>, FloatTensor<Self>), KernelError> {
        let (codes, absmax) = B::q_quantize(name, w.primitive, opts)?;
        Ok((codes, <Self as AutodiffBackend>::from_inner(absmax)))
    }
}
