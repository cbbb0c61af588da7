//! `cargo xtask bench generate [--prompts 500] [--batch 32] [--new-tokens 32] [--export FILE]`
//! (CUDA builds): the SQuAD v2 generation metric as a training run computes it, timed on a
//! GPT-J-6B of the real shape (random weights built on the GPU, NF4 + double quant, bf16).
//!
//! The prompts are the held-back validation questions of `cargo xtask train squad` (the
//! `$QTUNE_DATA_DIR` SQuAD v2 file and GPT-2 tokenizer, `max_length` 512), generated greedily
//! through `qtune_train::evaluate::evaluate_generation`: batches of `--batch` in
//! `generation_order` (longest prompt first), left-padded, each row stopping at EOS, then
//! decoded and scored (EM/F1; near zero on random weights, so the figure is the time). One
//! short batch first compiles the kernels.
//!
//! `--export FILE` writes the batches (token ids, in the order generated) and the settings for
//! xtask/device/peer_generate.py, which runs HF `generate` on the same batches.

use std::path::PathBuf;

/// Arguments of `bench generate`.
#[derive(Debug, clap::Args)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct Args {
    /// Held-back SQuAD v2 prompts to generate for.
    #[arg(long, default_value_t = 500)]
    prompts: usize,
    /// Prompts a batch (`per_device_eval_batch_size`).
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// New tokens a prompt at most (`[eval] max_new_tokens`).
    #[arg(long, default_value_t = 32)]
    new_tokens: usize,
    /// Write the batches for the peer here (JSON) before timing.
    #[arg(long)]
    export: Option<PathBuf>,
    /// Also time the same batches three ways (no scoring): the stepwise loop, the static-shape
    /// decoder eagerly (`generate`'s path for a batch) and with CUDA graphs (last: at 32 rows
    /// of GPT-J-6B its graphs ran out of an H100's memory).
    #[arg(long)]
    fixed_paths: bool,
    /// Sample the host during the timed generation (`--features host-profile`).
    #[arg(long)]
    host_profile: bool,
}

/// Entry point of `bench generate`.
///
/// # Errors
/// Without the `cuda` feature; without `$QTUNE_DATA_DIR`; on a data or model error.
pub fn run(args: &Args) -> anyhow::Result<()> {
    run_impl(args)
}

#[cfg(not(feature = "cuda"))]
fn run_impl(_args: &Args) -> anyhow::Result<()> {
    Err(crate::needs_cuda("generate"))
}

#[cfg(feature = "cuda")]
fn run_impl(a: &Args) -> anyhow::Result<()> {
    use std::time::Instant;

    use anyhow::Context;
    use burn::tensor::backend::{AutodiffBackend, Backend};
    use burn::tensor::DType;
    use qtune_gptj::{Gptj, GptjConfig, QuantSpec};
    use qtune_models::AnyLm;
    use qtune_quant::QuantFormat;
    use qtune_train::backend::Train;
    use qtune_train::config::RunConfig;
    use qtune_train::evaluate::{evaluate_generation, generation_order};
    use serde_json::json;

    type Inner = <Train as AutodiffBackend>::InnerBackend;
    anyhow::ensure!(
        a.prompts > 0 && a.batch > 0 && a.new_tokens > 0,
        "--prompts, --batch and --new-tokens must be at least 1"
    );
    let source = qtune_data::DataSource::from_env();
    let Some(data_dir) = source.data_dir.clone() else {
        anyhow::bail!(
            "bench generate reads SQuAD v2 and the GPT-2 tokenizer from $QTUNE_DATA_DIR: set it"
        );
    };
    // The squad task's split and prompts, as `cargo xtask train squad` makes them.
    let mut cfg = RunConfig::tiny();
    cfg.data.max_length = 512;
    cfg.data.max_train_samples = Some(8);
    cfg.eval.generation_samples = a.prompts;
    cfg.eval.max_new_tokens = a.new_tokens;
    let tokenizer = qtune_train::build::tokenizer(&cfg.model, Some(&data_dir))?;
    let eos = 50256;
    let path = source.locate(qtune_data::DatasetId::SquadV2)?;
    let data = qtune_train::task::prepare_from_file(&cfg, &tokenizer, eos, &path)
        .with_context(|| format!("SQuAD v2 prompts from {}", path.display()))?;
    let items = data.eval_items;
    anyhow::ensure!(
        items.len() == a.prompts,
        "{} held-back prompts fit max_length 512, {} asked for",
        items.len(),
        a.prompts
    );
    let order = generation_order(&items);
    let batches: Vec<Vec<&Vec<u32>>> = order
        .chunks(a.batch)
        .map(|c| c.iter().map(|&i| &items[i].prompt_ids).collect())
        .collect();
    let prompt_tokens: usize = items.iter().map(|it| it.prompt_ids.len()).sum();
    let padded_tokens: usize = batches
        .iter()
        .map(|b| b.len() * b.iter().map(|p| p.len()).max().unwrap_or(0))
        .sum();
    if let Some(file) = &a.export {
        let v = json!({"eos_token_id": eos, "pad_token_id": eos, "max_new_tokens": a.new_tokens,
                       "batches": batches});
        std::fs::write(file, serde_json::to_vec(&v)?)
            .with_context(|| format!("writing {}", file.display()))?;
    }

    let device: burn::tensor::Device<Inner> = Default::default();
    burn::tensor::set_default_dtypes::<Inner>(&device, DType::BF16, DType::I32)
        .map_err(|e| anyhow::anyhow!("set_default_dtypes(BF16): {e:?}"))?;
    let sync = || -> anyhow::Result<()> {
        <Inner as Backend>::sync(&device).map_err(|e| anyhow::anyhow!("CUDA sync: {e:?}"))
    };
    let t0 = Instant::now();
    let quant = QuantSpec {
        format: QuantFormat::Nf4,
        blocksize: 64,
        double_quant: true,
    };
    let model = AnyLm::Gptj(Gptj::<Inner>::random(
        &GptjConfig::gptj_6b(),
        0,
        Some(quant),
        DType::BF16,
        &device,
    )?);
    sync()?;
    let load_s = t0.elapsed().as_secs_f64();
    let batch = a.batch.min(items.len());
    // Warm-up: the longest batch, a few tokens (compiles every kernel shape class).
    let warm: Vec<_> = order[..batch].iter().map(|&i| items[i].clone()).collect();
    let s = Instant::now();
    evaluate_generation(&model, &tokenizer, &warm, a.batch, 4, eos)?;
    sync()?;
    let warm_s = s.elapsed().as_secs_f64();
    let profile = crate::host_profile::start(a.host_profile)?;
    let s = Instant::now();
    let m = evaluate_generation(&model, &tokenizer, &items, a.batch, a.new_tokens, eos)?;
    sync()?;
    let secs = s.elapsed().as_secs_f64();
    profile.finish(25)?;
    let metric = |k: &str| m.metrics.get(k).cloned().unwrap_or(serde_json::Value::Null);
    println!(
        "{}",
        json!({"bench": "generate", "model": "gptj-6b", "mode": "nf4", "prompts": items.len(),
               "batch": a.batch, "batches": batches.len(), "max_new_tokens": a.new_tokens,
               "prompt_tokens": prompt_tokens, "padded_prompt_tokens": padded_tokens,
               "new_tokens": m.new_tokens, "load_quantize_s": load_s, "warmup_s": warm_s,
               "generate_s": secs, "new_tok_s": m.new_tokens as f64 / secs,
               "exact": metric("exact"), "f1": metric("f1")})
    );
    if a.fixed_paths {
        // The same batches three ways: the stepwise loop (growing cache, host argmax), the
        // static-shape decoder eagerly (what `generate` runs for a batch) and with CUDA graphs;
        // each timed, with how many rows agree token for token with the stepwise loop.
        let mut stepwise: Vec<Vec<u32>> = Vec::new();
        for path in ["stepwise", "fixed", "fixed-graphs"] {
            let cfg = qtune_lm::GenerationConfig {
                max_new_tokens: a.new_tokens,
                eos_token_id: Some(eos),
                pad_token_id: Some(eos),
                device_graphs: path == "fixed-graphs",
                ..Default::default()
            };
            let s = Instant::now();
            let mut out = vec![Vec::new(); items.len()];
            for chunk in order.chunks(a.batch) {
                let prompts: Vec<Vec<u32>> =
                    chunk.iter().map(|&i| items[i].prompt_ids.clone()).collect();
                let got = if path == "stepwise" {
                    qtune_lm::CausalLm::generate_stepwise(&model, &prompts, &cfg)?
                } else {
                    qtune_lm::fixed::greedy_fixed_batch(&model, &prompts, &cfg)?
                };
                for (&i, o) in chunk.iter().zip(got) {
                    out[i] = o;
                }
            }
            sync()?;
            let secs = s.elapsed().as_secs_f64();
            if path == "stepwise" {
                stepwise.clone_from(&out);
            }
            let tokens: usize = out.iter().map(Vec::len).sum();
            let same = out.iter().zip(&stepwise).filter(|(x, y)| x == y).count();
            println!(
                "{}",
                json!({"bench": "generate_path", "path": path, "new_tokens": tokens,
                       "generate_s": secs, "new_tok_s": tokens as f64 / secs,
                       "rows_equal_to_stepwise": same, "rows": items.len()})
            );
        }
    }
    Ok(())
}
