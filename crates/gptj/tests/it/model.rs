//! Logits, loss, KV cache and perplexity against HF transformers on the tiny fixture.

use burn::tensor::{Int, Tensor, TensorData};
use qtune_gptj::CausalLm;
use qtune_gptj::{KvCache, IGNORE_INDEX};

use crate::common::*;

const FP32_TOL: f32 = 1e-4;

#[test]
fn fp32_logits_match_hf() {
    let model = load("fp32");
    let (reference, shape) = reference_tensor("logits");
    let got = fixture_logits(&model);
    let err = max_rel_err_non_pad(&got, &reference, shape[2]);
    println!("fp32 max rel err {err:e}");
    assert!(err <= FP32_TOL, "fp32 max rel err {err:e}");
}

#[test]
fn sharded_logits_match_hf() {
    let model = load("sharded");
    let (reference, shape) = reference_tensor("logits");
    let err = max_rel_err_non_pad(&fixture_logits(&model), &reference, shape[2]);
    println!("sharded max rel err {err:e}");
    assert!(err <= FP32_TOL, "sharded max rel err {err:e}");
}

/// bf16/fp16 files hold the fp32 weights rounded (bf16: 8 bits of mantissa, fp16: 11), and we
/// compute in f32, while the reference is the fp32 model: the error is the weight rounding.
/// Tolerances: about 3-4× the error measured here (bf16 6.5e-3, fp16 7.8e-4), far below what a
/// layout or conversion bug gives (≥ 1e-1).
#[test]
fn half_precision_files_match_hf_within_rounding() {
    let (reference, shape) = reference_tensor("logits");
    for (sub, tol) in [("bf16", 2e-2f32), ("fp16", 3e-3)] {
        let err = max_rel_err_non_pad(&fixture_logits(&load(sub)), &reference, shape[2]);
        println!("{sub} max rel err {err:e} (tol {tol:e})");
        assert!(err <= tol, "{sub} max rel err {err:e} > {tol:e}");
    }
}

/// HF's `loss` is the mean cross-entropy of its logits; compute it from the reference logits
/// in f64 and compare with `loss_sum / n`.
#[test]
fn loss_sum_matches_cross_entropy_of_hf_logits_and_chunking_is_exact() {
    let model = load("fp32");
    let r = reference_json();
    let ids = json_2d(&r["input_ids"]);
    let mask = json_2d(&r["attention_mask"]);
    // Labels: the ids, -100 on padding and on the last 2 tokens of row 0 (arbitrary holes).
    let mut labels = ids.clone();
    for (b, row) in labels.iter_mut().enumerate() {
        for (t, y) in row.iter_mut().enumerate() {
            if mask[b][t] == 0 || (b == 0 && t >= 10) {
                *y = IGNORE_INDEX;
            }
        }
    }
    let (reference, shape) = reference_tensor("logits");
    let (bsz, t, v) = (shape[0], shape[1], shape[2]);
    let (mut want, mut n_want) = (0f64, 0usize);
    for b in 0..bsz {
        for i in 0..t - 1 {
            let y = labels[b][i + 1];
            if y == IGNORE_INDEX {
                continue;
            }
            let row = &reference[(b * t + i) * v..(b * t + i + 1) * v];
            let max = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            want += lse - row[y as usize] as f64;
            n_want += 1;
        }
    }
    let ctx = model.context(
        bsz,
        t,
        Some(&mask.concat()),
        Some(&json_2d(&r["position_ids"]).concat()),
        None,
    );
    let h = model.hidden(int_tensor(&ids), &ctx, None);
    let (sum, n) = model.loss_sum(h.clone(), &labels.concat()).unwrap();
    let sum = sum.into_scalar() as f64;
    assert_eq!(n, n_want);
    let rel = ((sum - want) / want).abs();
    println!(
        "loss {} vs HF-logits CE {} (n = {n}), rel {rel:e}",
        sum / n as f64,
        want / n_want as f64
    );
    assert!(rel <= 1e-5, "loss rel err {rel:e}");
    // Chunks of 3 rows give the same sum up to f32 summation order.
    let (chunked, n3) = model.loss_sum_chunked(h, &labels.concat(), 3).unwrap();
    assert_eq!(n3, n);
    let c = chunked.into_scalar() as f64;
    assert!(((c - sum) / sum).abs() <= 1e-6, "chunked {c} vs {sum}");
}

#[test]
fn loss_rejects_out_of_vocab_labels() {
    let model = load("fp32");
    let ids = vec![vec![5i64, 6, 7]];
    let ctx = model.context(1, 3, None, None, None);
    let h = model.hidden(int_tensor(&ids), &ctx, None);
    let err = model.loss_sum(h, &[5, 6, 9999]).unwrap_err();
    assert!(err.to_string().contains("9999"), "{err}");
}

/// Prefill 5 tokens, then decode one at a time: each step's logits equal the full recompute.
#[test]
fn kv_cache_decoding_equals_full_recompute() {
    let model = load("fp32");
    let dev = Default::default();
    let ids: Vec<i64> = vec![11, 200, 37, 5, 480, 99, 301, 7, 64];
    let full = model
        .forward(
            Tensor::<Nd, 2, Int>::from_data(TensorData::new(ids.clone(), [1, ids.len()]), &dev),
            None,
            None,
            None,
        )
        .into_data()
        .into_vec::<f32>()
        .unwrap();
    let v = model.config.vocab_size;
    let mut cache = KvCache::new(model.blocks.len());
    let pre = model.forward(
        Tensor::from_data(TensorData::new(ids[..5].to_vec(), [1, 5]), &dev),
        None,
        None,
        Some(&mut cache),
    );
    let pre = pre.into_data().into_vec::<f32>().unwrap();
    let mut worst = 0f32;
    for (i, (a, b)) in pre.iter().zip(&full[..5 * v]).enumerate() {
        assert!((a - b).abs() <= 1e-5, "prefill logit {i}: {a} vs {b}");
    }
    for step in 5..ids.len() {
        let out = model.forward(
            Tensor::from_data(TensorData::new(vec![ids[step]], [1, 1]), &dev),
            None,
            None,
            Some(&mut cache),
        );
        let out = out.into_data().into_vec::<f32>().unwrap();
        for (a, b) in out.iter().zip(&full[step * v..(step + 1) * v]) {
            worst = worst.max((a - b).abs());
        }
    }
    println!("kv cache vs recompute max abs diff {worst:e}");
    assert!(
        worst <= 1e-5,
        "kv cache vs recompute max abs diff {worst:e}"
    );
    assert_eq!(cache.past_len(), ids.len());
}

/// `embed` + `blocks[i].forward` + `head` (the training path) equals `forward`.
#[test]
fn blockwise_path_equals_forward() {
    let model = load("fp32");
    let r = reference_json();
    let (ids, mask, pos) = (
        json_2d(&r["input_ids"]),
        json_2d(&r["attention_mask"]),
        json_2d(&r["position_ids"]),
    );
    let ctx = model.context(
        ids.len(),
        ids[0].len(),
        Some(&mask.concat()),
        Some(&pos.concat()),
        None,
    );
    let mut h = model.embed(int_tensor(&ids));
    for b in &model.blocks {
        h = b.forward(h, &ctx);
    }
    let got = model.head(h).into_data().into_vec::<f32>().unwrap();
    assert_eq!(got, fixture_logits(&model));
}

#[test]
fn perplexity_matches_hf_sliding_window() {
    let model = load("fp32");
    let p = qtune_lm::fixtures::perplexity_case(&reference_json()["perplexity"]).unwrap();
    let got = model
        .perplexity(&p.input_ids, p.max_length, p.stride)
        .unwrap();
    let want = p.ppl;
    let rel = ((got.ppl - want) / want).abs();
    println!(
        "ppl {} vs HF {want}, tokens {} vs {}, rel {rel:e}",
        got.ppl, got.tokens, p.tokens
    );
    assert_eq!(got.tokens as u64, p.tokens);
    assert!(rel <= 1e-4, "ppl rel err {rel:e}");
}
