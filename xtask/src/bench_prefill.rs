//! The pieces of one GPT-J-6B NF4 prefill block timed alone (`cargo xtask bench dequant
//! --prefill`), each fast path beside the path it replaces, and the bench knobs that pick a
//! shipped config of the Triton kernels (`QTUNE_NF4_GEMM_CFG`, `QTUNE_FLASH_ATTN_CFG`).

use burn::tensor::{DType, Distribution, Tensor};
use qtune_kernels::cuda::gemm::{gemm, OneRow, Product};
use qtune_kernels::cuda::{
    flash_attn_config, flash_attn_configs, flash_attn_launches, nf4_gemm_config, nf4_gemm_configs,
    nf4_gemm_launches, set_flash_attn, set_flash_attn_config, set_nf4_gemm, set_nf4_gemm_config,
    Cuda,
};
use qtune_kernels::QBackend;

use crate::bench_kernels::{keep, nf4_dq, time_ms, BenchConfig, Record};
use crate::gpu_check::{host, rel};

type C = Cuda<f32>;

/// The pieces of one GPT-J-6B NF4 prefill block at `cfg.tokens` rows (the bench's `--prefill`;
/// host-timed, `sync → iters × op → sync`): per weight shape the NF4 + double-quant
/// dequantization alone, the bf16 cuBLAS GEMM alone and the quantized linear (both); q, k and v
/// as three GEMMs against one strided-batched GEMM of the three (does batching fill the GPU
/// better at few rows?); each quantized linear through every config of the fused NF4 GEMM; the
/// attention (16 heads of 256, causal: as the switches say, the unfused path, then every config
/// of the fused attention) and a LayerNorm; the bf16 LM head's GEMM. A fused row's name carries
/// its largest difference from the unfused one and whether it ran or fell back. Rates: TFLOP/s for products (kind `prefill`), GB/s for the passes over memory
/// (`prefill_bw`: the dequantization in bitsandbytes' bytes, the LayerNorm's read and write).
pub fn prefill(cfg: &BenchConfig) -> Vec<Record> {
    let dev = Default::default();
    let (m, iters) = (cfg.tokens, cfg.linear_iters);
    let mut out = Vec::new();
    let bf16 = |t: Tensor<C, 2>| t.cast(DType::BF16);
    let normal = |shape: [usize; 2], std: f64| {
        bf16(Tensor::<C, 2>::random(
            shape,
            Distribution::Normal(0.0, std),
            &dev,
        ))
    };
    // Products (`prefill`, TFLOP/s) and passes over memory (`prefill_bw`, GB/s).
    let mut push = |kind: &'static str, name: String, ms: f64, rate: f64| {
        keep(
            &mut out,
            Record {
                kind,
                name,
                ms,
                rate,
                extra: format!(",\"us\":{:.2},\"tokens\":{m}", ms * 1e3),
            },
        )
    };
    for (in_f, out_f) in [(4096, 4096), (4096, 16384), (16384, 4096)] {
        let wd = normal([out_f, in_f], 0.02);
        let q = nf4_dq(wd.clone());
        let x = normal([m, in_f], 1.0).into_primitive().tensor();
        let wp = wd.into_primitive().tensor();
        let flops = 2.0 * (m * in_f * out_f) as f64;
        let shape = format!("{in_f}->{out_f}");
        let ms = time_ms(&dev, cfg.warmup, iters, || drop(q.dequantize(DType::BF16)));
        push(
            "prefill_bw",
            format!("dequant {shape}"),
            ms,
            2.5 * (in_f * out_f) as f64 / ms / 1e6,
        );
        let ms = time_ms(&dev, cfg.warmup, iters, || {
            drop(gemm::<C>(x.clone(), &wp, Product::ATransB))
        });
        push("prefill", format!("gemm {shape}"), ms, flops / ms / 1e9);
        let ms = time_ms(&dev, cfg.warmup, iters, || {
            drop(C::q_linear(x.clone(), q.primitive()))
        });
        push("prefill", format!("q_linear {shape}"), ms, flops / ms / 1e9);
        // The same product with the dense weight (dequantize + cuBLAS), then through each
        // shipped config of the fused NF4 GEMM, its largest difference from the former noted.
        set_nf4_gemm(Some(false));
        let ms = time_ms(&dev, cfg.warmup, iters, || {
            drop(C::q_linear(x.clone(), q.primitive()))
        });
        push(
            "prefill",
            format!("q_linear unfused {shape}"),
            ms,
            flops / ms / 1e9,
        );
        let unfused = host_2d(C::q_linear(x.clone(), q.primitive()));
        set_nf4_gemm(Some(true));
        let chosen = nf4_gemm_config();
        for c in 0..nf4_gemm_configs() {
            set_nf4_gemm_config(c);
            let before = nf4_gemm_launches();
            let err = rel(
                host_2d(C::q_linear(x.clone(), q.primitive())),
                unfused.clone(),
            );
            // Where the fused kernel did not run (not loaded, shape not served) the time is
            // the fallback's, and the name says so.
            let ran = if nf4_gemm_launches() > before {
                "fused"
            } else {
                "NOT RUN: fell back"
            };
            let ms = time_ms(&dev, cfg.warmup, iters, || {
                drop(C::q_linear(x.clone(), q.primitive()))
            });
            let name = format!("q_linear fused c{c} {shape} (err {err:.1e}, {ran})");
            push("prefill", name, ms, flops / ms / 1e9);
        }
        set_nf4_gemm(None);
        set_nf4_gemm_config(chosen);
        if (in_f, out_f) == (4096, 4096) {
            // q, k and v: one strided-batched GEMM of the three against three GEMMs.
            let x3 =
                Tensor::<C, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(x.clone()))
                    .unsqueeze_dim::<3>(0)
                    .repeat_dim(0, 3);
            let w3 = normal([3 * out_f, in_f], 0.02).reshape([3, out_f, in_f]);
            let (x3, w3) = (x3.into_primitive().tensor(), w3.into_primitive().tensor());
            let ms = time_ms(&dev, cfg.warmup, iters, || {
                drop(qtune_kernels::cuda::gemm::bmm::<C>(
                    x3.clone(),
                    w3.clone(),
                    false,
                    true,
                    DType::BF16,
                    OneRow::Gemv,
                ))
            });
            push(
                "prefill",
                format!("gemm qkv batched 3x{shape}"),
                ms,
                3.0 * flops / ms / 1e9,
            );
        }
    }
    // Attention over the block's q, k, v ([1, m, 16, 256], causal) and a LayerNorm of x.
    let (h, hd) = (16, 256);
    let qkv = || normal([m, h * hd], 1.0).reshape([1, m, h, hd]);
    let (q, k, v) = (qkv(), qkv(), qkv());
    let mask = Tensor::<C, 2, burn::tensor::Bool>::triu_mask([m, m], 1, &dev).reshape([1, 1, m, m]);
    let attn = || {
        qtune_kernels::attention(
            q.clone(),
            k.clone(),
            v.clone(),
            Some(mask.clone()),
            (hd as f32).sqrt(),
        )
    };
    let attn_flops = 4.0 * (m * m * h * hd) as f64;
    let ms = time_ms(&dev, cfg.warmup, iters, || drop(attn()));
    push(
        "prefill",
        format!("attention 1x{m}x{h}x{hd} causal"),
        ms,
        attn_flops / ms / 1e9,
    );
    // The unfused path alone, then each config of the fused kernel (its difference noted).
    set_flash_attn(Some(false));
    let ms = time_ms(&dev, cfg.warmup, iters, || drop(attn()));
    push(
        "prefill",
        "attention unfused".into(),
        ms,
        attn_flops / ms / 1e9,
    );
    let attn_host = || host_2d(attn().reshape([m, h * hd]).into_primitive().tensor());
    let unfused = attn_host();
    set_flash_attn(Some(true));
    let chosen = flash_attn_config();
    for c in 0..flash_attn_configs() {
        set_flash_attn_config(c);
        let before = flash_attn_launches();
        let err = rel(attn_host(), unfused.clone());
        let ran = if flash_attn_launches() > before {
            "fused"
        } else {
            "NOT RUN: fell back"
        };
        let ms = time_ms(&dev, cfg.warmup, iters, || drop(attn()));
        let name = format!("attention flash c{c} (err {err:.1e}, {ran})");
        push("prefill", name, ms, attn_flops / ms / 1e9);
    }
    set_flash_attn(None);
    set_flash_attn_config(chosen);
    let x = normal([m, h * hd], 1.0);
    let (w, b) = (
        Tensor::<C, 1>::ones([h * hd], &dev),
        Tensor::<C, 1>::zeros([h * hd], &dev),
    );
    let ms = time_ms(&dev, cfg.warmup, iters, || {
        drop(qtune_kernels::layer_norm(
            x.clone(),
            w.clone(),
            b.clone(),
            1e-5,
        ))
    });
    // Its read and write, bf16.
    push(
        "prefill_bw",
        format!("layer_norm {m}x{}", h * hd),
        ms,
        (4 * m * h * hd) as f64 / ms / 1e6,
    );
    let head = normal([50400, h * hd], 0.02).into_primitive().tensor();
    let xp = x.into_primitive().tensor();
    let ms = time_ms(&dev, cfg.warmup, iters, || {
        drop(gemm::<C>(xp.clone(), &head, Product::ATransB))
    });
    push(
        "prefill",
        "gemm head 4096->50400".into(),
        ms,
        2.0 * (m * 4096 * 50400) as f64 / ms / 1e9,
    );
    out
}

/// A rank-2 CUDA tensor's values in f32 on the host.
fn host_2d(t: burn::tensor::ops::FloatTensor<C>) -> Vec<f32> {
    host(Tensor::<C, 2>::from_primitive(
        burn::tensor::TensorPrimitive::Float(t),
    ))
    .unwrap_or_else(|e| panic!("reading a product back: {e}"))
}

/// Picks the fused NF4 GEMM's config from `QTUNE_NF4_GEMM_CFG` and the fused attention's from
/// `QTUNE_FLASH_ATTN_CFG` where set (bench knobs: which shipped configs the whole prefill runs).
///
/// # Errors
/// A value that is not the number of a shipped config.
pub fn configs_from_env() -> anyhow::Result<()> {
    config_from_env(
        "QTUNE_NF4_GEMM_CFG",
        nf4_gemm_configs(),
        set_nf4_gemm_config,
    )?;
    config_from_env(
        "QTUNE_FLASH_ATTN_CFG",
        flash_attn_configs(),
        set_flash_attn_config,
    )
}

/// `var`'s config number, if set, given to `set` (one of `n`).
fn config_from_env(var: &str, n: usize, set: fn(usize)) -> anyhow::Result<()> {
    if let Ok(v) = std::env::var(var) {
        match v.parse::<usize>() {
            Ok(c) if c < n => set(c),
            _ => anyhow::bail!("{var}={v}: expected a config number from 0 to {}", n - 1),
        }
    }
    Ok(())
}
