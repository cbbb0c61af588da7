//! Applying a [`LoraConfig`] to a model, naming/counting its trainable parameters as PEFT, and
//! its adapters as PEFT files and back.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use qtune_lora::{LoraConfig, TargetModules};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use std::collections::BTreeMap;

use burn::tensor::{DType, TensorData};
use qtune_kernels::QBackend;
use qtune_lora::peft::{LoraTensors, PeftAdapter, PeftAdapterConfig};
use qtune_lora::LoraAdapter;

use crate::error::LmError;
use crate::lm::CausalLm;

/// PEFT's saved key of a LoRA tensor: `base_model.model.{module}.lora_A.weight` / `lora_B`.
pub fn peft_key(module: &str, is_b: bool) -> String {
    format!(
        "base_model.model.{module}.{}.weight",
        if is_b { "lora_B" } else { "lora_A" }
    )
}

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

/// One trainable LoRA tensor with its PEFT key.
pub struct LoraParam<'a, B: Backend> {
    /// `base_model.model.transformer.h.{i}.attn.q_proj.lora_A.weight`.
    pub key: String,
    pub param: &'a Param<Tensor<B, 2>>,
}

/// Attaches a fresh adapter (PEFT init, A drawn from `ChaCha8Rng::seed_from_u64(seed)` in
/// module order) to every target linear. Errors if the config is invalid or matches nothing.
pub fn with_lora<B: QBackend, M: CausalLm<B>>(
    mut model: M,
    cfg: &LoraConfig,
    seed: u64,
) -> Result<M, LmError> {
    cfg.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut hits = 0;
    for (name, lin) in model.linears_mut() {
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
            TargetModules::Regex(re) => {
                let example = model.linears().into_iter().next().map(|(n, _)| n);
                format!(
                    "the regular expression {:?} (matched against the whole path, e.g. {:?})",
                    re.pattern(),
                    example.unwrap_or_default()
                )
            }
        };
        return Err(LmError::NoLoraTarget(t));
    }
    Ok(model)
}

/// The trainable tensors (LoRA A and B of each adapted linear) with PEFT's saved key names,
/// in module order, A before B.
pub fn lora_params<B: QBackend, M: CausalLm<B>>(model: &M) -> Vec<LoraParam<'_, B>> {
    let mut out = Vec::new();
    for (name, lin) in model.linears() {
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
pub fn param_counts<B: QBackend, M: CausalLm<B>>(model: &M) -> ParamCounts {
    let trainable: u64 = lora_params(model)
        .iter()
        .map(|p| p.param.shape().num_elements() as u64)
        .sum();
    ParamCounts {
        trainable,
        all: model.base_params() + trainable,
    }
}

/// A cheap stand-in while a linear is moved out and back (`attach_lora` consumes `self`).
fn placeholder<B: Backend>(lin: &qtune_lora::Linear<B>) -> qtune_lora::Linear<B> {
    qtune_lora::Linear::dense(Tensor::zeros([1, 1], &lin.device()), None)
}

fn host_2d<B: Backend>(t: Tensor<B, 2>) -> Result<(Vec<f32>, [usize; 2]), LmError> {
    let shape = t.dims();
    let v =
        crate::context::host_f32(t).map_err(|e| LmError::Device(format!("LoRA factors: {e}")))?;
    Ok((v, shape))
}

/// The adapter factors of `model`, keyed by HF module path, as a PEFT adapter.
pub fn export_adapter<B: QBackend, M: CausalLm<B>>(
    model: &M,
    config: PeftAdapterConfig,
) -> Result<PeftAdapter, LmError> {
    let mut modules = BTreeMap::new();
    for (name, lin) in model.linears() {
        if let Some(l) = &lin.lora {
            let (a, a_shape) = host_2d(l.lora_a.val())?;
            let (b, b_shape) = host_2d(l.lora_b.val())?;
            let t = LoraTensors {
                a,
                a_shape,
                b,
                b_shape,
            };
            modules.insert(name, t);
        }
    }
    Ok(PeftAdapter { config, modules })
}

/// Replaces (or attaches) the adapters of `model` with `adapter`'s factors: every module the
/// adapter names must exist with the same weight shape, and every module the model already
/// adapts must be in the adapter.
pub fn import_adapter<B: QBackend, M: CausalLm<B>>(
    mut model: M,
    adapter: &PeftAdapter,
) -> Result<M, LmError> {
    let scaling = adapter.config.scaling();
    let dropout = adapter.config.lora_dropout;
    let mut used = 0;
    for (name, lin) in model.linears_mut() {
        let Some(t) = adapter.modules.get(&name) else {
            if lin.lora.is_some() {
                return Err(LmError::AdapterMismatch(format!(
                    "the adapter has no factors for `{name}`, which the model adapts"
                )));
            }
            continue;
        };
        if t.weight_shape() != lin.shape() {
            return Err(LmError::AdapterMismatch(format!(
                "`{name}`: adapter for weight {:?}, model weight is {:?}",
                t.weight_shape(),
                lin.shape()
            )));
        }
        for (is_b, values) in [(false, &t.a), (true, &t.b)] {
            if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                return Err(LmError::NonFiniteAdapter {
                    key: peft_key(&name, is_b),
                    index,
                    value: values[index],
                });
            }
        }
        let device = lin.device();
        let a = Tensor::<B, 2>::from_data(TensorData::new(t.a.clone(), t.a_shape), &device);
        let b = Tensor::<B, 2>::from_data(TensorData::new(t.b.clone(), t.b_shape), &device);
        // Keep the adapter's dtype (f32 unless the model chose otherwise).
        let dtype = lin
            .lora
            .as_ref()
            .map_or(DType::F32, |l| l.lora_a.val().dtype());
        let (a, b) = (a.cast(dtype), b.cast(dtype));
        *lin = lin
            .clone()
            .with_adapter(LoraAdapter::from_tensors(a, b, scaling, dropout));
        used += 1;
    }
    if used != adapter.modules.len() {
        let known: Vec<String> = model.linears().into_iter().map(|(n, _)| n).collect();
        let unknown: Vec<&String> = adapter
            .modules
            .keys()
            .filter(|k| !known.contains(k))
            .collect();
        return Err(LmError::AdapterMismatch(format!(
            "modules not in this model: {unknown:?}"
        )));
    }
    Ok(model)
}
