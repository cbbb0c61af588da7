//! `LlamaConfig`: Hugging Face's `config.json` of `LlamaForCausalLM` and the variants that only
//! change config (`mistral`: sliding window; `qwen2`: q/k/v bias), field for field, with the
//! RoPE frequencies of each `rope_scaling` type HF implements for them.

use std::path::Path;

use qtune_lm::{LmError, Positions};
use serde::{Deserialize, Serialize};

/// HF `config.json` verbatim (unknown fields are ignored). transformers 5 writes the RoPE
/// settings into `rope_parameters`; older files use `rope_theta` + `rope_scaling`: both are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention; `null` means `num_attention_heads` (plain multi-head).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// `null` means `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// transformers ≥ 5: `{"rope_type": ..., "rope_theta": ..., scaling fields}`.
    #[serde(default)]
    pub rope_parameters: Option<RopeScaling>,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Llama's `attention_bias` (q/k/v/o); Qwen2 always has q/k/v bias and no o bias.
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    /// Mistral (and Qwen2 with `use_sliding_window`). Missing means HF's default, 4096 (as
    /// `MistralConfig`/`Qwen2Config`); `null` means no window.
    #[serde(default = "default_window")]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub pad_token_id: Option<serde_json::Value>,
}

/// `rope_scaling` / `rope_parameters` (HF names; `type` is the pre-4.45 spelling of `rope_type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct RopeScaling {
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

fn default_model_type() -> String {
    "llama".into()
}
fn default_max_pos() -> usize {
    2048
}
fn default_eps() -> f64 {
    1e-6
}
fn default_window() -> Option<usize> {
    Some(4096)
}
fn default_act() -> String {
    "silu".into()
}

/// The first id of an HF id field (a number or a list of numbers).
fn first_id(v: &Option<serde_json::Value>) -> Option<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    }
}

impl LlamaConfig {
    pub fn from_file(path: &Path) -> Result<Self, LmError> {
        let text = std::fs::read_to_string(path).map_err(|source| LmError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg: Self = serde_json::from_str(&text).map_err(|source| LmError::Config {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.validate().map_err(|reason| LmError::InvalidConfig {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(cfg)
    }

    /// Shapes divide, the activation and RoPE type are ones qtune implements.
    pub fn validate(&self) -> Result<(), String> {
        if !matches!(self.model_type.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(format!(
                "model_type {:?}: the Llama family here is llama, mistral, qwen2",
                self.model_type
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("{name} must be > 0"));
            }
        }
        let (h, kv) = (self.num_attention_heads, self.kv_heads());
        if kv == 0 || h % kv != 0 {
            return Err(format!(
                "num_attention_heads {h} is not a multiple of num_key_value_heads {kv}"
            ));
        }
        if self.head_dim.is_none() && self.hidden_size % h != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {h}",
                self.hidden_size
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(format!("head_dim {} must be even (RoPE)", self.head_dim()));
        }
        if self.hidden_act != "silu" {
            return Err(format!(
                "hidden_act {:?}: only silu is implemented",
                self.hidden_act
            ));
        }
        self.positions().map(|_| ())
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// q/k/v carry a bias (Qwen2 always; Llama with `attention_bias`).
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }

    /// o_proj carries a bias (Llama with `attention_bias`; never Qwen2).
    pub fn o_bias(&self) -> bool {
        self.model_type != "qwen2" && self.attention_bias
    }

    pub fn bos_id(&self) -> Option<u32> {
        first_id(&self.bos_token_id)
    }

    pub fn eos_id(&self) -> Option<u32> {
        first_id(&self.eos_token_id)
    }

    pub fn pad_id(&self) -> Option<u32> {
        first_id(&self.pad_token_id)
    }

    /// The sliding window HF applies: Mistral's `sliding_window`; Qwen2's only with
    /// `use_sliding_window`; never Llama's.
    pub fn window(&self) -> Option<usize> {
        match self.model_type.as_str() {
            "mistral" => self.sliding_window,
            "qwen2" if self.use_sliding_window == Some(true) => self.sliding_window,
            _ => None,
        }
    }

    /// The RoPE settings, from `rope_parameters` (transformers 5) or `rope_theta`/`rope_scaling`.
    fn rope(&self) -> (f64, Option<&RopeScaling>) {
        let params = self.rope_parameters.as_ref();
        let theta = params
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        let scaling = self.rope_scaling.as_ref().or(params);
        (theta, scaling)
    }

    /// RoPE over the whole head with HF's `inv_freq` for this config's `rope_type`
    /// (`default`, `linear`, `llama3`); other types are refused, not approximated.
    pub fn positions(&self) -> Result<Positions, String> {
        let (theta, scaling) = self.rope();
        let mut p = Positions::rope(self.head_dim(), theta);
        p.sliding_window = self.window();
        let Some(s) = scaling else { return Ok(p) };
        let need = |v: Option<f64>, f: &str| v.ok_or_else(|| format!("rope_scaling: missing {f}"));
        match s.rope_type.as_deref().unwrap_or("default") {
            "default" => {}
            "linear" => {
                let factor = need(s.factor, "factor")? as f32;
                p.inv_freq.iter_mut().for_each(|f| *f /= factor);
            }
            "llama3" => {
                let factor = need(s.factor, "factor")? as f32;
                let low = need(s.low_freq_factor, "low_freq_factor")? as f32;
                let high = need(s.high_freq_factor, "high_freq_factor")? as f32;
                let old = s
                    .original_max_position_embeddings
                    .ok_or("rope_scaling: missing original_max_position_embeddings")?
                    as f32;
                p.inv_freq = llama3_inv_freq(&p.inv_freq, factor, low, high, old);
            }
            other => {
                return Err(format!(
                    "rope_scaling type {other:?} is not implemented (default, linear, llama3 are)"
                ))
            }
        }
        Ok(p)
    }

    /// Parameters as HF counts them (tied head counted once).
    pub fn num_params(&self) -> u64 {
        let (d, f, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let (hd, h, kv) = (
            self.head_dim() as u64,
            self.num_attention_heads as u64,
            self.kv_heads() as u64,
        );
        let mut attn = d * h * hd + 2 * d * kv * hd + h * hd * d;
        if self.qkv_bias() {
            attn += h * hd + 2 * kv * hd;
        }
        if self.o_bias() {
            attn += d;
        }
        let mut mlp = 3 * d * f;
        if self.mlp_bias {
            mlp += 2 * f + d;
        }
        let block = attn + mlp + 2 * d;
        let head = if self.tie_word_embeddings { 0 } else { v * d };
        v * d + self.num_hidden_layers as u64 * block + d + head
    }
}

/// HF `_compute_llama3_parameters`, op for op in f32.
fn llama3_inv_freq(inv: &[f32], factor: f32, low: f32, high: f32, old: f32) -> Vec<f32> {
    let low_wavelen = old / low;
    let high_wavelen = old / high;
    inv.iter()
        .map(|&f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            let scaled = if wavelen > low_wavelen { f / factor } else { f };
            let smooth = (old / wavelen - low) / (high - low);
            let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
            // HF: `~(wavelen < high) * ~(wavelen > low)`; wavelengths are finite and positive.
            let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
            if medium {
                smoothed
            } else {
                scaled
            }
        })
        .collect()
}
