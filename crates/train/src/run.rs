//! Whole jobs as the binaries run them: train (data → model → loop → final eval), evaluate an
//! adapter, perplexity. Results go to `{output_dir}` and come back as JSON-able reports.
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use qtune_data::{DataSource, DatasetId};
use qtune_kernels::QBackend;
use qtune_lm::CausalLm;
use qtune_lora::peft::PeftAdapter;
use serde::Serialize;

use crate::config::RunConfig;
use crate::evaluate::{eval_loss, evaluate_generation, EvalGeneration, Prediction, TaskMetrics};
use crate::metrics::{Event, MetricsLog};
use crate::model::TrainBackend;
use crate::trainer::{TrainOptions, TrainSummary};
use crate::{build, task, TrainError};

use crate::files::{ADAPTER_DIR, CHECKPOINTS_DIR, LOSS_PLOT_FILE, METRICS_FILE};
pub use crate::files::{EVAL_RESULTS_FILE, PREDICTIONS_FILE, REPORT_FILE};

#[derive(Debug, Serialize)]
pub struct TrainReport {
    pub output_dir: PathBuf,
    pub train_examples: usize,
    pub validation_examples: usize,
    pub truncated: usize,
    pub dropped: usize,
    pub trainable_params: u64,
    pub all_params: u64,
    pub steps: usize,
    pub first_loss: Option<f64>,
    pub last_loss: Option<f64>,
    /// The eval loss of the best adapter (at `best_step`).
    pub best_eval_loss: Option<f64>,
    pub best_step: Option<usize>,
    /// `metric_for_best_model` (HF name, e.g. `eval_loss`, `eval_exact_match`) and its value
    /// at `best_step`; the adapter of that step is `{output_dir}/adapter`.
    pub metric_for_best_model: String,
    pub best_metric: Option<f64>,
    /// Target (loss) tokens trained on.
    pub tokens: u64,
    /// Wall time of the training loop in this call (with evaluations and checkpoint writes).
    pub train_seconds: f64,
    /// Time inside the optimizer steps alone (no evaluation, checkpoint or logging).
    pub step_seconds: f64,
    /// Non-pad input tokens per second over the training steps of this call (`step_seconds`).
    pub tokens_per_second: f64,
    pub optimizer_state_bytes: usize,
    pub final_eval: Option<TaskMetrics>,
    /// `[data] test_split` / `test_file`: the best adapter on the held-out test split, once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<TestMetrics>,
    /// float16 loss scaling: optimizer steps skipped because their gradients overflowed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped_steps: Option<u64>,
}

/// The held-out test split, evaluated once after training with the best adapter (HF's
/// `trainer.predict(test_dataset)` metrics, `test_` prefixed).
#[derive(Debug, Clone, Serialize)]
pub struct TestMetrics {
    pub test_examples: usize,
    pub test_loss: f64,
    pub test_tokens: u64,
    /// The generation metric on the first `eval.generation_samples` test records.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<TaskMetrics>,
}

/// PEFT's `print_trainable_parameters` line.
pub fn param_line(trainable: u64, all: u64) -> String {
    qtune_gptj::ParamCounts { trainable, all }.to_string()
}

/// Trains as configured, then decodes the held-back prompts with the best adapter.
pub fn train_job<B>(
    cfg: &RunConfig,
    opts: &TrainOptions,
    source: &DataSource,
    device: &B::Device,
) -> Result<TrainReport, TrainError>
where
    B: TrainBackend,
{
    train_job_on::<B>(cfg, opts, source, std::slice::from_ref(device))
}

/// [`train_job`] over several devices (data-parallel, [`crate::parallel`]); one device is the
/// same as `train_job`. The final evaluation runs on the first device (rank 0).
pub fn train_job_on<B>(
    cfg: &RunConfig,
    opts: &TrainOptions,
    source: &DataSource,
    devices: &[B::Device],
) -> Result<TrainReport, TrainError>
where
    B: TrainBackend,
{
    // Only the host of rank 0 writes into the run folder (and locks it), from before the first
    // write until the report is written.
    let holds_rank0 = cfg.distributed.as_ref().is_none_or(|d| d.node_rank == 0);
    let _lock = if holds_rank0 {
        Some(crate::lock::RunLock::acquire(&cfg.output_dir())?)
    } else {
        None
    };
    let tokenizer = build::tokenizer(&cfg.model, source.data_dir.as_deref())?;
    let data = task::prepare(cfg, &tokenizer, build::eos_id(&cfg.model)?, source)?;
    tracing::info!(
        train = data.train.len(),
        validation = data.validation.len(),
        eval_prompts = data.eval_items.len(),
        truncated = data.train_stats.truncated,
        dropped = data.train_stats.dropped,
        devices = devices.len(),
        "data ready"
    );
    let n_gen = cfg.training.eval_generate_samples;
    let opts = TrainOptions {
        generation: (n_gen > 0).then(|| {
            std::sync::Arc::new(EvalGeneration {
                tokenizer: tokenizer.clone(),
                items: data.eval_items.iter().take(n_gen).cloned().collect(),
                eos: data.eos_id,
                max_new_tokens: cfg.eval.max_new_tokens,
            })
        }),
        ..opts.clone()
    };
    let (model, summary) = crate::parallel::train_parallel(
        cfg,
        devices,
        |d| build::model_with_lora::<B>(cfg, d),
        &data.train,
        &data.validation,
        data.pad_id,
        &opts,
    )?;
    let counts = model.param_counts();
    tracing::info!("{}", param_line(counts.trainable, counts.all));
    // Only the host of rank 0 has the best adapter (and writes the results).
    let gen_items = &data.eval_items[..data.eval_items.len().min(cfg.eval.generation_samples)];
    let wants_final = cfg.eval.generation_samples > 0 && !gen_items.is_empty();
    let wants_test = !data.test.is_empty();
    let (mut final_eval, mut test) = (None, None);
    // Only the host of rank 0 has the best adapter (and writes the results).
    if holds_rank0 && summary.finished && (wants_final || wants_test) {
        let best = PeftAdapter::load(&summary.output_dir.join(crate::files::ADAPTER_DIR))?;
        let model = model.import_adapter(&best)?.valid();
        let generate = |items: &[task::EvalItem]| {
            evaluate_generation(
                &model,
                &tokenizer,
                items,
                cfg.training.per_device_eval_batch_size,
                cfg.eval.max_new_tokens,
                data.eos_id,
            )
        };
        if wants_final {
            let m = generate(gen_items)?;
            let mut log = MetricsLog::open(&summary.output_dir)?;
            log.write(&Event::Final {
                step: summary.steps_done,
                metrics: m.metrics.clone(),
            })?;
            write_json(&summary.output_dir.join(EVAL_RESULTS_FILE), &m)?;
            write_predictions(&summary.output_dir.join(PREDICTIONS_FILE), &m.predictions)?;
            final_eval = Some(m);
        }
        if wants_test {
            let (test_loss, test_tokens) = eval_loss(
                &model,
                &data.test,
                cfg.training.per_device_eval_batch_size,
                data.pad_id,
            )?;
            let generation = if cfg.eval.generation_samples > 0 && !data.test_items.is_empty() {
                Some(generate(&data.test_items)?)
            } else {
                None
            };
            tracing::info!(
                test_loss,
                test_tokens,
                examples = data.test.len(),
                "test split"
            );
            test = Some(TestMetrics {
                test_examples: data.test.len(),
                test_loss,
                test_tokens,
                generation,
            });
        }
    }
    let metric_for_best_model = cfg.best_metric().name;
    let mut r = report(&data, counts.trainable, counts.all, summary, final_eval);
    r.metric_for_best_model = metric_for_best_model;
    r.test = test;
    if holds_rank0 {
        write_json(&r.output_dir.join(REPORT_FILE), &r)?;
    }
    Ok(r)
}

/// One JSON object per line.
pub fn write_predictions(path: &Path, predictions: &[Prediction]) -> Result<(), TrainError> {
    let mut text = String::new();
    for p in predictions {
        text.push_str(&serde_json::to_string(p).unwrap_or_default());
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The numeric top-level fields of a metrics object, `name value` joined by commas.
pub fn metric_line(metrics: &serde_json::Value) -> String {
    let Some(obj) = metrics.as_object() else {
        return metrics.to_string();
    };
    obj.iter()
        .filter_map(|(k, v)| v.as_f64().map(|x| (k, x)))
        .map(|(k, x)| {
            if x.fract() == 0.0 && x.abs() < 1e15 {
                format!("{k} {x:.0}")
            } else {
                format!("{k} {x:.4}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl TrainReport {
    /// A few lines for a person: steps and losses, the final metrics, and where the files are.
    pub fn summary(&self) -> String {
        let dir = self.output_dir.display();
        let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.4}"));
        let mut s = format!(
            "trained {} steps in {:.1} s ({:.0} tok/s) on {} examples ({} truncated, {} dropped); \
             {}\nloss {} -> {}; best eval loss {} at step {}\n",
            self.steps,
            self.train_seconds,
            self.tokens_per_second,
            self.train_examples,
            self.truncated,
            self.dropped,
            param_line(self.trainable_params, self.all_params),
            f(self.first_loss),
            f(self.last_loss),
            f(self.best_eval_loss),
            self.best_step.map_or("-".to_string(), |s| s.to_string()),
        );
        if self.metric_for_best_model != "eval_loss" {
            if let Some(v) = self.best_metric {
                s += &format!("best {} {v:.4}\n", self.metric_for_best_model);
            }
        }
        if let Some(t) = &self.test {
            s += &format!(
                "test ({} examples): loss {:.4}",
                t.test_examples, t.test_loss
            );
            if let Some(g) = &t.generation {
                s += &format!(", {}", metric_line(&g.metrics));
            }
            s += "\n";
        }
        if let Some(m) = &self.final_eval {
            s += &format!(
                "final eval ({} prompts): {}\n",
                m.predictions.len(),
                metric_line(&m.metrics)
            );
        }
        s += &format!(
            "files: {dir}/{ADAPTER_DIR}/ (best adapter), {dir}/{METRICS_FILE}, \
             {dir}/{LOSS_PLOT_FILE}, {dir}/{CHECKPOINTS_DIR}/, {dir}/{REPORT_FILE}"
        );
        if self.final_eval.is_some() {
            s += &format!(", {dir}/{PREDICTIONS_FILE}, {dir}/{EVAL_RESULTS_FILE}");
        }
        s
    }
}

fn report(
    data: &task::TaskData,
    trainable: u64,
    all: u64,
    s: TrainSummary,
    final_eval: Option<TaskMetrics>,
) -> TrainReport {
    TrainReport {
        output_dir: s.output_dir,
        train_examples: data.train.len(),
        validation_examples: data.validation.len(),
        truncated: data.train_stats.truncated,
        dropped: data.train_stats.dropped,
        trainable_params: trainable,
        all_params: all,
        steps: s.steps_done,
        first_loss: s.losses.first().map(|l| l.1),
        last_loss: s.losses.last().map(|l| l.1),
        best_eval_loss: s.best_eval_loss,
        best_step: s.best_step,
        metric_for_best_model: "eval_loss".into(),
        best_metric: s.best_metric,
        tokens: s.tokens_seen,
        train_seconds: s.seconds,
        step_seconds: s.step_seconds,
        tokens_per_second: s.input_tokens as f64 / s.step_seconds.max(1e-9),
        optimizer_state_bytes: s.optimizer_state_bytes,
        final_eval,
        test: None,
        skipped_steps: s.skipped_steps,
    }
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    std::fs::write(path, text).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub eval_loss: f64,
    pub eval_tokens: u64,
    pub generation: Option<TaskMetrics>,
}

impl EvalReport {
    /// The eval loss and the generation metrics (without the per-example predictions).
    pub fn summary(&self) -> String {
        let mut s = format!(
            "eval loss {:.4} over {} target tokens",
            self.eval_loss, self.eval_tokens
        );
        if let Some(g) = &self.generation {
            s += &format!(
                "\ngeneration ({} prompts): {}",
                g.predictions.len(),
                metric_line(&g.metrics)
            );
        }
        s
    }
}

/// Evaluates `adapter` (or the base model) on the run's validation data.
pub fn eval_job<B: QBackend>(
    cfg: &RunConfig,
    adapter: Option<&Path>,
    source: &DataSource,
    device: &B::Device,
) -> Result<EvalReport, TrainError> {
    let tokenizer = build::tokenizer(&cfg.model, source.data_dir.as_deref())?;
    let data = task::prepare(cfg, &tokenizer, build::eos_id(&cfg.model)?, source)?;
    let mut model = build::base_model::<B>(&cfg.model, device)?;
    crate::setup::check_context_window(cfg, model.max_positions())?;
    if let Some(dir) = adapter {
        model = model.import_adapter(&PeftAdapter::load(dir)?)?;
    }
    let (eval_loss, eval_tokens) = eval_loss(
        &model,
        &data.validation,
        cfg.training.per_device_eval_batch_size,
        data.pad_id,
    )?;
    let generation = if data.eval_items.is_empty() || cfg.eval.generation_samples == 0 {
        None
    } else {
        Some(evaluate_generation(
            &model,
            &tokenizer,
            &data.eval_items,
            cfg.training.per_device_eval_batch_size,
            cfg.eval.max_new_tokens,
            data.eos_id,
        )?)
    };
    Ok(EvalReport {
        eval_loss,
        eval_tokens,
        generation,
    })
}

#[derive(Debug, Serialize)]
pub struct PerplexityReport {
    pub text_tokens: usize,
    /// HF's recipe: per window, non-ignored labels − 1 (its `ppl` weights window means by it).
    pub tokens_evaluated: usize,
    pub ppl: f64,
    /// Labels actually scored (each token of the evaluated text after the first, once).
    pub scored_tokens: usize,
    /// Perplexity over exactly `scored_tokens`.
    pub ppl_scored: f64,
    pub max_length: usize,
    pub stride: usize,
}

/// HF's sliding-window perplexity of `model` on wikitext-2 raw test (joined as HF's recipe:
/// rows joined by "\n\n", see qtune-data), on the first `max_tokens` tokens if given.
pub fn perplexity_job<B: Backend + QBackend, M: CausalLm<B>>(
    model: &M,
    tokenizer: &tokenizers::Tokenizer,
    source: &DataSource,
    max_length: Option<usize>,
    stride: Option<usize>,
    max_tokens: Option<usize>,
) -> Result<PerplexityReport, TrainError> {
    let (max_length, stride) = perplexity_window(model.max_positions(), max_length, stride)?;
    let path = source.locate(DatasetId::WikiText2RawTest)?;
    let text = qtune_data::load_wikitext_raw(&path)?;
    let mut ids = qtune_data::encode_text(tokenizer, &text)?;
    let text_tokens = ids.len();
    if let Some(n) = max_tokens {
        ids.truncate(n);
    }
    let p = model.perplexity(&ids, max_length, stride)?;
    Ok(PerplexityReport {
        text_tokens,
        tokens_evaluated: p.tokens,
        ppl: p.ppl,
        scored_tokens: p.scored_tokens,
        ppl_scored: p.ppl_scored,
        max_length,
        stride,
    })
}

/// The perplexity window: `max_length` defaults to the model's context window and may not
/// exceed it, `stride` to half the window (HF's example) and may not exceed `max_length`;
/// out-of-range values are refused, never clipped (a clip would silently drop the overlap).
pub fn perplexity_window(
    context: usize,
    max_length: Option<usize>,
    stride: Option<usize>,
) -> Result<(usize, usize), TrainError> {
    let bad = |field: &'static str, msg: String| {
        TrainError::from(crate::config::ConfigError::Invalid {
            origin: "perplexity".into(),
            field,
            msg,
        })
    };
    let max_length = max_length.unwrap_or(context);
    if max_length < 2 || max_length > context {
        return Err(bad(
            "max_length",
            format!("{max_length}: must be in 2..={context} (the model's context window)"),
        ));
    }
    let stride = stride.unwrap_or((max_length / 2).max(1));
    if stride == 0 || stride > max_length {
        return Err(bad(
            "stride",
            format!("{stride}: must be in 1..={max_length} (max_length)"),
        ));
    }
    Ok((max_length, stride))
}

#[cfg(test)]
mod tests {
    use super::perplexity_window;

    #[test]
    fn perplexity_window_defaults_to_the_context_and_refuses_instead_of_clipping() {
        assert_eq!(perplexity_window(512, None, None).unwrap(), (512, 256));
        assert_eq!(
            perplexity_window(512, Some(256), Some(128)).unwrap(),
            (256, 128)
        );
        let e = perplexity_window(512, Some(1024), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_length") && e.contains("512"), "{e}");
        let e = perplexity_window(512, Some(256), Some(300))
            .unwrap_err()
            .to_string();
        assert!(e.contains("stride") && e.contains("256"), "{e}");
        assert!(perplexity_window(512, Some(256), Some(0)).is_err());
    }
}
