//! The reference of the Llama family's fused ops ([`QBackend::q_rms_norm`],
//! [`QBackend::q_silu_mul`], [`QBackend::q_rotary_half`] and their backwards), written with Burn
//! ops for any backend; the NdArray reference runs them.
//!
//! The forwards are, op for op, what `qtune-llama` computed with Burn ops before the fused
//! kernels (HF's `LlamaRMSNorm`, `rotate_half` and `apply_rotary_pos_emb` with their casts), so
//! in f32 they equal that code bit for bit (tests/llama_ops_cpu.rs). `silu_mul` rounds `silu`
//! once, as torch does (Burn's `silu` rounds the sigmoid and then `x·sigmoid` in a half dtype).
//! The backwards are the derivatives of those formulas in f32, returned in `x`'s dtype; roundings
//! of the forward are not differentiated (as autodiff through the Burn ops would not either).
//!
//! [`QBackend::q_rms_norm`]: crate::QBackend::q_rms_norm
//! [`QBackend::q_silu_mul`]: crate::QBackend::q_silu_mul
//! [`QBackend::q_rotary_half`]: crate::QBackend::q_rotary_half

use burn::tensor::{
    activation, backend::Backend, ops::FloatTensor, DType, Shape, Tensor, TensorMetadata,
    TensorPrimitive,
};

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `t` in `dtype` (no cast op when it already is, as `qtune_lm::to_dtype`).
fn to<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(dtype)
    }
}

/// Any-rank primitive → `[rows, last dim]` (its dtype kept), and the original shape.
fn rows<B: Backend>(x: FloatTensor<B>) -> (Tensor<B, 2>, Shape) {
    let shape = x.shape();
    let d = shape.as_slice().last().copied().unwrap_or(1).max(1);
    let n = shape.num_elements();
    (
        float::<B, 1>(B::float_reshape(x, Shape::new([n]))).reshape([n / d, d]),
        shape,
    )
}

fn back<B: Backend, const D: usize>(t: Tensor<B, D>, shape: Shape) -> FloatTensor<B> {
    B::float_reshape(t.into_primitive().tensor(), shape)
}

/// `(x in f32, (mean(x²) + eps)^(−1/2))` of `[rows, D]` rows, as HF `LlamaRMSNorm`
/// (`var.add(eps).sqrt().recip()`, exactly the Burn ops `qtune-llama` used).
fn rms_rstd<B: Backend>(x: Tensor<B, 2>, eps: f32) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let x = to(x, DType::F32);
    let var = x.clone().powi_scalar(2).mean_dim(1);
    (x, var.add_scalar(eps).sqrt().recip())
}

/// HF `LlamaRMSNorm`: `normed = x·rstd` in f32, cast to `x`'s dtype, times `w` in `x`'s dtype.
pub(crate) fn rms_norm<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    eps: f32,
) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    let dtype = x.dtype();
    let (xf, rstd) = rms_rstd(x, eps);
    let normed = xf * rstd;
    let w = to(float::<B, 1>(w), dtype).unsqueeze::<2>();
    back(to(normed, dtype) * w, shape)
}

/// `dx = r·g − x·r³·mean(g·x)` with `g = dy·w` (`w` as the forward used it: in `x`'s dtype),
/// f32 math, `x`'s dtype out.
pub(crate) fn rms_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    w: FloatTensor<B>,
    dy: FloatTensor<B>,
    eps: f32,
) -> FloatTensor<B> {
    let (x, shape) = rows::<B>(x);
    let dtype = x.dtype();
    let (dy, _) = rows::<B>(dy);
    let (xf, rstd) = rms_rstd(x, eps);
    let w = to(to(float::<B, 1>(w), dtype), DType::F32).unsqueeze::<2>();
    let g = to(dy, DType::F32) * w;
    let mgx = (g.clone() * xf.clone()).mean_dim(1);
    let r3 = rstd.clone().powi_scalar(3);
    let dx = g * rstd - xf * (r3 * mgx);
    back(to(dx, dtype), shape)
}

/// `silu(gate)` in f32 (Burn's `silu`), rounded to `gate`'s dtype, back in f32.
fn silu_rounded<B: Backend>(gate_f32: Tensor<B, 1>, dtype: DType) -> Tensor<B, 1> {
    to(to(activation::silu(gate_f32), dtype), DType::F32)
}

fn flat<B: Backend>(t: FloatTensor<B>) -> (Tensor<B, 1>, Shape) {
    let shape = t.shape();
    let n = shape.num_elements();
    (float::<B, 1>(B::float_reshape(t, Shape::new([n]))), shape)
}

/// `silu(gate)·up`: `silu` in f32 rounded to the dtype, then the product in the dtype.
pub(crate) fn silu_mul<B: Backend>(gate: FloatTensor<B>, up: FloatTensor<B>) -> FloatTensor<B> {
    let ((gate, shape), (up, _)) = (flat::<B>(gate), flat::<B>(up));
    let dtype = gate.dtype();
    let s = to(activation::silu(to(gate, DType::F32)), dtype);
    back(s * up, shape)
}

/// `[dy·up·silu'(gate), dy·silu(gate)]` with `silu' = σ·(1 + gate·(1 − σ))`, f32 math.
pub(crate) fn silu_mul_backward<B: Backend>(
    gate: FloatTensor<B>,
    up: FloatTensor<B>,
    dy: FloatTensor<B>,
) -> [FloatTensor<B>; 2] {
    let ((gate, shape), (up, _), (dy, _)) = (flat::<B>(gate), flat::<B>(up), flat::<B>(dy));
    let dtype = gate.dtype();
    let (g, u, d) = (to(gate, DType::F32), to(up, DType::F32), to(dy, DType::F32));
    let sig = activation::sigmoid(g.clone());
    let dsilu = sig.clone() * (g.clone() * sig.neg().add_scalar(1.0)).add_scalar(1.0);
    let dgate = d.clone() * u * dsilu;
    let dup = d * silu_rounded(g, dtype);
    [
        back(to(dgate, dtype), shape.clone()),
        back(to(dup, dtype), shape),
    ]
}

/// HF `apply_rotary_pos_emb` with `rotate_half`, cos/sin cast to `x`'s dtype and every product
/// and sum in that dtype; `inverse` negates `sin` (the inverse rotation).
pub(crate) fn rotary_half<B: Backend>(
    x: FloatTensor<B>,
    cos: FloatTensor<B>,
    sin: FloatTensor<B>,
    inverse: bool,
) -> FloatTensor<B> {
    let x = float::<B, 4>(x);
    let [b, t, _, hd] = x.dims();
    let half = hd / 2;
    let dtype = x.dtype();
    let cos = to(float::<B, 5>(cos), dtype).reshape([b, t, 1, half]);
    let sin = to(float::<B, 5>(sin), dtype).reshape([b, t, 1, half]);
    let sin = if inverse { sin.neg() } else { sin };
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let lo = x1.clone() * cos.clone() - x2.clone() * sin.clone();
    let hi = x2 * cos + x1 * sin;
    Tensor::cat(vec![lo, hi], 3).into_primitive().tensor()
}
