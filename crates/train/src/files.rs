//! The run folder, named once: every file and folder a run writes under `output_dir`.
//!
//! ```text
//! output_dir/
//!   .qtune.lock          LOCK_FILE: pid/host of the run writing here (crate::lock)
//!   adapter/             ADAPTER_DIR: the best adapter by metric_for_best_model (PEFT layout)
//!   checkpoints/         CHECKPOINTS_DIR
//!     latest             LATEST_FILE: the name of the newest complete checkpoint
//!     checkpoint-NNNNNN/ adapter/, STATE_FILE, OPTIMIZER_FILE (crate::checkpoint)
//!   metrics.jsonl        METRICS_FILE: one JSON event per line (crate::metrics)
//!   loss.png             LOSS_PLOT_FILE
//!   eval_results.json    EVAL_RESULTS_FILE, predictions.jsonl PREDICTIONS_FILE: final eval
//!   report.json          REPORT_FILE: the run's summary (crate::run)
//! ```

/// Held by the process writing the run ([`crate::lock`]).
pub const LOCK_FILE: &str = ".qtune.lock";
/// The best adapter; also the adapter folder inside each checkpoint.
pub const ADAPTER_DIR: &str = "adapter";
pub const CHECKPOINTS_DIR: &str = "checkpoints";
/// Inside [`CHECKPOINTS_DIR`]: the name of the newest complete checkpoint.
pub const LATEST_FILE: &str = "latest";
/// Inside each checkpoint: step, RNG, data position, best metric so far.
pub const STATE_FILE: &str = "trainer_state.json";
/// Inside each checkpoint: the optimizer state.
pub const OPTIMIZER_FILE: &str = "optimizer.bin";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const LOSS_PLOT_FILE: &str = "loss.png";
/// The final evaluation's metrics (the generation metric on the validation prompts).
pub const EVAL_RESULTS_FILE: &str = "eval_results.json";
/// The run's summary.
pub const REPORT_FILE: &str = "report.json";
/// One final-evaluation prediction per line (id, generated text, parsed prediction, gold).
pub const PREDICTIONS_FILE: &str = "predictions.jsonl";
