//! Quantizing on the GPU as a checkpoint load does (`QuantWeight::quantize`), against
//! bitsandbytes itself: every golden case of tests/fixtures/bnb (bnb 0.50.2 on an H100) gives
//! bnb's codes and absmax bit for bit; a large random bf16 weight gives the CPU quantizer's
//! (`QuantizedTensor::quantize`, bnb-exact) tensor bit for bit, double quant included; and the
//! block-scale kernel equals `rcp_approx_ftz` for every f32 mantissa. No tolerance anywhere:
//! the GPU reproduces bnb's approximate reciprocal from the measured table, so any difference
//! is a bug (with the IEEE reciprocal, 5 of the 933,504 golden codes differ).

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use qtune_kernels::QuantWeight;
use qtune_quant::golden::{tensor_f32, GoldenCase, GoldenMeta};
use qtune_quant::{Absmax, FloatDType, QuantFormat, QuantSpec, QuantizedTensor, Reciprocal};
use qtune_train::backend::Train;
use safetensors::SafeTensors;
use serde_json::json;

use super::Failures;

type Inner = <Train as AutodiffBackend>::InnerBackend;

/// All three checks; each prints one JSON line and adds a failure on any difference.
pub(super) fn check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    reciprocal_check(dev, fails)?;
    golden_check(dev, Path::new("tests/fixtures/bnb"), fails)?;
    random_check(dev, fails)
}

/// The block-scale kernel on every mantissa at four exponents (both signs), subnormal and
/// flushing inputs and the specials, against `rcp_approx_ftz` bit for bit.
fn reciprocal_check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    let mut x: Vec<f32> = Vec::with_capacity(4 << 23);
    for high in [0x3f80_0000u32, 0xc080_0000, 0x0080_0000, 0x7e00_0000] {
        x.extend((0..1u32 << 23).map(|m| f32::from_bits(high | m)));
    }
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NAN,
        f32::MAX,
        f32::from_bits(1),
        96.5,
    ]);
    let n = x.len();
    let t = Tensor::<Inner, 1>::from_data(TensorData::new(x.clone(), [n]), (dev, DType::F32));
    let inv = qtune_kernels::cuda::inv_absmax(&t.into_primitive().tensor(), n, Reciprocal::BnbCuda);
    let got = Tensor::<Inner, 1>::from_primitive(TensorPrimitive::Float(inv))
        .into_data()
        .into_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let differ = x
        .iter()
        .zip(&got)
        .filter(|(x, g)| {
            let want = qtune_quant::rcp::rcp_approx_ftz(**x);
            want.to_bits() != g.to_bits() && !(want.is_nan() && g.is_nan())
        })
        .count();
    fails.require(
        &format!("load_reciprocal: {differ} of {n} GPU block scales differ from rcp_approx_ftz"),
        differ == 0,
    );
    println!(
        "{}",
        json!({"check": "load_reciprocal", "values": n, "differ": differ, "ok": differ == 0})
    );
    Ok(())
}

/// The device dtype of a fixture's input dtype.
fn dtypes(case: &GoldenCase) -> anyhow::Result<(DType, FloatDType)> {
    let fd = case.float_dtype()?;
    let dtype = match fd {
        FloatDType::F32 => DType::F32,
        FloatDType::F16 => DType::F16,
        FloatDType::BF16 => DType::BF16,
    };
    Ok((dtype, fd))
}

fn bytes<'a>(st: &'a SafeTensors<'_>, name: &str) -> anyhow::Result<&'a [u8]> {
    Ok(st
        .tensor(name)
        .map_err(|e| anyhow::anyhow!("golden tensor `{name}`: {e}"))?
        .data())
}

fn code_at(format: QuantFormat, codes: &[u8], i: usize) -> u8 {
    match format {
        QuantFormat::Blockwise8 => codes[i],
        _ => qtune_quant::fourbit::nibble(codes, i),
    }
}

/// `v` (a `[1, n]` weight) quantized on the GPU from `dtype`, read back.
fn gpu_quantize(
    dev: &burn::tensor::Device<Train>,
    name: &str,
    v: &[f32],
    shape: [usize; 2],
    spec: QuantSpec,
    (dtype, fdtype): (DType, FloatDType),
) -> anyhow::Result<QuantizedTensor> {
    let data = TensorData::new(v.to_vec(), shape).convert_dtype(dtype);
    let t = Tensor::<Inner, 2>::from_data(data, (dev, dtype));
    let q = QuantWeight::quantize(
        name,
        t,
        spec.format,
        spec.blocksize,
        spec.double_quant,
        fdtype,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    q.try_to_quantized(name).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Every golden case on the GPU: codes and plain absmax = bnb's bit for bit (double-quant cases:
/// the codes, and the whole tensor = the CPU quantizer's, whose offset the CPU test allows one
/// ulp from torch's mean). Inputs bnb itself cannot quantize (f16 overflow) must be refused.
fn golden_check(
    dev: &burn::tensor::Device<Train>,
    dir: &Path,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    let read = |f: &str| {
        std::fs::read(dir.join(f)).map_err(|e| anyhow::anyhow!("{}: {e}", dir.join(f).display()))
    };
    let file = read("golden.safetensors")?;
    let st = SafeTensors::deserialize(&file).map_err(|e| anyhow::anyhow!("golden: {e}"))?;
    let meta: GoldenMeta = serde_json::from_slice(&read("meta.json")?)?;
    let (mut codes_total, mut codes_differ, mut absmax_total, mut absmax_differ) = (0, 0, 0, 0);
    let (mut cases, mut non_finite, mut refused, mut dq_equal, mut dq_cases) = (0, 0, 0, 0, 0);
    let mut first_bad: Vec<String> = Vec::new();
    for case in &meta.cases {
        let name = &case.name;
        let x = tensor_f32(&st, &case.input)?;
        anyhow::ensure!(
            x.len() == case.numel,
            "{name}: input has {} values",
            x.len()
        );
        let dt = dtypes(case)?;
        let spec = case.spec()?;
        let shape = [1, case.numel];
        cases += 1;
        if x.iter().any(|v| !v.is_finite()) {
            non_finite += 1;
            refused += usize::from(gpu_quantize(dev, name, &x, shape, spec, dt).is_err());
            continue;
        }
        let plain = QuantSpec {
            double_quant: false,
            ..spec
        };
        let q = gpu_quantize(dev, name, &x, shape, plain, dt)?;
        let bnb = bytes(&st, &format!("{name}.codes"))?;
        let bad = (0..case.numel)
            .filter(|&i| code_at(spec.format, &q.codes, i) != code_at(spec.format, bnb, i))
            .count();
        codes_total += case.numel;
        codes_differ += bad;
        if bad > 0 && first_bad.len() < 5 {
            first_bad.push(format!("{name}: {bad} codes"));
        }
        if !case.double_quant {
            let Absmax::Plain(a) = &q.absmax else {
                anyhow::bail!("{name}: GPU gave a nested absmax without double quant");
            };
            let golden = bytes(&st, &format!("{name}.absmax"))?;
            let bad = a
                .iter()
                .zip(golden.chunks_exact(4))
                .filter(|(a, g)| a.to_bits() != u32::from_le_bytes([g[0], g[1], g[2], g[3]]))
                .count()
                + a.len().abs_diff(golden.len() / 4);
            absmax_total += a.len();
            absmax_differ += bad;
            if bad > 0 && first_bad.len() < 5 {
                first_bad.push(format!("{name}: {bad} absmax"));
            }
        } else {
            dq_cases += 1;
            let gpu = gpu_quantize(dev, name, &x, shape, spec, dt)?;
            let cpu = QuantizedTensor::quantize(name, &x, &[1, case.numel], spec, dt.1)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if gpu == cpu {
                dq_equal += 1;
            } else if first_bad.len() < 5 {
                first_bad.push(format!("{name}: double quant differs from the CPU's"));
            }
        }
    }
    let ok =
        codes_differ == 0 && absmax_differ == 0 && dq_equal == dq_cases && refused == non_finite;
    fails.require(
        &format!(
            "load_golden: {codes_differ} of {codes_total} codes and {absmax_differ} of \
             {absmax_total} absmax differ from bnb, {dq_equal} of {dq_cases} double-quant \
             cases = CPU, {refused} of {non_finite} non-finite inputs refused ({first_bad:?})"
        ),
        ok,
    );
    println!(
        "{}",
        json!({"check": "load_golden", "cases": cases, "codes": codes_total,
               "codes_differ": codes_differ, "absmax": absmax_total,
               "absmax_differ": absmax_differ, "double_quant_cases": dq_cases,
               "double_quant_equal_cpu": dq_equal, "non_finite": non_finite,
               "non_finite_refused": refused,
               "first": first_bad, "ok": ok})
    );
    Ok(())
}

/// A GPT-J-sized `[4096, 4096]` bf16 weight (values ~N-like in [-1, 1), a zero block) in NF4 +
/// double quant, FP4 and blockwise 8-bit: GPU = CPU `QuantizedTensor::quantize` bit for bit.
/// The count of codes the IEEE reciprocal would change shows the check can tell them apart.
fn random_check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    let shape = [4096usize, 4096usize];
    let mut v = super::values(shape[0] * shape[1], 0x10ad);
    v.iter_mut().take(64).for_each(|x| *x = 0.0);
    let dt = (DType::BF16, FloatDType::BF16);
    for (label, spec) in [
        ("nf4_dq", QuantSpec::nf4()),
        (
            "fp4",
            QuantSpec {
                double_quant: false,
                ..QuantSpec::fp4()
            },
        ),
        ("int8", QuantSpec::blockwise8()),
    ] {
        let name = format!("random_{label}");
        let gpu = gpu_quantize(dev, &name, &v, shape, spec, dt)?;
        let cpu = QuantizedTensor::quantize(&name, &v, &shape, spec, dt.1)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let ieee = QuantizedTensor::quantize_with(&name, &v, &shape, spec, dt.1, Reciprocal::Ieee)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let differ = gpu
            .codes
            .iter()
            .zip(&cpu.codes)
            .filter(|(a, b)| a != b)
            .count();
        let ieee_differ = ieee
            .codes
            .iter()
            .zip(&cpu.codes)
            .filter(|(a, b)| a != b)
            .count();
        let equal = gpu == cpu;
        fails.require(
            &format!("load_random {name}: GPU = CPU ({differ} code bytes differ)"),
            equal,
        );
        println!(
            "{}",
            json!({"check": "load_random", "name": name, "shape": shape, "equal_cpu": equal,
                   "code_bytes_differ": differ, "ieee_would_differ": ieee_differ, "ok": equal})
        );
    }
    Ok(())
}
