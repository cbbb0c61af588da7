//! float16 training on the GPU with dynamic loss scaling (issue 19): the tiny random model
//! (configs/tiny.toml's shape, LoRA q,v, no dropout) trained by the real trainer
//! (`qtune_train::train`: checkpointed micro-steps, token-normalized AdamW, the loss scaler)
//! on the same learnable examples in bfloat16 and in float16. The two loss curves must agree
//! within the bf16-vs-f32 tolerance at every step, the float16 run must learn, and its skipped
//! steps are printed (torch's initial scale, 2¹⁶, overflows float16 in the first backward,
//! where qtune's per-token loss sums seed the logits' gradient with up to 1·scale).

use qtune_data::Example;
use qtune_train::backend::Train;
use serde_json::json;

use super::{Failures, LOSS_DIFF_LATER};

/// The loss must fall by at least this much over the run (it falls by ~5 from ~10.9 in bf16).
const MIN_DROP: f64 = 1.0;

/// Learnable prompt/completion pairs: the completion repeats the prompt's first four tokens.
fn examples(n: usize) -> Vec<Example> {
    (0..n)
        .map(|i| {
            let len = 8 + i % 9;
            let prompt: Vec<u32> = (0..len)
                .map(|j| 3 + ((i * 37 + j * 11) % 400) as u32)
                .collect();
            let mut completion = prompt[..4].to_vec();
            completion.push(50256);
            Example::from_prompt_completion(&prompt, &completion)
        })
        .collect()
}

/// One run's per-step losses and skipped steps.
fn run(
    dtype: &str,
    steps: usize,
    dev: &burn::tensor::Device<Train>,
) -> anyhow::Result<(Vec<f64>, Option<u64>)> {
    let out = std::env::temp_dir().join(format!(
        "qtune-gpu-check-fp16-{dtype}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let mut cfg = qtune_train::RunConfig::tiny();
    cfg.name = format!("gpu-check-{dtype}");
    cfg.model.torch_dtype = dtype.into();
    cfg.lora.lora_dropout = 0.0;
    cfg.data.max_length = 64;
    let t = &mut cfg.training;
    t.output_dir = Some(out.display().to_string());
    t.max_steps = steps;
    t.learning_rate = 1e-3;
    t.warmup_steps = 0;
    t.per_device_train_batch_size = 8;
    t.gradient_accumulation_steps = 1;
    t.logging_steps = 1;
    t.eval_steps = steps;
    t.save_steps = steps;
    t.gradient_checkpointing = qtune_train::config::GradientCheckpointing::On;
    cfg.validate("gpu-check fp16")?;
    let model = qtune_train::build::model_with_lora::<Train>(&cfg, dev)?;
    let opts = qtune_train::TrainOptions::default();
    let (_, summary) =
        qtune_train::train::<Train, _>(&cfg, model, &examples(64), &examples(8), 0, dev, &opts)?;
    let _ = std::fs::remove_dir_all(&out);
    Ok((
        summary.losses.iter().map(|l| l.1).collect(),
        summary.skipped_steps,
    ))
}

/// The check (see the module docs); every line prints, failures go to `fails`.
pub(super) fn fp16_curve(
    dev: &burn::tensor::Device<Train>,
    steps: usize,
    fails: &mut Failures,
) -> anyhow::Result<()> {
    let (bf16, none) = run("bfloat16", steps, dev)?;
    anyhow::ensure!(none.is_none(), "bfloat16 runs without loss scaling");
    let (f16, skipped) = run("float16", steps, dev)?;
    let mut max_diff = 0f64;
    for (i, (b, h)) in bf16.iter().zip(&f16).enumerate() {
        let d = (b - h).abs();
        max_diff = max_diff.max(if d.is_nan() { f64::INFINITY } else { d });
        fails.at_most(
            &format!("fp16_loss_curve step {i} |f16 - bf16|"),
            d,
            LOSS_DIFF_LATER,
        );
    }
    let (first, last) = (f16.first().copied(), f16.last().copied());
    let drop = first.zip(last).map_or(0.0, |(a, b)| a - b);
    fails.require(
        &format!("fp16_loss_curve loss drop (first - last) = {drop:.3} ≥ {MIN_DROP}"),
        drop >= MIN_DROP,
    );
    println!(
        "{}",
        json!({"check": "fp16_loss_curve", "steps": steps, "max_abs_diff": max_diff,
               "skipped_steps": skipped, "bf16_first_last": [bf16.first(), bf16.last()],
               "f16_first_last": [first, last]})
    );
    Ok(())
}
