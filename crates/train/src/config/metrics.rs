//! What an evaluation reports (`eval_` metric names per task) and which of them picks the best
//! adapter (`metric_for_best_model`), with its check.

use super::data::{DatasetFormat, Task};
use super::{BestMetric, ConfigError, RunConfig};

impl RunConfig {
    /// The metrics an evaluation reports under HF's `eval_` names: `eval_loss`, and with
    /// `eval_generate_samples` the task's generation metric (SQuAD v2 `eval_exact`, `eval_f1`;
    /// hate speech `eval_accuracy`, `eval_macro_f1`; custom data other than `text`
    /// `eval_exact_match`).
    pub fn eval_metric_names(&self) -> Vec<&'static str> {
        let mut names = vec!["eval_loss"];
        names.extend_from_slice(match self.data.dataset {
            Task::SquadV2 => &["eval_exact", "eval_f1"][..],
            Task::HateSpeech => &["eval_accuracy", "eval_macro_f1"],
            Task::Custom if self.data.dataset_format == Some(DatasetFormat::Text) => &[],
            Task::Custom => &["eval_exact_match"],
        });
        names
    }

    /// `metric_for_best_model` with the `eval_` prefix, and which way is better.
    pub fn best_metric(&self) -> BestMetric {
        let name = match self.training.metric_for_best_model.as_deref() {
            None => "eval_loss".to_string(),
            Some(n) if n.starts_with("eval_") => n.to_string(),
            Some(n) => format!("eval_{n}"),
        };
        // transformers `TrainingArguments.__post_init__`: greater_is_better =
        // not metric_for_best_model.endswith("loss").
        let greater_is_better = !name.ends_with("loss");
        BestMetric {
            name,
            greater_is_better,
        }
    }

    /// `eval_generate_samples` needs a generation metric; `metric_for_best_model` must be one
    /// of [`Self::eval_metric_names`], a generation one only with `eval_generate_samples`.
    pub(super) fn validate_best_metric(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |field: &'static str, msg: String| {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                field,
                msg,
            })
        };
        let names = self.eval_metric_names();
        let t = &self.training;
        if t.eval_generate_samples > 0 && names.len() == 1 {
            return bad(
                "training.eval_generate_samples",
                "needs a generation metric, and `dataset_format = \"text\"` data has none \
                 (nothing to complete): remove it"
                    .into(),
            );
        }
        let best = self.best_metric();
        if !names.contains(&best.name.as_str()) {
            return bad(
                "training.metric_for_best_model",
                format!(
                    "`{}` is not a metric of this run; valid names: {}",
                    t.metric_for_best_model.as_deref().unwrap_or_default(),
                    names.join(", ")
                ),
            );
        }
        if best.generation_key().is_some() && t.eval_generate_samples == 0 {
            return bad(
                "training.metric_for_best_model",
                format!(
                    "`{}` is a generation metric: set training.eval_generate_samples ≥ 1 so \
                     evaluations compute it",
                    best.name
                ),
            );
        }
        Ok(())
    }
}
