//! GPU self-test of the Llama family's fused ops (`rms_norm`, `silu_mul`, `rotary_half`): the
//! CUDA kernels under `Autodiff<Cuda>` against the CPU reference (`Autodiff<NdArray>`, f32),
//! forward and input gradients, in F32 and BF16, on SmolLM2-like rows (D = 576, head_dim 64,
//! MLP width 1536), Llama-7B-like ones (D = 4096, head_dim 128, MLP width 11008) and odd widths
//! that take the narrower vector paths (RMSNorm rows of 100 and 7 values, SwiGLU of 105 values,
//! head_dim 12 and 6), with row counts that leave the last cube part-filled.
//!
//! Both sides see the same inputs: rounded to the dtype first, uploaded in that dtype on the
//! GPU and as f32 on the CPU, so the error is the kernels' own. The metric is the largest
//! absolute difference over the largest reference value (non-finite output fails).
//!
//! [`gqa_checks`]: grouped-query attention (k, v with fewer heads than q) on CUDA against the
//! CPU reference, which repeats k, v to every query head.

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Bool, DType, Tensor, TensorData};

use super::{device_f32, round_to, run_check, upload, values, Check, A};
use qtune_kernels::{attention, rms_norm, rotary_half, silu_mul, QBackend};

type Cpu = Autodiff<NdArray>;

/// F32 tolerance (largest difference / largest reference value): the kernels sum in another
/// order, may contract products into FMAs, and compute `1/√v` and `e^x` with the GPU's
/// instructions: a few f32 ulps (~1e-6); 1e-5 leaves room.
pub const LLAMA_OPS_F32_TOL: f64 = 1e-5;
/// BF16 tolerance: the reference runs in f32 on the bf16-rounded inputs; the kernels round their
/// result to bf16 (RMSNorm and SwiGLU also round an intermediate, as HF: `normed`, `silu`), so
/// each value is off by up to two half-ulps, 2·2⁻⁹ ≈ 3.9e-3 of itself. The rotary kernel
/// computes in f32 and rounds once, where HF (and the CPU reference in bf16) rounds cos/sin and
/// every product and sum to bf16: a few bf16 ulps apart from HF, one half-ulp from this f32
/// reference. 8e-3 (one bf16 ulp at the top of the range, 2⁻⁷) leaves room.
pub const LLAMA_OPS_BF16_TOL: f64 = 8e-3;

/// Grouped-query attention, F32: cuBLAS' f32 GEMMs (no TF32) and the softmax's `exp` differ
/// from the CPU by accumulation order, a few ulps of the largest value; a wrong head mapping
/// is off by O(1).
pub const GQA_F32_TOL: f64 = 2e-5;
/// Grouped-query attention, BF16: the probabilities, `dp` and `ds` are rounded to bf16 before
/// the next GEMM (as in training) while the reference keeps f32, so errors compound over two
/// products (~1e-2 of the largest value); the head mapping itself is what the F32 check pins.
pub const GQA_BF16_TOL: f64 = 3e-2;

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        LLAMA_OPS_F32_TOL
    } else {
        LLAMA_OPS_BF16_TOL
    }
}

/// Largest `|got − want|` over the largest `|want|`; infinite if lengths differ or `got` holds
/// a NaN/Inf.
fn max_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(f64::from(v.abs())))
        .max(1e-30);
    got.iter()
        .zip(want)
        .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Compares named outputs of the GPU and CPU runs; the verdict and a detail line.
fn verdict(
    names: &[&str],
    gpu: &[Vec<f32>],
    cpu: &[Vec<f32>],
    dtypes_ok: bool,
    tol: f64,
) -> (bool, String) {
    let errs: Vec<f64> = gpu.iter().zip(cpu).map(|(g, c)| max_err(g, c)).collect();
    let ok = dtypes_ok && errs.iter().all(|e| *e <= tol);
    let detail = names
        .iter()
        .zip(&errs)
        .map(|(n, e)| format!("{n} {e:.3e}"))
        .collect::<Vec<_>>()
        .join(", ");
    (
        ok,
        format!(
            "max err / max |ref|: {detail} (tol {tol:.0e}); output dtypes as input: {dtypes_ok}"
        ),
    )
}

const EPS: f32 = 1e-5;

/// The gradients of `Σ y·g`, the product in f32 (`g` the upstream gradient, in `y`'s dtype).
fn grads_of<B: AutodiffBackend, const D: usize>(y: &Tensor<B, D>, g: Tensor<B, D>) -> B::Gradients {
    (y.clone().cast(DType::F32) * g.cast(DType::F32))
        .sum()
        .backward()
}

/// `y = rms_norm(x, w)`, `dx` of `Σ y·g`: `[y, dx]` in f32, and whether both are in `dtype`.
fn rms_run<B: AutodiffBackend + QBackend>(
    dev: &B::Device,
    [x, w, g]: [&[f32]; 3],
    shape: [usize; 3],
    dtype: DType,
) -> ([Vec<f32>; 2], bool) {
    let xt = upload::<B, 3>(x, shape, dtype, dev).require_grad();
    // The weight stays f32 (as loaded): the op casts it to x's dtype.
    let wt = upload::<B, 1>(w, [shape[2]], DType::F32, dev);
    let gt = upload::<B, 3>(g, shape, dtype, dev);
    let y = rms_norm(xt.clone(), wt, EPS);
    let grads = grads_of(&y, gt);
    let dx = xt.grad(&grads).expect("x grad");
    let ok = y.dtype() == dtype && dx.dtype() == dtype;
    ([device_f32(y), device_f32(dx)], ok)
}

/// `y = silu_mul(gate, up)`, gradients of `Σ y·g`: `[y, dgate, dup]`.
fn silu_run<B: AutodiffBackend + QBackend>(
    dev: &B::Device,
    [gate, up, g]: [&[f32]; 3],
    shape: [usize; 3],
    dtype: DType,
) -> ([Vec<f32>; 3], bool) {
    let gate_t = upload::<B, 3>(gate, shape, dtype, dev).require_grad();
    let up_t = upload::<B, 3>(up, shape, dtype, dev).require_grad();
    let gt = upload::<B, 3>(g, shape, dtype, dev);
    let y = silu_mul(gate_t.clone(), up_t.clone());
    let grads = grads_of(&y, gt);
    let dgate = gate_t.grad(&grads).expect("gate grad");
    let dup = up_t.grad(&grads).expect("up grad");
    let ok = y.dtype() == dtype && dgate.dtype() == dtype && dup.dtype() == dtype;
    ([device_f32(y), device_f32(dgate), device_f32(dup)], ok)
}

/// `y = rotary_half(x, cos, sin)`, `dx` of `Σ y·g` (the inverse rotation): `[y, dx]`.
fn rope_run<B: AutodiffBackend + QBackend>(
    dev: &B::Device,
    [x, cos, sin, g]: [&[f32]; 4],
    [b, t, h, hd]: [usize; 4],
    dtype: DType,
) -> ([Vec<f32>; 2], bool) {
    let xt = upload::<B, 4>(x, [b, t, h, hd], dtype, dev).require_grad();
    let table = |v: &[f32]| upload::<B, 5>(v, [b, t, 1, hd / 2, 1], DType::F32, dev);
    let gt = upload::<B, 4>(g, [b, t, h, hd], dtype, dev);
    let y = rotary_half(xt.clone(), table(cos), table(sin));
    let grads = grads_of(&y, gt);
    let dx = xt.grad(&grads).expect("x grad");
    let ok = y.dtype() == dtype && dx.dtype() == dtype;
    ([device_f32(y), device_f32(dx)], ok)
}

/// Grouped-query `attention(q, k, v)` with a causal mask (keys `L − T` ahead, one padded key in
/// batch row 1) and the gradients of `Σ o·g`: `[o, dq, dk, dv]`.
fn gqa_run<B: AutodiffBackend + QBackend>(
    dev: &B::Device,
    [q, k, v, g]: [&[f32]; 4],
    [b, t, l, h, kv, hd]: [usize; 6],
    dtype: DType,
) -> ([Vec<f32>; 4], bool) {
    let qt = upload::<B, 4>(q, [b, t, h, hd], dtype, dev).require_grad();
    let kt = upload::<B, 4>(k, [b, l, kv, hd], dtype, dev).require_grad();
    let vt = upload::<B, 4>(v, [b, l, kv, hd], dtype, dev).require_grad();
    let gt = upload::<B, 4>(g, [b, t, h, hd], dtype, dev);
    let bits: Vec<bool> = (0..b * t * l)
        .map(|i| {
            let (bi, ti, j) = (i / (t * l), (i / l) % t, i % l);
            j > ti + (l - t) || (bi == 1 && j == 0)
        })
        .collect();
    let mask = Tensor::<B, 4, Bool>::from_data(TensorData::new(bits, [b, 1, t, l]), dev);
    let o = attention(
        qt.clone(),
        kt.clone(),
        vt.clone(),
        Some(mask),
        (hd as f32).sqrt(),
    );
    let grads = grads_of(&o, gt);
    let (dq, dk, dv) = (
        qt.grad(&grads).expect("q grad"),
        kt.grad(&grads).expect("k grad"),
        vt.grad(&grads).expect("v grad"),
    );
    let ok = [o.dtype(), dq.dtype(), dk.dtype(), dv.dtype()] == [dtype; 4]
        && dk.dims() == [b, l, kv, hd];
    (
        [
            device_f32(o),
            device_f32(dq),
            device_f32(dk),
            device_f32(dv),
        ],
        ok,
    )
}

/// Grouped-query attention (k, v with fewer heads, no repeated copy on CUDA) against the CPU
/// reference (which repeats k, v as HF's `repeat_kv`): output and q/k/v gradients, F32 and BF16,
/// SmolLM2's 9 query / 3 kv heads of 64 (a full causal block and a 3-token step over 7 keys),
/// Llama-3-8B's 32 / 8 heads of 128, and plain multi-head (4 / 4) for the unchanged path.
pub fn gqa_checks(dev: &cubecl::cuda::CudaDevice) -> Vec<Check> {
    let cpu = Default::default();
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        let tol = if dtype == DType::F32 {
            GQA_F32_TOL
        } else {
            GQA_BF16_TOL
        };
        for dims in [
            [2usize, 13, 13, 9, 3, 64],
            [2, 3, 7, 9, 3, 64],
            [1, 16, 16, 32, 8, 128],
            [2, 5, 5, 4, 4, 32],
            // One query row (a decode step): GPT-J-6B's heads over a 200-row cache, Llama GQA
            // heads over 37 rows with batch row 1's first masked.
            [1, 1, 200, 16, 16, 256],
            [2, 1, 37, 32, 8, 128],
            [2, 1, 300, 4, 2, 64],
        ] {
            let [b, t, l, h, kv, hd] = dims;
            let q = round_to(&values(b * t * h * hd, 41, 2.0), dtype);
            let k = round_to(&values(b * l * kv * hd, 42, 2.0), dtype);
            let v = round_to(&values(b * l * kv * hd, 43, 1.0), dtype);
            let g = round_to(&values(b * t * h * hd, 44, 1.0), dtype);
            out.push(run_check(
                format!("attention GQA [B {b}, T {t}, L {l}, H {h}, H_kv {kv}, hd {hd}] {dtype:?}"),
                || {
                    let (c, _) = gqa_run::<Cpu>(&cpu, [&q, &k, &v, &g], dims, DType::F32);
                    let (gp, ok) = gqa_run::<A>(dev, [&q, &k, &v, &g], dims, dtype);
                    verdict(&["o", "dq", "dk", "dv"], &gp, &c, ok, tol)
                },
            ));
        }
    }
    out
}

/// The checks of this module (see the module docs), one per op × shape × dtype.
pub fn llama_op_checks(dev: &cubecl::cuda::CudaDevice) -> Vec<Check> {
    let cpu = Default::default();
    let mut out = Vec::new();
    for dtype in [DType::F32, DType::BF16] {
        // RMSNorm rows [B, T, D]: SmolLM2's 576 (26 rows: the last cube of 8 rows part-filled),
        // Llama-7B's 4096, and 100 / 7 wide rows (4- and 1-value loads).
        // Decode's one row of 4096 too (every forward here up to 64 rows takes a cube per row).
        for shape in [
            [2usize, 13, 576],
            [3, 5, 4096],
            [1, 7, 100],
            [4, 1, 7],
            [1, 1, 4096],
        ] {
            let n: usize = shape.iter().product();
            // A non-zero mean and a few large values, as in a residual stream.
            let mut xv = values(n, 11, 3.0);
            xv.iter_mut().step_by(97).for_each(|v| *v = *v * 20.0 + 1.0);
            let xv = round_to(&xv, dtype);
            let wv = round_to(
                &values(shape[2], 12, 0.5)
                    .iter()
                    .map(|v| v + 1.0)
                    .collect::<Vec<_>>(),
                dtype,
            );
            let gv = round_to(&values(n, 13, 1.0), dtype);
            out.push(run_check(format!("rms_norm {shape:?} {dtype:?}"), || {
                let (c, _) = rms_run::<Cpu>(&cpu, [&xv, &wv, &gv], shape, DType::F32);
                let (g, ok) = rms_run::<A>(dev, [&xv, &wv, &gv], shape, dtype);
                verdict(&["y", "dx"], &g, &c, ok, tol(dtype))
            }));
        }
        // SwiGLU: SmolLM2's MLP width 1536, Llama-7B's 11008, and 105 values (1-value loads).
        for shape in [[2usize, 13, 1536], [1, 3, 11008], [3, 5, 7]] {
            let n: usize = shape.iter().product();
            let gate = round_to(&values(n, 21, 8.0), dtype);
            let up = round_to(&values(n, 22, 2.0), dtype);
            let gv = round_to(&values(n, 23, 1.0), dtype);
            out.push(run_check(format!("silu_mul {shape:?} {dtype:?}"), || {
                let (c, _) = silu_run::<Cpu>(&cpu, [&gate, &up, &gv], shape, DType::F32);
                let (g, ok) = silu_run::<A>(dev, [&gate, &up, &gv], shape, dtype);
                verdict(&["y", "dgate", "dup"], &g, &c, ok, tol(dtype))
            }));
        }
        // Rotate-half RoPE [B, T, H, hd]: SmolLM2's 9 query / 3 key heads of 64, Llama-7B's
        // 32 heads of 128, and head_dim 12 / 6 (2- and 1-value units).
        for shape in [
            [2usize, 13, 9, 64],
            [2, 13, 3, 64],
            [1, 5, 32, 128],
            [1, 4, 3, 12],
            [2, 3, 2, 6],
        ] {
            let [b, t, h, hd] = shape;
            let n = b * t * h * hd;
            let xv = round_to(&values(n, 31, 2.0), dtype);
            let gv = round_to(&values(n, 32, 1.0), dtype);
            // Angles as large as late positions reach (pos · inv_freq up to a few thousand).
            let angles = values(b * t * hd / 2, 33, 3000.0);
            let cos: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
            let sin: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
            out.push(run_check(
                format!("rotary_half {shape:?} {dtype:?}"),
                || {
                    let (c, _) = rope_run::<Cpu>(&cpu, [&xv, &cos, &sin, &gv], shape, DType::F32);
                    let (g, ok) = rope_run::<A>(dev, [&xv, &cos, &sin, &gv], shape, dtype);
                    verdict(&["y", "dx"], &g, &c, ok, tol(dtype))
                },
            ));
        }
    }
    out
}
