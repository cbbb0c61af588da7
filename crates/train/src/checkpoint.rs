//! Checkpoints that are never torn, and exact resume.
//!
//! Layout under `{output_dir}/checkpoints/` (HF Trainer's names where they exist):
//! ```text
//! checkpoint-000040/adapter/{adapter_config.json, adapter_model.safetensors}   PEFT files
//! checkpoint-000040/optimizer.bin        the optimizer's own byte format (qtune-optim)
//! checkpoint-000040/trainer_state.json   step, RNG, data position, best eval, config used
//! latest                                 "checkpoint-000040\n"
//! ```
//! A step folder is written as `.tmp-checkpoint-000040/`, every file fsynced, then renamed
//! into place, and the parent fsynced; `latest` is replaced (temp file + fsync + rename)
//! only after that. A crash at any point leaves the previous `latest` valid.
//! The LR scheduler has no state of its own: its rate is a pure function of the config and the
//! step, both stored in `trainer_state.json`.
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use qtune_lora::peft::{AdapterDType, PeftAdapter, PeftError};
use serde::{Deserialize, Serialize};

use crate::config::RunConfig;
use crate::step::Backprop;

pub use crate::files::{ADAPTER_DIR, LATEST_FILE, OPTIMIZER_FILE, STATE_FILE};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid trainer state: {source}")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Adapter(#[from] PeftError),
    #[error(
        "{path}: cannot resume: `{field}` was {checkpoint} in the checkpoint but is {config} now \
         (use a new output_dir, or the original config)"
    )]
    Incompatible {
        path: PathBuf,
        field: String,
        checkpoint: String,
        config: String,
    },
    #[error(
        "{path}: cannot resume: the checkpoint was written by a run over {checkpoint} rank(s) but \
         this run has {now}; the batch sharding depends on the world size, so resume with \
         {checkpoint} rank(s) (e.g. `--devices` with {checkpoint} entries) or start a new run"
    )]
    WorldSize {
        path: PathBuf,
        checkpoint: usize,
        now: usize,
    },
    #[error("{path}: `latest` points to missing folder `{target}`")]
    DanglingLatest { path: PathBuf, target: String },
    #[error(
        "cannot resume: the latest checkpoint is unreadable ({reason}) and no earlier \
         checkpoint in {root} is valid; start afresh with --overwrite (or repair the file)"
    )]
    NoValid { root: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything besides adapter and optimizer needed to continue bit for bit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: usize,
    /// Target tokens trained on so far.
    pub tokens_seen: u64,
    /// The run's RNG (LoRA dropout seeds are drawn from it), serialized by rand_chacha.
    pub rng: rand_chacha::ChaCha8Rng,
    /// Where the training batch iterator stands (qtune-data's resumable position).
    pub data_position: serde_json::Value,
    /// The eval loss at `best_step`.
    pub best_eval_loss: Option<f64>,
    /// The step of the best evaluation by `metric_for_best_model` (HF's `best_model_checkpoint`
    /// step); its adapter is `{output_dir}/adapter`.
    pub best_step: Option<usize>,
    /// `metric_for_best_model`'s value at `best_step` (HF `best_metric`); absent in
    /// checkpoints written before it existed, where it was the eval loss.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best_metric: Option<f64>,
    /// The config the run started with; resuming checks it (see [`check_compatible`]).
    pub config: RunConfig,
    /// Ranks of the data-parallel run (1: one device). Part of the data position: rank `r`
    /// trains on its slice of each global batch, so a resume must use the same world size.
    #[serde(default = "one_rank")]
    pub world_size: usize,
    /// Dynamic loss scaling's state (float16 runs; [`crate::scaler`]): the scale, the run of
    /// good steps and the steps skipped, so a resume scales and schedules as the run would have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaler: Option<crate::scaler::LossScaler>,
    /// How the packed rows were made (`[data] packing`); absent in checkpoints written before
    /// `packing_strategy` existed, which were packed by first fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing_strategy: Option<qtune_data::PackStrategy>,
}

fn one_rank() -> usize {
    1
}

pub struct Checkpoint {
    pub dir: PathBuf,
    pub adapter: PeftAdapter,
    pub optimizer: Vec<u8>,
    pub state: TrainerState,
}

pub fn step_dir_name(step: usize) -> String {
    format!("checkpoint-{step:06}")
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let mut f = File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn sync_dir(path: &Path) -> Result<(), CheckpointError> {
    File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io(path))
}

/// fsyncs every file in `dir` (the PEFT writer does not) and the folder itself.
fn sync_tree(dir: &Path) -> Result<(), CheckpointError> {
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let p = entry.map_err(io(dir))?.path();
        if p.is_dir() {
            sync_tree(&p)?;
        } else {
            File::open(&p).and_then(|f| f.sync_all()).map_err(io(&p))?;
        }
    }
    sync_dir(dir)
}

/// Writes `adapter` into `dest` atomically (temp folder + fsync + rename over the old one).
pub fn save_adapter_atomic(adapter: &PeftAdapter, dest: &Path) -> Result<(), CheckpointError> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(io(parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| ADAPTER_DIR.into());
    let tmp = parent.join(format!(".tmp-{name}"));
    let old = parent.join(format!(".old-{name}"));
    let _ = fs::remove_dir_all(&tmp);
    adapter.save(&tmp, AdapterDType::F32)?;
    sync_tree(&tmp)?;
    // rename() cannot replace a non-empty folder: move the old one aside first.
    if dest.exists() {
        let _ = fs::remove_dir_all(&old);
        fs::rename(dest, &old).map_err(io(dest))?;
    }
    fs::rename(&tmp, dest).map_err(io(dest))?;
    sync_dir(parent)?;
    let _ = fs::remove_dir_all(&old);
    Ok(())
}

/// Writes one step folder atomically, then points `latest` at it, then prunes old folders
/// beyond `keep` (never the one just written).
pub fn save(
    root: &Path,
    adapter: &PeftAdapter,
    optimizer: &[u8],
    state: &TrainerState,
    keep: usize,
) -> Result<PathBuf, CheckpointError> {
    fs::create_dir_all(root).map_err(io(root))?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    adapter.save(&tmp.join(ADAPTER_DIR), AdapterDType::F32)?;
    write_synced(&tmp.join(OPTIMIZER_FILE), optimizer)?;
    let json = serde_json::to_vec_pretty(state).map_err(|source| CheckpointError::State {
        path: tmp.join(STATE_FILE),
        source,
    })?;
    write_synced(&tmp.join(STATE_FILE), &json)?;
    sync_tree(&tmp)?;
    let dest = root.join(&name);
    if dest.exists() {
        fs::remove_dir_all(&dest).map_err(io(&dest))?;
    }
    fs::rename(&tmp, &dest).map_err(io(&dest))?;
    sync_dir(root)?;

    let latest_tmp = root.join(format!(".tmp-{LATEST_FILE}"));
    write_synced(&latest_tmp, format!("{name}\n").as_bytes())?;
    let latest = root.join(LATEST_FILE);
    fs::rename(&latest_tmp, &latest).map_err(io(&latest))?;
    sync_dir(root)?;
    prune(root, keep.max(1), &name)?;
    Ok(dest)
}

fn prune(root: &Path, keep: usize, newest: &str) -> Result<(), CheckpointError> {
    let mut steps: Vec<String> = fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("checkpoint-"))
        .collect();
    steps.sort();
    let excess = steps.len().saturating_sub(keep);
    for n in steps.into_iter().take(excess).filter(|n| n != newest) {
        let p = root.join(n);
        fs::remove_dir_all(&p).map_err(io(&p))?;
    }
    Ok(())
}

/// The checkpoint name `latest` holds, or `None` when the run has no `latest` yet.
fn latest_name(root: &Path) -> Result<Option<String>, CheckpointError> {
    let latest = root.join(LATEST_FILE);
    match fs::read_to_string(&latest) {
        Ok(t) => Ok(Some(t.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Io {
            path: latest,
            source,
        }),
    }
}

/// The checkpoint `latest` points to, or `None` when the run has none yet.
pub fn load_latest(root: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let Some(target) = latest_name(root)? else {
        return Ok(None);
    };
    let dir = root.join(&target);
    if !dir.is_dir() {
        return Err(CheckpointError::DanglingLatest {
            path: root.join(LATEST_FILE),
            target,
        });
    }
    load_dir(&dir).map(Some)
}

/// The step folders under `root` (`checkpoint-*`), newest first.
fn step_dirs_newest_first(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("checkpoint-") && root.join(n).is_dir())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.reverse();
    names
}

/// Like [`load_latest`], but a checkpoint that does not read back (a missing or corrupt file,
/// or one `check` refuses, e.g. optimizer bytes that do not parse) is skipped with a warning
/// naming the corrupt file, for the newest earlier valid one. Errors when none is valid, naming
/// why the latest is unreadable. `None` when the run has no `latest` yet.
pub fn load_latest_valid(
    root: &Path,
    mut check: impl FnMut(&Checkpoint) -> Result<(), String>,
) -> Result<Option<Checkpoint>, CheckpointError> {
    let Some(target) = latest_name(root)? else {
        return Ok(None);
    };
    let mut first_error: Option<String> = None;
    let mut candidates = vec![target.clone()];
    candidates.extend(
        step_dirs_newest_first(root)
            .into_iter()
            // Only older ones: a folder newer than `latest` was never pointed to.
            .filter(|n| n.as_str() < target.as_str()),
    );
    for name in candidates {
        let dir = root.join(&name);
        let loaded = if dir.is_dir() {
            load_dir(&dir)
                .map_err(|e| e.to_string())
                .and_then(|ck| check(&ck).map(|_| ck))
        } else {
            Err(CheckpointError::DanglingLatest {
                path: root.join(LATEST_FILE),
                target: name.clone(),
            }
            .to_string())
        };
        match loaded {
            Ok(ck) => {
                if let Some(reason) = &first_error {
                    tracing::warn!(
                        "the latest checkpoint is unreadable ({reason}); resuming from the \
                         previous valid checkpoint {}",
                        dir.display()
                    );
                }
                return Ok(Some(ck));
            }
            Err(reason) => {
                if first_error.is_some() {
                    tracing::warn!("checkpoint {} is unreadable too: {reason}", dir.display());
                }
                first_error.get_or_insert(reason);
            }
        }
    }
    Err(CheckpointError::NoValid {
        root: root.to_path_buf(),
        reason: first_error.unwrap_or_default(),
    })
}

pub fn load_dir(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let state_path = dir.join(STATE_FILE);
    let bytes = fs::read(&state_path).map_err(io(&state_path))?;
    let state: TrainerState =
        serde_json::from_slice(&bytes).map_err(|source| CheckpointError::State {
            path: state_path.clone(),
            source,
        })?;
    let opt_path = dir.join(OPTIMIZER_FILE);
    let optimizer = fs::read(&opt_path).map_err(io(&opt_path))?;
    let adapter = PeftAdapter::load(&dir.join(ADAPTER_DIR))?;
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        adapter,
        optimizer,
        state,
    })
}

/// Fields that may change between the run and its resumption: they do not affect the
/// sequence of losses (names, where output goes, how often we log/save, final eval size).
const MAY_DIFFER: &[&str] = &[
    "name",
    "training.output_dir",
    "training.logging_steps",
    "training.save_steps",
    "training.save_total_limit",
    "training.per_device_eval_batch_size",
    "eval.",
    // Host addresses may change between runs; the world size is checked on its own
    // (`TrainerState::world_size`).
    "distributed",
    "distributed.",
];

/// Errors naming the first field (dotted path) whose change would make the resumed run differ
/// from an uninterrupted one.
pub fn check_compatible(
    path: &Path,
    checkpoint: &RunConfig,
    now: &RunConfig,
) -> Result<(), CheckpointError> {
    let (a, b) = (
        serde_json::to_value(checkpoint).unwrap_or_default(),
        serde_json::to_value(now).unwrap_or_default(),
    );
    let mut diffs = Vec::new();
    diff_values("", &a, &b, &mut diffs);
    for (field, old, new) in diffs {
        if MAY_DIFFER
            .iter()
            .any(|p| field == *p || (p.ends_with('.') && field.starts_with(p)))
        {
            continue;
        }
        // Parking the checkpointed block inputs moves them, not their values: `true` and
        // `"offload"` give the same losses bit for bit (a run that ran out of GPU memory may
        // resume parked). Plain autodiff (`false`) sums in another order, so it stays refused.
        if field == "training.gradient_checkpointing"
            && checkpoint.training.gradient_checkpointing.backprop() != Backprop::Plain
            && now.training.gradient_checkpointing.backprop() != Backprop::Plain
        {
            continue;
        }
        return Err(CheckpointError::Incompatible {
            path: path.to_path_buf(),
            field,
            checkpoint: old,
            config: new,
        });
    }
    Ok(())
}

fn diff_values(
    prefix: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
    out: &mut Vec<(String, String, String)>,
) {
    use serde_json::Value::Object;
    match (a, b) {
        (Object(x), Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            let null = serde_json::Value::Null;
            for k in keys {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                diff_values(
                    &p,
                    x.get(k).unwrap_or(&null),
                    y.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        _ if a != b => out.push((prefix.to_string(), a.to_string(), b.to_string())),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qtune_lora::peft::{LoraTensors, PeftAdapterConfig, PeftTargets};
    use rand::SeedableRng;

    fn adapter(v: f32) -> PeftAdapter {
        let mut modules = std::collections::BTreeMap::new();
        modules.insert(
            "transformer.h.0.attn.q_proj".to_string(),
            LoraTensors {
                a: vec![v; 8],
                a_shape: [2, 4],
                b: vec![-v; 8],
                b_shape: [4, 2],
            },
        );
        PeftAdapter {
            config: PeftAdapterConfig::new(2, 4.0, 0.0, PeftTargets::List(vec!["q_proj".into()])),
            modules,
        }
    }

    fn state(step: usize) -> TrainerState {
        TrainerState {
            step,
            tokens_seen: 10 * step as u64,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(step as u64),
            data_position: serde_json::json!({"epoch": 0, "index": step}),
            best_eval_loss: Some(1.5),
            best_step: Some(step),
            best_metric: Some(1.5),
            config: RunConfig::tiny(),
            world_size: 1,
            loss_scaler: None,
            packing_strategy: None,
        }
    }

    #[test]
    fn save_load_latest_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("checkpoints");
        assert!(load_latest(&root).unwrap().is_none());
        for step in [10, 20, 30] {
            save(
                &root,
                &adapter(step as f32),
                &[step as u8; 5],
                &state(step),
                2,
            )
            .unwrap();
        }
        let c = load_latest(&root).unwrap().unwrap();
        assert_eq!(c.state, state(30));
        assert_eq!(c.optimizer, vec![30u8; 5]);
        assert_eq!(c.adapter, adapter(30.0));
        let mut names: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["checkpoint-000020", "checkpoint-000030", "latest"]);
    }

    #[test]
    fn torn_write_keeps_previous_latest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        save(root, &adapter(1.0), b"opt", &state(10), 3).unwrap();
        // A crash mid-write leaves only a temp folder behind; `latest` still names step 10.
        fs::create_dir_all(root.join(".tmp-checkpoint-000020/adapter")).unwrap();
        fs::write(
            root.join(".tmp-checkpoint-000020/optimizer.bin"),
            b"partial",
        )
        .unwrap();
        assert_eq!(load_latest(root).unwrap().unwrap().state.step, 10);
        // The next save of that step replaces the leftovers.
        save(root, &adapter(2.0), b"opt2", &state(20), 3).unwrap();
        assert_eq!(load_latest(root).unwrap().unwrap().optimizer, b"opt2");
    }

    #[test]
    fn corrupt_latest_falls_back_to_the_previous_valid_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        save(root, &adapter(1.0), b"opt", &state(10), 3).unwrap();
        save(root, &adapter(2.0), b"opt", &state(20), 3).unwrap();
        let corrupt = root.join("checkpoint-000020").join(STATE_FILE);
        fs::write(&corrupt, b"{ truncated").unwrap();
        let ck = load_latest_valid(root, |_| Ok(())).unwrap().unwrap();
        assert_eq!(ck.state.step, 10);
        // A check (e.g. the optimizer bytes) can refuse a checkpoint too.
        save(root, &adapter(2.0), b"opt", &state(20), 3).unwrap();
        let ck = load_latest_valid(root, |ck| {
            if ck.state.step == 20 {
                Err(format!("{}: bad optimizer state", ck.dir.display()))
            } else {
                Ok(())
            }
        })
        .unwrap()
        .unwrap();
        assert_eq!(ck.state.step, 10);
        // None valid: the error names the corrupt file of the latest.
        fs::write(&corrupt, b"{ truncated").unwrap();
        fs::write(root.join("checkpoint-000010").join(OPTIMIZER_FILE), b"x").unwrap();
        let err = load_latest_valid(root, |ck| {
            if ck.optimizer == b"x" {
                Err("bad".into())
            } else {
                Ok(())
            }
        })
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains(&corrupt.display().to_string()) && err.contains("no earlier"),
            "{err}"
        );
        // No checkpoint yet.
        assert!(load_latest_valid(&root.join("none"), |_| Ok(()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn incompatible_resume_names_the_field() {
        let a = RunConfig::tiny();
        let mut b = a.clone();
        b.training.logging_steps += 1; // allowed
        b.eval.generation_samples += 1; // allowed
        check_compatible(Path::new("ck"), &a, &b).unwrap();
        b.lora.r = 8;
        let err = check_compatible(Path::new("ck"), &a, &b)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lora.r") && err.contains("16") && err.contains('8'),
            "{err}"
        );
        // Checkpointing with the block inputs kept or parked: the same losses.
        use crate::config::GradientCheckpointing as G;
        let (mut kept, mut parked) = (a.clone(), a.clone());
        kept.training.gradient_checkpointing = G::On;
        parked.training.gradient_checkpointing = G::Offload;
        check_compatible(Path::new("ck"), &kept, &parked).unwrap();
        check_compatible(Path::new("ck"), &parked, &kept).unwrap();
        let mut plain = a.clone();
        plain.training.gradient_checkpointing = G::Off;
        let err = check_compatible(Path::new("ck"), &parked, &plain)
            .unwrap_err()
            .to_string();
        assert!(err.contains("training.gradient_checkpointing"), "{err}");
        let mut c = a.clone();
        c.training.per_device_train_batch_size = 3;
        let err = check_compatible(Path::new("ck"), &a, &c)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("training.per_device_train_batch_size"),
            "{err}"
        );
    }
}
