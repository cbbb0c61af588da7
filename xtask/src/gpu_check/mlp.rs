//! GPT-J's fused MLP op (`qtune_kernels::mlp_gelu_new`: `fc_in`'s bias and `gelu_new` in the
//! GEMM's cuBLASLt epilogue, the activation's derivative in `fc_out`'s dx GEMM) vs the unfused
//! ops on the GPU (quantized GEMMs, the `gelu_new` kernel), bf16, NF4 + DQ weights: forward
//! without autodiff (GELU_BIAS), tracked forward and input gradient (GELU_AUX_BIAS, DGELU),
//! and the gradient of a recompute that never reads the output (BIAS only); and the block sum
//! `mlp_gelu_new_plus` (`fc_out`'s bias and the block's adds on its GEMM, β = 1 in place) on the
//! inner backend, as the checkpointed forward runs it, with a held add left unchanged. The same
//! for dense bf16 weights (bf16 training: `linear_t` GEMMs in the unfused ops; `mlp_dense_*`).
//! Metric: max |fused − unfused| / max |unfused|.

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorData};
use qtune_kernels::{
    bias_gelu_new, linear_t, mlp_gelu_new, mlp_gelu_new_plus, q_linear, Frozen, QuantWeight,
};
use qtune_quant::{FloatDType, QuantFormat};
use qtune_train::backend::Train;
use serde_json::json;

use super::{host, rel, values, Failures};

/// Both sides round to bf16 at different points: the epilogue applies the bias and GELU to the
/// f32 accumulator and rounds once, the unfused path rounds the product, then the activation.
/// That is one or two bf16 ulps on the `[m, 4·D]` activation (≤ 7.8e-3 of its largest value),
/// averaged over `fc_out`'s sums; the `gelu_new` kernel's own checks allow 1e-2 / 1.5e-2.
/// Measured on an H100 (session 16): forward 4.2e-3, dx 5.8e-3 (tracked and unread).
const MLP_FWD: f64 = 1e-2;
const MLP_GRAD: f64 = 1.5e-2;

pub(super) fn check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    // 96 rows (two sequences of 48), D = 256, 4·D = 1024 (a multiple of 8, as the epilogue's
    // auxiliary matrix needs).
    let (b, t, d, hidden) = (2usize, 48usize, 256usize, 1024usize);
    let (w_in, w_out) = (
        nf4::<Train>(dev, "fc_in", [hidden, d], 41)?,
        nf4::<Train>(dev, "fc_out", [d, hidden], 42)?,
    );
    let bias = bf16::<Train, 1>(dev, [hidden], 43);
    let x = bf16::<Train, 3>(dev, [b, t, d], 44);
    let dy = bf16::<Train, 3>(dev, [b, t, d], 45);
    let mut res = serde_json::Map::new();

    // x untracked (the no-graph forward): GELU_BIAS on fc_in's GEMM.
    let want = q_linear(
        bias_gelu_new(q_linear(x.clone(), &w_in), bias.clone()),
        &w_out,
    );
    let got = mlp_gelu_new(x.clone(), &w_in, bias.clone(), &w_out, false);
    let v = rel(host(got)?, host(want)?);
    res.insert(
        "mlp_fwd_rel_err".into(),
        fails.at_most("mlp_fwd", v, MLP_FWD).into(),
    );

    // x tracked.
    let (wa_in, wa_out, ba) = (&w_in, &w_out, bias);
    let run = |f: &dyn Fn(Tensor<Train, 3>) -> Tensor<Train, 3>| value_and_dx(&x, &dy, f);
    let (want_y, want_dx) =
        run(&|x| q_linear(bias_gelu_new(q_linear(x, wa_in), ba.clone()), wa_out))?;
    let (got_y, got_dx) = run(&|x| mlp_gelu_new(x, wa_in, ba.clone(), wa_out, false))?;
    let (_, unread_dx) = run(&|x| mlp_gelu_new(x, wa_in, ba.clone(), wa_out, true))?;
    for (key, v, tol) in [
        ("mlp_tracked_fwd", rel(got_y, want_y), MLP_FWD),
        ("mlp_dx", rel(got_dx.clone(), want_dx.clone()), MLP_GRAD),
        ("mlp_unread_dx", rel(unread_dx, want_dx), MLP_GRAD),
    ] {
        res.insert(format!("{key}_rel_err"), fails.at_most(key, v, tol).into());
    }
    plus(dev, [b, t, d, hidden], &mut res, fails)?;
    dense(dev, [b, t, d, hidden], &mut res, fails)?;
    println!(
        "{}",
        json!({"check": "fused_mlp_epilogues", "shape": [b * t, d, hidden], "results": res})
    );
    Ok(())
}

type Inner = <Train as AutodiffBackend>::InnerBackend;

/// `mlp_gelu_new_plus` on the inner backend (the no-graph forward of a checkpointed block)
/// against the MLP op, then `+ b_out`, `+ attn`, `+ h` as separate adds: with two fresh adds
/// (summed, then the GEMM accumulates onto the sum in place) and with one add the caller still
/// holds (not written: bias epilogue, then an add), which must come back unchanged.
fn plus(
    dev: &burn::tensor::Device<Train>,
    [b, t, d, hidden]: [usize; 4],
    res: &mut serde_json::Map<String, serde_json::Value>,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    let tensor = |shape: [usize; 3], seed: u64| bf16::<Inner, 3>(dev, shape, seed);
    let (w_in, w_out) = (
        nf4::<Inner>(dev, "fc_in", [hidden, d], 51)?,
        nf4::<Inner>(dev, "fc_out", [d, hidden], 52)?,
    );
    let b_in = bf16::<Inner, 1>(dev, [hidden], 53);
    let b_out = bf16::<Inner, 1>(dev, [d], 54);
    let x = tensor([b, t, d], 55);
    let adds = [tensor([b, t, d], 56), tensor([b, t, d], 57)];
    let mlp = mlp_gelu_new(x.clone(), &w_in, b_in.clone(), &w_out, false);
    let want2 = mlp.clone() + b_out.clone().unsqueeze::<3>() + adds[0].clone() + adds[1].clone();
    let want1 = mlp + b_out.clone().unsqueeze::<3>() + adds[0].clone();
    let held = host(adds[0].clone())?;
    let fresh = adds.iter().map(|a| a.clone() * 1.0).collect();
    let got2 = mlp_gelu_new_plus(
        x.clone(),
        (&w_in, b_in.clone()),
        (&w_out, b_out.clone()),
        fresh,
    );
    let got1 = mlp_gelu_new_plus(x, (&w_in, b_in), (&w_out, b_out), vec![adds[0].clone()]);
    let (v2, v1) = (
        rel(host(got2)?, host(want2)?),
        rel(host(got1)?, host(want1)?),
    );
    let untouched = if host(adds[0].clone())? == held {
        0.0
    } else {
        1.0
    };
    for (key, v, tol) in [
        ("mlp_plus_two_adds", v2, MLP_FWD),
        ("mlp_plus_held_add", v1, MLP_FWD),
        ("mlp_plus_held_add_changed", untouched, 0.0),
    ] {
        res.insert(format!("{key}_rel_err"), fails.at_most(key, v, tol).into());
    }
    Ok(())
}

/// The MLP op over dense bf16 weights (no gradient) against `linear_t`, `bias_gelu_new`,
/// `linear_t`: untracked forward, tracked forward and input gradient, the unread recompute's
/// gradient, and the block sum with two fresh adds on the inner backend.
fn dense(
    dev: &burn::tensor::Device<Train>,
    [b, t, d, hidden]: [usize; 4],
    res: &mut serde_json::Map<String, serde_json::Value>,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    let tensor = |shape: [usize; 3], seed: u64| bf16::<Train, 3>(dev, shape, seed);
    let w_in = bf16::<Train, 2>(dev, [hidden, d], 61).mul_scalar(0.1);
    let w_out = bf16::<Train, 2>(dev, [d, hidden], 62).mul_scalar(0.1);
    let b_in = bf16::<Train, 1>(dev, [hidden], 63);
    let (x, dy) = (tensor([b, t, d], 64), tensor([b, t, d], 65));
    let unfused = |x: Tensor<Train, 3>| {
        linear_t(
            bias_gelu_new(linear_t(x, w_in.clone()), b_in.clone()),
            w_out.clone(),
        )
    };
    let fused = |x: Tensor<Train, 3>, unread: bool| {
        let (i, o) = (Frozen::Dense(w_in.clone()), Frozen::Dense(w_out.clone()));
        mlp_gelu_new(x, i, b_in.clone(), o, unread)
    };
    let fwd = rel(host(fused(x.clone(), false))?, host(unfused(x.clone()))?);
    let run = |f: &dyn Fn(Tensor<Train, 3>) -> Tensor<Train, 3>| value_and_dx(&x, &dy, f);
    let (want_y, want_dx) = run(&unfused)?;
    let (got_y, got_dx) = run(&|x| fused(x, false))?;
    let (_, unread_dx) = run(&|x| fused(x, true))?;
    // The block sum on the inner backend (β = 1 onto the summed adds).
    let inner = |t: &Tensor<Train, 3>| t.clone().inner();
    let (xi, b_out) = (inner(&x), bf16::<Train, 1>(dev, [d], 66).inner());
    let adds = [inner(&tensor([b, t, d], 67)), inner(&tensor([b, t, d], 68))];
    let (wi_in, wi_out, bi_in) = (
        w_in.clone().inner(),
        w_out.clone().inner(),
        b_in.clone().inner(),
    );
    let want_plus = linear_t(
        bias_gelu_new(linear_t(xi.clone(), wi_in.clone()), bi_in.clone()),
        wi_out.clone(),
    ) + b_out.clone().unsqueeze::<3>()
        + adds[0].clone()
        + adds[1].clone();
    let got_plus = mlp_gelu_new_plus(
        xi,
        (Frozen::Dense(wi_in), bi_in),
        (Frozen::Dense(wi_out), b_out),
        adds.iter().map(|a| a.clone() * 1.0).collect(),
    );
    for (key, v, tol) in [
        ("mlp_dense_fwd", fwd, MLP_FWD),
        ("mlp_dense_tracked_fwd", rel(got_y, want_y), MLP_FWD),
        ("mlp_dense_dx", rel(got_dx, want_dx.clone()), MLP_GRAD),
        ("mlp_dense_unread_dx", rel(unread_dx, want_dx), MLP_GRAD),
        (
            "mlp_dense_plus_two_adds",
            rel(host(got_plus)?, host(want_plus)?),
            MLP_FWD,
        ),
    ] {
        res.insert(format!("{key}_rel_err"), fails.at_most(key, v, tol).into());
    }
    Ok(())
}

/// Seeded bf16 values of `shape` on `dev`.
pub(super) fn bf16<B: Backend, const N: usize>(
    dev: &B::Device,
    shape: [usize; N],
    seed: u64,
) -> Tensor<B, N> {
    let n = shape.iter().product();
    Tensor::<B, 1>::from_data(TensorData::new(values(n, seed), [n]), (dev, DType::BF16))
        .reshape(shape)
}

/// A seeded `[out, in]` weight (scaled by 0.1) quantized to NF4 + double quant.
pub(super) fn nf4<B: qtune_kernels::QBackend>(
    dev: &B::Device,
    name: &str,
    shape: [usize; 2],
    seed: u64,
) -> anyhow::Result<QuantWeight<B>> {
    let w = bf16::<B, 2>(dev, shape, seed).mul_scalar(0.1);
    QuantWeight::<B>::quantize(name, w, QuantFormat::Nf4, 64, true, FloatDType::BF16)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// `f(x)` and `x`'s gradient under the upstream gradient `dy`, on the host.
fn value_and_dx(
    x: &Tensor<Train, 3>,
    dy: &Tensor<Train, 3>,
    f: &dyn Fn(Tensor<Train, 3>) -> Tensor<Train, 3>,
) -> anyhow::Result<(Vec<f32>, Vec<f32>)> {
    let xa = x.clone().require_grad();
    let y = f(xa.clone());
    let grads = (y.clone() * dy.clone()).sum().backward();
    let dx = xa
        .grad(&grads)
        .ok_or_else(|| anyhow::anyhow!("x got no gradient"))?;
    Ok((host(y)?, host(dx)?))
}
