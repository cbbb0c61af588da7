//! Data-parallel training: the training loop of [`crate::trainer`] on N ranks (one thread per
//! device; several hosts through burn-collective's orchestrator), LoRA gradients all-reduced
//! with burn-collective 0.21.
//!
//! Per optimizer step every rank:
//! 1. draws the same global batches from the [`Sampler`](qtune_data::Sampler) (seed, global
//!    batch size `per_device_train_batch_size × world`) and keeps its slice
//!    [`crate::replica::shard_range`]:
//!    rank `r` of `W` takes positions `r·G/W .. (r+1)·G/W` of a global batch of `G` indices
//!    (contiguous, in order; sizes differ by at most one);
//! 2. runs its micro-batches with the existing step code and sums the gradients of the summed
//!    token losses (no division yet);
//! 3. all-reduces (sum), in ONE flat tensor: every trainable parameter's gradient (zeros where the
//!    rank has none), one "has a gradient" flag per parameter, the target-token count, the loss
//!    sum, the input-token count and an abort flag;
//! 4. divides by the global target-token count, clips by the global norm and takes the optimizer
//!    step: every rank holds the same reduced tensor, so all replicas stay identical.
//!
//! Rank 0 alone writes metrics, checkpoints and the best adapter. World size 1 skips the
//! collective entirely ([`crate::replica::Single`]): the single-device run is the N = 1 case of
//! the same loop. [`GradSync`] is this module's [`Replicas`]: the trainer sees only that seam.
//!
//! Failures: every rank does exactly one all-reduce per step, so a rank that fails (error or
//! panic) mid-run sends one all-reduce with the abort flag set in place of its next one; its
//! peers see the flag in that step's result and stop with [`TrainError::PeerFailed`] instead of
//! waiting forever. A barrier after set-up (resume, optimizer state) does the same for set-up
//! errors and checks that all ranks start at the same step.
//!
//! Threads of one process share burn-autodiff 0.21's process-global graph cleaner (a concurrent
//! `backward()` can drop another thread's gradient, tracel-ai/burn#5573, fixed after 0.21) and
//! the backend's process-global RNG (LoRA dropout seeds it): each rank therefore holds
//! [`crate::replica::compute_lock`] while it builds its model, runs a micro-batch or steps the
//! optimizer.
//!
//! Transport: burn-collective 0.21 has no NCCL path. Within a host it moves tensors between
//! devices with the backend's `float_to_device` and adds them (tree all-reduce, arity 2); between
//! hosts it exchanges them over WebSocket (ring). Only the LoRA gradients travel (7.3 M values
//! per step for GPT-J-6B with r = 16 on q_proj and v_proj).
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend, Device, DeviceId};
use burn::tensor::{DType, FloatDType, Tensor, TensorData, TensorPrimitive};
use burn_collective::{CollectiveConfig, PeerId, ReduceOperation};

use crate::config::DistributedConfig;
use crate::replica::{InnerDevice, Reduced, Replicas, SetupReport};
use crate::TrainError;

mod launch;
pub use launch::train_parallel;

/// Devices for `indices` (`--devices 0,1`): CUDA device `i` on the CUDA backend; on the CPU
/// backend (one device) each index is one more CPU rank, a test/debug mode.
pub fn devices_from_indices<D: Device>(indices: &[usize]) -> Result<Vec<D>, TrainError> {
    let bad = |msg: String| Err(TrainError::Devices { msg });
    if indices.is_empty() {
        return bad("no device given".into());
    }
    let mut seen = indices.to_vec();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != indices.len() {
        return bad(format!("device indices repeat: {indices:?}"));
    }
    let type_id = D::default().to_id().type_id;
    indices
        .iter()
        .map(|&i| match u16::try_from(i) {
            Ok(index_id) => Ok(D::from_id(DeviceId { type_id, index_id })),
            Err(_) => Err(TrainError::Devices {
                msg: format!("device index {i} is out of range"),
            }),
        })
        .collect()
}

/// burn-collective's config for `local` devices on this host (+ the global level when several
/// hosts take part).
pub fn collective_config(
    local: usize,
    distributed: Option<&DistributedConfig>,
) -> Result<CollectiveConfig, TrainError> {
    let mut c = CollectiveConfig::default().with_num_devices(local);
    if let Some(d) = distributed {
        let addr = |field: &'static str, s: &str| {
            s.parse().map_err(|e: String| TrainError::Collective {
                what: field,
                msg: e,
            })
        };
        c = c
            .with_num_nodes(d.num_nodes)
            .with_global_address(addr("distributed.orchestrator", &d.orchestrator)?)
            .with_node_address(addr("distributed.node_address", &d.node_address)?)
            .with_data_service_port(d.data_service_port);
    }
    Ok(c)
}

/// Tail of the flat all-reduce buffer after the per-parameter flags.
const TAIL: usize = 7; // tokens lo/hi, loss hi/lo, input tokens lo/hi, abort

/// How a rank of a data-parallel run exchanges its gradients: through burn-collective.
pub struct GradSync {
    rank: usize,
    world: usize,
    peer: PeerId,
    /// All-reduces of the training loop this rank has done / will do (set by the barrier).
    done: usize,
    planned: usize,
    /// Length of the flat all-reduce buffer (set by `prepare`).
    len: usize,
    /// This rank has taken part in the set-up barrier.
    barrier_sent: bool,
    /// A peer's abort flag was seen: it expects no further all-reduce.
    aborted: bool,
}

impl GradSync {
    /// Global rank `rank` of `world`, registered with burn-collective as `PeerId(rank)`.
    pub(crate) fn collective(rank: usize, world: usize) -> Self {
        Self {
            rank,
            world,
            peer: PeerId::from(rank),
            done: 0,
            planned: 0,
            len: 0,
            barrier_sent: false,
            aborted: false,
        }
    }

    /// Called once when this rank stops with an error or panic: if its peers still expect an
    /// all-reduce from it, sends a failed set-up barrier (before the loop) or one buffer laid out
    /// as [`Replicas::reduce`]'s with the abort flag set (in the loop).
    pub(crate) fn on_error<B: Backend>(&mut self, device: &B::Device) {
        let peer = self.peer;
        if !self.barrier_sent {
            let _ = Replicas::barrier::<B>(self, device, SetupReport::failed());
            return;
        }
        if self.aborted || self.done >= self.planned {
            return;
        }
        let mut v = vec![0.0f32; self.len];
        if let Some(last) = v.last_mut() {
            *last = 1.0;
        }
        let t = f32_tensor::<B>(v, device);
        self.done = self.planned;
        if let Err(e) = all_reduce(peer, t, "abort") {
            tracing::error!(
                rank = self.rank,
                "could not tell the other ranks to stop: {e}"
            );
        }
    }
}

impl Replicas for GradSync {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn prepare<B: AutodiffBackend, M: AutodiffModule<B>>(&mut self, model: &M) {
        self.len = buffer_len::<B, M>(model);
    }

    fn barrier<B: Backend>(
        &mut self,
        device: &B::Device,
        report: SetupReport,
    ) -> Result<(), TrainError> {
        let SetupReport {
            ok,
            start_step,
            steps,
        } = report;
        self.barrier_sent = true;
        let v = [if ok { 0.0 } else { 1.0 }, start_step as f32, 1.0];
        let t = f32_tensor::<B>(v.to_vec(), device);
        let out = all_reduce_host::<B>(self.peer, t, "set-up barrier")?;
        if out[0] > 0.0 {
            return Err(TrainError::PeerFailed {
                rank: self.rank,
                phase: "set-up",
            });
        }
        if out[2] != self.world as f32 {
            return Err(TrainError::Collective {
                what: "set-up barrier",
                msg: format!(
                    "{} ranks took part but this rank expected {} (every host must pass the same \
                     number of --devices and the same distributed.num_nodes)",
                    out[2], self.world
                ),
            });
        }
        if out[1] != start_step as f32 * out[2] {
            return Err(TrainError::Collective {
                what: "set-up barrier",
                msg: format!(
                    "ranks start at different steps (rank {} at {start_step}; sum {})",
                    self.rank, out[1]
                ),
            });
        }
        self.planned = steps;
        Ok(())
    }

    /// One all-reduce (sum) of a flat buffer: every trainable parameter's gradient (zeros where
    /// this rank has none), one "has a gradient" flag per parameter, then the counts, the loss
    /// and the abort flag ([`TAIL`]).
    fn reduce<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        model: &M,
        local: Reduced,
        device: &InnerDevice<B>,
    ) -> Result<Reduced, TrainError> {
        let Reduced {
            grads,
            target_tokens,
            loss_sum,
            input_tokens,
        } = local;
        let mut flat = Flatten::<B> {
            grads: &grads,
            device: device.clone(),
            parts: Vec::new(),
            present: Vec::new(),
        };
        model.visit(&mut flat);
        let n_params = flat.present.len();
        let mut tail = flat.present;
        tail.extend(split_u64(target_tokens));
        let hi = loss_sum as f32;
        tail.extend([hi, (loss_sum - hi as f64) as f32]);
        tail.extend(split_u64(input_tokens));
        tail.push(0.0); // abort
        let mut parts = flat.parts;
        parts.push(f32_tensor::<B::InnerBackend>(tail, device));
        let buffer = Tensor::cat(parts, 0);
        let total = buffer.dims()[0];
        let out = all_reduce(self.peer, buffer, "all-reduce of the LoRA gradients")?;
        self.done += 1;
        let tail = host_f32(
            out.clone()
                .narrow(0, total - n_params - TAIL, n_params + TAIL),
        );
        let t = &tail[n_params..];
        if t[6] > 0.0 {
            self.aborted = true;
            return Err(TrainError::PeerFailed {
                rank: self.rank,
                phase: "training",
            });
        }
        let mut un = Unflatten::<B> {
            flat: out,
            offset: 0,
            index: 0,
            present: &tail[..n_params],
            grads: GradientsParams::new(),
        };
        model.visit(&mut un);
        Ok(Reduced {
            grads: un.grads,
            target_tokens: join_u64(t[0], t[1]),
            loss_sum: t[2] as f64 + t[3] as f64,
            input_tokens: join_u64(t[4], t[5]),
        })
    }
}

/// Length of [`Replicas::reduce`]'s flat buffer for `model`.
fn buffer_len<B: AutodiffBackend, M: AutodiffModule<B>>(model: &M) -> usize {
    let mut sizes = ParamSizes(0, 0);
    model.visit(&mut sizes);
    sizes.0 + sizes.1 + TAIL
}

/// `u64` as two f32 (low 16 bits, the rest): their sums over ranks stay exact in f32 while each
/// rank counts < 2^32 per step and there are < 256 ranks.
fn split_u64(v: u64) -> [f32; 2] {
    [(v & 0xFFFF) as f32, (v >> 16) as f32]
}

fn join_u64(lo: f32, hi: f32) -> u64 {
    lo as u64 + ((hi as u64) << 16)
}

fn all_reduce<B: Backend>(
    peer: PeerId,
    t: Tensor<B, 1>,
    what: &'static str,
) -> Result<Tensor<B, 1>, TrainError> {
    let prim = t.into_primitive().tensor();
    let out = burn_collective::all_reduce::<B>(peer, prim, ReduceOperation::Sum).map_err(|e| {
        TrainError::Collective {
            what,
            msg: format!("{e:?}"),
        }
    })?;
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}

fn all_reduce_host<B: Backend>(
    peer: PeerId,
    t: Tensor<B, 1>,
    what: &'static str,
) -> Result<Vec<f32>, TrainError> {
    Ok(host_f32(all_reduce(peer, t, what)?))
}

fn host_f32<B: Backend>(t: Tensor<B, 1>) -> Vec<f32> {
    // convert::<f32>() fixes the dtype, so to_vec cannot fail on it.
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// An f32 tensor whatever the device's default float dtype (bf16 would round the counts).
fn f32_tensor<B: Backend>(v: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = v.len();
    Tensor::from_data(TensorData::new(v, [n]), (device, DType::F32))
}

/// Shape and dtype of a trainable parameter (visit order is the same on every rank: same model
/// code); `None` for frozen ones.
fn trainable<B: AutodiffBackend, const D: usize>(
    param: &Param<Tensor<B, D>>,
) -> Option<([usize; D], DType)> {
    let v = param.val();
    v.is_require_grad().then(|| (v.dims(), v.dtype()))
}

struct ParamSizes(usize, usize);

impl<B: AutodiffBackend> ModuleVisitor<B> for ParamSizes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some((dims, _)) = trainable(param) {
            self.0 += dims.iter().product::<usize>();
            self.1 += 1;
        }
    }
}

struct Flatten<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    device: <B::InnerBackend as burn::tensor::backend::BackendTypes>::Device,
    parts: Vec<Tensor<B::InnerBackend, 1>>,
    present: Vec<f32>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Flatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((dims, _)) = trainable(param) else {
            return;
        };
        let n = dims.iter().product::<usize>();
        let g = self.grads.get::<B::InnerBackend, D>(param.id);
        self.present.push(if g.is_some() { 1.0 } else { 0.0 });
        // Summed in f32 whatever the gradient's dtype (bf16 sums would lose bits).
        self.parts.push(match g {
            Some(g) => g.reshape([n]).cast(FloatDType::F32),
            None => Tensor::zeros([n], (&self.device, DType::F32)),
        });
    }
}

struct Unflatten<'a, B: AutodiffBackend> {
    flat: Tensor<B::InnerBackend, 1>,
    offset: usize,
    index: usize,
    present: &'a [f32],
    grads: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unflatten<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some((dims, dtype)) = trainable(param) else {
            return;
        };
        let n = dims.iter().product::<usize>();
        let (start, present) = (self.offset, self.present[self.index] > 0.0);
        self.offset += n;
        self.index += 1;
        // A parameter no rank computed a gradient for stays without one, as in a one-rank run.
        if present {
            let g = self.flat.clone().narrow(0, start, n).reshape(dims);
            let g = g.cast(FloatDType::from(dtype));
            self.grads.register::<B::InnerBackend, D>(param.id, g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_the_f32_split() {
        for v in [0u64, 1, 65535, 65536, 1 << 30, (1 << 39) + 12345] {
            let [lo, hi] = split_u64(v);
            assert_eq!(join_u64(lo, hi), v);
            // The sum of 100 ranks' halves is exact too.
            assert_eq!(join_u64(lo * 100.0, hi * 100.0), v * 100);
        }
    }

    #[test]
    fn collective_configs_are_complete() {
        assert!(collective_config(2, None).unwrap().is_valid());
        let d = DistributedConfig {
            num_nodes: 2,
            node_rank: 0,
            orchestrator: "ws://10.0.0.1:3000".into(),
            node_address: "ws://10.0.0.1:3001".into(),
            data_service_port: 3001,
        };
        // All four global fields set: burn-collective accepts it (a partial set is invalid).
        assert!(collective_config(2, Some(&d)).unwrap().is_valid());
    }

    #[test]
    fn device_lists() {
        type D = <burn::backend::NdArray as burn::tensor::backend::BackendTypes>::Device;
        assert_eq!(devices_from_indices::<D>(&[0, 1]).unwrap().len(), 2);
        assert!(devices_from_indices::<D>(&[])
            .unwrap_err()
            .to_string()
            .contains("no device"));
        assert!(devices_from_indices::<D>(&[1, 1])
            .unwrap_err()
            .to_string()
            .contains("repeat"));
    }
}
