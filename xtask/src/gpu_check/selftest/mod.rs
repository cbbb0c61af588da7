//! The kernels' GPU self-test, run on the device machine by `cargo xtask bench gpu-check` (every
//! group) and `cargo xtask bench dequant --check`: every dequant kernel equals the CPU reference bit for bit, the GPU
//! quantizer equals the CPU quantizer (`Reciprocal::BnbCuda`: bnb's approximate reciprocal,
//! from the measured table) bit for bit, and the quantized linear (forward and the
//! autodiff backward) matches a host reference within the stated tolerance. The Llama family's
//! fused ops (RMSNorm, SwiGLU, rotate-half RoPE) are checked against the CPU reference in
//! [`llama`] ([`llama_op_checks`]), as is grouped-query attention ([`gqa_checks`]).

use std::panic::{catch_unwind, AssertUnwindSafe};

use burn::backend::Autodiff;
use burn::tensor::{bf16, f16, DType, Tensor, TensorData};
use qtune_quant::{Absmax, FloatDType, QuantFormat, QuantSpec, QuantizedTensor, Reciprocal};

use qtune_kernels::cuda::Cuda;
use qtune_kernels::{q_linear, QuantWeight};

pub mod llama;

pub use llama::{gqa_checks, llama_op_checks};
pub use qtune_testkit::values;

type C = Cuda<f32>;
type A = Autodiff<C>;

/// Relative Frobenius tolerance of a bf16 quantized linear against an exact host product of the
/// same bf16 operands: the GEMM accumulates in fp32, so the error is the final rounding to bf16
/// (at most 2^-9 relative per element, about 1.1e-3 in Frobenius norm); 4e-3 leaves room.
pub const BF16_LINEAR_TOL: f64 = 4e-3;
/// The same for f32 (`CUBLAS_COMPUTE_32F`, no TF32): accumulation rounding only.
pub const F32_LINEAR_TOL: f64 = 1e-5;

/// One named check and its outcome.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked (format, shape, dtype…).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Numbers behind the verdict (mismatch count, error, tolerance).
    pub detail: String,
}

impl Check {
    /// One JSON line.
    pub fn json(&self) -> String {
        format!(
            "{{\"check\":\"{}\",\"ok\":{},\"detail\":\"{}\"}}",
            self.name,
            self.ok,
            self.detail.replace('"', "'")
        )
    }
}

fn round_to(v: &[f32], dtype: DType) -> Vec<f32> {
    match dtype {
        DType::BF16 => v.iter().map(|&x| bf16::from_f32(x).to_f32()).collect(),
        DType::F16 => v.iter().map(|&x| f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

fn expected_bits(v: &[f32], dtype: DType) -> Vec<u32> {
    match dtype {
        DType::BF16 => v
            .iter()
            .map(|&x| u32::from(bf16::from_f32(x).to_bits()))
            .collect(),
        DType::F16 => v
            .iter()
            .map(|&x| u32::from(f16::from_f32(x).to_bits()))
            .collect(),
        _ => v.iter().map(|x| x.to_bits()).collect(),
    }
}

/// Raw bits of a device float tensor (F32, F16 or BF16).
pub fn device_bits<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<u32> {
    let data = t.into_data();
    match data.dtype {
        DType::BF16 => data
            .to_vec::<bf16>()
            .unwrap_or_default()
            .iter()
            .map(|x| u32::from(x.to_bits()))
            .collect(),
        DType::F16 => data
            .to_vec::<f16>()
            .unwrap_or_default()
            .iter()
            .map(|x| u32::from(x.to_bits()))
            .collect(),
        _ => data
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default()
            .iter()
            .map(|x| x.to_bits())
            .collect(),
    }
}

fn device_f32<B: burn::tensor::backend::Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

fn upload<B: burn::tensor::backend::Backend, const D: usize>(
    v: &[f32],
    shape: [usize; D],
    dtype: DType,
    dev: &B::Device,
) -> Tensor<B, D> {
    let data = match dtype {
        DType::BF16 => TensorData::new(
            v.iter().map(|&x| bf16::from_f32(x)).collect::<Vec<_>>(),
            shape,
        ),
        DType::F16 => TensorData::new(
            v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>(),
            shape,
        ),
        _ => TensorData::new(v.to_vec(), shape),
    };
    Tensor::from_data(data, (dev, dtype))
}

fn mismatches(a: &[u32], b: &[u32]) -> (usize, Option<usize>) {
    let bad: Vec<usize> = (0..a.len().max(b.len()))
        .filter(|&i| a.get(i) != b.get(i))
        .collect();
    (bad.len(), bad.first().copied())
}

fn run_check(name: String, f: impl FnOnce() -> (bool, String)) -> Check {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok((ok, detail)) => Check { name, ok, detail },
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            Check {
                name,
                ok: false,
                detail: format!("panicked: {msg}"),
            }
        }
    }
}

fn spec_name(s: QuantSpec) -> String {
    format!(
        "{:?}/b{}{}",
        s.format,
        s.blocksize,
        if s.double_quant { "/dq" } else { "" }
    )
}

fn dequant_specs() -> Vec<QuantSpec> {
    let s = |format, blocksize, double_quant| QuantSpec {
        format,
        blocksize,
        double_quant,
    };
    vec![
        s(QuantFormat::Nf4, 64, true),
        s(QuantFormat::Nf4, 64, false),
        s(QuantFormat::Nf4, 4096, false),
        s(QuantFormat::Fp4, 64, true),
        s(QuantFormat::Fp4, 128, false),
        s(QuantFormat::Blockwise8, 4096, false),
        s(QuantFormat::Blockwise8, 4096, true),
        s(QuantFormat::Blockwise8, 64, false),
    ]
}

/// [`dequant_checks`] under every 4-bit kernel variant, then back to the default variant.
pub fn dequant_checks_all_variants(dev: &cubecl::cuda::CudaDevice) -> Vec<Check> {
    let default = qtune_kernels::cuda::launch::dequant_variant();
    let mut out = Vec::new();
    for (wpu, fused) in [(1, false), (2, false), (1, true), (2, true)] {
        qtune_kernels::cuda::launch::set_dequant_variant(wpu, fused);
        out.extend(dequant_checks(dev));
    }
    qtune_kernels::cuda::launch::set_dequant_variant(default.0, default.1);
    out
}

/// Dequant kernels (vectorized and scalar paths) × formats × nested × output dtypes, bit for bit.
pub fn dequant_checks(dev: &cubecl::cuda::CudaDevice) -> Vec<Check> {
    let mut out = Vec::new();
    // [64, 512]: vectorized path; [3, 1000]: vectorized, short last block; [7, 9]: scalar path.
    for shape in [[64usize, 512usize], [3, 1000], [7, 9]] {
        for (k, spec) in dequant_specs().into_iter().enumerate() {
            let mut v = values(shape[0] * shape[1], 1 + k as u64, 0.1);
            // A zero block and subnormal-scale values exercise the NaN encode and FTZ paths.
            v.iter_mut().take(64).for_each(|x| *x = 0.0);
            if v.len() > 200 {
                v.iter_mut().skip(128).take(64).for_each(|x| *x *= 1e-37);
            }
            let q = match QuantizedTensor::quantize("selftest", &v, &shape, spec, FloatDType::F32) {
                Ok(q) => q,
                Err(e) => {
                    out.push(Check {
                        name: format!("dequant {} {shape:?}", spec_name(spec)),
                        ok: false,
                        detail: e.to_string(),
                    });
                    continue;
                }
            };
            let reference = q.dequantize();
            for dtype in [DType::F32, DType::BF16, DType::F16] {
                out.push(run_check(
                    format!("dequant {} {shape:?} {dtype:?}", spec_name(spec)),
                    || {
                        let w = QuantWeight::<C>::from_quantized(&q, dev);
                        let got = device_bits(w.dequantize(dtype));
                        let (n, first) = mismatches(&got, &expected_bits(&reference, dtype));
                        (
                            n == 0,
                            format!(
                                "{n} of {} values differ (first at {first:?})",
                                reference.len()
                            ),
                        )
                    },
                ));
            }
        }
    }
    out
}

/// GPU quantizer vs the CPU quantizer with the IEEE reciprocal (what the kernel computes), codes
/// and absmax bit for bit, from f32 and bf16 inputs.
pub fn quantize_checks(dev: &cubecl::cuda::CudaDevice) -> Vec<Check> {
    let mut out = Vec::new();
    let s = |format, blocksize| QuantSpec {
        format,
        blocksize,
        double_quant: false,
    };
    let specs = [
        s(QuantFormat::Nf4, 64),
        s(QuantFormat::Nf4, 32),
        s(QuantFormat::Fp4, 64),
        s(QuantFormat::Fp4, 256),
        s(QuantFormat::Blockwise8, 4096),
        s(QuantFormat::Blockwise8, 64),
    ];
    for shape in [[256usize, 1024usize], [5, 13]] {
        for (k, spec) in specs.into_iter().enumerate() {
            for dtype in [DType::F32, DType::BF16] {
                out.push(run_check(format!("quantize {} {shape:?} from {dtype:?}", spec_name(spec)), || {
                    let mut v = values(shape[0] * shape[1], 50 + k as u64, 2.0);
                    v.iter_mut().take(64).for_each(|x| *x = 0.0);
                    let v = round_to(&v, dtype);
                    let cpu = QuantizedTensor::quantize_with("selftest", &v, &shape, spec, FloatDType::F32, Reciprocal::BnbCuda)
                        .unwrap_or_else(|e| panic!("cpu quantize: {e}"));
                    let t = upload::<C, 2>(&v, shape, dtype, dev);
                    let gpu = QuantWeight::<C>::quantize("selftest", t, spec.format, spec.blocksize, false, FloatDType::F32)
                        .unwrap_or_else(|e| panic!("gpu quantize: {e}"))
                        .to_quantized();
                    let (nc, fc) = mismatches(
                        &gpu.codes.iter().map(|&c| u32::from(c)).collect::<Vec<_>>(),
                        &cpu.codes.iter().map(|&c| u32::from(c)).collect::<Vec<_>>(),
                    );
                    let (Absmax::Plain(ga), Absmax::Plain(ca)) = (&gpu.absmax, &cpu.absmax) else {
                        return (false, "absmax kinds differ".into());
                    };
                    let (na, _) = mismatches(
                        &ga.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        &ca.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    );
                    (nc == 0 && na == 0, format!("{nc} of {} code bytes differ (first {fc:?}), {na} of {} absmax differ", cpu.codes.len(), ca.len()))
                }));
            }
        }
    }
    // Double quant: nested codes, nested absmax and offset, all bit for bit.
    for (k, spec) in [
        QuantSpec::nf4(),
        QuantSpec::fp4(),
        QuantSpec {
            double_quant: true,
            ..QuantSpec::blockwise8()
        },
    ]
    .into_iter()
    .enumerate()
    {
        out.push(run_check(
            format!("quantize {} [512, 768] from BF16", spec_name(spec)),
            || {
                let v = round_to(&values(512 * 768, 90 + k as u64, 1.0), DType::BF16);
                let cpu = QuantizedTensor::quantize_with(
                    "selftest",
                    &v,
                    &[512, 768],
                    spec,
                    FloatDType::BF16,
                    Reciprocal::BnbCuda,
                )
                .unwrap_or_else(|e| panic!("cpu quantize: {e}"));
                let t = upload::<C, 2>(&v, [512, 768], DType::BF16, dev);
                let gpu = QuantWeight::<C>::quantize(
                    "selftest",
                    t,
                    spec.format,
                    spec.blocksize,
                    true,
                    FloatDType::BF16,
                )
                .unwrap_or_else(|e| panic!("gpu quantize: {e}"))
                .to_quantized();
                (
                    gpu == cpu,
                    format!(
                        "equal: {} (codes equal: {})",
                        gpu == cpu,
                        gpu.codes == cpu.codes
                    ),
                )
            },
        ));
    }
    out.push(run_check("quantize rejects NaN and Inf".into(), || {
        let mut v = values(4 * 64, 3, 1.0);
        v[77] = f32::NAN;
        let nan = QuantWeight::<C>::quantize(
            "w_nan",
            upload::<C, 2>(&v, [4, 64], DType::BF16, dev),
            QuantFormat::Nf4,
            64,
            false,
            FloatDType::BF16,
        );
        v[77] = f32::INFINITY;
        let inf = QuantWeight::<C>::quantize(
            "w_inf",
            upload::<C, 2>(&v, [4, 64], DType::F32, dev),
            QuantFormat::Nf4,
            64,
            false,
            FloatDType::F32,
        );
        let ok = matches!(nan, Err(qtune_kernels::KernelError::NonFinite { .. }))
            && matches!(inf, Err(qtune_kernels::KernelError::NonFinite { .. }));
        (
            ok,
            format!(
                "nan: {:?}, inf: {:?}",
                nan.err().map(|e| e.to_string()),
                inf.err().map(|e| e.to_string())
            ),
        )
    }));
    out
}

fn rel_frobenius(got: &[f32], want: &[f64]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (g, w) in got.iter().zip(want) {
        num += (f64::from(*g) - w).powi(2);
        den += w * w;
    }
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    (num / den.max(1e-300)).sqrt()
}

/// Host `a[m, k] · b` with `b` given as `[n, k]` (transposed) or `[k, n]`, in f64.
fn host_matmul(a: &[f32], b: &[f32], m: usize, k: usize, n: usize, b_is_nk: bool) -> Vec<f64> {
    let mut out = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0f64;
            for p in 0..k {
                let bv = if b_is_nk { b[j * k + p] } else { b[p * n + j] };
                acc += f64::from(a[i * k + p]) * f64::from(bv);
            }
            out[i * n + j] = acc;
        }
    }
    out
}

/// `q_linear` forward and autodiff backward on `Autodiff<Cuda>` vs an exact host product of the
/// same (dtype-rounded) operands.
pub fn linear_checks(dev: &cubecl::cuda::CudaDevice) -> Vec<Check> {
    let (m, in_f, out_f) = (256usize, 512usize, 384usize);
    let mut out = Vec::new();
    for spec in [
        QuantSpec::nf4(),
        QuantSpec {
            format: QuantFormat::Blockwise8,
            blocksize: 4096,
            double_quant: false,
        },
    ] {
        let wv = values(out_f * in_f, 7, 0.05);
        let q = QuantizedTensor::quantize("w", &wv, &[out_f, in_f], spec, FloatDType::F32)
            .expect("quantize");
        let wd = q.dequantize();
        for (dtype, tol) in [(DType::F32, F32_LINEAR_TOL), (DType::BF16, BF16_LINEAR_TOL)] {
            let x = round_to(&values(m * in_f, 8, 1.0), dtype);
            let g = round_to(&values(m * out_f, 9, 1.0), dtype);
            let wr = round_to(&wd, dtype);
            let y_ref = host_matmul(&x, &wr, m, in_f, out_f, true);
            let dx_ref = host_matmul(&g, &wr, m, out_f, in_f, false);
            let name = format!("q_linear {} {m}x{in_f}->{out_f} {dtype:?}", spec_name(spec));
            out.push(run_check(name, || {
                let w = QuantWeight::<A>::from_quantized(&q, dev);
                let xt = upload::<A, 2>(&x, [m, in_f], dtype, dev).require_grad();
                let gt = upload::<A, 2>(&g, [m, out_f], dtype, dev);
                let y = q_linear(xt.clone(), &w);
                let y_dtype = y.dtype();
                let grads = (y.clone() * gt).sum().backward();
                let dx = xt.grad(&grads).expect("x grad");
                let dx_dtype = dx.dtype();
                let ey = rel_frobenius(&device_f32(y), &y_ref);
                let edx = rel_frobenius(&device_f32(dx), &dx_ref);
                let ok = ey <= tol && edx <= tol && y_dtype == dtype && dx_dtype == dtype;
                (ok, format!("rel frobenius err y {ey:.3e}, dx {edx:.3e} (tol {tol:.0e}); dtypes y {y_dtype:?} dx {dx_dtype:?}"))
            }));
        }
    }
    out
}

/// All checks; prints one JSON line per check and returns them.
pub fn run_all() -> Vec<Check> {
    let dev = Default::default();
    let mut all = Vec::new();
    for group in [
        dequant_checks as fn(&_) -> Vec<Check>,
        quantize_checks,
        linear_checks,
        llama_op_checks,
        gqa_checks,
    ] {
        for c in group(&dev) {
            println!("{}", c.json());
            all.push(c);
        }
    }
    let failed = all.iter().filter(|c| !c.ok).count();
    println!(
        "{{\"selftest\":{{\"checks\":{},\"failed\":{failed}}}}}",
        all.len()
    );
    all
}
