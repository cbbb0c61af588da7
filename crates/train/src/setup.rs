//! A run's set-up before its first step: the run folder (a previous run refused without
//! `--overwrite`, stale temporaries cleaned on resume), the checks that need the model (context
//! window), packing, and the fresh or resumed state (adapter, optimizer, sampler position).
use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use rand::SeedableRng;

use crate::model::TrainBackend;
use qtune_data::{Example, PackStrategy, Packing, Position, Sampler};
use qtune_lm::CausalLm;
use qtune_optim::{LrSchedule, Optimizer};

use crate::checkpoint::{self, TrainerState};
use crate::config::{OptimName, RunConfig};
use crate::metrics;
use crate::scaler::{LossScaler, LossScaling};
use crate::trainer::{device_inner, optimizer_config, schedule, TrainOptions};
use crate::TrainError;

/// What a run writes into its output folder (a previous run is recognised by any of them).
const RUN_OUTPUTS: &[&str] = &[
    "checkpoints",
    "adapter",
    metrics::METRICS_FILE,
    metrics::LOSS_PLOT_FILE,
    crate::run::EVAL_RESULTS_FILE,
    crate::run::REPORT_FILE,
    crate::run::PREDICTIONS_FILE,
];

/// The first output of a previous run found in `out`, if any.
fn previous_run_output(out: &std::path::Path) -> Option<String> {
    RUN_OUTPUTS
        .iter()
        .find(|n| out.join(n).exists())
        .map(|n| n.to_string())
}

/// Removes temporary folders a crashed save left behind (`.tmp-*`, `.old-*` in the run folder
/// and in `checkpoints/`), logging each; returns what was removed.
pub fn clean_stale_temps(out: &std::path::Path) -> Result<Vec<PathBuf>, TrainError> {
    let mut removed = Vec::new();
    for dir in [out.to_path_buf(), out.join(crate::files::CHECKPOINTS_DIR)] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !(name.starts_with(".tmp-") || name.starts_with(".old-")) {
                continue;
            }
            let p = entry.path();
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            r.map_err(|source| TrainError::Io {
                path: p.clone(),
                source,
            })?;
            tracing::info!(path = %p.display(), "removed a stale temporary left by an interrupted save");
            removed.push(p);
        }
    }
    Ok(removed)
}

fn clear_previous_run(out: &std::path::Path) -> Result<(), TrainError> {
    for &name in RUN_OUTPUTS {
        let p = out.join(name);
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else if p.exists() {
            std::fs::remove_file(&p)
        } else {
            Ok(())
        };
        r.map_err(|source| TrainError::Io { path: p, source })?;
    }
    Ok(())
}

pub(crate) struct Setup<B: AutodiffBackend, M> {
    pub(crate) model: M,
    pub(crate) optim: Optimizer<B>,
    pub(crate) state: TrainerState,
    pub(crate) sampler: Sampler,
    pub(crate) schedule: LrSchedule,
    /// `[data] packing`: the rows the sampler draws (indices into them), else `None` (it draws
    /// examples).
    pub(crate) packing: Option<Packing>,
}

/// Checks, fresh start or resume (adapter into `model`, optimizer state, data position). Only the
/// lead rank deletes a previous run's files.
#[allow(clippy::too_many_arguments)]
pub(crate) fn setup<B, M>(
    cfg: &RunConfig,
    model: M,
    device: &B::Device,
    train_set: &[Example],
    val_set: &[Example],
    world: usize,
    lead: bool,
    opts: &TrainOptions,
) -> Result<Setup<B, M>, TrainError>
where
    B: TrainBackend,
    M: CausalLm<B>,
{
    let t = &cfg.training;
    let out = cfg.output_dir();
    let ckpt_root = out.join(crate::files::CHECKPOINTS_DIR);
    if train_set.is_empty() {
        return Err(TrainError::EmptyDataset {
            what: "no training examples".into(),
        });
    }
    if val_set.is_empty() {
        return Err(TrainError::EmptyDataset {
            what: "no validation examples".into(),
        });
    }
    check_context_window(cfg, model.max_positions())?;
    check_offload::<B, M>(cfg, &model, world)?;
    let schedule = schedule(cfg);
    schedule.validate()?;
    // Packed (and refused if it cannot be) before anything is touched on disk.
    let fresh_strategy = cfg.data.packing_strategy.unwrap_or_default();
    let packing = if cfg.data.packing {
        Some(pack(cfg, train_set, world, lead, fresh_strategy)?)
    } else {
        None
    };
    let resumed = if opts.resume {
        // The newest checkpoint that reads back completely (a corrupt `latest` falls back to
        // the previous one, with a warning naming the corrupt file).
        let inner = device_inner::<B>(device);
        let ck = checkpoint::load_latest_valid(&ckpt_root, |ck| {
            Optimizer::<B>::state_from_bytes(&ck.optimizer, &inner)
                .map(|_| ())
                .map_err(|e| {
                    format!("{}: {e}", ck.dir.join(checkpoint::OPTIMIZER_FILE).display())
                })?;
            serde_json::from_value::<Position>(ck.state.data_position.clone())
                .map(|_| ())
                .map_err(|e| {
                    format!(
                        "{}: invalid data position: {e}",
                        ck.dir.join(checkpoint::STATE_FILE).display()
                    )
                })
        })?;
        match &ck {
            None => {
                tracing::info!(dir = %ckpt_root.display(), "no checkpoint to resume from; starting afresh");
                if lead {
                    clear_previous_run(&out)?;
                }
            }
            Some(ck) if lead => {
                clean_stale_temps(&out)?;
                // Events after the checkpoint's step are redone by this run: drop them so every
                // step appears once.
                let dropped = metrics::truncate_after(&out, ck.state.step)?;
                if dropped > 0 {
                    tracing::info!(
                        dropped,
                        step = ck.state.step,
                        "metrics.jsonl: removed the events after the resumed checkpoint"
                    );
                }
            }
            Some(_) => {}
        }
        ck
    } else {
        if !opts.overwrite {
            if let Some(found) = previous_run_output(&out) {
                return Err(TrainError::ExistingRun {
                    dir: out.clone(),
                    found,
                });
            }
        }
        if lead {
            clear_previous_run(&out)?;
        }
        None
    };
    // A resumed run packs as its checkpoint did (one written before `packing_strategy`
    // existed was packed by first fit).
    let strategy = match &resumed {
        Some(ck) => ck.state.packing_strategy.unwrap_or(PackStrategy::FirstFit),
        None => fresh_strategy,
    };
    let packing = match packing {
        Some(_) if strategy != fresh_strategy => Some(pack(cfg, train_set, world, lead, strategy)?),
        p => p,
    };
    // What the sampler draws: examples, or packed rows of them.
    let items = packing.as_ref().map_or(train_set.len(), Packing::n_rows);
    // The global batch: each of the `world` ranks trains on its slice of it.
    let global_batch = t
        .per_device_train_batch_size
        .saturating_mul(world)
        .min(items);
    let (model, optim, state, sampler) =
        match resumed {
            Some(ck) => {
                checkpoint::check_compatible(&ck.dir, &ck.state.config, cfg)?;
                if ck.state.world_size != world {
                    return Err(checkpoint::CheckpointError::WorldSize {
                        path: ck.dir.clone(),
                        checkpoint: ck.state.world_size,
                        now: world,
                    }
                    .into());
                }
                let model = model.import_adapter(&ck.adapter)?;
                let optim =
                    Optimizer::<B>::state_from_bytes(&ck.optimizer, &device_inner::<B>(device))?;
                let pos: Position = serde_json::from_value(ck.state.data_position.clone())
                    .map_err(|source| TrainError::State {
                        path: ck.dir.clone(),
                        source,
                    })?;
                let sampler =
                    Sampler::resume(items, global_batch, t.sampler_seed(&cfg.data), true, pos)?;
                tracing::info!(step = ck.state.step, dir = %ck.dir.display(), "resuming");
                (model, optim, ck.state, sampler)
            }
            None => {
                if t.optim == OptimName::PagedAdamw8bit && lead {
                    tracing::warn!(
                    "optim = \"paged_adamw_8bit\": qtune does not page optimizer state to host \
                     memory (the LoRA state is small); running bitsandbytes' 8-bit AdamW \
                     (adamw_bnb_8bit), same arithmetic"
                );
                }
                let optim = Optimizer::<B>::new(optimizer_config(cfg))?;
                let sampler = Sampler::new(items, global_batch, t.sampler_seed(&cfg.data), true)?;
                let state = TrainerState {
                    step: 0,
                    tokens_seen: 0,
                    rng: rand_chacha::ChaCha8Rng::seed_from_u64(t.seed),
                    data_position: serde_json::to_value(sampler.position()).map_err(|source| {
                        TrainError::Serialize {
                            what: "the data position",
                            source,
                        }
                    })?,
                    best_eval_loss: None,
                    best_step: None,
                    best_metric: None,
                    config: cfg.clone(),
                    world_size: world,
                    loss_scaler: LossScaling::of(cfg).map(|ls| LossScaler::new(&ls)),
                    packing_strategy: cfg.data.packing.then_some(strategy),
                };
                (model, optim, state, sampler)
            }
        };
    Ok(Setup {
        model,
        optim,
        state,
        sampler,
        schedule,
        packing,
    })
}

/// Refuses `[data] max_length` beyond the model's context window (positions past it have no
/// meaning: RoPE/attention were never trained there, GPT-J's tables end).
pub fn check_context_window(cfg: &RunConfig, max_positions: usize) -> Result<(), TrainError> {
    if cfg.data.max_length > max_positions {
        return Err(crate::config::ConfigError::Invalid {
            origin: "run config".into(),
            field: "data.max_length",
            msg: format!(
                "= {} exceeds the model's context window of {max_positions} positions \
                 (n_positions / max_position_embeddings): lower max_length to at most \
                 {max_positions}",
                cfg.data.max_length
            ),
        }
        .into());
    }
    Ok(())
}

/// `gradient_checkpointing = "offload"` on a backend that parks in pinned host memory: refused
/// before any work when what it may pin exceeds the host memory available now; where that
/// cannot be read (not Linux), a warning says the check was skipped.
fn check_offload<B, M>(cfg: &RunConfig, model: &M, world: usize) -> Result<(), TrainError>
where
    B: TrainBackend,
    M: CausalLm<B>,
{
    let pins = <B::InnerBackend as qtune_kernels::QBackend>::q_parks_to_host();
    if !cfg.training.gradient_checkpointing.backprop().parks() || !pins {
        return Ok(());
    }
    let hidden = model.embedding().shape().dims::<2>()[1];
    let bytes = model.dtype().size();
    // Every host runs the same number of devices (`--devices`); each parks its own inputs.
    let hosts = cfg.distributed.as_ref().map_or(1, |d| d.num_nodes as usize);
    let ranks_here = (world / hosts.max(1)).max(1);
    let needed =
        crate::config::offload_host_bytes(cfg, model.num_layers(), hidden, bytes, ranks_here);
    match crate::config::host_memory_available() {
        Some(available) => Ok(crate::config::check_offload_host_memory(needed, available)?),
        None => {
            tracing::warn!(
                needed_bytes = needed,
                "gradient_checkpointing = \"offload\": host memory available unknown \
                 (no /proc/meminfo); not checked before training"
            );
            Ok(())
        }
    }
}

/// `[data] packing`: the training examples in rows of `max_length` (qtune_data::pack), logged;
/// refused when an example is longer than `max_length` or the rows do not make one global
/// batch (`per_device_train_batch_size` rows per device).
fn pack(
    cfg: &RunConfig,
    train_set: &[Example],
    world: usize,
    lead: bool,
    strategy: PackStrategy,
) -> Result<Packing, TrainError> {
    let max_length = cfg.data.max_length;
    let seed = cfg.training.sampler_seed(&cfg.data);
    let packing = Packing::of_examples(train_set, max_length, seed, strategy)
        .map_err(|e| TrainError::Packing { msg: e.to_string() })?;
    let global_batch = cfg
        .training
        .per_device_train_batch_size
        .saturating_mul(world);
    if packing.n_rows() < global_batch {
        return Err(TrainError::Packing {
            msg: format!(
                "{} training examples pack into {} rows of max_length {max_length}, fewer than \
                 one global batch of {global_batch} rows (per_device_train_batch_size × \
                 {world} device(s)): lower per_device_train_batch_size, or turn packing off",
                train_set.len(),
                packing.n_rows()
            ),
        });
    }
    if lead {
        tracing::info!(
            rows = packing.n_rows(),
            examples = packing.n_examples(),
            tokens = packing.n_tokens(),
            max_length,
            fill_ratio = format!("{:.3}", packing.fill_ratio()),
            strategy = strategy.name(),
            "packed training examples"
        );
    }
    Ok(packing)
}
