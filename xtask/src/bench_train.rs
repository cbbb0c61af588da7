//! `cargo xtask bench train [--model gptj-6b|llama-7b|llama3-8b] [--quant nf4|fp4|int8-blockwise|bf16]
//! [--targets qv|all] [--batch 8] [--seq 512] [--warmup 3] [--steps 8] [--layers N] [--decode 128]
//! [--decode-profile]` (CUDA builds):
//! a model of the real shape (GPT-J-6B; Llama-2-7B; Llama-3-8B with GQA and its 128k vocabulary)
//! with random weights built directly on the GPU (timing does not depend on weight values),
//! quantized, LoRA r16 α32 dropout 0.05 (`qv`: q_proj + v_proj; `all`: every block linear, as
//! PEFT's "all-linear"), per-block checkpointed
//! micro-steps + 8-bit AdamW (AdamW for bf16), the same batch every step so the printed losses
//! also show that the model learns. Prints JSON lines: load+quantize time, every step's time
//! and loss, the median train tokens/s, cubecl pool memory after each step, then prefill
//! (batch 1 × 512) and greedy decode (batch 1, 128 new tokens, KV cache) tokens/s.
//!
//! Peak memory: cubecl 0.10 keeps no peak counter, so `bytes_in_use`/`bytes_reserved` are
//! sampled after each synchronized step (reserved never shrinks during the run, so its maximum
//! bounds the true peak from above); run `nvidia-smi` alongside for a cross-check.

#[cfg(feature = "cuda")]
use qtune_lm::CausalLm;

#[cfg(feature = "cuda")]
mod decode;

/// Entry point of `bench train`.
///
/// # Errors
/// Without the `cuda` feature; on a model or step error.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(n) = args.loss_chunk_elems {
        qtune_lm::set_loss_chunk_elems(n)
            .map_err(|e| anyhow::anyhow!("--loss-chunk-elems: {e}"))?;
    }
    if let Some(k) = args.graph_steps {
        anyhow::ensure!(
            qtune_lm::fixed::graph_steps_exact(k),
            "--graph-steps {k}: decode graphs take 1, 2, 4, 8 or 16 steps"
        );
    }
    run_impl(args)
}

#[cfg(not(feature = "cuda"))]
fn run_impl(_args: &Args) -> anyhow::Result<()> {
    Err(crate::needs_cuda("train"))
}

/// The shapes `--model` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// GPT-J-6B.
    #[value(name = "gptj-6b")]
    Gptj6b,
    /// Llama-2-7B (MHA, 32k vocabulary).
    #[value(name = "llama-7b")]
    Llama7b,
    /// Llama-3-8B (GQA, 128k vocabulary).
    #[value(name = "llama3-8b")]
    Llama3_8b,
    /// SmolLM2-135M (GQA 9 × 3 heads, 576 wide, 30 blocks, tied head): the real model of
    /// QUALITY.md, here with random weights, to time its step without carrying the GGUF.
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

impl Shape {
    /// The `--model` spelling, as printed in the JSON lines.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn name(self) -> &'static str {
        match self {
            Shape::Gptj6b => "gptj-6b",
            Shape::Llama7b => "llama-7b",
            Shape::Llama3_8b => "llama3-8b",
            Shape::Smollm2_135m => "smollm2-135m",
        }
    }
}

/// The base weights' format (`bf16`: dense, no quantization).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Quant {
    #[value(name = "nf4")]
    Nf4,
    #[value(name = "fp4")]
    Fp4,
    #[value(name = "int8-blockwise")]
    Int8Blockwise,
    #[value(name = "bf16")]
    Bf16,
}

impl Quant {
    /// The `--quant` spelling, as printed in the JSON lines.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn name(self) -> &'static str {
        match self {
            Quant::Nf4 => "nf4",
            Quant::Fp4 => "fp4",
            Quant::Int8Blockwise => "int8-blockwise",
            Quant::Bf16 => "bf16",
        }
    }
}

/// The optimizer (`default`: 8-bit AdamW for a quantized base, AdamW for bf16, as the peer's
/// PagedAdamW8bit / AdamW; `adamw`: torch's AdamW, the QUALITY.md recipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Optim {
    #[value(name = "default")]
    Default,
    #[value(name = "adamw")]
    AdamW,
    #[value(name = "adamw8bit")]
    AdamW8bit,
}

/// Which linears get LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Targets {
    /// q_proj and v_proj.
    #[value(name = "qv")]
    Qv,
    /// Every block linear, as PEFT's "all-linear".
    #[value(name = "all")]
    All,
}

/// Arguments of `bench train`.
#[derive(Debug, clap::Args)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct Args {
    #[arg(long, value_enum, default_value = "gptj-6b")]
    model: Shape,
    #[arg(long, value_enum, default_value = "nf4")]
    quant: Quant,
    #[arg(long, value_enum, default_value = "qv")]
    targets: Targets,
    #[arg(long, value_enum, default_value = "default")]
    optim: Optim,
    /// Rows of the batch (at least 1).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens a row (at least 2).
    #[arg(long, default_value_t = 512)]
    seq: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Only the first N blocks (at least 1; default: all of the shape's).
    #[arg(long)]
    layers: Option<usize>,
    /// New tokens of the greedy decode (0: no inference).
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Only the per-piece timing of one decode step (no prefill, no full decode).
    #[arg(long)]
    decode_profile: bool,
    /// Steps per CUDA graph of the decode path timed first and reported as the default one
    /// (1, 2, 4, 8 or 16; default: qtune_lm's default); the other lengths of 1, 4, 8 follow.
    /// Two processes with different values compare lengths without the order in the process.
    #[arg(long)]
    graph_steps: Option<usize>,
    /// Sample the host during the timed steps and print its top functions
    /// (`--features host-profile`; see xtask/src/host_profile.rs).
    #[arg(long)]
    host_profile: bool,
    /// Park the checkpointed block inputs in host memory (`gradient_checkpointing =
    /// "offload"`): all but the last two leave the device between the forward and the backward.
    #[arg(long)]
    offload: bool,
    /// Logits per chunk of the head's loss (default: qtune_lm's `LOSS_CHUNK_ELEMS`, 2^26): to
    /// compare the memory the chunks reserve.
    #[arg(long)]
    loss_chunk_elems: Option<usize>,
}

/// HF `config.json` of a Llama shape: Llama-2-7B (MHA, 32k vocabulary), Llama-3-8B (GQA
/// 32 × 8 heads, 14336-wide MLP, 128k vocabulary, θ 500000) or SmolLM2-135M (GQA 9 × 3 heads,
/// tied head), as their published configs.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
fn llama_config(model: Shape) -> anyhow::Result<qtune_llama::LlamaConfig> {
    let v = match model {
        Shape::Llama7b => serde_json::json!({
            "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2}),
        Shape::Llama3_8b => serde_json::json!({
            "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
            "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 8, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001}),
        Shape::Smollm2_135m => serde_json::json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
            "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
            "num_key_value_heads": 3, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_theta": 100000.0, "tie_word_embeddings": true, "bos_token_id": 1,
            "eos_token_id": 2}),
        Shape::Gptj6b => anyhow::bail!("no Llama shape `{}`", model.name()),
    };
    Ok(serde_json::from_value(v)?)
}

#[cfg(feature = "cuda")]
fn run_impl(args: &Args) -> anyhow::Result<()> {
    use std::time::Instant;

    use burn::module::AutodiffModule;
    use burn::tensor::backend::{AutodiffBackend, Backend};
    use burn::tensor::DType;
    use cubecl::Runtime;
    use qtune_gptj::{Gptj, GptjConfig, QuantSpec};
    use qtune_lora::{LoraConfig, TargetModules};
    use qtune_models::AnyLm;
    use qtune_optim::{OptimKind, Optimizer, OptimizerConfig};
    use qtune_quant::QuantFormat;
    use qtune_train::backend::Train;
    use qtune_train::step::{backward_recompute, forward_keep_block_inputs};
    use serde_json::json;

    type Inner = <Train as AutodiffBackend>::InnerBackend;
    let a = args;
    let model_name = a.model.name();
    let all_linear = a.targets == Targets::All;
    let device: burn::tensor::Device<Train> = Default::default();
    // The float dtype is a per-device runtime setting, locked by the first tensor.
    burn::tensor::set_default_dtypes::<Inner>(&device, DType::BF16, DType::I32)
        .map_err(|e| anyhow::anyhow!("set_default_dtypes(BF16): {e:?}"))?;
    let sync = || -> anyhow::Result<()> {
        <Inner as Backend>::sync(&device).map_err(|e| anyhow::anyhow!("CUDA sync: {e:?}"))
    };
    let mem = || -> (u64, u64) {
        match cubecl::cuda::CudaRuntime::client(&device).memory_usage() {
            Ok(u) => (u.bytes_in_use, u.bytes_reserved),
            Err(_) => (0, 0),
        }
    };
    const GIB: f64 = (1u64 << 30) as f64;

    let quant = match a.quant {
        Quant::Nf4 => Some(QuantSpec {
            format: QuantFormat::Nf4,
            blocksize: 64,
            double_quant: true,
        }),
        Quant::Fp4 => Some(QuantSpec {
            format: QuantFormat::Fp4,
            blocksize: 64,
            double_quant: true,
        }),
        Quant::Int8Blockwise => Some(QuantSpec {
            format: QuantFormat::Blockwise8,
            blocksize: 4096,
            double_quant: false,
        }),
        Quant::Bf16 => None,
    };
    let mode = format!(
        "{}{}",
        a.quant.name(),
        if all_linear { "-all" } else { "-qv" }
    );
    let layers = a.layers.map(|n| n.max(1));

    sync()?;
    let t0 = Instant::now();
    let base: AnyLm<Train> = if a.model == Shape::Gptj6b {
        let mut cfg = GptjConfig::gptj_6b();
        if let Some(n) = layers {
            cfg.n_layer = n;
        }
        AnyLm::Gptj(Gptj::random(&cfg, 0, quant, DType::BF16, &device)?)
    } else {
        let mut cfg = llama_config(a.model)?;
        if let Some(n) = layers {
            cfg.num_hidden_layers = n;
        }
        AnyLm::Llama(qtune_llama::Llama::random(
            &cfg,
            0,
            quant,
            DType::BF16,
            &device,
        )?)
    };
    let n_layer = base.num_layers();
    let vocab = base.vocab_size() as u64;
    sync()?;
    let load_s = t0.elapsed().as_secs_f64();
    let (weights_in_use, _) = mem();
    let lora = LoraConfig {
        r: 16,
        lora_alpha: 32.0,
        lora_dropout: 0.05,
        target_modules: if all_linear {
            TargetModules::AllLinear
        } else {
            TargetModules::Names(vec!["q_proj".into(), "v_proj".into()])
        },
    };
    let mut model = base.with_lora(&lora, 0)?;
    let counts = model.param_counts();
    println!(
        "{}",
        json!({"bench": "train", "model": model_name, "mode": mode, "n_layer": n_layer, "optim": format!("{:?}", a.optim), "load_quantize_s": load_s,
               "weights_gib": weights_in_use as f64 / GIB, "params": format!("{counts:?}")})
    );

    // One fixed batch of pseudo-random ids, labels = ids (as the peer: every token a target).
    let (b, t) = (a.batch.max(1), a.seq.max(2));
    let ids = crate::random_ids(b * t, 0x2545_f491_4f6c_dd1d, vocab.min(50257));
    let batch = crate::full_batch(b, t, ids.clone());
    let norm = batch.n_target_tokens() as f32;
    let mut optim = Optimizer::<Train>::new(OptimizerConfig {
        optim: match a.optim {
            Optim::AdamW => OptimKind::AdamW,
            Optim::AdamW8bit => OptimKind::AdamW8bit,
            Optim::Default if quant.is_some() => OptimKind::AdamW8bit,
            Optim::Default => OptimKind::AdamW,
        },
        ..OptimizerConfig::default()
    })?;
    // Peak of cubecl's bytes in use, sampled by the step's memory probe at its high-water
    // points (all block inputs alive, each recomputed block's graph alive, after its backward):
    // cubecl has no peak counter, so this is a lower bound of the true peak.
    let peak_probe = std::sync::atomic::AtomicU64::new(0);
    let client = cubecl::cuda::CudaRuntime::client(&device);
    let probe = || {
        if let Ok(u) = client.memory_usage() {
            peak_probe.fetch_max(u.bytes_in_use, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let mut times = Vec::new();
    let mut profile = None;
    let (mut peak_use, mut peak_res) = (0u64, 0u64);
    for i in 0..a.warmup + a.steps {
        sync()?;
        if i == a.warmup {
            profile = Some(crate::host_profile::start(a.host_profile)?);
        }
        let s0 = Instant::now();
        // The checkpointed micro-step in its two halves, synced in between to time each. The
        // `*_issue_s` times stop before each sync: the host's share (building the graph,
        // launching); a phase whose issue time is close to its total is bound by the host.
        let seed = Some(i as u64);
        let hs =
            forward_keep_block_inputs::<Train, _>(&model, &batch, seed, a.offload, Some(&probe));
        let i_fwd = s0.elapsed().as_secs_f64();
        sync()?;
        let t_fwd = s0.elapsed().as_secs_f64();
        let ms = backward_recompute::<Train, _>(&model, &batch, hs, norm, Some(&probe))?;
        let i_bwd = s0.elapsed().as_secs_f64() - t_fwd;
        sync()?;
        let t_bwd = s0.elapsed().as_secs_f64() - t_fwd;
        model = optim.step(2e-4, model, ms.grads)?;
        let i_opt = s0.elapsed().as_secs_f64() - t_fwd - t_bwd;
        sync()?;
        let dt = s0.elapsed().as_secs_f64();
        let (u, r) = mem();
        peak_use = peak_use.max(u);
        peak_res = peak_res.max(r);
        let warm = i < a.warmup;
        if !warm {
            times.push(dt);
        }
        println!(
            "{}",
            json!({"step": i, "warmup": warm, "step_s": dt, "forward_s": t_fwd,
                   "recompute_backward_s": t_bwd, "optimizer_s": dt - t_fwd - t_bwd,
                   "issue_s": [i_fwd, i_bwd, i_opt],
                   "loss": ms.loss_sum / norm as f64,
                   "in_use_gib": u as f64 / GIB, "reserved_gib": r as f64 / GIB})
        );
    }
    if let Some(p) = profile {
        p.finish(60)?;
    }
    times.sort_by(f64::total_cmp);
    // `--warmup 0 --steps 0` skips training (e.g. to profile inference alone).
    if let Some(&med) = times.get(times.len() / 2) {
        println!(
            "{}",
            json!({"model": model_name, "mode": mode, "batch": b, "seq": t, "offload": a.offload, "step_s_median": med,
               "tokens_per_s": (b * t) as f64 / med, "load_quantize_s": load_s,
               "peak_in_use_gib_probed": peak_probe.load(std::sync::atomic::Ordering::Relaxed) as f64 / GIB,
               "in_use_gib_after_step_max": peak_use as f64 / GIB,
               "peak_reserved_gib": peak_res as f64 / GIB, "loss_chunk_elems": qtune_lm::loss_chunk_elems(),
               // The pool preset (third_party/README.md, patch 2): unset is hybrid:1:128.
               "cubecl_cuda_memory": std::env::var(cubecl::cuda::MEMORY_ENV).unwrap_or_else(|_| "unset".into())})
        );
    }

    // Inference on the inner backend (no autodiff): prefill 1×512, greedy decode 128 tokens.
    // `--decode 0` skips inference altogether (e.g. to profile the training step alone).
    drop(optim);
    if a.decode == 0 {
        return Ok(());
    }
    let infer = model.valid();
    let pre_ids: Vec<i64> = ids[..t.min(512)].to_vec();
    decode::prefill_and_decode(a, infer, pre_ids, device.clone(), &sync, model_name, &mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, clap::Error> {
        crate::parse_args("train", v)
    }

    #[test]
    fn llama_shapes_have_the_published_parameter_counts() {
        // Llama-2-7B and Meta-Llama-3-8B as HF counts them (`num_parameters()`).
        assert_eq!(
            llama_config(Shape::Llama7b).unwrap().num_params(),
            6_738_415_616
        );
        assert_eq!(
            llama_config(Shape::Llama3_8b).unwrap().num_params(),
            8_030_261_248
        );
        // HuggingFaceTB/SmolLM2-135M-Instruct (tied head counted once).
        assert_eq!(
            llama_config(Shape::Smollm2_135m).unwrap().num_params(),
            134_515_008
        );
        assert!(llama_config(Shape::Gptj6b).is_err());
        assert_eq!(
            parse(&["--model", "llama3-8b"]).unwrap().model,
            Shape::Llama3_8b
        );
        assert!(parse(&["--model", "llama-13b"]).is_err());
    }

    #[test]
    fn an_empty_loss_chunk_is_refused_before_any_work() {
        // 0 is refused by qtune_lm's setter, which then leaves the process's chunk as it was.
        let e = run(&parse(&["--loss-chunk-elems", "0"]).unwrap()).unwrap_err();
        assert!(e.to_string().contains("--loss-chunk-elems"), "{e}");
        assert_eq!(qtune_lm::loss_chunk_elems(), qtune_lm::LOSS_CHUNK_ELEMS);
        assert_eq!(
            parse(&["--loss-chunk-elems", "16777216"])
                .unwrap()
                .loss_chunk_elems,
            Some(1 << 24)
        );
    }

    #[test]
    fn defaults_and_flags_are_the_device_scripts_ones() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            (a.model, a.quant, a.targets, a.batch, a.seq, a.warmup, a.steps, a.layers, a.decode),
            (
                Shape::Gptj6b,
                Quant::Nf4,
                Targets::Qv,
                8,
                512,
                3,
                8,
                None,
                128
            )
        );
        assert!(!a.decode_profile);
        // xtask/device/bench_call.sh and llama_bench.sh.
        let a = parse(&[
            "--model",
            "llama-7b",
            "--quant",
            "int8-blockwise",
            "--targets",
            "all",
            "--layers",
            "4",
            "--warmup",
            "0",
            "--steps",
            "0",
            "--decode",
            "0",
            "--decode-profile",
            "--batch",
            "2",
            "--seq",
            "64",
        ])
        .unwrap();
        assert_eq!(
            (a.model, a.quant, a.targets, a.layers, a.batch, a.seq),
            (
                Shape::Llama7b,
                Quant::Int8Blockwise,
                Targets::All,
                Some(4),
                2,
                64
            )
        );
        assert!(a.decode_profile);
        for bad in [["--quant", "int4"], ["--targets", "qkv"], ["--steps", "-1"]] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
    }
}
