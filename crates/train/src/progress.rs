//! What a training run shows while it runs: the progress bar, the train line of each logging
//! window (metrics.jsonl + the log), eval lines and the loss curve.
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use crate::evaluate::StepEval;
use crate::files;
use crate::metrics::{self, Event, MetricsLog};
use crate::scaler::LossScaler;
use crate::TrainError;

/// The loss curve of the metrics so far; a failure to draw it is only a warning.
pub(crate) fn plot_losses(log: &MetricsLog, out: &Path) -> Result<(), TrainError> {
    let events = metrics::read_events(log.path())?;
    if let Err(e) = metrics::plot_loss(&events, &out.join(files::LOSS_PLOT_FILE)) {
        tracing::warn!("loss curve not drawn: {e}");
    }
    Ok(())
}

pub(crate) fn progress_bar(show: bool, max_steps: usize, position: usize) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(max_steps as u64);
    b.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b.set_position(position as u64);
    b
}

/// Loss sum, target tokens, step seconds and input tokens since the last train log line; the
/// seconds count training steps only (not eval or checkpoint writes).
#[derive(Default)]
pub(crate) struct Window {
    loss_sum: f64,
    tokens: u64,
    seconds: f64,
    input_tokens: u64,
}

impl Window {
    pub(crate) fn add(&mut self, loss: f64, tokens: u64, seconds: f64, input_tokens: u64) {
        self.loss_sum += loss * tokens as f64;
        self.tokens += tokens;
        self.seconds += seconds;
        self.input_tokens += input_tokens;
    }

    /// Writes the window's train line and starts a new window.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn log(
        &mut self,
        log: &mut MetricsLog,
        bar: &ProgressBar,
        step: usize,
        tokens_seen: u64,
        lr: f64,
        grad_norm: f64,
        scaler: Option<&LossScaler>,
    ) -> Result<(), TrainError> {
        let secs = self.seconds.max(1e-9);
        let mean = self.loss_sum / self.tokens.max(1) as f64;
        let tps = self.input_tokens as f64 / secs;
        log.write(&Event::Train {
            step,
            loss: mean,
            learning_rate: lr,
            grad_norm,
            tokens: tokens_seen,
            tokens_per_s: tps,
            loss_scale: scaler.map(|s| s.scale),
            skipped_steps: scaler.map(|s| s.skipped_steps),
        })?;
        bar.set_message(format!("loss {mean:.4}  {tps:.0} tok/s"));
        // suspend(): the bar and the log lines share stderr.
        bar.suspend(|| {
            tracing::info!(
                step,
                loss = mean,
                lr,
                grad_norm,
                tokens_per_s = tps,
                "train"
            )
        });
        *self = Self::default();
        Ok(())
    }
}

pub(crate) fn log_eval(
    log: &mut MetricsLog,
    bar: &ProgressBar,
    step: usize,
    ev: &StepEval,
    best: bool,
) -> Result<(), TrainError> {
    log.write(&Event::Eval {
        step,
        eval_loss: ev.loss,
        eval_tokens: ev.tokens,
        best,
        generation: ev.generation.clone(),
    })?;
    if let Some(m) = &ev.generation {
        let line = crate::run::metric_line(m);
        bar.suspend(|| tracing::info!(step, "eval generation: {line}"));
    }
    bar.suspend(|| tracing::info!(step, eval_loss = ev.loss, best, "eval"));
    Ok(())
}
