//! Optimizer state as a safetensors blob, for checkpoints that resume bit for bit.
//!
//! Tensors, per parameter path `{p}` (module path, e.g. `h.0.attn.q_proj.lora_A`):
//! - 32-bit moments: `{p}.exp_avg`, `{p}.exp_avg_sq` (F32 `[n]`);
//! - 8-bit moments (bnb names): `{p}.state1`, `{p}.state2` (U8 `[n]`), `{p}.absmax1`,
//!   `{p}.absmax2` (F32 `[ceil(n/256)]`).
//!
//! `__metadata__`: `format = "qtune-optim"`, `version = "1"`, `config` (OptimizerConfig JSON) and
//! `steps` (JSON object path → step count). The bytes are the tensors' own bytes, so loading
//! restores the state exactly; U8 codes are uploaded as U8 (never through a recorder's int
//! type, pitfall 9).

use crate::optimizer::{Moments, OptimKind, Optimizer, OptimizerConfig, ParamState};
use crate::update::Blockwise8;
use crate::{OptimError, BLOCKWISE_BLOCK};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::{BTreeMap, HashMap};

const FORMAT: &str = "qtune-optim";
const VERSION: &str = "1";

fn data_error(name: &str, e: impl std::fmt::Debug) -> OptimError {
    OptimError::Tensor {
        name: name.to_string(),
        what: format!("cannot read back from the device: {e:?}"),
    }
}

fn f32_bytes<B: Backend>(name: &str, t: &Tensor<B, 1>) -> Result<Vec<u8>, OptimError> {
    let v = t
        .clone()
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| data_error(name, e))?;
    Ok(v.iter().flat_map(|x| x.to_le_bytes()).collect())
}

fn u8_bytes<B: Backend>(name: &str, t: &Tensor<B, 1, Int>) -> Result<Vec<u8>, OptimError> {
    t.clone()
        .into_data()
        .to_vec::<u8>()
        .map_err(|e| data_error(name, e))
}

impl<B: AutodiffBackend> Optimizer<B> {
    /// Serializes config, step counts and all moments (reads the state back from the device).
    pub fn state_to_bytes(&self) -> Result<Vec<u8>, OptimError> {
        let mut tensors: Vec<(String, Dtype, usize, Vec<u8>)> = Vec::new();
        let mut steps = BTreeMap::new();
        for (path, s) in &self.states {
            steps.insert(path.clone(), s.step);
            match &s.moments {
                Moments::Full {
                    exp_avg,
                    exp_avg_sq,
                } => {
                    for (suffix, t) in [("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)] {
                        let name = format!("{path}.{suffix}");
                        let bytes = f32_bytes(&name, t)?;
                        tensors.push((name, Dtype::F32, s.numel, bytes));
                    }
                }
                Moments::Blockwise8(q) => {
                    let nb = s.numel.div_ceil(BLOCKWISE_BLOCK);
                    for (suffix, t) in [("state1", &q.state1), ("state2", &q.state2)] {
                        let name = format!("{path}.{suffix}");
                        let bytes = u8_bytes(&name, t)?;
                        tensors.push((name, Dtype::U8, s.numel, bytes));
                    }
                    for (suffix, t) in [("absmax1", &q.absmax1), ("absmax2", &q.absmax2)] {
                        let name = format!("{path}.{suffix}");
                        let bytes = f32_bytes(&name, t)?;
                        tensors.push((name, Dtype::F32, nb, bytes));
                    }
                }
            }
        }
        let views = tensors
            .iter()
            .map(|(name, dtype, n, bytes)| {
                TensorView::new(*dtype, vec![*n], bytes).map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let json = |what, r: Result<String, serde_json::Error>| {
            r.map_err(|e| OptimError::Format {
                what: format!("cannot encode {what}: {e}"),
            })
        };
        let metadata: HashMap<String, String> = [
            ("format".to_string(), FORMAT.to_string()),
            ("version".to_string(), VERSION.to_string()),
            (
                "config".to_string(),
                json("config", serde_json::to_string(&self.config))?,
            ),
            (
                "steps".to_string(),
                json("steps", serde_json::to_string(&steps))?,
            ),
        ]
        .into_iter()
        .collect();
        Ok(safetensors::serialize(views, Some(metadata))?)
    }

    /// Rebuilds an optimizer from [`Self::state_to_bytes`], with its state on `device`. The saved
    /// config comes back with it: compare [`Self::config`] with the run's config to refuse an
    /// incompatible resume.
    pub fn state_from_bytes(
        bytes: &[u8],
        device: &Device<B::InnerBackend>,
    ) -> Result<Self, OptimError> {
        let (_, meta) = SafeTensors::read_metadata(bytes)?;
        let st = SafeTensors::deserialize(bytes)?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            meta.get(key).ok_or_else(|| OptimError::Format {
                what: format!("missing metadata `{key}`"),
            })
        };
        if field("format")? != FORMAT || field("version")? != VERSION {
            return Err(OptimError::Format {
                what: format!(
                    "expected format {FORMAT} version {VERSION}, found {:?} {:?}",
                    meta.get("format"),
                    meta.get("version")
                ),
            });
        }
        let config: OptimizerConfig =
            serde_json::from_str(field("config")?).map_err(|e| OptimError::Format {
                what: format!("metadata `config`: {e}"),
            })?;
        let steps: BTreeMap<String, u64> =
            serde_json::from_str(field("steps")?).map_err(|e| OptimError::Format {
                what: format!("metadata `steps`: {e}"),
            })?;
        let mut optim = Optimizer::<B>::new(config)?;
        for (path, step) in steps {
            let eight_bit = st.tensor(&format!("{path}.state1")).is_ok();
            if eight_bit && config.optim != OptimKind::AdamW8bit {
                return Err(OptimError::Tensor {
                    name: format!("{path}.state1"),
                    what: "8-bit state in an adamw_torch optimizer".to_string(),
                });
            }
            let moments = if eight_bit {
                let (state1, numel) =
                    load_u8::<B::InnerBackend>(&st, &format!("{path}.state1"), None, device)?;
                let (state2, _) = load_u8::<B::InnerBackend>(
                    &st,
                    &format!("{path}.state2"),
                    Some(numel),
                    device,
                )?;
                let nb = Some(numel.div_ceil(BLOCKWISE_BLOCK));
                let (absmax1, _) =
                    load_f32::<B::InnerBackend>(&st, &format!("{path}.absmax1"), nb, device)?;
                let (absmax2, _) =
                    load_f32::<B::InnerBackend>(&st, &format!("{path}.absmax2"), nb, device)?;
                (
                    numel,
                    Moments::Blockwise8(Blockwise8 {
                        state1,
                        absmax1,
                        state2,
                        absmax2,
                    }),
                )
            } else {
                let (exp_avg, numel) =
                    load_f32::<B::InnerBackend>(&st, &format!("{path}.exp_avg"), None, device)?;
                let (exp_avg_sq, _) = load_f32::<B::InnerBackend>(
                    &st,
                    &format!("{path}.exp_avg_sq"),
                    Some(numel),
                    device,
                )?;
                (
                    numel,
                    Moments::Full {
                        exp_avg,
                        exp_avg_sq,
                    },
                )
            };
            let (numel, moments) = moments;
            optim.states.insert(
                path,
                ParamState {
                    step,
                    numel,
                    moments,
                },
            );
        }
        Ok(optim)
    }
}

fn view<'a>(
    st: &'a SafeTensors<'a>,
    name: &str,
    dtype: Dtype,
    len: Option<usize>,
) -> Result<TensorView<'a>, OptimError> {
    let err = |what: String| OptimError::Tensor {
        name: name.to_string(),
        what,
    };
    let v = st.tensor(name).map_err(|_| err("missing".to_string()))?;
    if v.dtype() != dtype || v.shape().len() != 1 {
        return Err(err(format!(
            "expected 1-D {dtype:?}, found {:?} {:?}",
            v.dtype(),
            v.shape()
        )));
    }
    if let Some(n) = len {
        if v.shape()[0] != n {
            return Err(err(format!(
                "expected {n} elements, found {}",
                v.shape()[0]
            )));
        }
    }
    Ok(v)
}

fn load_f32<B: Backend>(
    st: &SafeTensors<'_>,
    name: &str,
    len: Option<usize>,
    device: &B::Device,
) -> Result<(Tensor<B, 1>, usize), OptimError> {
    let v = view(st, name, Dtype::F32, len)?;
    let n = v.shape()[0];
    let data = TensorData::from_bytes_vec(v.data().to_vec(), [n], DType::F32);
    Ok((Tensor::from_data(data, (device, DType::F32)), n))
}

fn load_u8<B: Backend>(
    st: &SafeTensors<'_>,
    name: &str,
    len: Option<usize>,
    device: &B::Device,
) -> Result<(Tensor<B, 1, Int>, usize), OptimError> {
    let v = view(st, name, Dtype::U8, len)?;
    let n = v.shape()[0];
    let data = TensorData::from_bytes_vec(v.data().to_vec(), [n], DType::U8);
    Ok((Tensor::from_data(data, (device, DType::U8)), n))
}
