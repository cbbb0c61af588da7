//! The dense GEMMs on the GPU: cuBLAS `matmul` (bf16 in; bf16 and f32 out) vs the CPU for all
//! transpose flags, and the batch-1 GEMVs of decoding (quantized from the codes vs dequantize +
//! GEMM; dense GEMV vs cuBLAS). Metric: max |Δ| / max |ref|.

use burn::tensor::{DType, Tensor, TensorData};
use qtune_kernels::cuda::gemm::{linear_t_acc_via, linear_t_via, OneRow};
use qtune_train::backend::{Cpu, Train};
use serde_json::json;

use super::{host, rel, values, Failures};

/// A bf16 GEMM output (or gradient) vs f32: measured ≤ 3.9e-3 forward, da and db on an H100
/// (2026-12-06), one bf16 ulp at the largest value; 1e-2 is 2.5 ulps. Also the bound of the
/// batch-1 GEMVs (not measured separately): both sides round a f32-accumulated sum to bf16 once,
/// and the quantized side's weights differ from the dequantized bf16 ones by at most half a
/// bf16 ulp each, which averages out over the 1024-term sums.
pub(super) const GEMM_BF16: f64 = 1e-2;
/// The f32-output forward: bf16-representable inputs multiply exactly, so only the f32
/// summation order of the 136-term sums differs: measured ~3e-7 (2–3 f32 ulps). 1e-6 is 3×, and
/// still 2,000× below a bf16 rounding of the output, which this line exists to catch.
const GEMM_F32_OUT_FWD: f64 = 1e-6;

/// Batch-1 quantized linear (the decode GEMV straight from the codes) vs dequantize + GEMM on the
/// GPU, for NF4 + double quant, FP4 and blockwise 8-bit, at every output-rows-per-plane setting
/// of the kernel (1, 2, 4: each within the tolerance, and reported bit-identical to 1 or not),
/// plain, with two addends (`q_linear_add`'s epilogue) and with a bias and `gelu_new`
/// (`linear_bias_gelu_new`, GPT-J's `fc_in` at decode, against the host's `gelu_new` of the
/// reference product); and the batch-1 dense products (LoRA factors, LM head at decode): GEMV
/// kernel vs cuBLAS.
pub(super) fn quantized_gemv_check(
    dev: &burn::tensor::Device<Train>,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    use qtune_kernels::cuda::launch::{gemv_rows_per_plane, set_gemv_rows_per_plane};
    type I = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;
    let mut res = serde_json::Map::new();
    let default_rows = gemv_rows_per_plane();
    let outcome = quantized_gemv_rows(dev, fails, &mut res);
    set_gemv_rows_per_plane(default_rows);
    qtune_kernels::cuda::launch::set_gemv_x_shared(true);
    outcome?;
    gemv_parts_check(dev, fails, &mut res)?;
    lora_parts_check(dev, fails, &mut res)?;
    // Batch-1 dense products (LoRA factors, LM head at decode): GEMV kernel vs cuBLAS.
    // Rows of 2 and 3 vectors take the lane-per-row layout (LoRA's B), 16 × 1024 the
    // cube-per-row one (LoRA's A), 2000 × 1024 a plane per row.
    for (n, k) in [(16usize, 1024usize), (1000, 16), (300, 24), (2000, 1024)] {
        let t = |len: usize, seed: u64, shape: [usize; 2]| {
            Tensor::<I, 2>::from_data(
                TensorData::new(values(len, seed), shape),
                (dev, DType::BF16),
            )
        };
        let (x, w, y0) = (t(k, 33, [1, k]), t(n * k, 34, [n, k]), t(n, 35, [1, n]));
        let run = |one_row: OneRow| -> anyhow::Result<[Vec<f32>; 2]> {
            let y = linear_t_via(x.clone(), w.clone(), one_row);
            let y0 = y0.clone().add_scalar(0.0);
            let acc = linear_t_acc_via(y0, x.clone(), w.clone(), 0.5, one_row);
            Ok([host(y.unsqueeze::<3>())?, host(acc.unsqueeze::<3>())?])
        };
        let ([g, ga], [c, ca]) = (run(OneRow::Gemv)?, run(OneRow::Cublas)?);
        for (key, value) in [
            (format!("dense_gemv_{n}x{k}_rel_err"), rel(g, c)),
            (format!("dense_gemv_acc_{n}x{k}_rel_err"), rel(ga, ca)),
        ] {
            fails.at_most(&format!("quantized_gemv {key}"), value, GEMM_BF16);
            res.insert(key, value.into());
        }
    }
    res.insert("check".into(), "quantized_gemv".into());
    println!("{}", serde_json::Value::Object(res));
    Ok(())
}

/// The quantized half of [`quantized_gemv_check`], at each rows-per-plane setting (left set to
/// the last one).
fn quantized_gemv_rows(
    dev: &burn::tensor::Device<Train>,
    fails: &mut Failures,
    res: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    use qtune_kernels::cuda::launch::{set_gemv_rows_per_plane, set_gemv_x_shared};
    use qtune_kernels::QuantWeight;
    use qtune_quant::{FloatDType, QuantFormat};
    type I = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;
    // 1,024 inputs (one 16-byte NF4 vector per lane), then rows long enough for several
    // iterations per lane with a ragged tail (8,448: 264 NF4 vectors, 528 8-bit ones), then
    // ragged rows: 99 is no multiple of 8 planes × R rows for any R, and 1,280 inputs (40 NF4
    // vectors, 80 8-bit ones) leave lanes idle in the last iteration.
    let nf4_dq = ("nf4_dq", QuantFormat::Nf4, 64, true);
    let fp4 = ("fp4", QuantFormat::Fp4, 64, false);
    let int8 = ("int8", QuantFormat::Blockwise8, 256, false);
    let bf16 = |v: Vec<f32>, shape: [usize; 2]| {
        Tensor::<I, 2>::from_data(TensorData::new(v, shape), (dev, DType::BF16))
    };
    for (o, k, suffix, formats) in [
        (384usize, 1024usize, "", vec![nf4_dq, fp4, int8]),
        (96, 8448, "_8448", vec![nf4_dq, int8]),
        (99, 1280, "_99x1280", vec![nf4_dq, fp4, int8]),
    ] {
        for (name, format, bs, dq) in formats {
            let w = QuantWeight::quantize(
                name,
                bf16(values(o * k, 31), [o, k]),
                format,
                bs,
                dq,
                FloatDType::BF16,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let x = bf16(values(k, 32), [1, k]);
            let (a0, a1) = (bf16(values(o, 36), [1, o]), bf16(values(o, 37), [1, o]));
            let y_ref = host(
                qtune_kernels::linear_t(x.clone(), w.dequantize(DType::BF16)).unsqueeze::<3>(),
            )?;
            // The addends summed onto the reference in f32 (the kernel adds them to its f32 sum).
            let (h0, h1) = (
                host(a0.clone().unsqueeze::<3>())?,
                host(a1.clone().unsqueeze::<3>())?,
            );
            let y_add_ref: Vec<f32> = (0..o).map(|i| y_ref[i] + h0[i] + h1[i]).collect();
            // `gelu_new(y + a0)` (a0 as fc_in's bias) on the host, from the reference product.
            let gelu = |v: f64| {
                0.5 * v
                    * (1.0
                        + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
            };
            let y_gelu_ref: Vec<f32> = (0..o)
                .map(|i| gelu(f64::from(y_ref[i]) + f64::from(h0[i])) as f32)
                .collect();
            let mut first: Option<[Vec<f32>; 2]> = None;
            // Each rows-per-plane setting with `x` from global memory, then staged in shared
            // memory (`_xs`): the same bits required.
            for (r, staged) in [1usize, 2, 4]
                .into_iter()
                .flat_map(|r| [(r, false), (r, true)])
            {
                set_gemv_rows_per_plane(r);
                set_gemv_x_shared(staged);
                let r = format!("{r}{}", if staged { "_xs" } else { "" });
                let y = host(qtune_kernels::q_linear(x.clone(), &w).unsqueeze::<3>())?;
                let y_add = host(
                    qtune_kernels::q_linear_add(x.clone(), &w, vec![a0.clone(), a1.clone()])
                        .unsqueeze::<3>(),
                )?;
                for (key, value) in [
                    (
                        format!("gemv_{name}{suffix}_r{r}_rel_err"),
                        rel(y.clone(), y_ref.clone()),
                    ),
                    (
                        format!("gemv_add_{name}{suffix}_r{r}_rel_err"),
                        rel(y_add.clone(), y_add_ref.clone()),
                    ),
                    (
                        format!("gemv_bias_gelu_{name}{suffix}_r{r}_rel_err"),
                        rel(
                            host(
                                qtune_kernels::linear_bias_gelu_new(
                                    x.clone(),
                                    &w,
                                    a0.clone().reshape([o]),
                                )
                                .unsqueeze::<3>(),
                            )?,
                            y_gelu_ref.clone(),
                        ),
                    ),
                ] {
                    fails.at_most(&format!("quantized_gemv {key}"), value, GEMM_BF16);
                    res.insert(key, value.into());
                }
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                match &first {
                    None => first = Some([y, y_add]),
                    Some([y1, y1_add]) => {
                        let same = bits(&y) == bits(y1) && bits(&y_add) == bits(y1_add);
                        fails.require(
                            &format!("quantized_gemv {name}{suffix} r{r} bit-identical to r1"),
                            same,
                        );
                        res.insert(
                            format!("gemv_{name}{suffix}_r{r}_bit_identical_to_r1"),
                            same.into(),
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// Two or three quantized weights of one input in one launch (`q_linear_parts`: q/k/v, gate/up
/// at decode) against each weight's own batch-1 GEMV: bit-identical required, for NF4 + double
/// quant, FP4 and blockwise 8-bit, parts of different row counts (as GQA's k/v), and a ragged
/// row count and width.
fn gemv_parts_check(
    dev: &burn::tensor::Device<Train>,
    fails: &mut Failures,
    res: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    use qtune_kernels::QuantWeight;
    use qtune_quant::{FloatDType, QuantFormat};
    type I = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;
    let bf16 = |v: Vec<f32>, shape: [usize; 2]| {
        Tensor::<I, 2>::from_data(TensorData::new(v, shape), (dev, DType::BF16))
    };
    for (name, format, bs, dq) in [
        ("nf4_dq", QuantFormat::Nf4, 64, true),
        ("fp4", QuantFormat::Fp4, 64, false),
        ("int8", QuantFormat::Blockwise8, 256, false),
    ] {
        for (k, rows) in [(1024usize, vec![384usize, 128, 128]), (1280, vec![99, 40])] {
            let ws = rows
                .iter()
                .enumerate()
                .map(|(i, &o)| {
                    QuantWeight::quantize(
                        name,
                        bf16(values(o * k, 40 + i as u64), [o, k]),
                        format,
                        bs,
                        dq,
                        FloatDType::BF16,
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let x = bf16(values(k, 39), [1, k]);
            let refs: Vec<&QuantWeight<I>> = ws.iter().collect();
            let parts = qtune_kernels::q_linear_parts(x.clone(), &refs);
            let mut same = true;
            for (w, y) in ws.iter().zip(parts) {
                let one = host(qtune_kernels::q_linear(x.clone(), w).unsqueeze::<3>())?;
                let y = host(y.unsqueeze::<3>())?;
                same &= y
                    .iter()
                    .map(|f| f.to_bits())
                    .eq(one.iter().map(|f| f.to_bits()));
            }
            let key = format!("gemv_parts_{name}_{}x{k}_bit_identical", rows.len());
            fails.require(&format!("quantized_gemv {key}"), same);
            res.insert(key, same.into());
        }
    }
    Ok(())
}

/// LoRA's products of two or three adapters of one row in one pair of launches
/// (`lora_acc_parts`: q and v at decode) against each adapter's own `lora_acc`: bit-identical
/// required, for ranks 16 and 8, outputs of two sizes (GQA), and with one base output shared
/// (which takes the per-part path; its reference holds its base too). Session 21's first run
/// (H100) compared that shared case against an unshared reference, which sums in place with one
/// rounding, and reported it unequal; the other three were bit-identical.
fn lora_parts_check(
    dev: &burn::tensor::Device<Train>,
    fails: &mut Failures,
    res: &mut serde_json::Map<String, serde_json::Value>,
) -> anyhow::Result<()> {
    use qtune_kernels::{lora_acc, lora_acc_parts, LoraOptions};
    type I = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;
    let bf16 = |len: usize, seed: u64, shape: [usize; 2]| {
        Tensor::<I, 2>::from_data(
            TensorData::new(values(len, seed), shape),
            (dev, DType::BF16),
        )
    };
    // `n` per part (as GQA's q and v: different sizes take one `B` launch each).
    for (parts, r, k, n, shared) in [
        (2usize, 16usize, 4096usize, [4096usize; 3], false),
        (3, 8, 1024, [768; 3], false),
        (2, 16, 1024, [1024, 256, 256], false),
        (2, 16, 1024, [1024; 3], true),
    ] {
        let x = bf16(k, 60, [1, k]);
        let factors: Vec<[Tensor<I, 2>; 2]> = (0..parts)
            .map(|i| {
                let s = 61 + 2 * i as u64;
                [bf16(r * k, s, [r, k]), bf16(n[i] * r, s + 1, [n[i], r])]
            })
            .collect();
        let opts: Vec<LoraOptions> = (0..parts)
            .map(|i| LoraOptions {
                scaling: 2.0 / (i + 1) as f32,
                dropout: None,
            })
            .collect();
        // Fresh base outputs (`add_scalar` makes a buffer of their own), as a GEMV returns.
        let bases = || -> Vec<Tensor<I, 2>> {
            (0..parts)
                .map(|i| bf16(n[i], 70 + i as u64, [1, n[i]]).add_scalar(0.0))
                .collect()
        };
        let kept = bases();
        let mut ys = bases();
        if shared {
            ys[0] = kept[0].clone();
        }
        let got = lora_acc_parts(ys, x.clone(), factors.clone(), opts.clone());
        let mut same = true;
        for (i, (((y, ab), o), base)) in got
            .into_iter()
            .zip(factors)
            .zip(opts)
            .zip(bases())
            .enumerate()
        {
            // A shared base is summed out of place by `lora_acc` too (the B product rounded to
            // bf16, then added): held here as well, so the reference takes that path.
            let held = (shared && i == 0).then(|| base.clone());
            let want = host(lora_acc(base, x.clone(), ab, o).unsqueeze::<3>())?;
            drop(held);
            let y = host(y.unsqueeze::<3>())?;
            same &= y
                .iter()
                .map(|f| f.to_bits())
                .eq(want.iter().map(|f| f.to_bits()));
        }
        // A shared base must be untouched by the in-place accumulation.
        let kept_ok =
            host(kept[0].clone().unsqueeze::<3>())? == host(bases()[0].clone().unsqueeze::<3>())?;
        let key = format!(
            "lora_parts_{parts}x_r{r}_{k}to{}_{}{}_bit_identical",
            n[0],
            n[1],
            if shared { "_shared_base" } else { "" }
        );
        fails.require(&format!("quantized_gemv {key}"), same && kept_ok);
        res.insert(key, (same && kept_ok).into());
    }
    Ok(())
}

/// `qtune_kernels::matmul` on the GPU (bf16 in; bf16 and f32 out) vs the CPU (f32) for all
/// transpose flags: forward and the gradients of both inputs.
pub(super) fn gemm_check(
    dev: &burn::tensor::Device<Train>,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    let (batch, m, k, n) = (6usize, 200usize, 136usize, 72usize);
    for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
        for out in [DType::BF16, DType::F32] {
            let sa = if ta { [batch, k, m] } else { [batch, m, k] };
            let sb = if tb { [batch, n, k] } else { [batch, k, n] };
            let (va, vb, vw) = (
                values(batch * m * k, 1),
                values(batch * k * n, 2),
                values(batch * m * n, 3),
            );
            let run_cpu = || {
                let d = Default::default();
                let a =
                    Tensor::<Cpu, 3>::from_data(TensorData::new(va.clone(), sa), &d).require_grad();
                let b =
                    Tensor::<Cpu, 3>::from_data(TensorData::new(vb.clone(), sb), &d).require_grad();
                let w = Tensor::<Cpu, 3>::from_data(TensorData::new(vw.clone(), [batch, m, n]), &d);
                let c = qtune_kernels::matmul(a.clone(), b.clone(), ta, tb, DType::F32);
                let g = (c.clone() * w).sum().backward();
                anyhow::Ok((
                    host(c.inner())?,
                    host(a.grad(&g).unwrap())?,
                    host(b.grad(&g).unwrap())?,
                ))
            };
            let run_gpu = || {
                let to = |v: &Vec<f32>, s: [usize; 3]| {
                    Tensor::<Train, 3>::from_data(TensorData::new(v.clone(), s), (dev, DType::BF16))
                };
                let a = to(&va, sa).require_grad();
                let b = to(&vb, sb).require_grad();
                let w = to(&vw, [batch, m, n]).cast(out);
                let c = qtune_kernels::matmul(a.clone(), b.clone(), ta, tb, out);
                let g = (c.clone() * w).sum().backward();
                let ga = a.grad(&g).ok_or_else(|| anyhow::anyhow!("no grad for a"))?;
                let gb = b.grad(&g).ok_or_else(|| anyhow::anyhow!("no grad for b"))?;
                anyhow::Ok((host(c.inner())?, host(ga)?, host(gb)?))
            };
            let (c0, a0, b0) = run_cpu()?;
            let (c1, a1, b1) = run_gpu()?;
            let (fwd, da, db) = (rel(c1, c0), rel(a1, a0), rel(b1, b0));
            println!(
                "{}",
                json!({"check": "gemm", "ta": ta, "tb": tb, "out": format!("{out:?}"),
                       "fwd_rel_err": fwd, "da_rel_err": da, "db_rel_err": db})
            );
            let what = format!("gemm ta={ta} tb={tb} out={out:?}");
            let fwd_tol = if out == DType::F32 {
                GEMM_F32_OUT_FWD
            } else {
                GEMM_BF16
            };
            fails.at_most(&format!("{what} fwd_rel_err"), fwd, fwd_tol);
            // a, b are bf16, so their gradients are bf16 whatever the output dtype.
            fails.at_most(&format!("{what} da_rel_err"), da, GEMM_BF16);
            fails.at_most(&format!("{what} db_rel_err"), db, GEMM_BF16);
        }
    }

    Ok(())
}
