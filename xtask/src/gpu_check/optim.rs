//! The optimizer's device ops on the GPU:
//! - `q_cat_flat` (one device copy per part) equals Burn's `cat` bit for bit, f32 and bf16,
//!   including parts that are views at an offset inside a larger buffer;
//! - the fused 8-bit AdamW step (`q_adam8_blockwise`, one kernel) against the Burn-op reference
//!   on the GPU and on the CPU: one step from the same state (values, codes, absmax), and each
//!   one's own 20-step trajectory (where the values end up).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{DType, Tensor, TensorData, TensorPrimitive};
use qtune_kernels::QBackend;
use qtune_optim::check::{adam8_fresh, adam8_step, Adam8Host};
use qtune_train::backend::{Cpu, Train};
use serde_json::json;

use super::{values, Failures};

type Inner = <Train as AutodiffBackend>::InnerBackend;
type CpuInner = <Cpu as AutodiffBackend>::InnerBackend;

/// One step from the same state: NVRTC's FMA contraction in the fused kernel (as in
/// bitsandbytes' own) can move a moment by its last bit, so a value by an ulp of itself and a
/// code by one step where a moment sits on a midpoint. Values: max |Δp| relative to the step's
/// largest update (an ulp of p ≈ 0.5 is 6e-8, the updates ~1e-3: ≤ 1e-4); codes: at most one
/// step apart, at most 0.5 % of them; absmax: relative 1e-6 (a few ulps).
const STEP_P: f64 = 1e-3;
const STEP_CODES_FRACTION: f64 = 5e-3;
const STEP_ABSMAX: f64 = 1e-6;
/// 20 steps, each trajectory on its own: a flipped code moves later updates by a fraction of
/// one step; a broken kernel (a sign, a lost decay) moves them by whole updates. Max |Δp|
/// relative to the largest total movement of a value.
const TRAJECTORY_P: f64 = 0.1;

pub(super) fn check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    cat_check(dev, fails)?;
    adam8_check(dev, fails);
    Ok(())
}

fn cat_check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    for dtype in [DType::F32, DType::BF16] {
        let t = |n: usize, seed: u64| {
            Tensor::<Inner, 1>::from_data(TensorData::new(values(n, seed), [n]), (dev, dtype))
        };
        // Views at an offset (as the optimizer's parameters are, slices of the last step's
        // group), odd lengths, a single value.
        let big = t(5000, 1);
        let parts = vec![
            t(1000, 2),
            big.clone().narrow(0, 123, 777),
            t(256, 3),
            t(1, 4),
            big.narrow(0, 4000, 1000),
        ];
        let want = Tensor::cat(parts.clone(), 0);
        let prims = parts
            .into_iter()
            .map(|p| p.into_primitive().tensor())
            .collect();
        let got =
            Tensor::<Inner, 1>::from_primitive(TensorPrimitive::Float(Inner::q_cat_flat(prims)));
        let f = |x: Tensor<Inner, 1>| -> anyhow::Result<Vec<f32>> {
            x.cast(DType::F32)
                .into_data()
                .into_vec::<f32>()
                .map_err(|e| anyhow::anyhow!("{e:?}"))
        };
        let (got, want) = (f(got)?, f(want)?);
        let same = got.len() == want.len()
            && got
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits());
        fails.require(&format!("q_cat_flat {dtype:?} = cat bit for bit"), same);
        println!(
            "{}",
            json!({"check": "cat_flat", "dtype": format!("{dtype:?}"), "len": got.len(), "bit_identical": same})
        );
    }
    Ok(())
}

/// Gradient `k` of the check's group: small values, one all-zero block (its state stays zero
/// and normalizes by the smallest normal), one block a thousand times larger.
fn grad(n: usize, k: u64) -> Vec<f32> {
    let mut g: Vec<f32> = values(n, 100 + k).iter().map(|v| v * 1e-2).collect();
    g[5 * 256..6 * 256].fill(0.0);
    for v in &mut g[9 * 256..10 * 256] {
        *v *= 1e3;
    }
    g
}

/// Differences of `a` from `b`: max |Δp| / `scale`, the fraction of codes that differ, the
/// largest code difference, max relative |Δabsmax|.
fn diff(a: &Adam8Host, b: &Adam8Host, scale: f32) -> (f64, f64, u8, f64) {
    let dp =
        a.p.iter()
            .zip(&b.p)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let codes = a
        .state1
        .iter()
        .zip(&b.state1)
        .chain(a.state2.iter().zip(&b.state2));
    let (mut differ, mut max_step) = (0usize, 0u8);
    for (x, y) in codes {
        if x != y {
            differ += 1;
            max_step = max_step.max(x.abs_diff(*y));
        }
    }
    let am = a
        .absmax1
        .iter()
        .zip(&b.absmax1)
        .chain(a.absmax2.iter().zip(&b.absmax2));
    let da = am.fold(0f32, |m, (x, y)| m.max((x - y).abs() / y.abs().max(1e-30)));
    let n_codes = 2 * a.state1.len();
    (
        (dp / scale.max(1e-30)) as f64,
        differ as f64 / n_codes as f64,
        max_step,
        da as f64,
    )
}

fn adam8_check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) {
    // 203 blocks: 25 cubes of 8 planes and a last, partial one.
    let n = 203 * 256;
    let cpu: burn::tensor::Device<CpuInner> = Default::default();
    let p0: Vec<f32> = values(n, 99).iter().map(|v| v * 0.5).collect();
    let hyper = |k: u64| (k, 1e-3, 1e-2);
    // Three reference steps give a state with codes all over both maps.
    let mut x = adam8_fresh(p0.clone());
    for k in 1..=3 {
        x = adam8_step::<CpuInner>(&cpu, &x, &grad(n, k), hyper(k), false);
    }
    let g = grad(n, 4);
    let want = adam8_step::<CpuInner>(&cpu, &x, &g, hyper(4), false);
    let gpu_ops = adam8_step::<Inner>(dev, &x, &g, hyper(4), false);
    let fused = adam8_step::<Inner>(dev, &x, &g, hyper(4), true);
    let update = want
        .p
        .iter()
        .zip(&x.p)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    for (what, got) in [
        ("adam8_fused_step", &fused),
        ("adam8_gpu_ops_step", &gpu_ops),
    ] {
        let (dp, codes, max_step, da) = diff(got, &want, update);
        fails.at_most(&format!("{what} max|dp|/max|update|"), dp, STEP_P);
        fails.at_most(
            &format!("{what} codes differing"),
            codes,
            STEP_CODES_FRACTION,
        );
        fails.require(
            &format!("{what} codes at most one step apart"),
            max_step <= 1,
        );
        fails.at_most(&format!("{what} absmax rel"), da, STEP_ABSMAX);
        println!(
            "{}",
            json!({"check": what, "vs": "cpu_reference", "values": n, "p_err_of_update": dp,
                   "codes_differing": codes, "max_code_step": max_step, "absmax_rel": da})
        );
    }
    // Each one's own trajectory from a fresh state.
    let run = |fused: bool, on_gpu: bool| {
        let mut x = adam8_fresh(p0.clone());
        for k in 1..=20 {
            x = if on_gpu {
                adam8_step::<Inner>(dev, &x, &grad(n, k), hyper(k), fused)
            } else {
                adam8_step::<CpuInner>(&cpu, &x, &grad(n, k), hyper(k), false)
            };
        }
        x
    };
    let (want, got) = (run(false, false), run(true, true));
    let moved = want
        .p
        .iter()
        .zip(&p0)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let (dp, codes, _, _) = diff(&got, &want, moved);
    fails.at_most(
        "adam8_fused_20_steps max|dp|/max|movement|",
        dp,
        TRAJECTORY_P,
    );
    println!(
        "{}",
        json!({"check": "adam8_fused_trajectory", "steps": 20, "p_err_of_movement": dp,
               "max_movement": moved, "codes_differing_at_end": codes})
    );
}
