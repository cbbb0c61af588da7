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
/// path = "datasets/squad_completion.jsonl"  # .jsonl | .json | .csv | .parquet, a folder,
///                                           # or a Hub dataset id (+ split, revision)
/// dataset_format = "completion"             # text | completion | alpaca | messages
/// max_length = 256
/// # validation_split = 0.05 (default) or validation_file = "…"; test_split or test_file
/// # (evaluated once after training); field names: prompt_field,
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
    /// `custom`: a data file or a folder of them (relative to the working directory), or a
    /// Hub dataset id `org/name`; an existing local path always wins (qtune_data::hub_dataset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `custom`, `path` a Hub dataset id or a folder: the split to read (HF's names; files found
    /// as `datasets` lays them out, qtune_data::hub_dataset). Default `train`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// `custom`, `path` a Hub dataset id: branch, tag or commit (default `main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `custom`, `path` a Hub dataset id or a folder: the `datasets` config to read (the `name`
    /// of `load_dataset(path, name)`): one of the repo card's `configs`, else a top-level folder
    /// (qtune_data::hub_configs). Default: the card's default config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_name: Option<String>,
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
    /// Fraction of all (seeded, shuffled) records held out as the test split, before the
    /// validation split is taken from the rest; evaluated once, after training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_split: Option<f64>,
    /// A separate test file (or folder / Hub id, split `test`) in the same format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_file: Option<String>,
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
    /// tokens (placed by `packing_strategy` once before training; each keeps its own
    /// positions, attention never crosses examples, no loss across a boundary). The sampler
    /// then draws rows. Validation and evaluation stay unpacked. Left out of the serialized
    /// config when off, so earlier checkpoints compare equal.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub packing: bool,
    /// TRL's `packing_strategy`: `"bfd"` (best fit decreasing, the default when unset) or
    /// `"first_fit"` (qtune's packing before this setting existed). A resumed run packs as its
    /// checkpoint did (`trainer_state.json`; a checkpoint without the field was packed by
    /// first fit), whatever this says when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packing_strategy: Option<qtune_data::PackStrategy>,
}

/// `[data] validation_split` when neither it nor `validation_file` is set.
pub const DEFAULT_VALIDATION_SPLIT: f64 = 0.05;

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
        let custom_keys: [(&'static str, bool); 16] = [
            ("data.path", d.path.is_some()),
            ("data.split", d.split.is_some()),
            ("data.revision", d.revision.is_some()),
            ("data.config_name", d.config_name.is_some()),
            ("data.test_split", d.test_split.is_some()),
            ("data.test_file", d.test_file.is_some()),
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
        let Some(path) = &d.path else {
            return bad("data.path", "is required with `dataset = \"custom\"`: a data file (.jsonl, .json, .csv or .parquet), a folder of them, or a Hub dataset id (`org/name`)".into());
        };
        let is_file = qtune_data::hub_dataset::is_data_file(path);
        for (field, set) in [
            ("data.split", d.split.is_some()),
            ("data.revision", d.revision.is_some()),
            ("data.config_name", d.config_name.is_some()),
        ] {
            if set && is_file {
                return bad(
                    field,
                    format!("applies to a folder or Hub dataset id, not to the file `{path}`"),
                );
            }
        }
        if d.split.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return bad("data.split", "must name a split (e.g. \"train\")".into());
        }
        if d.config_name
            .as_deref()
            .is_some_and(|s| s.trim().is_empty())
        {
            return bad(
                "data.config_name",
                "must name a `datasets` config (e.g. \"en\")".into(),
            );
        }
        self.validate_test_split(origin)?;
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

    /// `test_split` / `test_file`: one of them; a fraction in (0, 1); a file that is neither the
    /// training nor the validation data (overlapping records are refused when loading).
    fn validate_test_split(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |field: &'static str, msg: String| -> Result<(), ConfigError> {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                field,
                msg,
            })
        };
        let d = &self.data;
        if d.test_split.is_some() && d.test_file.is_some() {
            return bad(
                "data.test_split",
                "set either test_split or test_file, not both".into(),
            );
        }
        if let Some(f) = d.test_split {
            if !(f > 0.0 && f < 1.0) {
                return bad("data.test_split", format!("must be in (0, 1), got {f}"));
            }
        }
        if let Some(t) = &d.test_file {
            for (other, what) in [
                (d.path.as_ref(), "data.path"),
                (d.validation_file.as_ref(), "data.validation_file"),
            ] {
                // The same folder or Hub id is fine: its `test` split is other files.
                if other == Some(t) && qtune_data::hub_dataset::is_data_file(t) {
                    return bad(
                        "data.test_file",
                        format!("is `{t}`, the same as {what}: the test data must be held out"),
                    );
                }
            }
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
