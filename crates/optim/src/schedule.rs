//! Learning-rate schedules: linear warm-up, then linear or cosine decay to a floor, or constant.
//!
//! Same curves as HF transformers' `get_linear_schedule_with_warmup`,
//! `get_cosine_with_min_lr_schedule_with_warmup` (one half cycle) and
//! `get_constant_schedule_with_warmup`, indexed the same way: `lr_at(s)` is the rate used by the
//! optimizer step that follows `s` completed steps, so the very first step (s = 0) of a warm-up
//! runs at lr 0, exactly as in HF. Two deliberate differences: the decay reaches
//! `min_lr_ratio * learning_rate` (HF's linear schedule has no floor) and stays there after
//! `total_steps` (HF's cosine climbs back up past the end).

use crate::OptimError;
use serde::{Deserialize, Serialize};

/// Shape of the decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Straight line from the peak down to the floor at `total_steps`.
    Linear,
    /// Half a cosine from the peak down to the floor at `total_steps`.
    Cosine,
    /// The peak rate after warm-up, forever.
    Constant,
}

/// A learning-rate schedule; field names follow HF `TrainingArguments`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate, reached at the end of warm-up.
    pub learning_rate: f64,
    /// Steps of linear warm-up from 0 to `learning_rate`.
    pub warmup_steps: usize,
    /// Step at which the decay reaches its floor (the run's number of optimizer steps).
    pub total_steps: usize,
    /// Decay shape.
    pub kind: ScheduleKind,
    /// Floor as a fraction of `learning_rate`, in [0, 1]. Ignored by `Constant`.
    pub min_lr_ratio: f64,
}

impl LrSchedule {
    /// Checks the fields: a finite positive rate, `warmup_steps <= total_steps`, a ratio in [0, 1].
    pub fn validate(&self) -> Result<(), OptimError> {
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(OptimError::Config {
                field: "learning_rate",
                value: self.learning_rate.to_string(),
                reason: "must be finite and > 0",
            });
        }
        if self.warmup_steps > self.total_steps {
            return Err(OptimError::Config {
                field: "warmup_steps",
                value: self.warmup_steps.to_string(),
                reason: "must not exceed total_steps",
            });
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(OptimError::Config {
                field: "min_lr_ratio",
                value: self.min_lr_ratio.to_string(),
                reason: "must be in [0, 1]",
            });
        }
        Ok(())
    }

    /// Learning rate for the optimizer step taken after `step` completed steps.
    pub fn lr_at(&self, step: usize) -> f64 {
        self.learning_rate * self.factor_at(step)
    }

    /// `lr_at(step) / learning_rate`.
    pub fn factor_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return step as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let floor = self.min_lr_ratio;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => floor + (1.0 - floor) * (1.0 - progress),
            ScheduleKind::Cosine => {
                floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}
