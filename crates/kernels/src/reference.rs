//! The CPU reference: [`QBackend`] for [`NdArray`] by dequantizing on the host with `qtune-quant`
//! (bit-identical to bitsandbytes by that crate's tests), then Burn's matmul. Also the helpers
//! the GPU self-test uses to compare a device result with the host reference. The Llama family's
//! ops (RMSNorm, SwiGLU's product, rotate-half RoPE) run the Burn-op reference in `llama_ops.rs`.

use burn::backend::NdArray;
use burn::tensor::ops::FloatTensorOps;
use burn::tensor::{
    backend::Backend,
    ops::{FloatTensor, IntTensor},
    Bool, DType, Int, Tensor, TensorData, TensorMetadata, TensorPrimitive,
};
use qtune_quant::{Absmax, FloatDType, NestedAbsmax, QuantFormat, QuantSpec, QuantizedTensor};

use crate::{
    AbsmaxPrimitive, AttnMask, GemmOptions, KernelError, NormInput, QBackend, QWeightPrimitive,
    QuantizeOptions, RotaryOptions,
};

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

fn host_u8<B: Backend>(field: &'static str, t: &IntTensor<B>) -> Result<Vec<u8>, KernelError> {
    let err = |reason: String| KernelError::Readback {
        name: "<weight>".into(),
        field,
        reason,
    };
    let data = Tensor::<B, 1, Int>::from_primitive(t.clone())
        .try_into_data()
        .map_err(|e| err(format!("{e:?}")))?;
    data.convert::<u8>()
        .into_vec::<u8>()
        .map_err(|e| err(format!("{e:?}")))
}

fn host_f32<B: Backend>(field: &'static str, t: &FloatTensor<B>) -> Result<Vec<f32>, KernelError> {
    let err = |reason: String| KernelError::Readback {
        name: "<weight>".into(),
        field,
        reason,
    };
    let data = float::<B, 1>(t.clone())
        .try_into_data()
        .map_err(|e| err(format!("{e:?}")))?;
    data.convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| err(format!("{e:?}")))
}

/// Read a weight primitive back into a host [`QuantizedTensor`] (any backend).
///
/// # Errors
/// [`KernelError::Readback`] if a device read fails.
pub fn host_quantized<B: Backend>(w: &QWeightPrimitive<B>) -> Result<QuantizedTensor, KernelError> {
    let l = w.layout;
    let absmax = match &w.absmax {
        AbsmaxPrimitive::Plain(a) => Absmax::Plain(host_f32::<B>("absmax", a)?),
        AbsmaxPrimitive::Nested(n) => Absmax::Nested(NestedAbsmax {
            codes: host_u8::<B>("nested_codes", &n.codes)?,
            absmax: host_f32::<B>("nested_absmax", &n.absmax)?,
            offset: n.offset,
            blocksize: n.blocksize,
        }),
    };
    Ok(QuantizedTensor {
        format: l.format,
        shape: vec![l.out_features, l.in_features],
        blocksize: l.blocksize,
        codes: host_u8::<B>("codes", &w.codes)?,
        absmax,
        dtype: FloatDType::F32,
    })
}

/// Dense weight through the host reference, uploaded as F32 then cast to `dtype`.
fn dequantize_on_host<B: Backend>(w: &QWeightPrimitive<B>, dtype: DType) -> Tensor<B, 2> {
    let device = B::int_device(&w.codes);
    let q = host_quantized(w).unwrap_or_else(|e| panic!("{e}"));
    let values = q.dequantize();
    let dense = Tensor::<B, 2>::from_data(
        TensorData::new(values, [w.layout.out_features, w.layout.in_features]),
        (&device, DType::F32),
    );
    if dtype == DType::F32 {
        dense
    } else {
        dense.cast(dtype)
    }
}

/// Host quantization with `qtune-quant`, uploaded as (U8 codes, F32 absmax).
fn quantize_on_host<B: Backend>(
    name: &str,
    w: FloatTensor<B>,
    format: QuantFormat,
    blocksize: usize,
) -> Result<(IntTensor<B>, FloatTensor<B>), KernelError> {
    let w = float::<B, 2>(w);
    let device = w.device();
    let shape = w.dims();
    let values = w
        .try_into_data()
        .map_err(|e| KernelError::Readback {
            name: name.to_string(),
            field: "weight",
            reason: format!("{e:?}"),
        })?
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| KernelError::Readback {
            name: name.to_string(),
            field: "weight",
            reason: format!("{e:?}"),
        })?;
    let spec = QuantSpec {
        format,
        blocksize,
        double_quant: false,
    };
    let q = QuantizedTensor::quantize(name, &values, &shape, spec, FloatDType::F32).map_err(
        |source| KernelError::Quant {
            name: name.to_string(),
            source,
        },
    )?;
    let Absmax::Plain(absmax) = q.absmax else {
        unreachable!("double_quant was false")
    };
    let codes = Tensor::<B, 1, Int>::from_data(
        TensorData::new(q.codes.clone(), [q.codes.len()]),
        (&device, DType::U8),
    );
    let absmax = Tensor::<B, 1>::from_data(
        TensorData::new(absmax.clone(), [absmax.len()]),
        (&device, DType::F32),
    );
    Ok((codes.into_primitive(), absmax.into_primitive().tensor()))
}

/// Any-rank float primitive → `[rows, last dim]` f32 tensor, and its original dtype.
fn rows_f32(x: FloatTensor<NdArray>) -> (Tensor<NdArray, 2>, DType) {
    let shape = x.shape();
    let d = shape.as_slice().last().copied().unwrap_or(1);
    let rows = shape.num_elements() / d.max(1);
    let x = float::<NdArray, 1>(<NdArray as FloatTensorOps<NdArray>>::float_reshape(
        x,
        burn::tensor::Shape::new([shape.num_elements()]),
    ));
    let dtype = x.dtype();
    (x.reshape([rows, d]).cast(DType::F32), dtype)
}

/// [`rows_f32`] of `x` plus `bias [D]` on every row (when given; added in f32, as the CUDA
/// kernel does), and `x`'s dtype.
fn with_bias(
    x: FloatTensor<NdArray>,
    bias: Option<FloatTensor<NdArray>>,
) -> (Tensor<NdArray, 2>, DType) {
    let (x, dtype) = rows_f32(x);
    match bias {
        Some(b) => (
            x + float::<NdArray, 1>(b).cast(DType::F32).unsqueeze::<2>(),
            dtype,
        ),
        None => (x, dtype),
    }
}

/// √(2/π), HF `NewGELUActivation`'s constant.
const GELU_C: f64 = 0.797_884_560_802_865_4;

impl QBackend for NdArray {
    fn q_dequantize(w: QWeightPrimitive<Self>, dtype: DType) -> FloatTensor<Self> {
        dequantize_on_host(&w, dtype).into_primitive().tensor()
    }

    fn q_linear(x: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self> {
        let x = float::<Self, 2>(x);
        let wd = dequantize_on_host(&w, x.dtype());
        x.matmul(wd.transpose()).into_primitive().tensor()
    }

    fn q_linear_dx(dy: FloatTensor<Self>, w: QWeightPrimitive<Self>) -> FloatTensor<Self> {
        let dy = float::<Self, 2>(dy);
        let wd = dequantize_on_host(&w, dy.dtype());
        dy.matmul(wd).into_primitive().tensor()
    }

    fn q_dropout(x: FloatTensor<Self>, p: f32, seed: u64) -> FloatTensor<Self> {
        let shape = x.shape();
        let (x, dtype) = rows_f32(x);
        let device = x.device();
        // NdArray holds the values on the host already; indices are u32 as on the GPU.
        let v = x
            .into_data()
            .into_vec::<f32>()
            .expect("rows_f32 returns F32");
        assert!(
            u32::try_from(v.len()).is_ok(),
            "qtune-kernels: dropout of more than 2³² values"
        );
        let (threshold, scale) = crate::dropout::params(p);
        let y: Vec<f32> = v
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if crate::dropout::keep(seed, i as u32, threshold) {
                    x * scale
                } else {
                    0.0
                }
            })
            .collect();
        let y = Tensor::<Self, 1>::from_data(TensorData::new(y, [v.len()]), (&device, DType::F32));
        <Self as FloatTensorOps<Self>>::float_reshape(
            y.cast(dtype).into_primitive().tensor(),
            shape,
        )
    }

    fn q_gelu_new(x: FloatTensor<Self>, bias: Option<FloatTensor<Self>>) -> FloatTensor<Self> {
        let shape = x.shape();
        let (x, dtype) = with_bias(x, bias);
        let t = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715))
            .mul_scalar(GELU_C)
            .tanh();
        let y = x.mul_scalar(0.5) * t.add_scalar(1.0);
        <Self as FloatTensorOps<Self>>::float_reshape(
            y.cast(dtype).into_primitive().tensor(),
            shape,
        )
    }

    fn q_gelu_new_backward(
        x: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let shape = x.shape();
        let ((x, dtype), (dy, _)) = (with_bias(x, bias), rows_f32(dy));
        let x2 = x.clone().powi_scalar(2);
        let t = (x.clone() + x.clone().powi_scalar(3).mul_scalar(0.044715))
            .mul_scalar(GELU_C)
            .tanh();
        let inner = x2.mul_scalar(0.134145).add_scalar(1.0).mul_scalar(GELU_C);
        let one_minus_t2 = t.clone().powi_scalar(2).neg().add_scalar(1.0);
        let d = t.add_scalar(1.0).mul_scalar(0.5) + x.mul_scalar(0.5) * one_minus_t2 * inner;
        <Self as FloatTensorOps<Self>>::float_reshape(
            (dy * d).cast(dtype).into_primitive().tensor(),
            shape,
        )
    }

    fn q_attn_softmax(s: FloatTensor<Self>, m: AttnMask<Self>, out: DType) -> FloatTensor<Self> {
        let AttnMask { mask, div } = m;
        let s = float::<Self, 4>(s).div_scalar(div);
        let s = match mask {
            Some(m) => {
                let dims = s.dims();
                s.mask_fill(
                    Tensor::<Self, 4, Bool>::from_primitive(m).expand(dims),
                    f32::MIN,
                )
            }
            None => s,
        };
        let p = burn::tensor::activation::softmax(s, 3);
        let p = if p.dtype() == out { p } else { p.cast(out) };
        p.into_primitive().tensor()
    }

    fn q_attn_softmax_backward(
        p: FloatTensor<Self>,
        dp: FloatTensor<Self>,
        m: AttnMask<Self>,
    ) -> FloatTensor<Self> {
        let AttnMask { mask, div } = m;
        let (p, dp) = (
            float::<Self, 4>(p).cast(DType::F32),
            float::<Self, 4>(dp).cast(DType::F32),
        );
        let dot = (p.clone() * dp.clone()).sum_dim(3);
        let ds = (p * (dp - dot)).div_scalar(div);
        let ds = match mask {
            Some(m) => {
                let dims = ds.dims();
                ds.mask_fill(Tensor::<Self, 4, Bool>::from_primitive(m).expand(dims), 0.0)
            }
            None => ds,
        };
        ds.into_primitive().tensor()
    }

    fn q_layer_norm(n: NormInput<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        let shape = x.shape();
        let (x, dtype) = rows_f32(x);
        let (var, mean) = x.clone().var_mean_bias(1);
        let y = (x - mean).div(var.add_scalar(eps).sqrt());
        let w = float::<Self, 1>(w).cast(DType::F32).unsqueeze::<2>();
        let b = float::<Self, 1>(b).cast(DType::F32).unsqueeze::<2>();
        let y = (y * w + b).cast(dtype).into_primitive().tensor();
        <Self as FloatTensorOps<Self>>::float_reshape(y, shape)
    }

    fn q_layer_norm_backward(n: NormInput<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        let shape = x.shape();
        let (x, dtype) = rows_f32(x);
        let (dy, _) = rows_f32(dy);
        let (var, mean) = x.clone().var_mean_bias(1);
        let rstd = var.add_scalar(eps).sqrt().recip();
        let xh = (x - mean) * rstd.clone();
        let g = dy * float::<Self, 1>(w).cast(DType::F32).unsqueeze::<2>();
        let mg = g.clone().mean_dim(1);
        let mgx = (g.clone() * xh.clone()).mean_dim(1);
        let dx = ((g - mg - xh * mgx) * rstd)
            .cast(dtype)
            .into_primitive()
            .tensor();
        <Self as FloatTensorOps<Self>>::float_reshape(dx, shape)
    }

    fn q_rotary(x: FloatTensor<Self>, r: RotaryOptions<Self>) -> FloatTensor<Self> {
        let RotaryOptions { cos, sin, inverse } = r;
        let x = float::<Self, 4>(x);
        let (cos, sin) = (float::<Self, 5>(cos), float::<Self, 5>(sin));
        let sin = if inverse { sin.neg() } else { sin };
        let [b, t, h, hd] = x.dims();
        let half = cos.dims()[3];
        let rot = 2 * half;
        let dtype = x.dtype();
        let x = x.cast(DType::F32);
        let x_rot = x.clone().narrow(3, 0, rot).reshape([b, t, h, half, 2]);
        let x1 = x_rot.clone().narrow(4, 0, 1);
        let x2 = x_rot.narrow(4, 1, 1);
        let o1 = x1.clone() * cos.clone() - x2.clone() * sin.clone();
        let o2 = x2 * cos + x1 * sin;
        let rotated = Tensor::cat(vec![o1, o2], 4).reshape([b, t, h, rot]);
        let out = if rot < hd {
            Tensor::cat(vec![rotated, x.narrow(3, rot, hd - rot)], 3)
        } else {
            rotated
        };
        out.cast(dtype).into_primitive().tensor()
    }

    fn q_rms_norm(n: NormInput<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        crate::llama_ops::rms_norm::<Self>(x, w, eps)
    }

    fn q_rms_norm_backward(n: NormInput<Self>, dy: FloatTensor<Self>) -> FloatTensor<Self> {
        let NormInput { x, w, eps } = n;
        crate::llama_ops::rms_norm_backward::<Self>(x, w, dy, eps)
    }

    fn q_silu_mul(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        crate::llama_ops::silu_mul::<Self>(gate, up)
    }

    fn q_silu_mul_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dy: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        crate::llama_ops::silu_mul_backward::<Self>(gate, up, dy)
    }

    fn q_rotary_half(x: FloatTensor<Self>, r: RotaryOptions<Self>) -> FloatTensor<Self> {
        let RotaryOptions { cos, sin, inverse } = r;
        crate::llama_ops::rotary_half::<Self>(x, cos, sin, inverse)
    }

    fn q_cross_entropy(x: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        let x = float::<Self, 2>(x).cast(DType::F32);
        let [rows, _] = x.dims();
        let t = Tensor::<Self, 1, Int>::from_primitive(targets).reshape([rows, 1]);
        let mx = x.clone().max_dim(1);
        let lse = (x.clone() - mx.clone()).exp().sum_dim(1).log() + mx;
        (lse - x.gather(1, t))
            .reshape([rows])
            .into_primitive()
            .tensor()
    }

    fn q_cross_entropy_backward(
        x: FloatTensor<Self>,
        targets: IntTensor<Self>,
        g: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let x = float::<Self, 2>(x);
        let dtype = x.dtype();
        let [rows, _] = x.dims();
        let g = float::<Self, 1>(g).cast(DType::F32).reshape([rows, 1]);
        let t = Tensor::<Self, 1, Int>::from_primitive(targets).reshape([rows, 1]);
        let p = burn::tensor::activation::softmax(x.cast(DType::F32), 1) * g.clone();
        p.scatter(1, t, g.neg(), burn::tensor::IndexingUpdateOp::Add)
            .cast(dtype)
            .into_primitive()
            .tensor()
    }

    fn q_gemm(a: FloatTensor<Self>, b: FloatTensor<Self>, opts: GemmOptions) -> FloatTensor<Self> {
        let GemmOptions { ta, tb, out, alpha } = opts;
        let (a, b) = (float::<Self, 3>(a), float::<Self, 3>(b));
        let a = if ta { a.swap_dims(1, 2) } else { a };
        let b = if tb { b.swap_dims(1, 2) } else { b };
        let c = a.matmul(b);
        let c = if alpha == 1.0 { c } else { c.mul_scalar(alpha) };
        let c = if c.dtype() == out { c } else { c.cast(out) };
        c.into_primitive().tensor()
    }

    fn q_quantize(
        name: &str,
        w: FloatTensor<Self>,
        opts: QuantizeOptions,
    ) -> Result<(IntTensor<Self>, FloatTensor<Self>), KernelError> {
        quantize_on_host::<Self>(name, w, opts.format, opts.blocksize)
    }
}
