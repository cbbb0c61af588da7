//! `[data]`: a built-in task or your own data (file, folder or Hub dataset id), its splits and
//! field names, and the checks of those keys (`RunConfig::validate_data`).
use serde::{Deserialize, Serialize};

use super::{default_seed, ConfigError, RunConfig};

/// `[data] dataset`: a built-in task or your own file. An unknown value is refused with this
/// list (serde: "unknown variant `x`, expected one of `squad_v2`, `hate_speech`, `custom`").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// SQuAD v2 extractive QA as generation (EM/F1).
    SquadV2,
    /// Davidson et al. 2017 three-class tweets (accuracy).
    HateSpeech,
    /// Your own file: `path` + `dataset_format` (qtune_data::formats; exact match of the
    /// completion as the generation metric).
    Custom,
}

pub use qtune_data::DatasetFormat;

/// `[data]`. Built-in tasks: `dataset = "squad_v2"` or `"hate_speech"` and the common keys.
/// Your own file:
/// ```toml
/// [data]
/// dataset = "custom"
/// path = "datasets/squad_completion.jsonl"  # .jsonl | .json | .csv | .parquet
/// dataset_format = "completion"             # text | completion | alpaca | messages
/// max_length = 256
/// # validation_split = 0.05 (default) or validation_file = "…"; field names: prompt_field,
/// # completion_field, text_field, messages_field; messages: train_on_all_turns,
/// # chat_template (Jinja text) or chat_template_file, else the model's own template.
/// ```
/// The keys after `dataset` up to `chat_template_file` belong to `custom` only (refused with a
/// built-in task); they are left out of the serialized config when unset, so the config of a
/// built-in run (and its checkpoints) is unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub dataset: Task,
    /// `custom`: the data file, relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `custom`: how records read (required; no default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_format: Option<DatasetFormat>,
    /// Field names (defaults `text`, `prompt`, `completion`, `messages`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_field: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_field: Option<String>,
    /// `messages`: loss on every token, not only the assistant turns.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub train_on_all_turns: bool,
    /// Fraction of the (seeded, shuffled) records held back for validation; default 0.05
    /// unless `validation_file` is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_split: Option<f64>,
    /// A separate validation file in the same format (then nothing is split off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_file: Option<String>,
    /// `messages`: a Jinja chat template overriding the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// `messages`: the same, read from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template_file: Option<String>,
    /// Most tokens of one example (eos included). SQuAD: the context is cut around the answer;
    /// custom data: see qtune_data::formats (prompt cut from the left, text cut at the end,
    /// conversations dropped).
    pub max_length: usize,
    /// Use at most this many training examples (a slice for quick runs); absent = all.
    #[serde(default)]
    pub max_train_samples: Option<usize>,
    /// Validation examples used for the eval loss.
    #[serde(default)]
    pub max_eval_samples: Option<usize>,
    /// Seed of the train/validation split and the shuffling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Padding-free packing of the training examples: several share one row of `max_length`
    /// tokens (first fit over the seed-shuffled examples, once before training; each keeps its
    /// own positions, attention never crosses examples, no loss across a boundary). The sampler
    /// then draws rows. Validation and evaluation stay unpacked. Left out of the serialized
    /// config when off, so earlier checkpoints compare equal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
}

impl RunConfig {
    /// The `[data]` keys of a custom dataset: present exactly when `dataset = "custom"`.
    pub(super) fn validate_data(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |field: &'static str, msg: String| -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                field,
                msg,
            })
        };
        let d = &self.data;
        let custom_keys: [(&'static str, bool); 11] = [
            ("data.path", d.path.is_some()),
            ("data.dataset_format", d.dataset_format.is_some()),
            ("data.text_field", d.text_field.is_some()),
            ("data.prompt_field", d.prompt_field.is_some()),
            ("data.completion_field", d.completion_field.is_some()),
            ("data.messages_field", d.messages_field.is_some()),
            ("data.train_on_all_turns", d.train_on_all_turns),
            ("data.validation_split", d.validation_split.is_some()),
            ("data.validation_file", d.validation_file.is_some()),
            ("data.chat_template", d.chat_template.is_some()),
            ("data.chat_template_file", d.chat_template_file.is_some()),
        ];
        if d.dataset != Task::Custom {
            if let Some((field, _)) = custom_keys.iter().find(|(_, set)| *set) {
                return bad(
                    field,
                    format!(
                        "is for `dataset = \"custom\"` only (dataset is {:?})",
                        d.dataset
                    ),
                );
            }
            return Ok(());
        }
        if d.path.is_none() {
            return bad("data.path", "is required with `dataset = \"custom\"`: the data file (.jsonl, .json, .csv or .parquet)".into());
        }
        let Some(format) = d.dataset_format else {
            return bad(
                "data.dataset_format",
                "is required with `dataset = \"custom\"`: one of \"text\", \"completion\", \"alpaca\", \"messages\"".into(),
            );
        };
        if d.validation_split.is_some() && d.validation_file.is_some() {
            return bad(
                "data.validation_split",
                "set either validation_split or validation_file, not both".into(),
            );
        }
        if let Some(f) = d.validation_split {
            if !(f > 0.0 && f < 1.0) {
                return bad(
                    "data.validation_split",
                    format!("must be in (0, 1), got {f}"),
                );
            }
        }
        if d.chat_template.is_some() && d.chat_template_file.is_some() {
            return bad(
                "data.chat_template",
                "set either chat_template or chat_template_file, not both".into(),
            );
        }
        let only = |field: &'static str, set: bool, fmt: DatasetFormat| {
            if set && format != fmt {
                bad(
                    field,
                    format!("is for dataset_format {fmt:?} only (this one is {format:?})"),
                )
            } else {
                Ok(())
            }
        };
        use DatasetFormat::*;
        only("data.text_field", d.text_field.is_some(), Text)?;
        only("data.messages_field", d.messages_field.is_some(), Messages)?;
        only("data.train_on_all_turns", d.train_on_all_turns, Messages)?;
        only("data.chat_template", d.chat_template.is_some(), Messages)?;
        only(
            "data.chat_template_file",
            d.chat_template_file.is_some(),
            Messages,
        )?;
        if format != Completion {
            only("data.prompt_field", d.prompt_field.is_some(), Completion)?;
            only(
                "data.completion_field",
                d.completion_field.is_some(),
                Completion,
            )?;
        }
        Ok(())
    }

    /// Field names of a custom dataset (defaults filled in).
    pub fn field_names(&self) -> qtune_data::FieldNames {
        let d = &self.data;
        let mut f = qtune_data::FieldNames::default();
        for (slot, v) in [
            (&mut f.text, &d.text_field),
            (&mut f.prompt, &d.prompt_field),
            (&mut f.completion, &d.completion_field),
            (&mut f.messages, &d.messages_field),
        ] {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        f
    }
}
