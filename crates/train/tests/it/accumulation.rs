//! Gradient accumulation normalizes by the total target tokens of the step: one batch of 8
//! and micro-batches of 3 + 5 (different token counts and padding) give the same update.
use burn::tensor::backend::AutodiffBackend;
use qtune_data::{collate, Example, Padding};
use qtune_gptj::CausalLm;
use qtune_optim::TokenAccumulator;
use qtune_train::step::{micro_step, Backprop};

use crate::common::*;

#[test]
fn split_into_micro_batches_gives_the_whole_batch_gradient() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path());
    cfg.lora.lora_dropout = 0.0;
    let model = qtune_train::build::model_with_lora::<B>(&cfg, &Default::default()).unwrap();
    let examples = synthetic(8, 9);
    let batch =
        |xs: &[Example]| collate(&xs.iter().collect::<Vec<_>>(), 0, Padding::Right).unwrap();

    let whole = batch(&examples);
    let mut acc = TokenAccumulator::new();
    let ms = micro_step::<B, _>(&model, &whole, 1.0, None, Backprop::Plain).unwrap();
    acc.accumulate::<B>(&model, ms.grads, whole.n_target_tokens());
    let (loss_whole, g_whole) = (
        ms.loss_sum / acc.tokens() as f64,
        acc.finish::<B>(&model).unwrap(),
    );

    let (a, b) = (batch(&examples[..3]), batch(&examples[3..]));
    assert_ne!(
        a.n_target_tokens(),
        b.n_target_tokens(),
        "unequal halves make the test meaningful"
    );
    let mut acc = TokenAccumulator::new();
    let mut loss_sum = 0.0;
    for mb in [&a, &b] {
        let ms = micro_step::<B, _>(&model, mb, 1.0, None, Backprop::Plain).unwrap();
        loss_sum += ms.loss_sum;
        acc.accumulate::<B>(&model, ms.grads, mb.n_target_tokens());
    }
    let loss_split = loss_sum / acc.tokens() as f64;
    let g_split = acc.finish::<B>(&model).unwrap();
    assert!(
        (loss_whole - loss_split).abs() <= 1e-6 * loss_whole,
        "{loss_whole} vs {loss_split}"
    );

    // B = 0 at init, so only lora_B has a gradient; compare every one that exists.
    let mut compared = 0;
    for p in model.lora_params() {
        let get = |g: &burn::optim::GradientsParams| {
            g.get::<<B as AutodiffBackend>::InnerBackend, 2>(p.param.id)
                .map(|t| t.into_data().to_vec::<f32>().unwrap())
        };
        let (Some(x), Some(y)) = (get(&g_whole), get(&g_split)) else {
            continue;
        };
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        let diff = x
            .iter()
            .zip(&y)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f32>()
            .sqrt();
        assert!(
            diff <= 1e-5 * norm.max(1e-12),
            "{}: rel diff {}",
            p.key,
            diff / norm
        );
        compared += 1;
    }
    assert!(compared >= 18, "compared {compared} gradients");
    // The mean of per-micro-batch means would differ (the halves have different token counts).
    let mean_of_means = {
        let la = micro_step::<B, _>(&model, &a, 1.0, None, Backprop::Plain)
            .unwrap()
            .loss_sum
            / a.n_target_tokens() as f64;
        let lb = micro_step::<B, _>(&model, &b, 1.0, None, Backprop::Plain)
            .unwrap()
            .loss_sum
            / b.n_target_tokens() as f64;
        (la + lb) / 2.0
    };
    assert!((mean_of_means - loss_whole).abs() > 1e-6 * loss_whole);
}
