//! The inference part of `bench train` (CUDA builds): prefill and greedy decode of the trained
//! model on the inner backend, timed and printed as JSON lines.

use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use qtune_gptj::GenerationConfig;
use qtune_lm::CausalLm;
use qtune_models::AnyLm;
use qtune_train::backend::Train;
use serde_json::json;

use super::Args;

type Inner = <Train as AutodiffBackend>::InnerBackend;

/// Prefill of `pre_ids` (batch 1: two warm-up runs, then the mean of five) and greedy decode
/// of `--decode` new tokens from its first 32 (batch 1, KV cache) by each path: the default
/// one, eager, stepwise and the other steps per graph, with their tokens compared. With
/// `--decode-profile`, only the per-piece timing of one decode step (GPT-J). `sync` waits for
/// the device; `model_name` and `mode` label the JSON lines.
pub(super) fn prefill_and_decode(
    a: &Args,
    infer: AnyLm<Inner>,
    pre_ids: Vec<i64>,
    device: burn::tensor::Device<Inner>,
    sync: &impl Fn() -> anyhow::Result<()>,
    model_name: &str,
    mode: &str,
) -> anyhow::Result<()> {
    let n = pre_ids.len();
    let prefill = || -> anyhow::Result<f64> {
        let x =
            Tensor::<Inner, 2, Int>::from_data(TensorData::new(pre_ids.clone(), [1, n]), &device);
        sync()?;
        let s = Instant::now();
        // Logits stay on the GPU (as in the peer); the sync waits for the whole forward.
        let logits = infer.forward(x, None, None, None);
        sync()?;
        drop(logits);
        Ok(s.elapsed().as_secs_f64())
    };
    let mut pre = 0.0;
    if !a.decode_profile {
        for _ in 0..2 {
            prefill()?;
        }
        for _ in 0..5 {
            pre += prefill()?;
        }
        pre /= 5.0;
    }
    let prompt: Vec<u32> = pre_ids[..32.min(n)].iter().map(|&v| v as u32).collect();
    if a.decode_profile {
        // Where a decode step's time goes: each piece recorded 20× in one CUDA graph.
        let AnyLm::Gptj(gptj) = &infer else {
            anyhow::bail!("--decode-profile: GPT-J only for now");
        };
        for (piece, s) in gptj.decode_step_breakdown(&prompt, a.decode, 20)? {
            println!(
                "{}",
                json!({"model": model_name, "mode": mode, "decode_piece": piece, "us": s * 1e6})
            );
        }
        return Ok(());
    }
    // Greedy decode three ways in the same process: the default path (static-shape KV cache
    // replayed as one CUDA graph per token), the same path run eagerly (graphs off), and the
    // step-by-step path with a growing cache; their tokens are compared below.
    #[derive(Clone, Copy)]
    enum Path {
        Graph(usize), // decode steps per graph
        Eager,
        Stepwise,
    }
    let graphs = qtune_lm::device_graphs_from_env()?;
    let default_k = a.graph_steps.unwrap_or(qtune_lm::DEFAULT_GRAPH_STEPS);
    let gen = |k: usize, path: Path| -> anyhow::Result<(f64, Vec<u32>)> {
        let g = GenerationConfig {
            max_new_tokens: k,
            eos_token_id: None,
            graph_steps: match path {
                Path::Graph(steps) => steps,
                Path::Eager | Path::Stepwise => default_k,
            },
            device_graphs: graphs && !matches!(path, Path::Eager),
            ..GenerationConfig::default()
        };
        let run = || -> anyhow::Result<(f64, Vec<u32>)> {
            sync()?;
            let s = Instant::now();
            let out = match path {
                Path::Stepwise => infer.generate_stepwise(std::slice::from_ref(&prompt), &g)?,
                Path::Graph(_) | Path::Eager => {
                    infer.generate(std::slice::from_ref(&prompt), &g)?
                }
            };
            sync()?;
            Ok((
                s.elapsed().as_secs_f64(),
                out.into_iter().next().unwrap_or_default(),
            ))
        };
        run()
    };
    // Each path: a short run (compiles, warms the pool), then the timed one. The short run's
    // time also gives the per-token cost without the fixed part (prefill, graph recording):
    // (t_long − t_short) / (long − short).
    let (mut timed, mut short) = (Vec::new(), Vec::new());
    let more_k: Vec<usize> = [1, 4, 8].into_iter().filter(|&k| k != default_k).collect();
    let mut paths = vec![Path::Graph(default_k), Path::Eager, Path::Stepwise];
    paths.extend(more_k.iter().map(|&k| Path::Graph(k)));
    // A warm-up at the timed length too: some kernels of the static-shape path depend on the
    // cache length, and with a kernel cache that lacks them the first run at a new length
    // JIT-compiles inside the timed tokens (BENCHMARKS.md, session 16: 131 vs 221 tok/s with an
    // empty vs a filled cache). The stderr markers place CubeCL's compilation log.
    for path in paths {
        let name = match path {
            Path::Graph(k) => format!("graph{k}"),
            Path::Eager => "eager".into(),
            Path::Stepwise => "stepwise".into(),
        };
        eprintln!("decode {name}: short runs");
        gen(8, path)?;
        short.push(gen(8, path)?);
        eprintln!("decode {name}: warm-up at the timed length");
        gen(a.decode, path)?;
        eprintln!("decode {name}: timed");
        timed.push(gen(a.decode, path)?);
        eprintln!("decode {name}: done");
    }
    let rate = |(s, toks): &(f64, Vec<u32>)| toks.len() as f64 / s.max(1e-9);
    let per_token_ms = |i: usize| {
        let extra = timed[i].1.len().saturating_sub(short[i].1.len()).max(1);
        1e3 * (timed[i].0 - short[i].0) / extra as f64
    };
    // Agreement, as the common prefix: on a random 6B model the logits are nearly flat, so a
    // summation-order difference (L masked rows vs the grown cache) can flip a near-tie.
    let prefix = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (dec_s, tokens) = &timed[0];
    println!(
        "{}",
        json!({"model": model_name, "mode": mode, "prefill_tokens": n, "prefill_s": pre, "prefill_tok_s": n as f64 / pre,
               "decode_new_tokens": tokens.len(), "decode_s": dec_s,
               "decode_tok_s_b1": rate(&timed[0]),
               "decode_tok_s_b1_no_graph": rate(&timed[1]),
               "decode_tok_s_b1_stepwise": rate(&timed[2]),
               "decode_ms_per_token_steady": [per_token_ms(0), per_token_ms(1), per_token_ms(2)],
               "decode_graph_steps": default_k,
               "decode_other_graph_steps": more_k.iter().enumerate().map(|(i, &k)| json!({
                   "steps_per_graph": k, "tok_s": rate(&timed[3 + i]), "ms_per_token_steady": per_token_ms(3 + i),
                   "same_tokens": timed[3 + i].1 == *tokens})).collect::<Vec<_>>(),
               "decode_prefix_agreeing_no_graph_stepwise":
                   [prefix(tokens, &timed[1].1), prefix(tokens, &timed[2].1)]})
    );
    Ok(())
}
