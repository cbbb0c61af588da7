//! The fused NF4 GEMM (`qtune_kernels::cuda` `nf4_gemm.rs`: 4-bit codes read by the GEMM, no
//! dense weight) against dequantize + cuBLAS on the same weights, bf16, NF4 + DQ, every shipped
//! config, at row counts from 2 to its 1024-row limit (tails included): the plain product
//! (`q_linear`), the MLP's `gelu_new(x·W_inᵀ + b_in)·W_outᵀ` (`mlp_gelu_new` on the inner
//! backend: the bias + GELU epilogue) and the block sum `mlp_gelu_new_plus` (the bias + add
//! epilogue). Metric: max |fused − unfused| / max |unfused|. The launch counter proves the fused
//! kernels ran. Configs that make the weight values another way on a twin's tiles
//! (`nf4_gemm_twins`) must match it bit for bit.

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use qtune_kernels::cuda::{
    nf4_gemm_config, nf4_gemm_configs, nf4_gemm_launches, nf4_gemm_twins, set_nf4_gemm,
    set_nf4_gemm_config,
};
use qtune_kernels::{mlp_gelu_new, mlp_gelu_new_plus, q_linear};
use qtune_train::backend::Train;
use serde_json::json;

use super::mlp::{bf16, nf4};
use super::{host, rel, Failures};

type Inner = <Train as AutodiffBackend>::InnerBackend;

/// Both sides hold the same bf16 weights (the fused kernel's are the dequant kernel's bit for
/// bit) and sum in f32; they differ in the order of the sum and, for the MLP, in where the
/// hidden activation rounds: one or two bf16 ulps of the largest value, as the cuBLASLt
/// epilogues' check (`mlp.rs`, MLP_FWD).
const FUSED: f64 = 1e-2;

pub(super) fn check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    let (d, hidden) = (256usize, 1024usize);
    let (w_in, w_out) = (
        nf4::<Inner>(dev, "fc_in", [hidden, d], 61)?,
        nf4::<Inner>(dev, "fc_out", [d, hidden], 62)?,
    );
    let b_in = bf16::<Inner, 1>(dev, [hidden], 63);
    let b_out = bf16::<Inner, 1>(dev, [d], 64);
    let chosen = nf4_gemm_config();
    let mut lines = Vec::new();
    for rows in [2usize, 17, 96, 300, 1024] {
        let x = bf16::<Inner, 3>(dev, [1, rows, d], 65 + rows as u64);
        let adds = [
            bf16::<Inner, 3>(dev, [1, rows, d], 66),
            bf16::<Inner, 3>(dev, [1, rows, d], 67),
        ];
        let run = || -> anyhow::Result<[Vec<f32>; 3]> {
            let plain = q_linear(x.clone(), &w_in);
            let mlp = mlp_gelu_new(x.clone(), &w_in, b_in.clone(), &w_out, false);
            let fresh: Vec<Tensor<Inner, 3>> = adds.iter().map(|a| a.clone() * 1.0).collect();
            let plus = mlp_gelu_new_plus(
                x.clone(),
                (&w_in, b_in.clone()),
                (&w_out, b_out.clone()),
                fresh,
            );
            Ok([host(plain)?, host(mlp)?, host(plus)?])
        };
        set_nf4_gemm(Some(false));
        let want = run()?;
        set_nf4_gemm(Some(true));
        let mut outs = Vec::with_capacity(nf4_gemm_configs());
        for c in 0..nf4_gemm_configs() {
            set_nf4_gemm_config(c);
            let before = nf4_gemm_launches();
            let got = run()?;
            let launched = nf4_gemm_launches() - before;
            outs.push(got.clone());
            let errs: Vec<f64> = got
                .into_iter()
                .zip(want.clone())
                .zip(["plain", "mlp", "plus"])
                .map(|((g, w), what)| {
                    fails.at_most(
                        &format!("nf4_gemm c{c} {rows} rows {what}"),
                        rel(g, w),
                        FUSED,
                    )
                })
                .collect();
            // q_linear, fc_in and fc_out of the MLP, fc_in and fc_out of the sum.
            fails.require(
                &format!("nf4_gemm c{c} {rows} rows: 5 fused launches ({launched})"),
                launched == 5,
            );
            lines.push(json!({"config": c, "rows": rows, "launches": launched,
                "plain": errs[0], "mlp": errs[1], "plus": errs[2]}));
        }
        // Configs that make the same weight values another way, on the same tiles: the same
        // bits.
        for &(c, twin) in nf4_gemm_twins() {
            let same = outs[c] == outs[twin];
            fails.require(
                &format!("nf4_gemm c{c} = c{twin} bit for bit at {rows} rows"),
                same,
            );
            lines.push(json!({"config": c, "twin": twin, "rows": rows, "bit_identical": same}));
        }
    }
    set_nf4_gemm(None);
    set_nf4_gemm_config(chosen);
    println!(
        "{}",
        json!({"check": "nf4_gemm", "shape": [d, hidden], "tolerance": FUSED, "results": lines})
    );
    Ok(())
}
