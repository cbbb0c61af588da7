//! GPU runs of the HF parity fixtures: the tiny GPT-J in bf16 against HF's fp32 logits and bnb's
//! NF4 ones (the CPU in f32 for scale), the Llama family in f32 and bf16 plus batch-1 greedy ids,
//! and greedy decoding's ops and paths (`decode_check`). The logits metric is make.py's
//! max |ours − ref| / max |ref| over non-pad positions.

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use qtune_gptj::{Gptj, LoadOptions};
use qtune_lm::CausalLm;
use qtune_train::backend::{Cpu, Train};
use qtune_train::peft_check::{fixture_logits, fixture_prompts, max_rel_err, reference_tensor};
use serde_json::json;

use super::Failures;

type Inner = <Train as AutodiffBackend>::InnerBackend;
type CpuInner = <Cpu as AutodiffBackend>::InnerBackend;

/// f32 logits (CPU, or the Llama family on the GPU) against HF's: 1e-4, the tolerance of the CPU
/// parity tests (crates/gptj, crates/llama). Measured ≤ 1e-6 (GPU Llama f32, H100 2026-12-06) and
/// 4.9e-7 (CPU GPT-J).
const F32_LOGITS: f64 = 1e-4;
/// The tiny GPT-J in bf16 on the GPU against HF's fp32 (and bnb's NF4) logits, and against our
/// CPU f32 logits: measured 1.07e-2 (1.13e-2 for NF4), a few bf16 roundings of logits whose
/// largest value sets the scale; 3e-2 is 2.7×.
const GPU_BF16_LOGITS: f64 = 3e-2;
/// The Llama-family fixtures in bf16 against HF's fp32 logits: measured 1.5e-2 to 2.2e-2 (more
/// layers of bf16 rounding than the GPT-J fixture); 5e-2 is 2.3×.
const LLAMA_BF16_LOGITS: f64 = 5e-2;

/// The tiny GPT-J fixture on the GPU (bf16) and the CPU (f32) against HF's logits.
pub(super) fn gptj_parity(
    dev: &burn::tensor::Device<Train>,
    fixture: &Path,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    let prompts = fixture_prompts(fixture)?;
    for (folder, key) in [("fp32", "logits"), ("nf4", "nf4_logits")] {
        let reference = reference_tensor(fixture, key)?;
        let opts = |dtype| LoadOptions {
            dtype,
            ..LoadOptions::default()
        };
        let gpu = Gptj::<Inner>::load(&fixture.join(folder), &opts(DType::BF16), dev)?;
        let vocab = gpu.config.vocab_size;
        let ours = fixture_logits(&gpu, &prompts);
        let cpu = Gptj::<CpuInner>::load(
            &fixture.join(folder),
            &opts(DType::F32),
            &Default::default(),
        )?;
        let cpu_logits = fixture_logits(&cpu, &prompts);
        let mask = &prompts.attention_mask;
        let (gpu_err, cpu_err, gpu_vs_cpu) = (
            max_rel_err(&ours, &reference, mask, vocab),
            max_rel_err(&cpu_logits, &reference, mask, vocab),
            max_rel_err(&ours, &cpu_logits, mask, vocab),
        );
        println!(
            "{}",
            json!({"check": "fixture_parity", "weights": folder, "reference": key,
                   "gpu_bf16_max_rel_err": gpu_err, "cpu_f32_max_rel_err": cpu_err,
                   "gpu_vs_cpu_max_rel_err": gpu_vs_cpu})
        );
        let what = format!("fixture_parity {folder} vs {key}");
        fails.at_most(
            &format!("{what} gpu_bf16_max_rel_err"),
            gpu_err,
            GPU_BF16_LOGITS,
        );
        fails.at_most(&format!("{what} cpu_f32_max_rel_err"), cpu_err, F32_LOGITS);
        fails.at_most(
            &format!("{what} gpu_vs_cpu_max_rel_err"),
            gpu_vs_cpu,
            GPU_BF16_LOGITS,
        );
    }
    Ok(())
}

/// The Llama family (GQA, rotate-half RoPE, RMSNorm, SwiGLU, Qwen2 bias, Mistral window) on the
/// GPU: logits in f32 and bf16 against HF's, and HF's batch-1 greedy ids from the CUDA-graph path.
pub(super) fn llama_family_parity(
    dev: &burn::tensor::Device<Train>,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    for name in ["llama_tiny", "llama_tied", "qwen2_tiny", "mistral_tiny"] {
        let fx = Path::new("tests/fixtures").join(name);
        let prompts = fixture_prompts(&fx)?;
        let reference = reference_tensor(&fx, "logits")?;
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fx.join("reference.json"))?)?;
        let mut errs = Vec::new();
        let (mut greedy_equal, mut greedy_rows) = (0, 0);
        for dtype in [DType::F32, DType::BF16] {
            let opts = LoadOptions {
                dtype,
                ..LoadOptions::default()
            };
            let m = qtune_models::load::<Inner>(&fx.join("fp32"), &opts, dev)?;
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
                    greedy_rows += 1;
                    greedy_equal += usize::from(m.greedy_fixed(&prompt, &cfg)? == want);
                }
            }
        }
        println!(
            "{}",
            json!({"check": "llama_family_parity", "fixture": name, "gpu_f32_max_rel_err": errs[0],
                   "gpu_bf16_max_rel_err": errs[1], "greedy_fixed_rows_equal_hf": greedy_equal})
        );
        let what = format!("llama_family_parity {name}");
        fails.at_most(&format!("{what} gpu_f32_max_rel_err"), errs[0], F32_LOGITS);
        fails.at_most(
            &format!("{what} gpu_bf16_max_rel_err"),
            errs[1],
            LLAMA_BF16_LOGITS,
        );
        fails.require(
            &format!("{what} greedy_fixed_rows_equal_hf ({greedy_equal}) = rows ({greedy_rows})"),
            greedy_rows > 0 && greedy_equal == greedy_rows,
        );
    }
    Ok(())
}

/// Greedy decoding on the GPU: `write_row` (shared and exclusive destination, a row out of
/// range, several rows) and `greedy_advance` (ties, NaN, a batch of rows) against their host
/// definitions; a left-padded batch through the static-shape path (graphs = eager); then the
/// tiny fixture's batch-1 greedy continuation with the decode step as a CUDA graph, without graphs
/// (the same kernels launched from the host: must agree token for token) and by the stepwise
/// loop (host argmax over read-back logits).
pub(super) fn decode_check(
    dev: &burn::tensor::Device<Train>,
    fixture: &Path,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    use burn::tensor::{Int, Tensor, TensorData};
    use qtune_gptj::GenerationConfig;
    type I = Inner;

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
    let negative = host_f(qtune_kernels::write_row(dst(), src.clone(), row(-1)))?;
    // Several rows at once (a batch's cache column): rows 5 and 1 from two source rows, one
    // index out of range.
    let two = Tensor::<I, 2>::from_data(
        TensorData::new([x.clone(), vals(cols, 5)].concat(), [2, cols]),
        (dev, DType::BF16),
    );
    let idx =
        |v: Vec<i64>| Tensor::<I, 1, Int>::from_data(TensorData::new(v.clone(), [v.len()]), dev);
    let mut expect_multi = d.clone();
    expect_multi[5 * cols..6 * cols].copy_from_slice(&x);
    expect_multi[cols..2 * cols].copy_from_slice(&vals(cols, 5));
    let multi = host_f(qtune_kernels::write_row(
        dst(),
        two.clone(),
        idx(vec![5, 1]),
    ))?;
    let mut expect_partial = d.clone();
    expect_partial[2 * cols..3 * cols].copy_from_slice(&vals(cols, 5));
    let partial = host_f(qtune_kernels::write_row(dst(), two, idx(vec![9, 2])))?;
    let multi_ok = multi == expect_multi && partial == expect_partial;
    let vocab = 50_400usize;
    let mut argmax_ok = Vec::new();
    let (mut all_logits, mut all_want) = (Vec::new(), Vec::new());
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
        all_want.extend([tok, 11, 2, 5, tok, -1]);
        all_logits.extend(l);
    }
    // The three cases as the rows of one batch: one cube per row.
    let state = Tensor::<I, 1, Int>::from_data(
        TensorData::new([9i64, 10, 1, 5, -1, -1].repeat(3), [18]),
        dev,
    );
    let logits =
        Tensor::<I, 2>::from_data(TensorData::new(all_logits, [3, vocab]), (dev, DType::F32));
    argmax_ok.push(host_i(qtune_kernels::greedy_advance(state, logits))? == all_want);
    let (exclusive_ok, shared_ok, out_of_range_ok) = (
        written == expect,
        written_shared == expect && shared_intact,
        outside == d && negative == d,
    );
    println!(
        "{}",
        json!({"check": "decode_ops",
               "write_row_exclusive_ok": exclusive_ok,
               "write_row_shared_ok": shared_ok,
               "write_row_out_of_range_untouched": out_of_range_ok,
               "write_row_several_rows_ok": multi_ok,
               "greedy_advance_ok_plain_tie_nan_batch": argmax_ok})
    );
    // Exact: both ops move or pick values, they compute nothing that could round.
    fails.require("decode_ops write_row_exclusive_ok", exclusive_ok);
    fails.require("decode_ops write_row_shared_ok", shared_ok);
    fails.require(
        "decode_ops write_row_out_of_range_untouched",
        out_of_range_ok,
    );
    fails.require("decode_ops write_row_several_rows_ok", multi_ok);
    for (case, ok) in ["plain", "tie", "nan", "batch of 3"].iter().zip(&argmax_ok) {
        fails.require(&format!("decode_ops greedy_advance_ok {case}"), *ok);
    }

    let model = Gptj::<I>::load(
        &fixture.join("fp32"),
        &LoadOptions {
            dtype: DType::BF16,
            ..LoadOptions::default()
        },
        dev,
    )?;
    // A left-padded batch through the static-shape path: graphs and eager agree exactly; the
    // stepwise loop (growing cache, host argmax) is reported beside it.
    let batch: Vec<Vec<u32>> = vec![vec![3, 14, 15, 92, 65], vec![7], (1..40).collect()];
    let cfg = GenerationConfig {
        max_new_tokens: 40,
        ..GenerationConfig::default()
    };
    let graph = qtune_lm::fixed::greedy_fixed_batch(&model, &batch, &cfg)?;
    let eager = qtune_lm::fixed::greedy_fixed_batch(
        &model,
        &batch,
        &GenerationConfig {
            device_graphs: false,
            ..cfg.clone()
        },
    )?;
    let stepwise = model.generate_stepwise(&batch, &cfg)?;
    let common: Vec<usize> = stepwise
        .iter()
        .zip(&graph)
        .map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count())
        .collect();
    println!(
        "{}",
        json!({"check": "greedy_decode_batch", "rows": batch.len(), "new": graph.iter().map(Vec::len).collect::<Vec<_>>(),
               "graph_equals_eager": graph == eager, "same_prefix_as_stepwise": common})
    );
    fails.require("greedy_decode_batch graph_equals_eager", graph == eager);
    fails.require(
        "greedy_decode_batch rows of 40 tokens",
        graph.iter().all(|r| r.len() == 40),
    );
    for prompt in [vec![3u32, 14, 15, 92, 65], vec![7u32], (1..40).collect()] {
        let cfg = GenerationConfig {
            max_new_tokens: 40,
            ..GenerationConfig::default()
        };
        let graph = model.greedy_fixed(&prompt, &cfg)?;
        let eager_cfg = GenerationConfig {
            device_graphs: false,
            ..cfg.clone()
        };
        let eager = model.greedy_fixed(&prompt, &eager_cfg)?;
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
        // The graph replays the eager step's kernels: the same tokens, always. The stepwise path
        // (host argmax over read-back logits of a growing cache) agreed on every token of these
        // prompts on an H100 (bf16, 2026-12-06), so it must still agree.
        let what = format!("greedy_decode prompt_len {}", prompt.len());
        fails.require(&format!("{what} graph_equals_eager"), graph == eager);
        fails.require(
            &format!(
                "{what} same_prefix_as_stepwise ({common}) = new ({})",
                graph.len()
            ),
            common == graph.len(),
        );
    }
    Ok(())
}
