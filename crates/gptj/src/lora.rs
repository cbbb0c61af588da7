//! Applying a [`LoraConfig`] to a GPT-J and naming/counting its trainable parameters as PEFT.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use qtune_lora::{LoraConfig, TargetModules};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::GptjConfig;
use crate::error::GptjError;
use crate::model::Gptj;
use crate::names::peft_key;

/// PEFT's `print_trainable_parameters` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamCounts {
    pub trainable: u64,
    pub all: u64,
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl std::fmt::Display for ParamCounts {
    /// Exactly PEFT's line: `trainable params: 7,340,032 || all params: … || trainable%: 0.1212`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = 100.0 * self.trainable as f64 / self.all.max(1) as f64;
        write!(
            f,
            "trainable params: {} || all params: {} || trainable%: {pct:.4}",
            thousands(self.trainable),
            thousands(self.all)
        )
    }
}

/// `(module path, in, out)` of every linear of a config, HF order, `lm_head` last.
fn linear_shapes(cfg: &GptjConfig) -> Vec<(String, usize, usize, bool)> {
    let (d, f) = (cfg.n_embd, cfg.inner_dim());
    let mut out = Vec::new();
    for i in 0..cfg.n_layer {
        for (s, inp, o) in [
            ("attn.q_proj", d, d),
            ("attn.k_proj", d, d),
            ("attn.v_proj", d, d),
            ("attn.out_proj", d, d),
            ("mlp.fc_in", d, f),
            ("mlp.fc_out", f, d),
        ] {
            out.push((crate::names::block_name(i, s), inp, o, false));
        }
    }
    out.push(("lm_head".to_string(), d, cfg.vocab_size, true));
    out
}

impl GptjConfig {
    /// Parameter counts of this model with `lora` applied, from the shapes alone (nothing is
    /// allocated, so this works for GPT-J-6B on any machine).
    pub fn lora_param_counts(&self, lora: &LoraConfig) -> ParamCounts {
        let trainable: u64 = linear_shapes(self)
            .iter()
            .filter(|(name, _, _, head)| lora.target_modules.matches(name, *head))
            .map(|(_, i, o, _)| (lora.r * (i + o)) as u64)
            .sum();
        ParamCounts {
            trainable,
            all: self.num_params() + trainable,
        }
    }
}

/// One trainable LoRA tensor with its PEFT key.
pub struct LoraParam<'a, B: Backend> {
    /// `base_model.model.transformer.h.{i}.attn.q_proj.lora_A.weight`.
    pub key: String,
    pub param: &'a Param<Tensor<B, 2>>,
}

impl<B: Backend> Gptj<B> {
    /// Attaches a fresh adapter (PEFT init, A drawn from `ChaCha8Rng::seed_from_u64(seed)` in
    /// module order) to every target linear. Errors if the config is invalid or matches nothing.
    pub fn with_lora(mut self, cfg: &LoraConfig, seed: u64) -> Result<Self, GptjError> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut hits = 0;
        for (name, lin) in self.linears_mut() {
            if cfg.target_modules.matches(&name, name == "lm_head") {
                let taken = std::mem::replace(lin, placeholder(lin));
                *lin = taken.attach_lora(cfg, &mut rng);
                hits += 1;
            }
        }
        if hits == 0 {
            let t = match &cfg.target_modules {
                TargetModules::AllLinear => "all-linear".to_string(),
                TargetModules::Names(n) => format!("{n:?}"),
            };
            return Err(GptjError::NoLoraTarget(t));
        }
        Ok(self)
    }

    /// The trainable tensors (LoRA A and B of each adapted linear) with PEFT's saved key names,
    /// in module order, A before B.
    pub fn lora_params(&self) -> Vec<LoraParam<'_, B>> {
        let mut out = Vec::new();
        for (name, lin) in self.linears() {
            if let Some(l) = &lin.lora {
                out.push(LoraParam {
                    key: peft_key(&name, false),
                    param: &l.lora_a,
                });
                out.push(LoraParam {
                    key: peft_key(&name, true),
                    param: &l.lora_b,
                });
            }
        }
        out
    }

    /// PEFT's counts for this model instance (trainable = LoRA tensors).
    pub fn param_counts(&self) -> ParamCounts {
        let trainable: u64 = self
            .lora_params()
            .iter()
            .map(|p| p.param.shape().num_elements() as u64)
            .sum();
        ParamCounts {
            trainable,
            all: self.config.num_params() + trainable,
        }
    }
}

/// A cheap stand-in while a linear is moved out and back (`attach_lora` consumes `self`).
fn placeholder<B: Backend>(lin: &qtune_lora::Linear<B>) -> qtune_lora::Linear<B> {
    qtune_lora::Linear::dense(Tensor::zeros([1, 1], &lin.device()), None)
}
