//! The three per-tensor update rules, as tensor ops on the (non-autodiff) backend so the state
//! stays on the parameter's device. All tensors are flattened to 1-D.
//!
//! - [`torch_adamw`]: `torch.optim.AdamW` (single-tensor path): decay first, then Adam with
//!   bias corrections computed in f64 by Python and cast to f32 per op.
//! - [`bnb_adam32`]: bitsandbytes `kOptimizer32bit2State<ADAM>`, used by `AdamW8bit` for tensors
//!   below `min_8bit_size`: bias corrections folded into the step size, eps scaled by
//!   `sqrt(1 - beta2^t)`, decoupled decay applied *after* the update, all in f32.
//! - [`bnb_adam8_blockwise`]: bitsandbytes `kOptimizerStatic8bit2StateBlockwise<ADAM, 256>`:
//!   dequantize both moments, the same f32 math as above, new per-block absmax, requantize.

use crate::blockwise::{dequantize, quantize_2d, Maps, BLOCK};
use burn::tensor::{backend::Backend, DType, FloatDType, Int, IntDType, Tensor, TensorPrimitive};
use qtune_kernels::{Adam8Input, Adam8Scalars, Adam8State, QBackend};

/// Adam hyperparameters in the precision the reference implementations hold them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hyper {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// One optimizer step's scalars: the 1-based step count (after incrementing), the learning rate
/// and the Adam hyperparameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    pub n: u64,
    pub lr: f64,
    pub h: Hyper,
}

/// A flat f32 parameter with its two Adam moment estimates (`exp_avg`, `exp_avg_sq` in torch,
/// `state1`, `state2` in bitsandbytes), all of one length.
#[derive(Debug, Clone)]
pub(crate) struct AdamTensors<B: Backend> {
    pub p: Tensor<B, 1>,
    pub m: Tensor<B, 1>,
    pub v: Tensor<B, 1>,
}

/// `a * b + c` rounded once to f32, as the FMA torch's CPU kernels use (`lerp` explicitly,
/// `addcmul` by compiler contraction). The f64 product of two f32 values is exact, so only the
/// f64 sum and the final cast round; that double rounding differs from a true FMA only when
/// the f64 sum lands exactly on an f32 tie, which the trace test has never hit.
/// A backend without f64 arithmetic gets the plain f32 `a * b + c` (two roundings); on the
/// fixture trace that variant (emulated in numpy) stays at max|d|/max|p| = 4.9e-8 from torch.
fn fma_f32<B: Backend>(a: Tensor<B, 1>, b: Tensor<B, 1>, c: Tensor<B, 1>) -> Tensor<B, 1> {
    if !B::supports_dtype(&a.device(), DType::F64) {
        return a * b + c;
    }
    let f64 = |t: Tensor<B, 1>| t.cast(FloatDType::F64);
    (f64(a) * f64(b) + f64(c)).cast(FloatDType::F32)
}

/// `torch.optim.AdamW` for one tensor and its gradient `g`.
/// Operation for operation as torch 2.11's single-tensor path on CPU (the fixture's): over the
/// 20-step trace this reproduces torch bit for bit except for a handful of 1-ulp differences.
pub(crate) fn torch_adamw<B: Backend>(
    x: AdamTensors<B>,
    g: Tensor<B, 1>,
    s: Step,
) -> AdamTensors<B> {
    let Step { n: step, lr, h } = s;
    let AdamTensors {
        p,
        m: exp_avg,
        v: exp_avg_sq,
    } = x;
    // param.mul_(1 - lr * weight_decay): the factor is a Python float, cast to f32 by the op.
    let p = if h.weight_decay != 0.0 {
        p.mul_scalar((1.0 - lr * h.weight_decay) as f32)
    } else {
        p
    };
    // exp_avg.lerp_(grad, w = 1 - beta1): torch's vectorized lerp is fma(w, g - m, m) for
    // w < 0.5 (every usual beta1) and fma(w - 1, g - m, g) otherwise.
    let w = (1.0 - h.beta1) as f32;
    let (coeff, base) = if w < 0.5 {
        (w, exp_avg.clone())
    } else {
        (w - 1.0, g.clone())
    };
    let coeff = Tensor::<B, 1>::full(exp_avg.shape(), coeff, (&exp_avg.device(), DType::F32));
    let exp_avg = fma_f32(g.clone() - exp_avg, coeff, base);
    // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2) = fma((1-b2)*g, g, v*b2).
    let scaled_g = g.clone().mul_scalar((1.0 - h.beta2) as f32);
    let exp_avg_sq = fma_f32(scaled_g, g, exp_avg_sq.mul_scalar(h.beta2 as f32));
    // Python computes the bias corrections in f64; each op casts its scalar to f32.
    let t = step as f64;
    let bias_correction1 = 1.0 - h.beta1.powf(t);
    let bias_correction2_sqrt = (1.0 - h.beta2.powf(t)).sqrt();
    let step_size = lr / bias_correction1;
    let denom = exp_avg_sq
        .clone()
        .sqrt()
        .div_scalar(bias_correction2_sqrt as f32)
        .add_scalar(h.eps as f32);
    // param.addcdiv_(exp_avg, denom, value=-step_size) = p + (value * m) / denom.
    let p = p + exp_avg.clone().mul_scalar((-step_size) as f32) / denom;
    AdamTensors {
        p,
        m: exp_avg,
        v: exp_avg_sq,
    }
}

/// bitsandbytes' f32 scalars of one Adam step: (step_size, eps * correction2, decay factor).
fn bnb_scalars(s: Step) -> (f32, f32, Option<f32>) {
    let Step { n: step, lr, h } = s;
    let (b1, b2, lr32) = (h.beta1 as f32, h.beta2 as f32, lr as f32);
    let correction1 = 1.0f32 - b1.powf(step as f32);
    let correction2 = (1.0f32 - b2.powf(step as f32)).sqrt();
    let step_size = -lr32 * correction2 / correction1;
    let wd = h.weight_decay as f32;
    let decay = (wd > 0.0).then_some(1.0f32 - lr32 * wd);
    (step_size, correction2 * h.eps as f32, decay)
}

/// bitsandbytes' 32-bit Adam kernel (the `AdamW8bit` path for small tensors).
pub(crate) fn bnb_adam32<B: Backend>(
    x: AdamTensors<B>,
    g: Tensor<B, 1>,
    s: Step,
) -> AdamTensors<B> {
    let (step_size, eps_c2, decay) = bnb_scalars(s);
    let (
        AdamTensors {
            p,
            m: state1,
            v: state2,
        },
        h,
    ) = (x, s.h);
    let s1 = state1.mul_scalar(h.beta1 as f32) + g.clone().mul_scalar(1.0 - h.beta1 as f32);
    let s2 = state2.mul_scalar(h.beta2 as f32) + (g.clone() * g).mul_scalar(1.0 - h.beta2 as f32);
    let p = p + (s1.clone() / s2.clone().sqrt().add_scalar(eps_c2)).mul_scalar(step_size);
    let p = match decay {
        Some(f) => p.mul_scalar(f),
        None => p,
    };
    AdamTensors { p, m: s1, v: s2 }
}

/// 8-bit blockwise state of one tensor of `n` values: codes (U8, `n`) and absmax (`ceil(n/256)`).
#[derive(Debug, Clone)]
pub(crate) struct Blockwise8<B: Backend> {
    pub state1: Tensor<B, 1, Int>,
    pub absmax1: Tensor<B, 1>,
    pub state2: Tensor<B, 1, Int>,
    pub absmax2: Tensor<B, 1>,
}

impl<B: Backend> Blockwise8<B> {
    /// Fresh state: all moments zero (bnb starts from zero codes and zero absmax; any code
    /// times a zero absmax is 0, we store the zero codes so the state reads as zeros).
    pub fn zeros(n: usize, maps: &Maps<B>, device: &B::Device) -> Self {
        let nb = n.div_ceil(BLOCK);
        let code = |c: u8| Tensor::<B, 1, Int>::full([n], c as i64, device).cast(IntDType::U8);
        Self {
            state1: code(maps.signed_zero),
            absmax1: Tensor::zeros([nb], (device, DType::F32)),
            state2: code(maps.unsigned_zero),
            absmax2: Tensor::zeros([nb], (device, DType::F32)),
        }
    }
}

/// Pads a 1-D tensor to `len` with `value` (the last block may be short).
pub(crate) fn pad_float<B: Backend>(t: Tensor<B, 1>, len: usize) -> Tensor<B, 1> {
    let n = t.dims()[0];
    if n == len {
        return t;
    }
    let device = t.device();
    Tensor::cat(vec![t, Tensor::zeros([len - n], (&device, DType::F32))], 0)
}

pub(crate) fn pad_codes<B: Backend>(
    t: Tensor<B, 1, Int>,
    len: usize,
    code: u8,
) -> Tensor<B, 1, Int> {
    let n = t.dims()[0];
    if n == len {
        return t;
    }
    let device = t.device();
    let fill = Tensor::<B, 1, Int>::full([len - n], code as i64, &device).cast(t.dtype());
    Tensor::cat(vec![t, fill], 0)
}

/// Per-block max |x| of a padded 1-D tensor: `[n_blocks]`.
fn block_absmax<B: Backend>(x: Tensor<B, 1>, n_blocks: usize) -> Tensor<B, 1> {
    x.abs()
        .reshape([n_blocks, BLOCK])
        .max_dim(1)
        .reshape([n_blocks])
}

/// `x / absmax[block]`, with all-zero blocks mapped to 0 instead of 0/0 (bnb would feed NaN
/// to its search there; any code decodes to 0 under a zero absmax, so only the code differs).
fn normalize<B: Backend>(x: Tensor<B, 1>, absmax: Tensor<B, 1>, n_blocks: usize) -> Tensor<B, 1> {
    let denom = absmax.clamp_min(f32::MIN_POSITIVE).reshape([n_blocks, 1]);
    (x.reshape([n_blocks, BLOCK]) / denom).reshape([n_blocks * BLOCK])
}

/// One bitsandbytes 8-bit blockwise Adam step: the backend's fused step ([`QBackend::q_adam8_blockwise`]) where it has one for these
/// operands, else [`bnb_adam8_blockwise_ops`].
pub(crate) fn bnb_adam8_blockwise<B: QBackend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    state: Blockwise8<B>,
    maps: &Maps<B>,
    s: Step,
) -> (Tensor<B, 1>, Blockwise8<B>) {
    let (step_size, eps, decay) = bnb_scalars(s);
    let (beta1, beta2) = (s.h.beta1 as f32, s.h.beta2 as f32);
    let input = Adam8Input {
        p: p.into_primitive().tensor(),
        g: g.into_primitive().tensor(),
        state: Adam8State {
            state1: state.state1.into_primitive(),
            absmax1: state.absmax1.into_primitive().tensor(),
            state2: state.state2.into_primitive(),
            absmax2: state.absmax2.into_primitive().tensor(),
        },
        maps: [&maps.signed, &maps.unsigned].map(|m| m.clone().into_primitive().tensor()),
        signed_zero: maps.signed_zero,
        s: Adam8Scalars {
            beta1,
            one_minus_beta1: 1.0 - beta1,
            beta2,
            one_minus_beta2: 1.0 - beta2,
            step_size,
            eps,
            decay,
        },
    };
    let float = |t| Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(t));
    let state = |st: Adam8State<B>| Blockwise8 {
        state1: Tensor::from_primitive(st.state1),
        absmax1: float(st.absmax1),
        state2: Tensor::from_primitive(st.state2),
        absmax2: float(st.absmax2),
    };
    match B::q_adam8_blockwise(input) {
        Ok((p, st)) => (float(p), state(st)),
        Err(a) => bnb_adam8_blockwise_ops(float(a.p), float(a.g), state(a.state), maps, s),
    }
}

/// The reference of [`bnb_adam8_blockwise`], composed of Burn ops (every backend). Padding of
/// the last block uses zero moments and zero gradients, so it never raises a block's absmax
/// (bnb pads codes with 128/0 instead, which can add at most `map[128] = 5.5e-7` of the old
/// absmax: immaterial).
pub(crate) fn bnb_adam8_blockwise_ops<B: Backend>(
    p: Tensor<B, 1>,
    g: Tensor<B, 1>,
    state: Blockwise8<B>,
    maps: &Maps<B>,
    s: Step,
) -> (Tensor<B, 1>, Blockwise8<B>) {
    let n = p.dims()[0];
    let n_blocks = n.div_ceil(BLOCK);
    let padded = n_blocks * BLOCK;
    let (step_size, eps_c2, decay) = bnb_scalars(s);
    let (b1, b2) = (s.h.beta1 as f32, s.h.beta2 as f32);

    let g = pad_float(g, padded);
    let c1 = pad_codes(state.state1, padded, maps.signed_zero);
    let c2 = pad_codes(state.state2, padded, maps.unsigned_zero);
    let s2 = dequantize(&maps.unsigned, c2, state.absmax2, n_blocks);
    let s2 = s2.mul_scalar(b2) + g.clone().mul_scalar(1.0 - b2) * g.clone();
    let s1 = dequantize(&maps.signed, c1, state.absmax1, n_blocks);
    let s1 = s1.mul_scalar(b1) + g.mul_scalar(1.0 - b1);
    let absmax1 = block_absmax(s1.clone(), n_blocks);
    let absmax2 = block_absmax(s2.clone(), n_blocks);

    let (s1_n, s2_n) = (s1.clone().narrow(0, 0, n), s2.clone().narrow(0, 0, n));
    let p = p + (s1_n / s2_n.sqrt().add_scalar(eps_c2)).mul_scalar(step_size);
    let p = match decay {
        Some(f) => p.mul_scalar(f),
        None => p,
    };

    let c1 = quantize_2d(
        &maps.signed,
        normalize(s1.clone(), absmax1.clone(), n_blocks),
    );
    // Keep the sign of the first moment: a small negative value must not decode as +0. The
    // signed map rises strictly through its exact zero at `signed_zero`, so a code decodes
    // below zero exactly when it is below that code (no gather of the decoded values).
    let zero = i64::from(maps.signed_zero);
    let bump_up = c1
        .clone()
        .lower_elem(zero)
        .bool_and(s1.clone().greater_elem(0.0));
    let bump_down = c1
        .clone()
        .greater_equal_elem(zero)
        .bool_and(s1.lower_elem(0.0));
    let c1 = c1 + bump_up.int() - bump_down.int();
    let c2 = quantize_2d(&maps.unsigned, normalize(s2, absmax2.clone(), n_blocks));

    let state = Blockwise8 {
        state1: c1.narrow(0, 0, n).cast(IntDType::U8),
        absmax1,
        state2: c2.narrow(0, 0, n).cast(IntDType::U8),
        absmax2,
    };
    (p, state)
}
