//! Dynamic loss scaling for float16 training, as torch's `GradScaler` (which HF's `fp16=True`
//! uses): the loss is multiplied by `scale` (over [`LossScaling::seed_divisor`]) before the
//! backward, so small float16 gradients do not flush to zero; the gradients are divided by it
//! again before clipping (together with the token count, in one division). A step whose gradients overflowed (a non-finite norm) is
//! skipped — no parameter or optimizer-state update, the learning-rate schedule does not advance
//! (as the HF Trainer with accelerate) — and the scale is halved; after `growth_interval`
//! consecutive good steps it doubles. The scale is a power of two, so scaling and unscaling are
//! exact: with no overflow the update equals the unscaled one bit for bit (tested).
//!
//! Config: `[training.loss_scaling]` (`init_scale`, `growth_interval`; torch's defaults 2¹⁶ and
//! 2000), on by default when `torch_dtype = "float16"`, off otherwise unless the section is given.

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, RunConfig};
use crate::TrainError;

/// `[training.loss_scaling]` (accelerate's `GradScalerKwargs` names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScaling {
    /// The first scale: a positive power of two (scaling is exact only then).
    #[serde(default = "default_init_scale")]
    pub init_scale: f64,
    /// Consecutive steps without overflow after which the scale doubles.
    #[serde(default = "default_growth_interval")]
    pub growth_interval: u64,
}

fn default_init_scale() -> f64 {
    65536.0
}

fn default_growth_interval() -> u64 {
    2000
}

impl Default for LossScaling {
    fn default() -> Self {
        Self {
            init_scale: default_init_scale(),
            growth_interval: default_growth_interval(),
        }
    }
}

impl LossScaling {
    /// Checks the section, naming the field.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an `init_scale` that is not a positive power of two or a
    /// `growth_interval` of 0.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let s = self.init_scale;
        let bad = |field, msg: String| {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                field,
                msg,
            })
        };
        if !(s.is_finite() && s > 0.0 && s.log2().fract() == 0.0) {
            return bad(
                "training.loss_scaling.init_scale",
                format!("= {s}: must be a positive power of two (e.g. 65536)"),
            );
        }
        if self.growth_interval == 0 {
            return bad(
                "training.loss_scaling.growth_interval",
                "must be ≥ 1".into(),
            );
        }
        Ok(())
    }

    /// What the backward's seed is divided by besides the loss scale: torch scales a *mean*
    /// loss, while qtune's backward starts from per-token loss *sums*, so at the same `scale`
    /// its gradients would be N times torch's (N target tokens) and overflow float16 where
    /// torch's do not. The seed is therefore `scale / 2^⌊log₂ N⌋` with N the most tokens a
    /// step can hold (`per_device_train_batch_size × gradient_accumulation_steps ×
    /// max_length`, the same on every rank): gradients as large as torch's or smaller, and a
    /// power of two, so scaling stays exact.
    pub fn seed_divisor(cfg: &RunConfig) -> f64 {
        let t = &cfg.training;
        let n = t.per_device_train_batch_size * t.gradient_accumulation_steps * cfg.data.max_length;
        2f64.powi(n.max(1).ilog2() as i32)
    }

    /// The run's loss scaling: the section if given, torch's defaults for float16, else none.
    pub fn of(cfg: &RunConfig) -> Option<Self> {
        match &cfg.training.loss_scaling {
            Some(ls) => Some(ls.clone()),
            None if cfg.model.torch_dtype == "float16" => Some(Self::default()),
            None => None,
        }
    }
}

/// torch `GradScaler`'s `growth_factor` and `backoff_factor`.
const GROWTH: f64 = 2.0;
const BACKOFF: f64 = 0.5;
/// Below this the run has diverged (every step overflows even at a tiny scale): stop with an
/// error instead of skipping forever. float16's smallest normal is 2⁻¹⁴; torch has no floor.
const MIN_SCALE: f64 = 1.0 / (1u64 << 24) as f64;

/// The scaler's state, saved in checkpoints for an exact resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    /// The current scale (a power of two).
    pub scale: f64,
    /// Consecutive steps without overflow since the last change of scale.
    pub good_steps: u64,
    /// Steps skipped because their gradients overflowed, over the whole run.
    pub skipped_steps: u64,
    /// Good steps after which the scale doubles.
    pub growth_interval: u64,
}

impl LossScaler {
    /// A scaler starting from `cfg` (validated with the config: `init_scale` a positive power
    /// of two, `growth_interval` ≥ 1).
    pub fn new(cfg: &LossScaling) -> Self {
        Self {
            scale: cfg.init_scale,
            good_steps: 0,
            skipped_steps: 0,
            growth_interval: cfg.growth_interval,
        }
    }

    /// After a step: `overflow` when its gradient norm was not finite (the step was skipped).
    ///
    /// # Errors
    /// [`TrainError::LossScale`] once the scale falls below 2⁻²⁴: every step overflows, the run
    /// has diverged (the message names the step).
    pub fn update(&mut self, overflow: bool, step: usize) -> Result<(), TrainError> {
        if overflow {
            self.skipped_steps += 1;
            self.good_steps = 0;
            self.scale *= BACKOFF;
            if self.scale < MIN_SCALE {
                return Err(TrainError::LossScale {
                    step,
                    scale: self.scale,
                    skipped: self.skipped_steps,
                });
            }
        } else {
            self.good_steps += 1;
            if self.good_steps >= self.growth_interval {
                self.scale *= GROWTH;
                self.good_steps = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scaler(init: f64, interval: u64) -> LossScaler {
        LossScaler::new(&LossScaling {
            init_scale: init,
            growth_interval: interval,
        })
    }

    #[test]
    fn halves_on_overflow_and_doubles_after_the_growth_interval_as_torch() {
        let mut s = scaler(65536.0, 3);
        s.update(true, 1).unwrap();
        assert_eq!((s.scale, s.skipped_steps, s.good_steps), (32768.0, 1, 0));
        for step in 2..4 {
            s.update(false, step).unwrap();
        }
        assert_eq!(s.scale, 32768.0);
        s.update(false, 4).unwrap();
        assert_eq!((s.scale, s.good_steps), (65536.0, 0));
        // An overflow resets the run of good steps.
        s.update(false, 5).unwrap();
        s.update(true, 6).unwrap();
        s.update(false, 7).unwrap();
        s.update(false, 8).unwrap();
        assert_eq!((s.scale, s.skipped_steps, s.good_steps), (32768.0, 2, 2));
    }

    #[test]
    fn init_scale_must_be_a_power_of_two_and_the_interval_positive() {
        for bad in [0.0, -2.0, 3.0, 1000.0, f64::INFINITY, f64::NAN] {
            let ls = LossScaling {
                init_scale: bad,
                growth_interval: 10,
            };
            let e = ls.validate("t.toml").unwrap_err().to_string();
            assert!(e.contains("init_scale") && e.contains("t.toml"), "{e}");
        }
        let ok = LossScaling {
            init_scale: 0.5,
            growth_interval: 10,
        };
        assert!(ok.validate("t").is_ok());
        let e = LossScaling {
            growth_interval: 0,
            ..LossScaling::default()
        }
        .validate("t")
        .unwrap_err();
        assert!(e.to_string().contains("growth_interval"), "{e}");
    }

    #[test]
    fn on_by_default_for_float16_only() {
        let mut cfg = RunConfig::tiny();
        assert_eq!(LossScaling::of(&cfg), None);
        cfg.model.torch_dtype = "float16".into();
        assert_eq!(LossScaling::of(&cfg), Some(LossScaling::default()));
        cfg.model.torch_dtype = "bfloat16".into();
        cfg.training.loss_scaling = Some(LossScaling {
            init_scale: 8.0,
            growth_interval: 5,
        });
        assert_eq!(LossScaling::of(&cfg).unwrap().init_scale, 8.0);
    }

    #[test]
    fn a_run_that_overflows_at_every_scale_stops_with_an_error() {
        let mut s = scaler(1.0, 2000);
        let mut step = 0;
        let err = loop {
            step += 1;
            if let Err(e) = s.update(true, step) {
                break e;
            }
        };
        assert_eq!(step, 25);
        assert!(err.to_string().contains("diverged"), "{err}");
    }
}
