//! qtune-train: run config, the training loop with per-block gradient checkpointing,
//! token-normalized accumulation, evaluation, best adapter, atomic checkpoints, exact resume.
//!
//! Flow: [`RunConfig`] → [`task::prepare`] (tokenized examples) → [`model`] (GPT-J + LoRA) →
//! [`trainer::train`] (loop; [`step`] does one micro-batch) → [`evaluate`] (EM/F1, accuracy).
pub mod backend;
pub mod build;
pub mod checkpoint;
pub mod config;
pub mod custom;
pub mod evaluate;
pub mod files;
pub mod lock;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod parallel;
pub mod peft_check;
mod progress;
pub mod replica;
pub mod run;
pub mod scaler;
pub mod setup;
pub mod step;
pub mod task;
pub mod trainer;

use std::path::PathBuf;

pub use config::{RunConfig, Task};
pub use parallel::train_parallel;
pub use trainer::{train, TrainOptions, TrainSummary};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(Box<config::ConfigError>),
    #[error(transparent)]
    Checkpoint(Box<checkpoint::CheckpointError>),
    #[error(transparent)]
    Metrics(Box<metrics::MetricsError>),
    #[error(transparent)]
    Data(Box<qtune_data::DataError>),
    #[error(transparent)]
    Optim(Box<qtune_optim::OptimError>),
    #[error(transparent)]
    Peft(Box<qtune_lora::peft::PeftError>),
    #[error(transparent)]
    Merge(Box<qtune_lora::merge::MergeError>),
    #[error(transparent)]
    Model(Box<qtune_gptj::GptjError>),
    #[error("empty dataset: {what}")]
    EmptyDataset { what: String },
    #[error(
        "{dir} already holds a run (`{found}` exists): pass --resume to continue it, \
         --overwrite to replace it, or choose another output_dir"
    )]
    ExistingRun { dir: PathBuf, found: String },
    #[error("{dir} is in use by another training run: {holder}; {hint}")]
    Locked {
        dir: PathBuf,
        holder: String,
        hint: String,
    },
    #[error(
        "non-finite {what} ({value}) at step {step}: training stopped; the last good checkpoint \
         is {}", last_checkpoint.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "none (no checkpoint was written yet)".into())
    )]
    NonFinite {
        step: usize,
        what: &'static str,
        value: f64,
        last_checkpoint: Option<PathBuf>,
    },
    #[error("{path}: invalid data position in trainer state: {source}")]
    State {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("serializing {what}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error(
        "step {step}: float16 gradients overflow even at loss scale {scale:e} ({skipped} steps \
         skipped so far): the run diverged; lower the learning rate or train in bfloat16"
    )]
    LossScale {
        step: usize,
        scale: f64,
        skipped: u64,
    },
    #[error("[data] packing = true: {msg}")]
    Packing { msg: String },
    #[error("adapter does not fit the model: {msg}")]
    AdapterMismatch { msg: String },
    #[error("tokenizer: {msg}")]
    Tokenizer { msg: String },
    #[error(transparent)]
    Gpu(Box<qtune_kernels::KernelError>),
    #[error("--devices: {msg}")]
    Devices { msg: String },
    #[error("burn-collective ({what}): {msg}")]
    Collective { what: &'static str, msg: String },
    #[error("rank {rank}: another rank failed during {phase} (its error is reported separately)")]
    PeerFailed { rank: usize, phase: &'static str },
    #[error("rank {rank} panicked: {msg}")]
    RankPanicked { rank: usize, msg: String },
}

/// The wrapped errors are boxed: some are large (paths + sources), and every fallible
/// function of the crate returns `TrainError`.
macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),* $(,)?) => {$(
        impl From<$ty> for TrainError {
            fn from(e: $ty) -> Self {
                TrainError::$variant(Box::new(e))
            }
        }
    )*};
}

boxed_from!(
    Config: config::ConfigError,
    Checkpoint: checkpoint::CheckpointError,
    Metrics: metrics::MetricsError,
    Data: qtune_data::DataError,
    Optim: qtune_optim::OptimError,
    Peft: qtune_lora::peft::PeftError,
    Merge: qtune_lora::merge::MergeError,
    Model: qtune_gptj::GptjError,
    Gpu: qtune_kernels::KernelError,
);

/// The messages of `err` and its causes, each once: a cause whose text its parent's message
/// already embeds (thiserror's `"{path}: {source}"` with `source` also exposed as the cause) is
/// skipped. The binaries print these as `error: …` / `  caused by: …`.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let msg = e.to_string();
        let msg = msg.trim();
        let embedded = out.last().is_some_and(|prev| prev.contains(msg));
        if !msg.is_empty() && !embedded {
            out.push(msg.to_string());
        }
        cur = e.source();
    }
    out
}

/// [`error_chain`] as the text a binary prints (first line `error: …`).
pub fn error_report(err: &(dyn std::error::Error + 'static)) -> String {
    let chain = error_chain(err);
    let mut s = String::new();
    for (i, m) in chain.iter().enumerate() {
        if i == 0 {
            s += &format!("error: {m}");
        } else {
            s += &format!("\n  caused by: {m}");
        }
    }
    s
}

/// The `main` of qtune's binaries (`qtune`, `xtask`): logs to stderr (`RUST_LOG`, default
/// `info`), [`backend::init`], then `run`; an error is printed as [`error_report`] (each cause
/// once) and the process fails.
pub fn run_main<E>(run: impl FnOnce() -> Result<(), E>) -> std::process::ExitCode
where
    E: AsRef<dyn std::error::Error + 'static>,
{
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    backend::init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_report(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod chain_tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "No such file");
        let cfg = config::ConfigError::Io {
            path: "x.toml".into(),
            source: io,
        };
        let err = TrainError::from(cfg);
        let chain = error_chain(&err);
        assert_eq!(chain, ["x.toml: No such file"], "{chain:?}");
        let toml_err = RunConfig::from_toml_str("name = 3", "y.toml").unwrap_err();
        let chain = error_chain(&toml_err);
        assert_eq!(chain.len(), 1, "{chain:?}");
        assert!(error_report(&toml_err).starts_with("error: y.toml: invalid run config"));
    }
}
