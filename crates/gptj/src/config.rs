//! `GptjConfig`: Hugging Face's GPT-J `config.json`, field for field.

use std::path::Path;

use serde::{Deserialize, Serialize};

use qtune_lm::LmError as GptjError;

/// HF `config.json` verbatim: the same field names, so `grep n_embd` works in both codebases.
/// Unknown fields (HF keeps adding some) are ignored. Fields HF's `GPTJConfig` gives a default
/// get the same default here; the shape fields have none, so a missing one is an error that
/// names it (serde's "missing field `n_embd`").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptjConfig {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// Rotary dims per head; `null` rotates the whole head (HF: `rotary_dim or head_dim`).
    #[serde(default)]
    pub rotary_dim: Option<usize>,
    /// MLP width; `null` means `4 * n_embd`, as HF.
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    pub activation_function: String,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_activation() -> String {
    "gelu_new".to_string()
}

fn default_eps() -> f64 {
    1e-5
}

/// The MLP activations GPT-J checkpoints use (HF `ACT2FN` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu_new`: the tanh approximation GPT-J was trained with.
    GeluNew,
    /// `gelu`: exact, erf-based.
    Gelu,
    Relu,
}

impl GptjConfig {
    /// EleutherAI/gpt-j-6b, copied from
    /// <https://huggingface.co/EleutherAI/gpt-j-6b/blob/main/config.json>.
    pub fn gptj_6b() -> Self {
        Self {
            vocab_size: 50400,
            n_positions: 2048,
            n_embd: 4096,
            n_layer: 28,
            n_head: 16,
            rotary_dim: Some(64),
            n_inner: None,
            activation_function: default_activation(),
            layer_norm_epsilon: 1e-5,
            bos_token_id: Some(50256),
            eos_token_id: Some(50256),
            pad_token_id: None,
            tie_word_embeddings: false,
        }
    }

    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, GptjError> {
        let text = std::fs::read_to_string(path).map_err(|source| GptjError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| GptjError::Config {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate().map_err(|reason| GptjError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Checks the relations HF asserts at model construction; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
        ] {
            if v == 0 {
                return Err(format!("`{name}` must be positive"));
            }
        }
        if self.n_embd % self.n_head != 0 {
            return Err(format!(
                "`n_embd` ({}) must be divisible by `n_head` ({})",
                self.n_embd, self.n_head
            ));
        }
        let rot = self.rotary_dim();
        if rot > self.head_dim() || rot % 2 != 0 {
            return Err(format!(
                "`rotary_dim` ({rot}) must be even and at most the head dim ({})",
                self.head_dim()
            ));
        }
        if self.n_inner == Some(0) {
            return Err("`n_inner` must be positive or null".to_string());
        }
        self.activation()?;
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn rotary_dim(&self) -> usize {
        self.rotary_dim.unwrap_or(self.head_dim())
    }

    pub fn inner_dim(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }

    /// The parsed `activation_function`.
    pub fn activation(&self) -> Result<Activation, String> {
        match self.activation_function.as_str() {
            "gelu_new" => Ok(Activation::GeluNew),
            "gelu" => Ok(Activation::Gelu),
            "relu" => Ok(Activation::Relu),
            other => Err(format!(
                "`activation_function` {other:?} is not supported (gelu_new, gelu, relu)"
            )),
        }
    }

    /// Parameter count of the dense model as PyTorch's `numel` sums it (no allocation):
    /// wte, per block ln_1 + q/k/v/out (no bias) + fc_in/fc_out (with bias), ln_f, lm_head (+bias;
    /// shared with wte when tied, counted once).
    pub fn num_params(&self) -> u64 {
        let (d, v, f) = (
            self.n_embd as u64,
            self.vocab_size as u64,
            self.inner_dim() as u64,
        );
        let block = 2 * d + 4 * d * d + (d * f + f) + (f * d + d);
        let head = if self.tie_word_embeddings {
            v
        } else {
            v * d + v
        };
        v * d + self.n_layer as u64 * block + 2 * d + head
    }
}
