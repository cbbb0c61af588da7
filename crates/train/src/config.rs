//! Run configuration (TOML). Field names follow Hugging Face so a config reads like the
//! Python recipe it replaces: `[model]` ≈ `from_pretrained` + `BitsAndBytesConfig`,
//! `[lora]` = PEFT `LoraConfig`, `[training]` = `TrainingArguments`, `[data]` is ours.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod checkpointing;
pub mod data;
mod metrics;
pub use checkpointing::GradientCheckpointing;
pub(crate) use checkpointing::{
    check_offload_host_memory, host_memory_available, offload_host_bytes,
};
pub use data::{DataConfig, DatasetFormat, Task};

/// The tiny CPU default, embedded so `qtune train` / `cargo xtask train` work without files.
pub const TINY_TOML: &str = include_str!("../../../configs/tiny.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: invalid run config: {source}")]
    Parse {
        origin: String,
        source: toml::de::Error,
    },
    #[error("{origin}: `{field}` {msg}")]
    Invalid {
        origin: String,
        field: &'static str,
        msg: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run name: outputs go to `{output_dir}` (default `runs/{name}`).
    pub name: String,
    pub model: ModelConfig,
    pub lora: LoraSection,
    pub data: DataConfig,
    pub training: TrainingArgs,
    #[serde(default)]
    pub eval: EvalConfig,
    /// Several hosts (burn-collective's global level); absent = one host. The devices of each
    /// host are given on the command line (`qtune train --devices 0,1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distributed: Option<DistributedConfig>,
}

/// One host's part in a multi-host run. Every host runs `qtune train` with the same config
/// except `node_rank` and `node_address`, and the same number of `--devices`; global rank =
/// `node_rank × devices per host + local index`. An orchestrator must be running at
/// `orchestrator` (see README "Several GPUs").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedConfig {
    /// Hosts taking part.
    pub num_nodes: u32,
    /// This host's index, `0..num_nodes`; node 0 holds rank 0 (metrics, checkpoints).
    pub node_rank: u32,
    /// The orchestrator's WebSocket address, e.g. `ws://10.0.0.1:3000`.
    pub orchestrator: String,
    /// This host's address as the other hosts reach it, with `data_service_port`, e.g.
    /// `ws://10.0.0.2:3001`.
    pub node_address: String,
    /// Port this host opens for the peer-to-peer tensor transfers of the all-reduce.
    pub data_service_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Hub id (`EleutherAI/gpt-j-6b`) or local folder; absent with `random` set.
    #[serde(default)]
    pub name_or_path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    /// A randomly initialised GPT-J of this shape (HF `GPTJConfig` field names), seeded; HF's
    /// init (normal, std 0.02; LayerNorms at 1/0).
    #[serde(default)]
    pub random: Option<RandomModel>,
    /// `float32` | `bfloat16` | `float16` (HF `torch_dtype`); CPU runs use float32.
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
    /// bitsandbytes `BitsAndBytesConfig` names; absent = dense base.
    #[serde(default)]
    pub quantization: Option<QuantizationConfig>,
    /// Folder with tokenizer.json, or vocab.json+merges.txt (GPT-2 layout); default: the
    /// model folder, else `$QTUNE_DATA_DIR/gpt2-tokenizer`.
    #[serde(default)]
    pub tokenizer: Option<String>,
}

fn default_dtype() -> String {
    "float32".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomModel {
    pub seed: u64,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub rotary_dim: usize,
    #[serde(default)]
    pub n_inner: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizationConfig {
    #[serde(default)]
    pub load_in_4bit: bool,
    #[serde(default)]
    pub load_in_8bit: bool,
    /// `nf4` | `fp4`.
    #[serde(default = "default_4bit_type")]
    pub bnb_4bit_quant_type: String,
    #[serde(default)]
    pub bnb_4bit_use_double_quant: bool,
    /// bitsandbytes' defaults: 64 for 4-bit, 4096 for 8-bit weights.
    #[serde(default)]
    pub blocksize: Option<usize>,
}

fn default_4bit_type() -> String {
    "nf4".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub lora_dropout: f64,
    /// `["q_proj", "v_proj"]` or `"all-linear"`, as PEFT.
    pub target_modules: TargetList,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetList {
    Names(Vec<String>),
    One(String),
}

pub(crate) fn default_seed() -> u64 {
    42
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SchedulerType {
    Linear,
    Cosine,
    Constant,
}

/// `TrainingArguments.optim`. Accepted spellings (HF's, plus qtune's older `adamw_bnb8bit`):
/// see [`OptimName::ACCEPTED`]; written back as HF's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub enum OptimName {
    /// torch.optim.AdamW.
    #[serde(rename = "adamw_torch")]
    AdamwTorch,
    /// bitsandbytes AdamW8bit (HF `adamw_bnb_8bit`).
    #[serde(rename = "adamw_bnb_8bit")]
    AdamwBnb8bit,
    /// HF `paged_adamw_8bit`: the same 8-bit AdamW; qtune does not page optimizer state to
    /// host memory (LoRA state is small), so it runs as `adamw_bnb_8bit`, with a note.
    #[serde(rename = "paged_adamw_8bit")]
    PagedAdamw8bit,
}

impl OptimName {
    /// Every spelling `optim` accepts, and what it means.
    pub const ACCEPTED: &'static [(&'static str, OptimName)] = &[
        ("adamw_torch", OptimName::AdamwTorch),
        ("adamw_hf", OptimName::AdamwTorch),
        ("adamw_bnb_8bit", OptimName::AdamwBnb8bit),
        ("adamw_8bit", OptimName::AdamwBnb8bit),
        ("adamw_bnb8bit", OptimName::AdamwBnb8bit),
        ("paged_adamw_8bit", OptimName::PagedAdamw8bit),
    ];

    /// Whether this runs bitsandbytes' 8-bit AdamW.
    pub fn is_8bit(self) -> bool {
        !matches!(self, OptimName::AdamwTorch)
    }
}

impl TryFrom<String> for OptimName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::ACCEPTED
            .iter()
            .find(|(n, _)| *n == s)
            .map(|(_, o)| *o)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ACCEPTED.iter().map(|(n, _)| *n).collect();
                format!(
                    "unknown optimizer `{s}` in `training.optim`; accepted: {}",
                    names.join(", ")
                )
            })
    }
}

/// `transformers.TrainingArguments` names; only what the loop uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingArgs {
    #[serde(default)]
    pub output_dir: Option<String>,
    pub learning_rate: f64,
    pub per_device_train_batch_size: usize,
    #[serde(default = "default_eval_bs")]
    pub per_device_eval_batch_size: usize,
    #[serde(default = "one")]
    pub gradient_accumulation_steps: usize,
    pub max_steps: usize,
    #[serde(default)]
    pub warmup_steps: usize,
    #[serde(default = "default_sched")]
    pub lr_scheduler_type: SchedulerType,
    /// Floor of the decay as a fraction of `learning_rate`.
    #[serde(default)]
    pub min_lr_ratio: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_eps")]
    pub adam_epsilon: f64,
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "default_optim")]
    pub optim: OptimName,
    #[serde(default = "default_log")]
    pub logging_steps: usize,
    pub eval_steps: usize,
    pub save_steps: usize,
    /// Step folders kept (oldest removed first; the best adapter is kept separately).
    #[serde(default = "default_limit")]
    pub save_total_limit: usize,
    /// `false`, `true` or `"offload"` ([`GradientCheckpointing`]).
    #[serde(default)]
    pub gradient_checkpointing: GradientCheckpointing,
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// HF's `data_seed`: seed of the batch order (the sampler, and packing's row order); unset:
    /// `[data] seed`. The split and the held-back prompts stay `[data] seed`'s, so runs that
    /// differ only in `seed`/`data_seed` train and evaluate on the same data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_seed: Option<u64>,
    /// Validation prompts greedily decoded at every evaluation (`eval_steps`) for the task's
    /// generation metric (`eval_exact_match`, `eval_f1`, `eval_accuracy`, …: see
    /// [`RunConfig::eval_metric_names`]); 0 = off (eval loss only).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub eval_generate_samples: usize,
    /// HF `metric_for_best_model`: the evaluation metric that picks the best adapter
    /// (`{output_dir}/adapter`, `best_step` in the report); default `eval_loss`. The `eval_`
    /// prefix may be left out, as HF. `greater_is_better` is inferred as HF does: a name ending
    /// in `loss` is better lower, any other higher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_for_best_model: Option<String>,
    /// `[training.loss_scaling]`: dynamic loss scaling ([`crate::scaler`]); absent, it is on
    /// with torch's defaults for `torch_dtype = "float16"` and off otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scaling: Option<crate::scaler::LossScaling>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The metric that picks the best adapter (`[training] metric_for_best_model`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BestMetric {
    /// HF's name, `eval_` prefixed: `eval_loss`, `eval_exact_match`, …
    pub name: String,
    pub greater_is_better: bool,
}

impl BestMetric {
    /// Whether `new` beats `best` (none yet: it does).
    pub fn improves(&self, new: f64, best: Option<f64>) -> bool {
        best.is_none_or(|b| {
            if self.greater_is_better {
                new > b
            } else {
                new < b
            }
        })
    }

    /// The key of this metric in the generation metrics' JSON (`exact_match`), or `None` for
    /// the eval loss.
    pub fn generation_key(&self) -> Option<&str> {
        (self.name != "eval_loss").then(|| self.name.trim_start_matches("eval_"))
    }
}

impl TrainingArgs {
    /// The seed of the batch order: `data_seed`, else `[data] seed`.
    pub fn sampler_seed(&self, data: &DataConfig) -> u64 {
        self.data_seed.unwrap_or(data.seed)
    }
}

fn one() -> usize {
    1
}
fn default_eval_bs() -> usize {
    8
}
fn default_sched() -> SchedulerType {
    SchedulerType::Linear
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}
fn default_optim() -> OptimName {
    OptimName::AdamwTorch
}
fn default_log() -> usize {
    10
}
fn default_limit() -> usize {
    2
}

/// The end-of-run evaluation: SQuAD EM/F1 or classification accuracy by greedy decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-back examples decoded greedily at the end (0 = skip).
    #[serde(default = "default_gen_samples")]
    pub generation_samples: usize,
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            generation_samples: default_gen_samples(),
            max_new_tokens: default_new_tokens(),
        }
    }
}

fn default_gen_samples() -> usize {
    50
}
fn default_new_tokens() -> usize {
    16
}

impl RunConfig {
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_string(),
            source,
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    /// The embedded tiny default (configs/tiny.toml).
    pub fn tiny() -> Self {
        // The embedded file is tested (`tiny_config_parses`), so this cannot fail at run time.
        Self::from_toml_str(TINY_TOML, "configs/tiny.toml (embedded)")
            .expect("embedded configs/tiny.toml is valid")
    }

    pub fn output_dir(&self) -> PathBuf {
        match &self.training.output_dir {
            Some(d) => PathBuf::from(d),
            None => PathBuf::from("runs").join(&self.name),
        }
    }

    /// Optimizer steps a micro-batch count maps to is `gradient_accumulation_steps`.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |field, msg: &str| {
            Err(ConfigError::Invalid {
                origin: origin.to_string(),
                field,
                msg: msg.to_string(),
            })
        };
        let m = &self.model;
        if m.name_or_path.is_some() == m.random.is_some() {
            return bad(
                "model",
                "needs exactly one of `name_or_path` and `[model.random]`",
            );
        }
        if let Some(q) = &m.quantization {
            if q.load_in_4bit == q.load_in_8bit {
                return bad(
                    "model.quantization",
                    "set exactly one of load_in_4bit / load_in_8bit",
                );
            }
            if !matches!(q.bnb_4bit_quant_type.as_str(), "nf4" | "fp4") {
                return bad(
                    "model.quantization.bnb_4bit_quant_type",
                    "must be nf4 or fp4",
                );
            }
        }
        if !matches!(m.torch_dtype.as_str(), "float32" | "bfloat16" | "float16") {
            return bad("model.torch_dtype", "must be float32, bfloat16 or float16");
        }
        if self.lora.r == 0 {
            return bad("lora.r", "must be ≥ 1");
        }
        if !(0.0..1.0).contains(&self.lora.lora_dropout) {
            return bad("lora.lora_dropout", "must be in [0, 1)");
        }
        let t = &self.training;
        for (field, v) in [
            (
                "training.per_device_train_batch_size",
                t.per_device_train_batch_size,
            ),
            (
                "training.per_device_eval_batch_size",
                t.per_device_eval_batch_size,
            ),
            (
                "training.gradient_accumulation_steps",
                t.gradient_accumulation_steps,
            ),
            ("training.max_steps", t.max_steps),
            ("training.eval_steps", t.eval_steps),
            ("training.save_steps", t.save_steps),
            ("training.logging_steps", t.logging_steps),
            ("training.save_total_limit", t.save_total_limit),
            ("data.max_length", self.data.max_length),
        ] {
            if v == 0 {
                return bad(field, "must be ≥ 1");
            }
        }
        if let Some(ls) = &t.loss_scaling {
            ls.validate(origin)?;
        }
        for (field, v) in [
            ("data.max_train_samples", self.data.max_train_samples),
            ("data.max_eval_samples", self.data.max_eval_samples),
        ] {
            if v == Some(0) {
                return bad(
                    field,
                    "= 0 leaves no examples: remove it (all examples) or set it ≥ 1",
                );
            }
        }
        if let Some(r) = &self.model.random {
            if self.data.max_length > r.n_positions {
                return bad(
                    "data.max_length",
                    &format!(
                        "= {} exceeds the model's context window (model.random.n_positions = \
                         {}): lower max_length",
                        self.data.max_length, r.n_positions
                    ),
                );
            }
        }
        if !(t.learning_rate > 0.0 && t.learning_rate.is_finite()) {
            return bad("training.learning_rate", "must be a positive number");
        }
        if t.max_grad_norm.is_nan() || t.max_grad_norm <= 0.0 {
            return bad("training.max_grad_norm", "must be > 0");
        }
        self.validate_data(origin)?;
        self.validate_best_metric(origin)?;
        if let Some(d) = &self.distributed {
            if d.num_nodes == 0 || d.node_rank >= d.num_nodes {
                return bad(
                    "distributed.node_rank",
                    "must be in 0..num_nodes (and num_nodes ≥ 1)",
                );
            }
            for (field, addr) in [
                ("distributed.orchestrator", &d.orchestrator),
                ("distributed.node_address", &d.node_address),
            ] {
                if !addr.starts_with("ws://") {
                    return bad(field, "must be a WebSocket address `ws://host:port`");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
