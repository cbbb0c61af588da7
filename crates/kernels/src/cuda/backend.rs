//! [`QBackend`] for `CubeBackend<CudaRuntime, F, I, BT>` (= `burn_cuda::Cuda` built without the
//! `fusion` feature): CubeCL dequant into a transient buffer in the activation's dtype, then a
//! cuBLAS GEMM on the same stream (a dense frozen weight goes to the GEMM as it is). The
//! transient buffer goes back to cubecl's memory pool as soon as the GEMM is enqueued (reuse is
//! stream-ordered), so consecutive layers reuse the same pool pages: that pool is the
//! per-device dequant scratch.

use burn::tensor::{
    backend::Backend,
    ops::{FloatTensor, IntTensor},
    DType, Tensor, TensorData, TensorPrimitive,
};
use burn_cubecl::{BoolElement, CubeBackend, FloatElement, IntElement};
use cubecl::cuda::CudaRuntime;

use super::gemm::{bmm_scaled, gemm, gemm_acc, OneRow, Product};
use super::launch;
use super::nf4_gemm::Epi;
use crate::{
    Adam8Input, Adam8State, AttentionInput, AttnMask, BiasAct, FrozenPrimitive, GemmAccOptions,
    GemmOptions, KernelError, NormInput, QBackend, QWeightPrimitive, QuantizeOptions,
    RotaryOptions,
};

/// A frozen weight as a dense row-major `[out, in]` tensor in `dtype` for a GEMM (the epilogue
/// GEMMs read it as stored densely): a quantized one dequantized into a transient buffer, a
/// dense one as it is (cast where its dtype differs, copied where its layout is not dense).
fn dense_of<F: FloatElement, I: IntElement, BT: BoolElement>(
    w: FrozenPrimitive<CubeBackend<CudaRuntime, F, I, BT>>,
    dtype: DType,
) -> FloatTensor<CubeBackend<CudaRuntime, F, I, BT>> {
    match w {
        FrozenPrimitive::Quant(w) => {
            launch::dequantize::<CudaRuntime, CubeBackend<CudaRuntime, F, I, BT>>(w, dtype)
        }
        FrozenPrimitive::Dense(w) if w.dtype == dtype => burn_cubecl::kernel::into_contiguous(w),
        FrozenPrimitive::Dense(w) => {
            burn_cubecl::kernel::into_contiguous(burn_cubecl::kernel::cast(w, dtype))
        }
    }
}

impl<F: FloatElement, I: IntElement, BT: BoolElement> QBackend
    for CubeBackend<CudaRuntime, F, I, BT>
{
    fn q_dequantize(w: QWeightPrimitive<Self>, dtype: DType) -> FloatTensor<Self> {
        launch::dequantize::<CudaRuntime, Self>(w, dtype)
    }

    fn q_linear(x: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self> {
        // One row (batch-1 decode): a GEMV straight from the codes, no dense weight.
        if let Some(y) = super::gemv::gemv::<CudaRuntime, Self>(&x, &w) {
            return y;
        }
        // A few hundred rows (the prefill): a GEMM straight from 4-bit codes.
        if let Some(y) = super::nf4_gemm::nf4_linear(&x, &w, Epi::Plain, None, None) {
            return y;
        }
        // Pitfall 3 of the notes: W must be in x's dtype, a mixed GEMM is garbage.
        let wd = launch::dequantize::<CudaRuntime, Self>(w, x.dtype);
        gemm::<Self>(x, &wd, Product::ATransB)
    }

    fn q_linear_parts(
        x: FloatTensor<Self>,
        ws: Vec<QWeightPrimitive<Self>>,
    ) -> Vec<FloatTensor<Self>> {
        let refs: Vec<&QWeightPrimitive<Self>> = ws.iter().collect();
        if let Some(ys) = super::gemv::gemv_parts::<CudaRuntime, Self>(&x, &refs) {
            return ys;
        }
        ws.into_iter()
            .map(|w| Self::q_linear(x.clone(), w))
            .collect()
    }

    fn q_linear_add(
        x: FloatTensor<Self>,
        w: QWeightPrimitive<Self>,
        adds: Vec<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        if let Some(y) = super::gemv::gemv_add::<CudaRuntime, Self>(&x, &w, &adds) {
            return y;
        }
        adds.into_iter().fold(Self::q_linear(x, w), |y, a| {
            <Self as burn::tensor::ops::FloatTensorOps<Self>>::float_add(y, a)
        })
    }

    fn q_linear_dx(dy: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self> {
        let wd = launch::dequantize::<CudaRuntime, Self>(w, dy.dtype);
        gemm::<Self>(dy, &wd, Product::AB)
    }

    fn q_linear_bias_act(
        x: FloatTensor<Self>,
        w: FrozenPrimitive<Self>,
        bias: FloatTensor<Self>,
        act: BiasAct,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>) {
        let m = x.meta.shape()[0];
        // One row (decode) of a quantized weight: the GEMV with the bias (and `gelu_new`) on
        // its f32 sum.
        if let (1, FrozenPrimitive::Quant(q)) = (m, &w) {
            let y = match act {
                BiasAct::Bias => {
                    super::gemv::gemv_add::<CudaRuntime, Self>(&x, q, std::slice::from_ref(&bias))
                }
                BiasAct::GeluNew => super::gemv::gemv_bias_gelu::<CudaRuntime, Self>(&x, q, &bias),
                BiasAct::GeluNewAux => None,
            };
            if let Some(y) = y {
                return (y, None);
            }
        }
        if let (BiasAct::GeluNew, FrozenPrimitive::Quant(q)) = (act, &w) {
            if let Some(y) = super::nf4_gemm::nf4_linear(&x, q, Epi::BiasGelu, Some(&bias), None) {
                return (y, None);
            }
        }
        if !super::epilogue::fits(m, w.shape()[0], x.dtype) {
            return crate::mlp::linear_bias_act_ops::<Self>(x, w, bias, act);
        }
        let wd = dense_of(w, x.dtype);
        super::epilogue::linear_bias_act(x, &wd, bias, act)
    }

    fn q_mlp_gelu_new_plus(
        x: FloatTensor<Self>,
        [w_in, w_out]: [FrozenPrimitive<Self>; 2],
        [b_in, b_out]: [FloatTensor<Self>; 2],
        adds: Vec<FloatTensor<Self>>,
    ) -> FloatTensor<Self> {
        use burn::tensor::ops::FloatTensorOps;
        let (m, n) = (x.meta.shape()[0], w_out.shape()[0]);
        if adds.is_empty() || !super::epilogue::fits(m, n, x.dtype) {
            return crate::mlp::mlp_gelu_new_plus_ops::<Self>(
                x,
                [w_in, w_out],
                [b_in, b_out],
                adds,
            );
        }
        let (h, _) = Self::q_linear_bias_act(x, w_in, b_in, BiasAct::GeluNew);
        // The adds summed first (one pass; Burn writes in place where it can), then the GEMM
        // accumulates onto that sum in place; a sum something else still holds (one add that is
        // the caller's tensor) gets the bias epilogue and one add after.
        let mut adds = adds.into_iter();
        let first = adds.next().expect("at least one add");
        let acc = burn_cubecl::kernel::into_contiguous(adds.fold(first, Self::float_add));
        if let FrozenPrimitive::Quant(q) = &w_out {
            let fused = super::nf4_gemm::nf4_linear(&h, q, Epi::BiasAdd, Some(&b_out), Some(&acc));
            if let Some(y) = fused {
                return y;
            }
        }
        let wd = dense_of(w_out, h.dtype);
        if super::epilogue::accumulates_into(&acc, [m, n]) {
            super::epilogue::linear_bias_acc(h, &wd, b_out, acc)
        } else {
            let (y, _) = super::epilogue::linear_bias_act(h, &wd, b_out, BiasAct::Bias);
            Self::float_add(y, acc)
        }
    }

    fn q_linear_dx_dgelu(
        dy: FloatTensor<Self>,
        w: FrozenPrimitive<Self>,
        pre: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let m = dy.meta.shape()[0];
        if !super::epilogue::fits(m, w.shape()[1], dy.dtype) {
            return crate::mlp::linear_dx_dgelu_ops::<Self>(dy, w, pre);
        }
        let wd = dense_of(w, dy.dtype);
        super::epilogue::dx_dgelu(dy, &wd, pre)
    }

    fn q_gemm(a: FloatTensor<Self>, b: FloatTensor<Self>, opts: GemmOptions) -> FloatTensor<Self> {
        bmm_scaled::<Self>(a, b, opts, OneRow::Gemv)
    }

    fn q_gemm_acc(
        c: FloatTensor<Self>,
        [a, b]: [FloatTensor<Self>; 2],
        opts: GemmAccOptions,
    ) -> FloatTensor<Self> {
        let GemmAccOptions { ta, tb, alpha } = opts;
        gemm_acc::<Self>(c, a, b, ta, tb, alpha, OneRow::Gemv)
    }

    fn q_write_row(
        dst: FloatTensor<Self>,
        src: FloatTensor<Self>,
        row: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        super::decode::write_row::<Self>(dst, src, row)
    }

    fn q_rope_write_kv(r: crate::RopeKvInput<Self>) -> [FloatTensor<Self>; 3] {
        match super::rope_kv::rope_write_kv::<Self>(r) {
            Ok(out) => out,
            Err(r) => crate::decode::rope_write_kv_ops::<Self>(r),
        }
    }

    fn q_greedy_advance(state: IntTensor<Self>, logits: FloatTensor<Self>) -> IntTensor<Self> {
        super::decode::greedy_advance::<Self>(state, logits)
    }

    fn q_graph_capture(
        device: &Self::Device,
        record: &mut dyn FnMut(),
    ) -> Result<Option<Box<dyn crate::DeviceGraph>>, KernelError> {
        super::decode::capture(device, record)
    }

    fn q_park(x: FloatTensor<Self>) -> crate::Place<Self> {
        super::park::park::<F, I, BT>(x)
    }

    fn q_parks_to_host() -> bool {
        true
    }

    fn q_check_device(device: &Self::Device, dtype: DType) -> Result<(), KernelError> {
        super::upload::check_device(device.index, dtype)
    }

    fn q_upload_float(data: TensorData, device: &Self::Device) -> FloatTensor<Self> {
        match data.dtype {
            DType::F32 | DType::F16 | DType::BF16 => {
                super::upload::upload(&data.bytes, data.shape.clone(), data.dtype, device)
            }
            _ => <Self as burn::tensor::ops::FloatTensorOps<Self>>::float_from_data(data, device),
        }
    }

    fn q_upload_int(data: TensorData, device: &Self::Device) -> IntTensor<Self> {
        match data.dtype {
            DType::U8 | DType::I32 | DType::I64 => {
                super::upload::upload(&data.bytes, data.shape.clone(), data.dtype, device)
            }
            _ => <Self as burn::tensor::ops::IntTensorOps<Self>>::int_from_data(data, device),
        }
    }

    fn q_cat_flat(parts: Vec<FloatTensor<Self>>) -> FloatTensor<Self> {
        super::concat::cat_flat(parts)
    }

    fn q_adam8_blockwise(
        a: Adam8Input<Self>,
    ) -> Result<(FloatTensor<Self>, Adam8State<Self>), Adam8Input<Self>> {
        super::fused::adam8_blockwise::<CudaRuntime, Self>(a)
    }

    fn q_lora_acc_parts(
        ys: Vec<FloatTensor<Self>>,
        x: FloatTensor<Self>,
        factors: Vec<[FloatTensor<Self>; 2]>,
        opts: Vec<crate::LoraOptions>,
    ) -> Vec<FloatTensor<Self>> {
        let no_dropout = opts.iter().all(|o| o.dropout.is_none_or(|(p, _)| p == 0.0));
        if !no_dropout || ys.len() != factors.len() || ys.len() != opts.len() {
            return crate::lora::acc_parts_each::<Self>(ys, x, factors, opts);
        }
        // The factors in x's dtype (nothing to do when a generation cast them already).
        let factors: Vec<[FloatTensor<Self>; 2]> = factors
            .into_iter()
            .map(|ab| {
                let [_, a, b] = Self::q_lora_prep(x.clone(), None, ab);
                [a, b]
            })
            .collect();
        let scalings: Vec<f32> = opts.iter().map(|o| o.scaling).collect();
        match super::gemv::lora_acc_parts(ys, &x, &factors, &scalings) {
            Ok(ys) => ys,
            Err(ys) => crate::lora::acc_parts_each::<Self>(ys, x, factors, opts),
        }
    }

    fn q_lora_prep(
        x: FloatTensor<Self>,
        dropout: Option<(f32, u64)>,
        factors: [FloatTensor<Self>; 2],
    ) -> [FloatTensor<Self>; 3] {
        let [a, b] = &factors;
        if super::fused::lora_prep_fits(&x, [a, b]) {
            super::fused::lora_prep(x, dropout, factors)
        } else {
            crate::lora::prep_ops::<Self>(x, dropout, factors)
        }
    }

    fn q_dropout(x: FloatTensor<Self>, p: f32, seed: u64) -> FloatTensor<Self> {
        super::fused::dropout(x, p, seed)
    }

    fn q_gelu_new(x: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        super::fused::gelu_new(x, bias, None)
    }

    fn q_gelu_new_backward(
        x: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        super::fused::gelu_new(x, bias, Some(dy))
    }

    fn q_attn_softmax(s: FloatTensor<Self>, m: AttnMask<Self>, out: DType) -> FloatTensor<Self> {
        super::fused::attn_softmax(s, m.mask, m.div, out)
    }

    fn q_attn_softmax_backward(
        p: FloatTensor<Self>,
        dp: FloatTensor<Self>,
        m: AttnMask<Self>,
    ) -> FloatTensor<Self> {
        super::fused::attn_softmax_backward(p, dp, m.mask, m.div, DType::F32)
    }

    fn q_attention(a: AttentionInput<Self>) -> (FloatTensor<Self>, FloatTensor<Self>) {
        super::attention::attention(a.q, a.k, a.v, a.mask, a.div)
    }

    fn q_attention_output(a: AttentionInput<Self>) -> FloatTensor<Self> {
        match super::flash_attn::flash_attention(&a.q, &a.k, &a.v, a.mask.as_ref(), a.div) {
            Some(o) => o,
            None => super::attention::attention(a.q, a.k, a.v, a.mask, a.div).0,
        }
    }

    fn q_attention_backward(
        a: AttentionInput<Self>,
        p: FloatTensor<Self>,
        d_o: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3] {
        super::attention::attention_backward(a.q, a.k, a.v, p, d_o, a.mask, a.div)
    }

    fn q_layer_norm(n: NormInput<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        super::fused::layer_norm(x, w, b, None, eps)
    }

    fn q_layer_norm_backward(n: NormInput<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        let b = w.clone(); // unused by the backward
        super::fused::layer_norm(x, w, b, Some(dy), eps)
    }

    fn q_rotary(x: FloatTensor<Self>, r: RotaryOptions<Self>) -> FloatTensor<Self> {
        let RotaryOptions { cos, sin, inverse } = r;
        super::fused::rotary(x, cos, sin, inverse)
    }

    fn q_rms_norm(n: NormInput<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        super::fused::rms_norm(x, w, None, eps)
    }

    fn q_rms_norm_backward(n: NormInput<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        super::fused::rms_norm(x, w, Some(dy), eps)
    }

    fn q_silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        super::fused::silu_mul(gate, up)
    }

    fn q_silu_mul_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        super::fused::silu_mul_backward(gate, up, dy)
    }

    fn q_rotary_half(x: FloatTensor<Self>, r: RotaryOptions<Self>) -> FloatTensor<Self> {
        let RotaryOptions { cos, sin, inverse } = r;
        super::fused::rotary_half(x, cos, sin, inverse)
    }

    fn q_select_rows_backward(
        dy: FloatTensor<Self>,
        idx: IntTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self> {
        super::fused::scatter_rows(dy, idx, rows)
    }

    fn q_cross_entropy(x: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        super::fused::cross_entropy(x, targets, None)
    }

    fn q_cross_entropy_backward(
        x: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        super::fused::cross_entropy(x, targets, Some(g))
    }

    fn q_quantize(
        name: &str,
        w: FloatTensor<Self>,
        opts: QuantizeOptions,
    ) -> Result<(IntTensor<Self>, FloatTensor<Self>), KernelError> {
        let QuantizeOptions { format, blocksize } = opts;
        if !format.blocksizes().contains(&blocksize) {
            return Err(KernelError::Blocksize {
                name: name.to_string(),
                format,
                blocksize,
            });
        }
        // x·0 is NaN exactly when x is NaN or ±Inf, so one scalar read checks every value.
        let t = Tensor::<Self, 2>::from_primitive(TensorPrimitive::Float(w.clone()));
        let probe = t.mul_scalar(0.0).sum().into_data().convert::<f32>();
        let probe = probe.to_vec::<f32>().map_err(|e| KernelError::Readback {
            name: name.to_string(),
            field: "finiteness check",
            reason: format!("{e:?}"),
        })?;
        if probe.iter().any(|v| !v.is_finite()) {
            return Err(KernelError::NonFinite {
                name: name.to_string(),
            });
        }
        Ok(launch::quantize(w, format, blocksize))
    }
}

/// Wait for all queued work on `device` (kernels are asynchronous; timings and host reads need it).
pub fn sync<B: Backend>(device: &B::Device) {
    B::sync(device).unwrap_or_else(|e| panic!("qtune-kernels: device sync: {e:?}"));
}
