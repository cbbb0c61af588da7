//! `cargo xtask bench gpu-check [--steps 200]` (CUDA builds): correctness on the GPU.
//! 1. The tiny fixture (tests/fixtures/gptj_tiny) in bf16 on the GPU against HF's fp32 logits
//!    (`logits`) and, for the stored NF4 checkpoint, bnb's (`nf4_logits`); the metric is
//!    make.py's max |ours − ref| / max |ref|. The same on the CPU (f32) for scale.
//! 2. The tiny random model (configs/tiny.toml's shape, LoRA q,v) trained for `--steps` steps on
//!    one fixed batch, on the GPU (bf16) and on the CPU (f32), same init, same AdamW: both loss
//!    curves are printed side by side with their largest difference.
//!
//! Also: the cuBLAS GEMMs and fused ops vs the CPU, and greedy decoding (`decode_check`).

#[cfg(feature = "cuda")]
use qtune_lm::CausalLm;

/// Entry point of `bench gpu-check`.
///
/// # Errors
/// Without the `cuda` feature; on a missing fixture or a model error.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    run_impl(args)
}

#[cfg(not(feature = "cuda"))]
fn run_impl(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("`bench gpu-check` needs a CUDA build (--features cuda) and a GPU")
}

#[cfg(feature = "cuda")]
fn run_impl(args: &[String]) -> anyhow::Result<()> {
    use std::path::Path;

    use anyhow::Context;
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::DType;
    use qtune_gptj::{Gptj, LoadOptions};
    use qtune_train::backend::{Cpu, Train};
    use qtune_train::peft_check::{fixture_logits, fixture_prompts, max_rel_err, reference_tensor};
    use serde_json::json;

    type Inner = <Train as AutodiffBackend>::InnerBackend;
    type CpuInner = <Cpu as AutodiffBackend>::InnerBackend;
    let steps: usize = match args {
        [flag, n] if flag == "--steps" => n.parse().context("--steps needs an integer")?,
        [] => 200,
        _ => anyhow::bail!("bench gpu-check: arguments are [--steps N]"),
    };
    let dev: burn::tensor::Device<Train> = Default::default();
    burn::tensor::set_default_dtypes::<Inner>(&dev, DType::BF16, DType::I32)
        .map_err(|e| anyhow::anyhow!("set_default_dtypes(BF16): {e:?}"))?;

    // 0. The cuBLAS batched GEMM behind every dense matmul (attention, LoRA, dense bases):
    // forward and both gradients vs the CPU, on bf16-representable inputs.
    gemm_check(&dev)?;

    // 0b. The Llama family's fused kernels (RMSNorm, SiLU·up, rotate-half RoPE) and grouped-query
    // attention vs their CPU references: forward and input gradients, f32 and bf16.
    let kernel_checks: Vec<_> = qtune_kernels::cuda::selftest::llama_op_checks(&dev)
        .into_iter()
        .chain(qtune_kernels::cuda::selftest::gqa_checks(&dev))
        .collect();
    for c in &kernel_checks {
        println!("{}", c.json());
    }
    let failed_kernels = kernel_checks.iter().filter(|c| !c.ok).count();

    // 1. Fixture parity.
    let fixture = Path::new("tests/fixtures/gptj_tiny");
    let prompts = fixture_prompts(fixture)?;
    for (folder, key) in [("fp32", "logits"), ("nf4", "nf4_logits")] {
        let reference = reference_tensor(fixture, key)?;
        let opts = |dtype| LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        let gpu = Gptj::<Inner>::load(&fixture.join(folder), &opts(DType::BF16), &dev)?;
        let vocab = gpu.config.vocab_size;
        let ours = fixture_logits(&gpu, &prompts);
        let cpu = Gptj::<CpuInner>::load(
            &fixture.join(folder),
            &opts(DType::F32),
            &Default::default(),
        )?;
        let cpu_logits = fixture_logits(&cpu, &prompts);
        println!(
            "{}",
            json!({"check": "fixture_parity", "weights": folder, "reference": key,
                   "gpu_bf16_max_rel_err": max_rel_err(&ours, &reference, &prompts.attention_mask, vocab),
                   "cpu_f32_max_rel_err": max_rel_err(&cpu_logits, &reference, &prompts.attention_mask, vocab),
                   "gpu_vs_cpu_max_rel_err": max_rel_err(&ours, &cpu_logits, &prompts.attention_mask, vocab)})
        );
    }

    // 1b. Greedy decoding: in-place row write, on-device argmax, CUDA graph vs eager.
    decode_check(&dev, fixture)?;

    // 1c. The Llama family (GQA, rotate-half RoPE, RMSNorm, SwiGLU, Qwen2 bias, Mistral window)
    // on the GPU: logits in f32 and bf16 against HF's, batch-1 greedy (CUDA-graph path) ids.
    for name in ["llama_tiny", "llama_tied", "qwen2_tiny", "mistral_tiny"] {
        let fx = Path::new("tests/fixtures").join(name);
        let prompts = fixture_prompts(&fx)?;
        let reference = reference_tensor(&fx, "logits")?;
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("reference.json"))?)?;
        let mut errs = Vec::new();
        let mut greedy_equal = 0;
        for dtype in [DType::F32, DType::BF16] {
            let opts = LoadOptions {
                dtype,
                ..LoadOptions::default()
            };
            let m = qtune_models::load::<Inner>(&fx.join("fp32"), &opts, &dev)?;
            let vocab = m.vocab_size();
            errs.push(max_rel_err(
                &fixture_logits(&m, &prompts),
                &reference,
                &prompts.attention_mask,
                vocab,
            ));
            if dtype == DType::F32 {
                let case = &r["generate"]["greedy_alone"];
                let n = case["args"]["max_new_tokens"].as_u64().unwrap_or(16) as usize;
                let cfg = qtune_lm::GenerationConfig {
                    max_new_tokens: n,
                    ..Default::default()
                };
                let (t, mask) = (prompts.shape[1], &prompts.attention_mask);
                for (row, want) in case["output_ids"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    let prompt: Vec<u32> = (0..t)
                        .filter(|&j| mask[row * t + j] == 1)
                        .map(|j| prompts.input_ids[row * t + j] as u32)
                        .collect();
                    let want: Vec<u32> = want
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_u64())
                        .map(|v| v as u32)
                        .collect();
                    greedy_equal += usize::from(m.greedy_fixed(&prompt, &cfg)? == want);
                }
            }
        }
        println!(
            "{}",
            json!({"check": "llama_family_parity", "fixture": name, "gpu_f32_max_rel_err": errs[0],
                   "gpu_bf16_max_rel_err": errs[1], "greedy_fixed_rows_equal_hf": greedy_equal})
        );
    }

    // 2. Tiny loss curve, GPU bf16 vs CPU f32.
    let mut cfg = qtune_train::RunConfig::tiny();
    cfg.lora.lora_dropout = 0.0;
    let cpu_losses = tiny_curve::<Cpu>(&cfg, steps, &Default::default())?;
    cfg.model.torch_dtype = "bfloat16".into();
    let gpu_losses = tiny_curve::<Train>(&cfg, steps, &dev)?;
    let mut max_diff = 0f64;
    for (i, (c, g)) in cpu_losses.iter().zip(&gpu_losses).enumerate() {
        max_diff = max_diff.max((c - g).abs());
        if i % 20 == 0 || i + 1 == steps {
            println!(
                "{}",
                json!({"check": "tiny_loss_curve", "step": i, "cpu_f32": c, "gpu_bf16": g})
            );
        }
    }
    println!(
        "{}",
        json!({"check": "tiny_loss_curve", "steps": steps, "max_abs_diff": max_diff,
               "cpu_first_last": [cpu_losses.first(), cpu_losses.last()],
               "gpu_first_last": [gpu_losses.first(), gpu_losses.last()]})
    );
    anyhow::ensure!(
        failed_kernels == 0,
        "{failed_kernels} of {} fused-kernel checks failed (lines with \"ok\":false above)",
        kernel_checks.len()
    );
    Ok(())
}

/// `qtune_kernels::matmul` on the GPU (bf16 in; bf16 and f32 out) vs the CPU (f32) for all
/// transpose flags: forward and the gradients of both inputs, max |Δ| / max |ref| each.
#[cfg(feature = "cuda")]
fn gemm_check(dev: &burn::tensor::Device<qtune_train::backend::Train>) -> anyhow::Result<()> {
    use burn::tensor::{DType, Tensor, TensorData};
    use qtune_train::backend::{Cpu, Train};
    use serde_json::json;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                half::bf16::from_f32(v).to_f32()
            })
            .collect()
    }
    fn rel(a: Vec<f32>, b: Vec<f32>) -> f64 {
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let d = a
            .iter()
            .zip(&b)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        (d / scale) as f64
    }
    fn host<B: burn::tensor::backend::Backend>(t: Tensor<B, 3>) -> anyhow::Result<Vec<f32>> {
        t.cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    }
    // Fused attention softmax (causal + a fully masked row) and gelu_new: forward and input
    // gradient, GPU (bf16 probabilities / activations) vs CPU (f32).
    {
        use burn::tensor::Bool;
        let (b, h, t, l) = (2usize, 4usize, 40usize, 72usize);
        let n = b * h * t * l;
        let (vs, vw) = (values(n, 11), values(n, 12));
        let mut bits = Vec::with_capacity(b * t * l);
        for bi in 0..b {
            for i in 0..t {
                for j in 0..l {
                    bits.push(j > i + (l - t) || (bi == 1 && i < 3));
                }
            }
        }
        fn run<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
            dev: &B::Device,
            vs: &[f32],
            vw: &[f32],
            bits: &[bool],
            dims: [usize; 4],
            act: DType,
        ) -> anyhow::Result<[Vec<f32>; 4]> {
            let [b, h, t, l] = dims;
            let host4 = |x: Tensor<B::InnerBackend, 4>| host(x.reshape([b * h, t, l]));
            let s =
                Tensor::<B, 4>::from_data(TensorData::new(vs.to_vec(), dims), (dev, DType::F32))
                    .require_grad();
            let w =
                Tensor::<B, 4>::from_data(TensorData::new(vw.to_vec(), dims), (dev, DType::F32));
            let m =
                Tensor::<B, 4, Bool>::from_data(TensorData::new(bits.to_vec(), [b, 1, t, l]), dev);
            let p = qtune_kernels::attention_softmax(s.clone(), Some(m), 1.3, act);
            let g = (p.clone().cast(DType::F32) * w.clone()).sum().backward();
            let ds = s
                .grad(&g)
                .ok_or_else(|| anyhow::anyhow!("no softmax grad"))?;
            let x = Tensor::<B, 4>::from_data(TensorData::new(vs.to_vec(), dims), (dev, act))
                .mul_scalar(4.0)
                .require_grad();
            let y = qtune_kernels::gelu_new(x.clone());
            let g = (y.clone().cast(DType::F32) * w).sum().backward();
            let dx = x.grad(&g).ok_or_else(|| anyhow::anyhow!("no gelu grad"))?;
            Ok([host4(p.inner())?, host4(ds)?, host4(y.inner())?, host4(dx)?])
        }
        // LayerNorm (frozen w, b) and rotary on [B, T, H, hd] = dims: forward and input grads.
        fn run2<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
            dev: &B::Device,
            vs: &[f32],
            vw: &[f32],
            dims: [usize; 4],
            act: DType,
        ) -> anyhow::Result<[Vec<f32>; 4]> {
            let [b, t, h, l] = dims;
            let host4 = |x: Tensor<B::InnerBackend, 4>| host(x.reshape([b * t, h, l]));
            let x = Tensor::<B, 4>::from_data(TensorData::new(vs.to_vec(), dims), (dev, act))
                .require_grad();
            let w =
                Tensor::<B, 4>::from_data(TensorData::new(vw.to_vec(), dims), (dev, DType::F32));
            let lw = Tensor::<B, 1>::from_data(TensorData::new(vw[..l].to_vec(), [l]), (dev, act))
                .add_scalar(1.0);
            let lb = Tensor::<B, 1>::from_data(TensorData::new(vs[..l].to_vec(), [l]), (dev, act));
            let y = qtune_kernels::layer_norm(x.clone(), lw, lb, 1e-5);
            let g = (y.clone().cast(DType::F32) * w.clone()).sum().backward();
            let dx = x
                .grad(&g)
                .ok_or_else(|| anyhow::anyhow!("no layer norm grad"))?;
            let half = 20.min(l / 2);
            let ang = Tensor::<B, 5>::from_data(
                TensorData::new(
                    vs[..b * t * half]
                        .iter()
                        .map(|v| v * 9.0)
                        .collect::<Vec<f32>>(),
                    [b, t, 1, half, 1],
                ),
                (dev, DType::F32),
            );
            let x2 = Tensor::<B, 4>::from_data(TensorData::new(vw.to_vec(), dims), (dev, act))
                .require_grad();
            let r = qtune_kernels::rotary(x2.clone(), ang.clone().cos(), ang.sin());
            let g = (r.clone().cast(DType::F32) * w).sum().backward();
            let dr = x2
                .grad(&g)
                .ok_or_else(|| anyhow::anyhow!("no rotary grad"))?;
            Ok([host4(y.inner())?, host4(dx)?, host4(r.inner())?, host4(dr)?])
        }
        // Fused cross-entropy: per-row nll and the logits' gradient (bf16 logits on the GPU).
        fn run3<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
            dev: &B::Device,
            vs: &[f32],
            rows: usize,
            vocab: usize,
            act: DType,
        ) -> anyhow::Result<[Vec<f32>; 2]> {
            let x = Tensor::<B, 2>::from_data(
                TensorData::new(
                    vs[..rows * vocab]
                        .iter()
                        .map(|v| v * 8.0)
                        .collect::<Vec<f32>>(),
                    [rows, vocab],
                ),
                (dev, act),
            )
            .require_grad();
            let t: Vec<i64> = (0..rows).map(|r| ((r * 7919) % vocab) as i64).collect();
            let t = Tensor::<B, 1, burn::tensor::Int>::from_data(TensorData::new(t, [rows]), dev);
            let nll = qtune_kernels::cross_entropy(x.clone(), t);
            let g = nll.clone().sum().backward();
            let dx = x
                .grad(&g)
                .ok_or_else(|| anyhow::anyhow!("no cross-entropy grad"))?;
            Ok([
                host(nll.inner().reshape([1, 1, rows]))?,
                host(dx.reshape([1, rows, vocab]))?,
            ])
        }
        // The attention core (token-major q [b, t, h, hd], k, v [b, l, h, hd], same mask):
        // output and the three input gradients.
        #[allow(clippy::too_many_arguments)]
        fn run4<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
            dev: &B::Device,
            vs: &[f32],
            vw: &[f32],
            bits: &[bool],
            [b, t, l, h]: [usize; 4],
            hd: usize,
            act: DType,
        ) -> anyhow::Result<[Vec<f32>; 4]> {
            let mk = |off: usize, rows: usize, scale: f32| {
                let v: Vec<f32> = vs[off..off + b * rows * h * hd]
                    .iter()
                    .map(|x| x * scale)
                    .collect();
                Tensor::<B, 4>::from_data(TensorData::new(v, [b, rows, h, hd]), (dev, act))
                    .require_grad()
            };
            let (q, k, v) = (mk(0, t, 3.0), mk(1000, l, 3.0), mk(2000, l, 1.0));
            let w = Tensor::<B, 4>::from_data(
                TensorData::new(vw[..b * t * h * hd].to_vec(), [b, t, h, hd]),
                (dev, DType::F32),
            );
            let m =
                Tensor::<B, 4, Bool>::from_data(TensorData::new(bits.to_vec(), [b, 1, t, l]), dev);
            let o = qtune_kernels::attention(q.clone(), k.clone(), v.clone(), Some(m), 5.0);
            let g = (o.clone().cast(DType::F32) * w).sum().backward();
            let grad = |x: &Tensor<B, 4>| {
                x.grad(&g)
                    .ok_or_else(|| anyhow::anyhow!("no attention grad"))
                    .and_then(|d| {
                        let [db, dr, dh, dd] = d.dims();
                        host(d.reshape([db, dr, dh * dd]))
                    })
            };
            Ok([
                host(o.inner().reshape([b, t, h * hd]))?,
                grad(&q)?,
                grad(&k)?,
                grad(&v)?,
            ])
        }
        let hd = 32;
        let [c0, c1, c2, c3] = run4::<Cpu>(
            &Default::default(),
            &vs,
            &vw,
            &bits,
            [b, t, l, h],
            hd,
            DType::F32,
        )?;
        let [g0, g1, g2, g3] = run4::<Train>(dev, &vs, &vw, &bits, [b, t, l, h], hd, DType::BF16)?;
        println!(
            "{}",
            json!({"check": "fused_ops", "attention_fwd_rel_err": rel(g0, c0), "attention_dq_rel_err": rel(g1, c1),
                   "attention_dk_rel_err": rel(g2, c2), "attention_dv_rel_err": rel(g3, c3)})
        );
        // Counter-based dropout (the masks must agree bit for bit) and the LoRA-style
        // accumulate-GEMM y + 0.5·x·wᵀ with its three gradients.
        fn run5<B: qtune_kernels::QBackend + burn::tensor::backend::AutodiffBackend>(
            dev: &B::Device,
            vs: &[f32],
            vw: &[f32],
            act: DType,
        ) -> anyhow::Result<[Vec<f32>; 7]> {
            let n = vs.len();
            let x = Tensor::<B, 1>::from_data(TensorData::new(vs.to_vec(), [n]), (dev, act));
            let d = qtune_kernels::dropout(x, 0.3, 0xDEAD_BEEF_1234_5678);
            let (m, k, o) = (96usize, 64usize, 80usize);
            let mk = |v: &[f32], shape: [usize; 2]| {
                Tensor::<B, 2>::from_data(TensorData::new(v.to_vec(), shape), (dev, act))
                    .require_grad()
            };
            let y = mk(&vs[..m * o], [m, o]);
            let x = mk(&vw[..m * k], [m, k]);
            let w = mk(&vs[m * o..m * o + o * k], [o, k]);
            let g = Tensor::<B, 2>::from_data(
                TensorData::new(vw[m * k..m * k + m * o].to_vec(), [m, o]),
                (dev, DType::F32),
            );
            let z = qtune_kernels::linear_t_acc(y.clone(), x.clone(), w.clone(), 0.5);
            // The same on an exclusively owned y (in place; here a Burn kernel's output, whose
            // 80-wide bf16 rows are pitched, so it is first made dense) and with separate ops;
            // both must equal z (z itself takes the shared-y fallback).
            let yi = y.clone().mul_scalar(1.0);
            let z_own = qtune_kernels::linear_t_acc(yi, x.clone(), w.clone(), 0.5);
            let z_ops = y.clone() + qtune_kernels::linear_t(x.clone(), w.clone()).mul_scalar(0.5);
            let (hz, ho, hs) = (
                host(z.clone().inner().unsqueeze::<3>())?,
                host(z_own.inner().unsqueeze::<3>())?,
                host(z_ops.inner().unsqueeze::<3>())?,
            );
            println!(
                "{}",
                serde_json::json!({"check": "gemm_acc_paths", "backend": format!("{act:?}"),
                    "copy_vs_ops": rel(hz.clone(), hs.clone()), "in_place_vs_ops": rel(ho, hs.clone()),
                    "y_max": hs.iter().fold(0f32, |m, v| m.max(v.abs())), "z_max": hz.iter().fold(0f32, |m, v| m.max(v.abs()))})
            );
            let grads = (z.clone().cast(DType::F32) * g.clone()).sum().backward();
            let grad =
                |t: &Tensor<B, 2>,
                 grads: &<B as burn::tensor::backend::AutodiffBackend>::Gradients| {
                    t.grad(grads)
                        .ok_or_else(|| anyhow::anyhow!("no accumulate-GEMM / bias-gelu grad"))
                        .and_then(|d| host(d.unsqueeze::<3>()))
                };
            // gelu_new with fc_in's bias folded in.
            let bias =
                Tensor::<B, 1>::from_data(TensorData::new(vw[..o].to_vec(), [o]), (dev, act));
            let gx = mk(&vs[..m * o], [m, o]);
            let gy = qtune_kernels::bias_gelu_new(gx.clone().mul_scalar(3.0), bias);
            let ggrads = (gy.clone().cast(DType::F32) * g).sum().backward();
            Ok([
                host(d.reshape([1, 1, n]))?,
                host(z.inner().unsqueeze::<3>())?,
                grad(&y, &grads)?,
                grad(&x, &grads)?,
                grad(&w, &grads)?,
                host(gy.inner().unsqueeze::<3>())?,
                grad(&gx, &ggrads)?,
            ])
        }
        let [c0, c1, c2, c3, c4, c5, c6] = run5::<Cpu>(&Default::default(), &vs, &vw, DType::F32)?;
        let [g0, g1, g2, g3, g4, g5, g6] = run5::<Train>(dev, &vs, &vw, DType::BF16)?;
        let mask_mismatch = c0
            .iter()
            .zip(&g0)
            .filter(|(a, b)| (**a == 0.0) != (**b == 0.0))
            .count();
        println!(
            "{}",
            json!({"check": "fused_ops", "dropout_mask_mismatches": mask_mismatch, "dropout_values": c0.len(),
                   "dropout_rel_err": rel(g0, c0), "gemm_acc_fwd_rel_err": rel(g1, c1),
                   "gemm_acc_dy_rel_err": rel(g2, c2), "gemm_acc_dx_rel_err": rel(g3, c3), "gemm_acc_dw_rel_err": rel(g4, c4),
                   "bias_gelu_fwd_rel_err": rel(g5, c5), "bias_gelu_grad_rel_err": rel(g6, c6)})
        );
        let (rows, vocab) = (b * h * t / 8, l * 4);
        let [c0, c1] = run3::<Cpu>(&Default::default(), &vs, rows, vocab, DType::F32)?;
        let [g0, g1] = run3::<Train>(dev, &vs, rows, vocab, DType::BF16)?;
        println!(
            "{}",
            json!({"check": "fused_ops", "cross_entropy_fwd_rel_err": rel(g0, c0), "cross_entropy_grad_rel_err": rel(g1, c1)})
        );
        let [c0, c1, c2, c3] =
            run2::<Cpu>(&Default::default(), &vs, &vw, [b, h, t, l], DType::F32)?;
        let [g0, g1, g2, g3] = run2::<Train>(dev, &vs, &vw, [b, h, t, l], DType::BF16)?;
        println!(
            "{}",
            json!({"check": "fused_ops", "layer_norm_fwd_rel_err": rel(g0, c0), "layer_norm_grad_rel_err": rel(g1, c1),
                   "rotary_fwd_rel_err": rel(g2, c2), "rotary_grad_rel_err": rel(g3, c3)})
        );
        let dims = [b, h, t, l];
        let cpu = run::<Cpu>(&Default::default(), &vs, &vw, &bits, dims, DType::F32)?;
        let gpu = run::<Train>(dev, &vs, &vw, &bits, dims, DType::BF16)?;
        let [c0, c1, c2, c3] = cpu;
        let [g0, g1, g2, g3] = gpu;
        println!(
            "{}",
            json!({"check": "fused_ops", "softmax_fwd_rel_err": rel(g0, c0), "softmax_grad_rel_err": rel(g1, c1),
                   "gelu_fwd_rel_err": rel(g2, c2), "gelu_grad_rel_err": rel(g3, c3)})
        );
    }
    // Batch-1 quantized linear (the decode GEMV straight from the codes) vs dequantize + GEMM
    // on the GPU, for NF4 + double quant, FP4 and blockwise 8-bit.
    {
        use qtune_kernels::QuantWeight;
        use qtune_quant::{FloatDType, QuantFormat};
        let (o, k) = (384usize, 1024usize);
        let mut res = serde_json::Map::new();
        for (name, format, bs, dq) in [
            ("nf4_dq", QuantFormat::Nf4, 64, true),
            ("fp4", QuantFormat::Fp4, 64, false),
            ("int8", QuantFormat::Blockwise8, 256, false),
        ] {
            type I = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;
            let wt = Tensor::<I, 2>::from_data(
                TensorData::new(values(o * k, 31), [o, k]),
                (dev, DType::BF16),
            );
            let w = QuantWeight::quantize(name, wt, format, bs, dq, FloatDType::BF16)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let x = Tensor::<I, 2>::from_data(
                TensorData::new(values(k, 32), [1, k]),
                (dev, DType::BF16),
            );
            let y = qtune_kernels::q_linear(x.clone(), &w);
            let y_ref = qtune_kernels::linear_t(x, w.dequantize(DType::BF16));
            res.insert(
                format!("gemv_{name}_rel_err"),
                rel(host(y.unsqueeze::<3>())?, host(y_ref.unsqueeze::<3>())?).into(),
            );
        }
        // Batch-1 dense products (LoRA factors, LM head at decode): GEMV kernel vs cuBLAS.
        for (n, k) in [(16usize, 1024usize), (1000, 16), (2000, 1024)] {
            type I = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;
            let t = |len: usize, seed: u64, shape: [usize; 2]| {
                Tensor::<I, 2>::from_data(
                    TensorData::new(values(len, seed), shape),
                    (dev, DType::BF16),
                )
            };
            let (x, w, y0) = (t(k, 33, [1, k]), t(n * k, 34, [n, k]), t(n, 35, [1, n]));
            let run = |gemv: bool| -> anyhow::Result<[Vec<f32>; 2]> {
                qtune_kernels::cuda::set_dense_gemv(gemv);
                let y = qtune_kernels::linear_t(x.clone(), w.clone());
                let acc = qtune_kernels::linear_t_acc(
                    y0.clone().add_scalar(0.0),
                    x.clone(),
                    w.clone(),
                    0.5,
                );
                Ok([host(y.unsqueeze::<3>())?, host(acc.unsqueeze::<3>())?])
            };
            let ([g, ga], [c, ca]) = (run(true)?, run(false)?);
            qtune_kernels::cuda::set_dense_gemv(true);
            res.insert(format!("dense_gemv_{n}x{k}_rel_err"), rel(g, c).into());
            res.insert(
                format!("dense_gemv_acc_{n}x{k}_rel_err"),
                rel(ga, ca).into(),
            );
        }
        res.insert("check".into(), "quantized_gemv".into());
        println!("{}", serde_json::Value::Object(res));
    }
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
            println!(
                "{}",
                json!({"check": "gemm", "ta": ta, "tb": tb, "out": format!("{out:?}"),
                       "fwd_rel_err": rel(c1, c0), "da_rel_err": rel(a1, a0), "db_rel_err": rel(b1, b0)})
            );
        }
    }
    Ok(())
}

/// Per-step mean token losses of the tiny model with LoRA, trained on one fixed batch
/// (checkpointed micro-steps, AdamW, constant lr 1e-3).
#[cfg(feature = "cuda")]
fn tiny_curve<B>(
    cfg: &qtune_train::RunConfig,
    steps: usize,
    dev: &B::Device,
) -> anyhow::Result<Vec<f64>>
where
    B: burn::tensor::backend::AutodiffBackend + qtune_kernels::QBackend,
    B::InnerBackend: qtune_kernels::QBackend,
{
    use qtune_optim::{Optimizer, OptimizerConfig};
    use qtune_train::step::micro_step_checkpointed;
    let mut model = qtune_train::build::model_with_lora::<B>(cfg, dev)?;
    let vocab = model.vocab_size() as u64;
    let (b, t) = (8usize, 64usize);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let ids: Vec<i64> = (0..b * t)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // A learnable pattern: every other token repeats its predecessor.
            (x % vocab) as i64
        })
        .collect();
    let ids: Vec<i64> = ids
        .iter()
        .enumerate()
        .map(|(i, &v)| if i % 2 == 1 { ids[i - 1] } else { v })
        .collect();
    let batch = qtune_data::Batch {
        batch_size: b,
        seq_len: t,
        input_ids: ids.clone(),
        attention_mask: vec![1; b * t],
        position_ids: (0..b).flat_map(|_| 0..t as i64).collect(),
        labels: ids,
        lengths: vec![t; b],
        segment_ids: None,
    };
    let norm = batch.n_target_tokens() as f32;
    let mut optim = Optimizer::<B>::new(OptimizerConfig::default())?;
    let mut losses = Vec::with_capacity(steps);
    for _ in 0..steps {
        let ms = micro_step_checkpointed::<B, _>(&model, &batch, norm, None)?;
        losses.push(ms.loss_sum / norm as f64);
        model = optim.step(1e-3, model, ms.grads)?;
    }
    Ok(losses)
}

/// Greedy decoding on the GPU: `write_row` (shared and exclusive destination, a row out of
/// range) and `greedy_advance` (ties, NaN) against their host definitions; then the tiny
/// fixture's batch-1 greedy continuation with the decode step as a CUDA graph, without graphs
/// (the same kernels launched from the host: must agree token for token) and by the stepwise
/// loop (host argmax over read-back logits).
#[cfg(feature = "cuda")]
fn decode_check(
    dev: &burn::tensor::Device<qtune_train::backend::Train>,
    fixture: &std::path::Path,
) -> anyhow::Result<()> {
    use burn::tensor::backend::AutodiffBackend;
    use burn::tensor::{DType, Int, Tensor, TensorData};
    use qtune_gptj::{GenerationConfig, Gptj, LoadOptions};
    use qtune_kernels::cuda::set_graphs_enabled;
    use serde_json::json;
    type I = <qtune_train::backend::Train as AutodiffBackend>::InnerBackend;

    let host_f = |t: Tensor<I, 2>| -> anyhow::Result<Vec<f32>> {
        t.cast(DType::F32)
            .into_data()
            .into_vec::<f32>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    let host_i = |t: Tensor<I, 1, Int>| -> anyhow::Result<Vec<i64>> {
        t.into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    let (rows, cols) = (7usize, 4096usize);
    let vals = |n: usize, k: usize| -> Vec<f32> {
        (0..n)
            .map(|i| {
                half::bf16::from_f32((((i * 7919 + k * 104_729) % 2001) as f32 - 1000.0) / 256.0)
                    .to_f32()
            })
            .collect()
    };
    let (d, x) = (vals(rows * cols, 1), vals(cols, 2));
    let dst =
        || Tensor::<I, 2>::from_data(TensorData::new(d.clone(), [rows, cols]), (dev, DType::BF16));
    let src = Tensor::<I, 2>::from_data(TensorData::new(x.clone(), [1, cols]), (dev, DType::BF16));
    let row = |r: i64| Tensor::<I, 1, Int>::from_data(TensorData::new(vec![r], [1]), dev);
    let mut expect = d.clone();
    expect[3 * cols..4 * cols].copy_from_slice(&x);
    let shared = dst();
    let written_shared = host_f(qtune_kernels::write_row(
        shared.clone(),
        src.clone(),
        row(3),
    ))?;
    let shared_intact = host_f(shared)? == d;
    let written = host_f(qtune_kernels::write_row(dst(), src.clone(), row(3)))?;
    let outside = host_f(qtune_kernels::write_row(dst(), src.clone(), row(7)))?;
    let negative = host_f(qtune_kernels::write_row(dst(), src, row(-1)))?;
    let vocab = 50_400usize;
    let mut argmax_ok = Vec::new();
    for case in 0..3 {
        let mut l: Vec<f32> = vals(vocab, 3 + case).iter().map(|v| v * 0.5).collect();
        match case {
            1 => {
                l[40_000] = 100.0;
                l[123] = 100.0; // tie: the first wins
            }
            2 => {
                l[77] = 100.0;
                l[30_000] = f32::NAN; // NaN wins, as torch.argmax
            }
            _ => {}
        }
        let init = vec![9i64, 10, 1, 5, -1, -1];
        let state = Tensor::<I, 1, Int>::from_data(TensorData::new(init.clone(), [6]), dev);
        let logits =
            Tensor::<I, 2>::from_data(TensorData::new(l.clone(), [1, vocab]), (dev, DType::F32));
        let got = host_i(qtune_kernels::greedy_advance(state, logits))?;
        let tok = qtune_kernels::first_argmax(&l) as i64;
        argmax_ok.push(got == vec![tok, 11, 2, 5, tok, -1]);
    }
    println!(
        "{}",
        json!({"check": "decode_ops",
               "write_row_exclusive_ok": written == expect,
               "write_row_shared_ok": written_shared == expect && shared_intact,
               "write_row_out_of_range_untouched": outside == d && negative == d,
               "greedy_advance_ok_plain_tie_nan": argmax_ok})
    );

    let model = Gptj::<I>::load(
        &fixture.join("fp32"),
        &LoadOptions {
            dtype: DType::BF16,
            ..LoadOptions::default()
        },
        dev,
    )?;
    for prompt in [vec![3u32, 14, 15, 92, 65], vec![7u32], (1..40).collect()] {
        let cfg = GenerationConfig {
            max_new_tokens: 40,
            ..GenerationConfig::default()
        };
        set_graphs_enabled(true);
        let graph = model.greedy_fixed(&prompt, &cfg)?;
        set_graphs_enabled(false);
        let eager = model.greedy_fixed(&prompt, &cfg)?;
        set_graphs_enabled(true);
        let stepwise = model
            .generate_stepwise(std::slice::from_ref(&prompt), &cfg)?
            .remove(0);
        let common = stepwise
            .iter()
            .zip(&graph)
            .take_while(|(a, b)| a == b)
            .count();
        println!(
            "{}",
            json!({"check": "greedy_decode", "prompt_len": prompt.len(), "new": graph.len(),
                   "graph_equals_eager": graph == eager,
                   "same_prefix_as_stepwise": common, "graph_head": &graph[..8.min(graph.len())]})
        );
    }
    Ok(())
}
