//! The optimizer over a Burn module: AdamW (torch) or 8-bit AdamW (bitsandbytes), with its
//! state keyed by the parameter's module path (`layers.0.lora_a`), not by `ParamId`. Paths
//! survive rebuilding the model and reloading an adapter, so a saved state resumes exactly
//! even though Burn draws fresh random `ParamId`s for a newly built module.

use crate::blockwise::Maps;
use crate::update::{Blockwise8, Hyper};
use crate::OptimError;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod step;

/// Which update rule; serialized with HF `TrainingArguments.optim` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OptimKind {
    /// `torch.optim.AdamW`: 32-bit moments, 8 bytes of state per parameter.
    #[serde(rename = "adamw_torch")]
    AdamW,
    /// `bitsandbytes.optim.AdamW8bit`: blockwise 8-bit moments (~2.03 bytes per parameter) for
    /// tensors with at least `min_8bit_size` values, bnb's 32-bit kernel below that.
    #[serde(rename = "adamw_bnb_8bit")]
    AdamW8bit,
}

/// Optimizer hyperparameters; field names follow HF `TrainingArguments`, defaults are torch's
/// AdamW defaults (which bnb's `AdamW8bit` shares), not Burn's (pitfall 8).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OptimizerConfig {
    pub optim: OptimKind,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Decoupled weight decay (AdamW): `p *= 1 - lr * weight_decay` every step.
    pub weight_decay: f64,
    /// bnb's `min_8bit_size`: smaller tensors keep 32-bit state in `AdamW8bit`.
    pub min_8bit_size: usize,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            optim: OptimKind::AdamW,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            weight_decay: 1e-2,
            min_8bit_size: 4096,
        }
    }
}

impl OptimizerConfig {
    /// Checks betas in [0, 1), eps > 0, weight decay >= 0 (all finite).
    pub fn validate(&self) -> Result<(), OptimError> {
        let bad = |field, value: f64, reason| {
            Err(OptimError::Config {
                field,
                value: value.to_string(),
                reason,
            })
        };
        for (field, b) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&b) {
                return bad(field, b, "must be in [0, 1)");
            }
        }
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0) {
            return bad("adam_epsilon", self.adam_epsilon, "must be finite and > 0");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay, "must be finite and >= 0");
        }
        Ok(())
    }

    pub(crate) fn hyper(&self) -> Hyper {
        Hyper {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
            weight_decay: self.weight_decay,
        }
    }

    /// Whether a tensor of `numel` values gets 8-bit state under this config.
    pub fn uses_8bit(&self, numel: usize) -> bool {
        self.optim == OptimKind::AdamW8bit && numel >= self.min_8bit_size
    }
}

/// The two moments of one parameter.
#[derive(Debug, Clone)]
pub(crate) enum Moments<B: Backend> {
    /// f32 `exp_avg` / `exp_avg_sq` (bnb: `state1` / `state2`).
    Full {
        exp_avg: Tensor<B, 1>,
        exp_avg_sq: Tensor<B, 1>,
    },
    Blockwise8(Blockwise8<B>),
}

/// Per-parameter state: torch and bnb both count steps per parameter.
#[derive(Debug, Clone)]
pub(crate) struct ParamState<B: Backend> {
    pub step: u64,
    pub numel: usize,
    pub moments: Moments<B>,
}

impl<B: Backend> ParamState<B> {
    /// Bytes the state tensors occupy on the device (U8 codes count 1 byte each).
    pub fn bytes(&self) -> usize {
        let size = |shape: burn::tensor::Shape, dtype: burn::tensor::DType| {
            shape.num_elements() * dtype.size()
        };
        match &self.moments {
            Moments::Full {
                exp_avg,
                exp_avg_sq,
            } => {
                size(exp_avg.shape(), exp_avg.dtype())
                    + size(exp_avg_sq.shape(), exp_avg_sq.dtype())
            }
            Moments::Blockwise8(s) => {
                size(s.state1.shape(), s.state1.dtype())
                    + size(s.absmax1.shape(), s.absmax1.dtype())
                    + size(s.state2.shape(), s.state2.dtype())
                    + size(s.absmax2.shape(), s.absmax2.dtype())
            }
        }
    }
}

/// AdamW or 8-bit AdamW over the trainable float parameters of a module on backend `B`
/// (an autodiff backend; the state lives on its inner backend, on the parameters' device).
///
/// Usage per optimizer step: [`crate::clip_grad_norm`] on the `GradientsParams`, then
/// `module = optim.step(lr, module, grads)?`; or both, with the division by the target tokens,
/// in [`Optimizer::step_normalized`] (what the trainer does). Parameters without a gradient are
/// left alone.
#[derive(Debug, Clone)]
pub struct Optimizer<B: AutodiffBackend> {
    pub(crate) config: OptimizerConfig,
    pub(crate) states: BTreeMap<String, ParamState<B::InnerBackend>>,
    pub(crate) maps: Option<Maps<B::InnerBackend>>,
    /// The last AdamW group's concatenated moments (each state above is a slice of them): the
    /// next step of the same group, in the same order and at the same count, starts from them
    /// instead of concatenating hundreds of slices again (one launch per slice on CUDA).
    pub(crate) moments_cache: Option<MomentsCache<B::InnerBackend>>,
    /// The same for the last 8-bit group: its concatenated codes and absmax, each tensor
    /// padded to whole blocks (on a GPU, re-concatenating 4 × 448 slices of Llama's all-linear
    /// LoRA cost ~35 ms a step in launches).
    pub(crate) blockwise_cache: Option<BlockwiseCache<B::InnerBackend>>,
}

/// See [`Optimizer::moments_cache`].
#[derive(Debug, Clone)]
pub(crate) struct MomentsCache<B: Backend> {
    order: Vec<String>,
    step: u64,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

/// See [`Optimizer::blockwise_cache`].
#[derive(Debug, Clone)]
pub(crate) struct BlockwiseCache<B: Backend> {
    order: Vec<String>,
    step: u64,
    state: Blockwise8<B>,
}

impl<B: AutodiffBackend> Optimizer<B> {
    /// A fresh optimizer (no state yet: it is created at each parameter's first step).
    pub fn new(config: OptimizerConfig) -> Result<Self, OptimError> {
        config.validate()?;
        Ok(Self {
            config,
            states: BTreeMap::new(),
            maps: None,
            moments_cache: None,
            blockwise_cache: None,
        })
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Total bytes of optimizer state on the device.
    pub fn state_bytes(&self) -> usize {
        self.states.values().map(ParamState::bytes).sum()
    }

    /// Number of parameter values that have state.
    pub fn num_params(&self) -> usize {
        self.states.values().map(|s| s.numel).sum()
    }

    /// Module paths with state, sorted, with their step counts.
    pub fn steps(&self) -> Vec<(String, u64)> {
        self.states
            .iter()
            .map(|(k, s)| (k.clone(), s.step))
            .collect()
    }
}
