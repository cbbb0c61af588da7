//! The training loop (STYLE.md §5): micro-batches → token-normalized accumulation → global-norm
//! clipping → AdamW / 8-bit AdamW at the scheduled rate; eval loss every `eval_steps` (best
//! adapter kept), atomic checkpoints every `save_steps`, exact resume, metrics + progress.
//! One loop for one device and for each rank of a data-parallel run: it meets the other ranks
//! through [`crate::replica::Replicas`] only (`crate::parallel` implements it and calls this).
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use rand::RngCore;

use qtune_data::{collate, collate_packed, Example, Padding};
use qtune_lora::peft::{PeftAdapterConfig, PeftTargets};
use qtune_optim::{
    LrSchedule, OptimKind, Optimizer, OptimizerConfig, ScheduleKind, TokenAccumulator,
};

use crate::checkpoint;
use crate::config::{OptimName, RunConfig, SchedulerType, TargetList, TrainingArgs};
use crate::evaluate::{evaluate_step, EvalGeneration, StepEval};
use crate::files;
use crate::metrics::MetricsLog;
use crate::progress::{log_eval, plot_losses, progress_bar, Window};
use crate::replica::{
    compute_lock, rank_seed, shard_range, Reduced, Replicas, SetupReport, Single,
};
use qtune_lm::CausalLm;

use crate::model::{TrainBackend, TrainLm};
use crate::setup::{setup, Setup};
use crate::step::{self, Backprop};
use crate::TrainError;

#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from `{output_dir}/checkpoints/latest` if there is one.
    pub resume: bool,
    /// Start afresh even if the output folder holds a previous run (deletes its checkpoints,
    /// metrics and adapter). Without it and without `resume`, an existing run is an error.
    pub overwrite: bool,
    /// Draw the progress bar (off in tests).
    pub progress: bool,
    /// Stop (as if interrupted) once this many optimizer steps are done; used to test resume.
    pub stop_at_step: Option<usize>,
    /// What every evaluation decodes for the generation metric (`[training]
    /// eval_generate_samples`); `None`: eval loss only.
    pub generation: Option<std::sync::Arc<EvalGeneration>>,
}

#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub output_dir: PathBuf,
    pub steps_done: usize,
    /// `(step, mean token loss)` of every optimizer step run in this call.
    pub losses: Vec<(usize, f64)>,
    pub eval_losses: Vec<(usize, f64)>,
    /// The eval loss at `best_step`.
    pub best_eval_loss: Option<f64>,
    /// The best evaluation by `metric_for_best_model`: its step and value.
    pub best_step: Option<usize>,
    pub best_metric: Option<f64>,
    pub tokens_seen: u64,
    /// Non-pad input tokens processed in this call (forward + backward).
    pub input_tokens: u64,
    /// Wall time of the training loop in this call: steps, evaluations, checkpoint writes.
    pub seconds: f64,
    /// Time inside the optimizer steps alone (batch, forward, backward, update; no evaluation,
    /// checkpoint or logging): what tokens per second are measured over.
    pub step_seconds: f64,
    pub optimizer_state_bytes: usize,
    /// Whether the run reached `max_steps` (false when stopped by `stop_at_step`).
    pub finished: bool,
    /// float16 loss scaling: steps skipped because their gradients overflowed (whole run).
    pub skipped_steps: Option<u64>,
}

/// The adapter config written next to the factors (PEFT names).
pub fn peft_config(cfg: &RunConfig) -> PeftAdapterConfig {
    let targets = match &cfg.lora.target_modules {
        TargetList::Names(v) => PeftTargets::List(v.clone()),
        TargetList::One(s) => PeftTargets::One(s.clone()),
    };
    let mut c = PeftAdapterConfig::new(
        cfg.lora.r,
        cfg.lora.lora_alpha,
        cfg.lora.lora_dropout,
        targets,
    );
    c.base_model_name_or_path = cfg.model.name_or_path.clone();
    c
}

pub fn optimizer_config(cfg: &RunConfig) -> OptimizerConfig {
    let t = &cfg.training;
    OptimizerConfig {
        optim: match t.optim {
            OptimName::AdamwTorch => OptimKind::AdamW,
            OptimName::AdamwBnb8bit | OptimName::PagedAdamw8bit => OptimKind::AdamW8bit,
        },
        adam_beta1: t.adam_beta1,
        adam_beta2: t.adam_beta2,
        adam_epsilon: t.adam_epsilon,
        weight_decay: t.weight_decay,
        ..OptimizerConfig::default()
    }
}

pub fn schedule(cfg: &RunConfig) -> LrSchedule {
    let t = &cfg.training;
    LrSchedule {
        learning_rate: t.learning_rate,
        warmup_steps: t.warmup_steps.min(t.max_steps),
        total_steps: t.max_steps,
        kind: match t.lr_scheduler_type {
            SchedulerType::Linear => ScheduleKind::Linear,
            SchedulerType::Cosine => ScheduleKind::Cosine,
            SchedulerType::Constant => ScheduleKind::Constant,
        },
        min_lr_ratio: t.min_lr_ratio,
    }
}

/// Runs (or resumes) training on one device. Returns the trained model and a summary; the best
/// adapter is in `{output_dir}/adapter`, metrics in `metrics.jsonl`, the curve in `loss.png`.
/// Several devices: [`crate::parallel::train_parallel`] (same loop, N ranks).
pub fn train<B, M>(
    cfg: &RunConfig,
    model: M,
    train_set: &[Example],
    val_set: &[Example],
    pad_id: u32,
    device: &B::Device,
    opts: &TrainOptions,
) -> Result<(M, TrainSummary), TrainError>
where
    B: TrainBackend,
    M: TrainLm<B>,
{
    // Held until the loop returns (also on errors and panics): no second run writes here.
    let _lock = crate::lock::RunLock::acquire(&cfg.output_dir())?;
    let run = RunInputs::new(cfg, train_set, val_set, pad_id, opts);
    train_rank(&run, model, device, &mut Single)
}

/// What every rank of a run is given alike: the config, the data, the pad id and the options.
#[derive(Clone, Copy)]
pub(crate) struct RunInputs<'a> {
    cfg: &'a RunConfig,
    train_set: &'a [Example],
    val_set: &'a [Example],
    pad_id: u32,
    opts: &'a TrainOptions,
}

impl<'a> RunInputs<'a> {
    pub fn new(
        cfg: &'a RunConfig,
        train_set: &'a [Example],
        val_set: &'a [Example],
        pad_id: u32,
        opts: &'a TrainOptions,
    ) -> Self {
        Self {
            cfg,
            train_set,
            val_set,
            pad_id,
            opts,
        }
    }
}

/// The training loop of one rank (`sync.rank()` of `sync.world()`) on its model replica and
/// device; see [`crate::parallel`] for the data-parallel contract.
pub(crate) fn train_rank<B, M, R>(
    run: &RunInputs<'_>,
    model: M,
    device: &B::Device,
    sync: &mut R,
) -> Result<(M, TrainSummary), TrainError>
where
    B: TrainBackend,
    M: TrainLm<B>,
    R: Replicas,
{
    let RunInputs {
        cfg,
        train_set,
        val_set,
        pad_id,
        opts,
    } = *run;
    let t = &cfg.training;
    let (rank, world) = (sync.rank(), sync.world());
    let lead = rank == 0;
    check_generation_prompts(cfg, opts)?;
    let out = cfg.output_dir();
    let ckpt_root = out.join(files::CHECKPOINTS_DIR);
    let inner_device = device_inner::<B>(device);
    sync.prepare::<B, M>(&model);
    let setup = setup::<B, M>(cfg, model, device, train_set, val_set, world, lead, opts);
    let end = t.max_steps.min(opts.stop_at_step.unwrap_or(usize::MAX));
    let start = setup.as_ref().map(|s| s.state.step).unwrap_or(0);
    let steps = end.saturating_sub(start);
    let report = SetupReport {
        ok: setup.is_ok(),
        start_step: start,
        steps,
    };
    sync.barrier::<B::InnerBackend>(&inner_device, report)?;
    let Setup {
        mut model,
        mut optim,
        mut state,
        mut sampler,
        schedule,
        packing,
    } = setup?;
    let mut log = lead.then(|| MetricsLog::open(&out)).transpose()?;
    let bar = progress_bar(opts.progress && lead, t.max_steps, state.step);
    let started = Instant::now();
    let mut summary = TrainSummary::start(out.clone(), &state);
    let mut window = Window::default();
    let seed_divisor = crate::scaler::LossScaling::seed_divisor(cfg);
    while state.step < end {
        let step_started = Instant::now();
        // Steps skipped for a float16 overflow do not advance the schedule (HF + accelerate).
        let skipped = state.loss_scaler.as_ref().map_or(0, |s| s.skipped_steps) as usize;
        let lr = schedule.lr_at(state.step - skipped);
        // What the gradients carry: the loss scale over the per-token-sum divisor (scaler.rs).
        let loss_scale = state
            .loss_scaler
            .as_ref()
            .map_or(1.0, |s| s.scale / seed_divisor);
        let shard = (rank, world);
        let batches = rank_batches(
            cfg,
            &mut sampler,
            &mut state,
            &packing,
            train_set,
            pad_id,
            shard,
        )?;
        // One way: micro-batch grads → TokenAccumulator (sums) → sums across ranks (identity on
        // one rank) → divided once by the global target tokens → clip → step.
        let local = micro_steps::<B, M>(
            &model,
            &batches,
            t.gradient_checkpointing.backprop(),
            loss_scale,
        )?;
        let red = sync.reduce::<B, M>(&model, local, &inner_device)?;
        let update = Update {
            lr,
            loss_scale,
            scaling: state.loss_scaler.is_some(),
            step: state.step + 1,
        };
        let (next, done) = apply_update(model, &mut optim, red, t, update, &ckpt_root)?;
        if let Some(scaler) = state.loss_scaler.as_mut() {
            scaler.update(done.skipped, state.step + 1)?;
        }
        model = next;
        state.step += 1;
        state.tokens_seen += done.tokens;
        state.data_position = data_position(&sampler)?;
        summary.losses.push((state.step, done.loss));
        summary.input_tokens += done.input_tokens;
        let seconds = step_started.elapsed().as_secs_f64();
        summary.step_seconds += seconds;
        window.add(done.loss, done.tokens, seconds, done.input_tokens);
        bar.set_position(state.step as u64);
        let Some(log) = log.as_mut() else {
            continue; // ranks > 0 write nothing
        };
        if state.step % t.logging_steps == 0 || state.step == t.max_steps {
            let scaler = state.loss_scaler.as_ref();
            window.log(
                log,
                &bar,
                state.step,
                state.tokens_seen,
                lr,
                done.norm,
                scaler,
            )?;
        }
        if state.step % t.eval_steps == 0 || state.step == t.max_steps {
            let generation = opts.generation.as_deref();
            let ev = evaluate_step(&model.valid(), cfg, val_set, pad_id, generation)?;
            let best = keep_if_best(&model, cfg, &mut state, &ev)?;
            summary.eval_losses.push((state.step, ev.loss));
            log_eval(log, &bar, state.step, &ev, best)?;
        }
        if state.step % t.save_steps == 0 || state.step == t.max_steps {
            let adapter = model.export_adapter(peft_config(cfg))?;
            let bytes = optim.state_to_bytes()?;
            checkpoint::save(&ckpt_root, &adapter, &bytes, &state, t.save_total_limit)?;
        }
    }
    bar.finish_and_clear();
    if let Some(log) = &log {
        plot_losses(log, &out)?;
    }
    summary.finish(&state, started, optim.state_bytes(), t.max_steps);
    Ok((model, summary))
}

/// What one optimizer step applies: the learning rate, the loss scale its gradients carry
/// (1 without float16 loss scaling), whether loss scaling is on (an overflow then skips the
/// step; the scale itself may be 1) and its number (for errors).
struct Update {
    lr: f64,
    loss_scale: f64,
    scaling: bool,
    step: usize,
}

/// What one optimizer step leaves for the log and the summary.
struct StepDone {
    /// float16 loss scaling only: the gradients overflowed, nothing was updated.
    skipped: bool,
    /// Mean loss per target token over all ranks.
    loss: f64,
    /// Global gradient norm before clipping.
    norm: f64,
    /// Target tokens over all ranks.
    tokens: u64,
    input_tokens: u64,
}

/// The one way after the reduce: divided once by the global target tokens (and the loss
/// scale), a non-finite loss or gradient norm stops the run (naming the last good checkpoint),
/// clip, optimizer step. Under float16 loss scaling a non-finite norm is an overflow instead:
/// the step is skipped (nothing updated) and the caller's scaler backs off.
fn apply_update<B, M>(
    model: M,
    optim: &mut Optimizer<B>,
    red: Reduced,
    t: &TrainingArgs,
    u: Update,
    ckpt_root: &Path,
) -> Result<(M, StepDone), TrainError>
where
    B: TrainBackend,
    M: AutodiffModule<B>,
{
    let tokens = red.target_tokens;
    let scaled = u.scaling;
    // The loss sum is the unscaled one (the scale only seeds the backward).
    let loss = red.loss_sum / tokens.max(1) as f64;
    if tokens > 0 && !loss.is_finite() && !scaled {
        return Err(non_finite(ckpt_root, u.step, "loss", loss));
    }
    // Divided by the global target tokens × the loss scale, clipped to the global norm and
    // applied in one pass over each group's concatenated gradients (qtune-optim's
    // step_normalized; a non-finite norm leaves the model and the state untouched).
    let (model, norm) = {
        let _compute = compute_lock();
        optim.step_normalized_scaled(
            u.lr,
            model,
            red.grads,
            (tokens, u.loss_scale),
            t.gradient_accumulation_steps,
            t.max_grad_norm,
        )?
    };
    let norm = norm.total_norm;
    let skipped = !norm.is_finite();
    if skipped && !scaled {
        return Err(non_finite(ckpt_root, u.step, "gradient norm", norm));
    }
    let input_tokens = red.input_tokens;
    Ok((
        model,
        StepDone {
            skipped,
            loss,
            norm,
            tokens,
            input_tokens,
        },
    ))
}

/// The sampler's position as the checkpoint stores it.
fn data_position(sampler: &qtune_data::Sampler) -> Result<serde_json::Value, TrainError> {
    serde_json::to_value(sampler.position()).map_err(|source| TrainError::Serialize {
        what: "the data position",
        source,
    })
}

/// Whether `ev` improves on the best `metric_for_best_model` value so far; if so, it becomes the
/// state's best and the adapter is written to `{output_dir}/adapter`.
fn keep_if_best<B, M>(
    model: &M,
    cfg: &RunConfig,
    state: &mut checkpoint::TrainerState,
    ev: &StepEval,
) -> Result<bool, TrainError>
where
    B: TrainBackend,
    M: CausalLm<B>,
{
    let best_metric = cfg.best_metric();
    // Checkpoints from before `best_metric` existed tracked the eval loss.
    let best_so_far = state.best_metric.or(state
        .best_eval_loss
        .filter(|_| best_metric.generation_key().is_none()));
    let best = best_metric.improves(ev.value, best_so_far);
    if best {
        state.best_eval_loss = Some(ev.loss);
        state.best_step = Some(state.step);
        state.best_metric = Some(ev.value);
        let adapter = model.export_adapter(peft_config(cfg))?;
        checkpoint::save_adapter_atomic(&adapter, &cfg.output_dir().join(files::ADAPTER_DIR))?;
    }
    Ok(best)
}

/// A generation metric as `metric_for_best_model` needs generation prompts.
fn check_generation_prompts(cfg: &RunConfig, opts: &TrainOptions) -> Result<(), TrainError> {
    let best_metric = cfg.best_metric();
    if best_metric.generation_key().is_some()
        && opts.generation.as_ref().is_none_or(|g| g.items.is_empty())
    {
        return Err(crate::config::ConfigError::Invalid {
            origin: "run config".into(),
            field: "training.metric_for_best_model",
            msg: format!(
                "`{}` needs generation prompts at each evaluation, and there are none (no \
                 validation record gives one within max_length, or the loop was started without \
                 them)",
                best_metric.name
            ),
        }
        .into());
    }
    Ok(())
}

/// This rank's micro-batches of one optimizer step, each with its LoRA dropout seed. Every rank
/// draws the same global batches and keeps its slice of each.
fn rank_batches(
    cfg: &RunConfig,
    sampler: &mut qtune_data::Sampler,
    state: &mut checkpoint::TrainerState,
    packing: &Option<qtune_data::Packing>,
    train_set: &[Example],
    pad_id: u32,
    (rank, world): (usize, usize),
) -> Result<Vec<(qtune_data::Batch, Option<u64>)>, TrainError> {
    let dropout = cfg.lora.lora_dropout > 0.0;
    let mut batches = Vec::with_capacity(cfg.training.gradient_accumulation_steps);
    for _ in 0..cfg.training.gradient_accumulation_steps {
        let idx = sampler.next_batch();
        let mine = &idx[shard_range(idx.len(), world, rank)];
        // The seed is drawn even for an empty slice: the RNG stays in step on all ranks.
        let seed = dropout.then(|| rank_seed(state.rng.next_u64(), rank));
        if mine.is_empty() {
            continue;
        }
        let batch = match packing.as_ref() {
            // With packing the sampler's indices are rows of examples.
            Some(p) => {
                let rows: Vec<Vec<&Example>> = mine.iter().map(|&r| p.row(r, train_set)).collect();
                collate_packed(&rows, pad_id)?
            }
            None => {
                let refs: Vec<&Example> = mine.iter().map(|&i| &train_set[i]).collect();
                collate(&refs, pad_id, Padding::Right)?
            }
        };
        batches.push((batch, seed));
    }
    Ok(batches)
}

/// The summed losses and gradients of this rank's micro-batches (gradients of summed token
/// losses, not yet divided), with their token counts.
fn micro_steps<B, M>(
    model: &M,
    batches: &[(qtune_data::Batch, Option<u64>)],
    backprop: Backprop,
    loss_scale: f64,
) -> Result<Reduced, TrainError>
where
    B: TrainBackend,
    M: TrainLm<B>,
{
    let mut acc = TokenAccumulator::<M>::new();
    let (mut loss_sum, mut input_tokens) = (0.0, 0u64);
    // The backward runs on `loss_sum / norm`: `norm = 1/scale` seeds it with the loss scale
    // (a power of two, so exactly).
    let norm = (1.0 / loss_scale) as f32;
    for (batch, seed) in batches {
        // Under `compute_lock`, taken by `micro_step` itself (the loss read-back is outside).
        let ms = step::micro_step::<B, M>(model, batch, norm, *seed, backprop)?;
        loss_sum += ms.loss_sum;
        input_tokens += batch.lengths.iter().sum::<usize>() as u64;
        acc.accumulate::<B>(model, ms.grads, batch.n_target_tokens());
    }
    let (grads, target_tokens, _) = acc.take::<B>();
    Ok(Reduced {
        grads,
        target_tokens,
        loss_sum,
        input_tokens,
    })
}

impl TrainSummary {
    fn start(output_dir: PathBuf, state: &checkpoint::TrainerState) -> Self {
        Self {
            output_dir,
            steps_done: state.step,
            losses: Vec::new(),
            eval_losses: Vec::new(),
            best_eval_loss: state.best_eval_loss,
            best_step: state.best_step,
            best_metric: state.best_metric,
            tokens_seen: state.tokens_seen,
            input_tokens: 0,
            seconds: 0.0,
            step_seconds: 0.0,
            optimizer_state_bytes: 0,
            finished: false,
            skipped_steps: None,
        }
    }

    fn finish(
        &mut self,
        state: &checkpoint::TrainerState,
        started: Instant,
        optimizer_state_bytes: usize,
        max_steps: usize,
    ) {
        self.steps_done = state.step;
        self.best_eval_loss = state.best_eval_loss;
        self.best_step = state.best_step;
        self.best_metric = state.best_metric;
        self.tokens_seen = state.tokens_seen;
        self.seconds = started.elapsed().as_secs_f64();
        self.optimizer_state_bytes = optimizer_state_bytes;
        self.finished = state.step >= max_steps;
        self.skipped_steps = state.loss_scaler.as_ref().map(|s| s.skipped_steps);
    }
}

fn non_finite(root: &std::path::Path, step: usize, what: &'static str, value: f64) -> TrainError {
    let last = std::fs::read_to_string(root.join(checkpoint::LATEST_FILE))
        .ok()
        .map(|s| root.join(s.trim()));
    tracing::error!(step, what, value, "non-finite value, stopping");
    TrainError::NonFinite {
        step,
        what,
        value,
        last_checkpoint: last,
    }
}

/// The inner backend's device for `B`'s device (they are the same type for Autodiff).
pub(crate) fn device_inner<B: AutodiffBackend>(
    d: &B::Device,
) -> <B::InnerBackend as burn::tensor::backend::BackendTypes>::Device {
    // Autodiff<B> uses B's device type; converting through a zero-element tensor keeps this
    // generic without assuming that equality at the type level.
    let t = burn::tensor::Tensor::<B, 1>::zeros([1], d);
    t.inner().device()
}
