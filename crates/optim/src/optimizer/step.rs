//! The optimizer step: each group of tensors that share an update rule and step count updated
//! in one pass over their concatenation.

use super::{BlockwiseCache, Moments, MomentsCache, OptimKind, Optimizer, ParamState};
use crate::blockwise::{Maps, BLOCK};
use crate::grads::GradNorm;
use crate::passes::{Gather, Item, PathCollector, StepMapper};
use crate::update::{self, AdamTensors, Blockwise8, Step};
use crate::OptimError;
use burn::module::{AutodiffModule, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor, TensorPrimitive};
use qtune_kernels::QBackend;
use std::collections::{BTreeMap, HashMap};

/// Whether a cache of `order` at `step` holds the concatenated state of `group`: the same
/// tensors, in the same order, at the step count the group has reached.
fn cache_fits<B: Backend>(order: &[String], step: u64, group: &Group<B>) -> bool {
    step == group.prev_step
        && order.len() == group.items.len()
        && order.iter().zip(&group.items).all(|(a, it)| *a == it.path)
}

/// The step itself: the backend's device ops (`q_cat_flat`, `q_adam8_blockwise`) where it has them.
impl<B: AutodiffBackend> Optimizer<B>
where
    B::InnerBackend: QBackend,
{
    /// One optimizer step at learning rate `lr` over every parameter of `module` that has a
    /// gradient in `grads`. Checks all parameters before touching any, so an error leaves the
    /// optimizer state unchanged (the module is consumed either way).
    ///
    /// Gradients must be finite: unlike bitsandbytes' kernels (which skip non-finite elements)
    /// this writes NaN into weights and state, as torch does. [`crate::clip_grad_norm`] returns
    /// the global norm; skip the step when it is not finite.
    pub fn step<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
    ) -> Result<M, OptimError> {
        self.step_impl(lr, module, grads, None).map(|(m, _)| m)
    }

    /// [`crate::normalize_by_tokens`], [`crate::clip_grad_norm`] and [`Optimizer::step`] in one
    /// pass over each group's concatenated gradients: `grads` are sums over `tokens` target
    /// tokens (from `micro_batches` micro-batches, for the error); they are divided by `tokens`
    /// (the same f32 division per element), their global L2 norm taken (f32 sums of squares
    /// per group, added in f64: it may differ in the last bits from the per-tensor sums of
    /// `clip_grad_norm`), scaled by `max_norm / (norm + 1e-6)` when that is below 1, then
    /// applied. A few launches per group instead of four or five per tensor (the trainer's
    /// normalize + norm + clip spent ~1,700 launches a step on SmolLM2's 420 LoRA tensors).
    ///
    /// A non-finite norm returns `module` unchanged with that norm, the state untouched: the
    /// caller decides (the trainer stops with an error naming the step).
    ///
    /// # Errors
    /// As [`Optimizer::step`]; [`OptimError::NoTokens`] when `tokens` is 0.
    pub fn step_normalized<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
        tokens: u64,
        micro_batches: usize,
        max_norm: f64,
    ) -> Result<(M, GradNorm), OptimError> {
        self.step_normalized_scaled(lr, module, grads, (tokens, 1.0), micro_batches, max_norm)
    }

    /// [`Optimizer::step_normalized`] for gradients of a loss multiplied by `loss_scale`
    /// (float16 dynamic loss scaling): they are divided by `tokens · loss_scale` in the same
    /// one f32 division. With `loss_scale` a power of two (and `tokens < 2²⁴`) the divisor is
    /// exact, so gradients that did not overflow give the unscaled update bit for bit.
    ///
    /// # Errors
    /// As [`Optimizer::step_normalized`].
    pub fn step_normalized_scaled<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
        (tokens, loss_scale): (u64, f64),
        micro_batches: usize,
        max_norm: f64,
    ) -> Result<(M, GradNorm), OptimError> {
        if tokens == 0 {
            return Err(OptimError::NoTokens { micro_batches });
        }
        let divisor = (tokens as f64 * loss_scale) as f32;
        self.step_impl(lr, module, grads, Some((divisor, max_norm)))
    }

    fn step_impl<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
        normalize: Option<(f32, f64)>,
    ) -> Result<(M, GradNorm), OptimError> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(OptimError::Config {
                field: "lr",
                value: lr.to_string(),
                reason: "must be finite and >= 0",
            });
        }
        let mut collector = PathCollector::<B> {
            grads: &grads,
            stack: Vec::new(),
            found: Vec::new(),
            _b: Default::default(),
        };
        module.visit(&mut collector);
        let mut paths: HashMap<ParamId, String> = HashMap::new();
        let mut seen = std::collections::HashSet::new();
        for (id, path, numel, grad_numel) in collector.found {
            if grad_numel != numel {
                return Err(OptimError::GradShape {
                    path,
                    expected: numel,
                    got: grad_numel,
                });
            }
            if !seen.insert(path.clone()) {
                return Err(OptimError::DuplicatePath { path });
            }
            if let Some(s) = self.states.get(&path) {
                if s.numel != numel {
                    return Err(OptimError::StateShape {
                        path,
                        expected: s.numel,
                        got: numel,
                    });
                }
            }
            paths.insert(id, path);
        }
        // Pass 1: every (path, flat param, flat grad). Pass 2: one fused update per group of
        // tensors that share an update rule and step count (a handful of large kernels instead
        // of ~200 small ones per tensor: on a GPU the per-tensor version spent 0.5 s per step
        // launching kernels). Pass 3: put the new values back by ParamId.
        let mut gather = Gather::<B> {
            grads: &mut grads,
            paths: &paths,
            items: Vec::new(),
        };
        module.visit(&mut gather);
        let items = gather.items;
        let mut groups: BTreeMap<(bool, u64), Vec<usize>> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            let step = self.states.get(&item.path).map_or(0, |s| s.step);
            let eight_bit = match self.states.get(&item.path) {
                Some(s) => matches!(s.moments, Moments::Blockwise8(_)),
                None => self.config.uses_8bit(item.p.dims()[0]),
            };
            groups.entry((eight_bit, step)).or_default().push(i);
        }
        let mut slots: Vec<Option<Item<B::InnerBackend>>> = items.into_iter().map(Some).collect();
        // Each group's gradients concatenated once (8-bit ones padded to whole blocks).
        let mut prepared = Vec::with_capacity(groups.len());
        for ((eight_bit, prev_step), members) in groups {
            let items: Vec<Item<B::InnerBackend>> =
                members.iter().filter_map(|&i| slots[i].take()).collect();
            let Some(device) = items.first().map(|it| it.p.device()) else {
                continue;
            };
            let gs = items
                .iter()
                .map(|it| {
                    let g = it.g.clone();
                    if eight_bit {
                        let n = g.dims()[0];
                        update::pad_float(g, n.div_ceil(BLOCK) * BLOCK)
                    } else {
                        g
                    }
                })
                .collect();
            let group = Group {
                lens: items.iter().map(|it| it.p.dims()[0]).collect(),
                g: cat(gs),
                items,
                device,
                prev_step,
            };
            prepared.push((eight_bit, group));
        }
        let mut norm = GradNorm {
            total_norm: 0.0,
            scale: 1.0,
        };
        if let Some((divisor, max_norm)) = normalize {
            for (_, group) in prepared.iter_mut() {
                group.g = group.g.clone().div_scalar(divisor);
            }
            norm = group_norm(prepared.iter().map(|(_, group)| &group.g), max_norm);
            if !norm.total_norm.is_finite() {
                return Ok((module, norm));
            }
            if norm.scale != 1.0 {
                for (_, group) in prepared.iter_mut() {
                    group.g = group.g.clone().mul_scalar(norm.scale as f32);
                }
            }
        }
        let mut updated: HashMap<ParamId, Tensor<B::InnerBackend, 1>> = HashMap::new();
        for (eight_bit, group) in prepared {
            let ids: Vec<ParamId> = group.items.iter().map(|it| it.id).collect();
            let new = if eight_bit {
                self.update_8bit(group, lr)
            } else {
                self.update_full(group, lr)
            };
            updated.extend(ids.into_iter().zip(new));
        }
        let mut mapper = StepMapper::<B> {
            updated: &mut updated,
        };
        Ok((module.map(&mut mapper), norm))
    }

    fn maps(&mut self, device: &burn::tensor::Device<B::InnerBackend>) -> Maps<B::InnerBackend> {
        self.maps.get_or_insert_with(|| Maps::new(device)).clone()
    }

    /// AdamW (torch) or bnb's 32-bit Adam on the concatenation of the group's tensors
    /// (elementwise rules, so the result equals per-tensor updates bit for bit).
    fn update_full(
        &mut self,
        group: Group<B::InnerBackend>,
        lr: f64,
    ) -> Vec<Tensor<B::InnerBackend, 1>> {
        let cached = self
            .moments_cache
            .take()
            .filter(|c| cache_fits(&c.order, c.step, &group));
        let device = &group.device;
        let (mut ps, mut ms, mut vs, mut order) = (vec![], vec![], vec![], vec![]);
        for (it, &n) in group.items.into_iter().zip(&group.lens) {
            let state = self.states.remove(&it.path).map(|s| s.moments);
            // With the cache, every member's state is a slice of its buffers: drop the slices.
            if cached.is_none() {
                let (m, v) = match state {
                    Some(Moments::Full {
                        exp_avg,
                        exp_avg_sq,
                    }) => (exp_avg, exp_avg_sq),
                    _ => (
                        Tensor::zeros([n], (device, DType::F32)),
                        Tensor::zeros([n], (device, DType::F32)),
                    ),
                };
                ms.push(m);
                vs.push(v);
            }
            ps.push(it.p);
            order.push(it.path);
        }
        if let Some(c) = cached {
            ms.push(c.exp_avg);
            vs.push(c.exp_avg_sq);
        }
        let (step, g) = (group.prev_step + 1, group.g);
        let h = self.config.hyper();
        let (x, s) = (
            AdamTensors {
                p: cat(ps),
                m: cat(ms),
                v: cat(vs),
            },
            Step { n: step, lr, h },
        );
        let AdamTensors { p, m, v } = match self.config.optim {
            OptimKind::AdamW => update::torch_adamw(x, g, s),
            OptimKind::AdamW8bit => update::bnb_adam32(x, g, s),
        };
        self.moments_cache = Some(MomentsCache {
            order: order.clone(),
            step,
            exp_avg: m.clone(),
            exp_avg_sq: v.clone(),
        });
        self.split_back(
            p,
            order,
            group.lens,
            step,
            |n| n,
            |off, n| Moments::Full {
                exp_avg: m.clone().narrow(0, off, n),
                exp_avg_sq: v.clone().narrow(0, off, n),
            },
        )
    }

    /// Hands each tensor of a group its slice of the concatenated result: the updated values
    /// `p[off..off + n]` and its new state `moments(off, n)`, where `off` advances by
    /// `stride(n)` (the tensor's length, or its padded length for 8-bit blocks).
    fn split_back(
        &mut self,
        p: Tensor<B::InnerBackend, 1>,
        order: Vec<String>,
        lens: Vec<usize>,
        step: u64,
        stride: impl Fn(usize) -> usize,
        moments: impl Fn(usize, usize) -> Moments<B::InnerBackend>,
    ) -> Vec<Tensor<B::InnerBackend, 1>> {
        let mut out = Vec::with_capacity(lens.len());
        let mut off = 0;
        for (path, n) in order.into_iter().zip(lens) {
            out.push(p.clone().narrow(0, off, n));
            let state = ParamState {
                step,
                numel: n,
                moments: moments(off, n),
            };
            self.states.insert(path, state);
            off += stride(n);
        }
        out
    }

    /// bnb's 8-bit blockwise Adam on the concatenation of the group's tensors, each padded to
    /// whole 256-value blocks (zero values, zero codes: exactly the padding of a lone tensor's
    /// last block), so every block, and thus the result, equals the per-tensor update.
    fn update_8bit(
        &mut self,
        group: Group<B::InnerBackend>,
        lr: f64,
    ) -> Vec<Tensor<B::InnerBackend, 1>> {
        let maps = self.maps(&group.device);
        let cached = self
            .blockwise_cache
            .take()
            .filter(|c| cache_fits(&c.order, c.step, &group));
        let (mut ps, mut c1, mut a1, mut c2, mut a2, mut order) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (it, &n) in group.items.into_iter().zip(&group.lens) {
            let padded = n.div_ceil(BLOCK) * BLOCK;
            let s = self.states.remove(&it.path).map(|s| s.moments);
            // With the cache, every member's state is a slice of its buffers: drop the slices.
            if cached.is_none() {
                let s = match s {
                    Some(Moments::Blockwise8(s)) => s,
                    _ => Blockwise8::zeros(n, &maps, &group.device),
                };
                c1.push(update::pad_codes(s.state1, padded, maps.signed_zero));
                c2.push(update::pad_codes(s.state2, padded, maps.unsigned_zero));
                a1.push(s.absmax1);
                a2.push(s.absmax2);
            }
            ps.push(update::pad_float(it.p, padded));
            order.push(it.path);
        }
        let step = group.prev_step + 1;
        let state = match cached {
            Some(c) => c.state,
            None => Blockwise8 {
                state1: Tensor::cat(c1, 0),
                absmax1: cat(a1),
                state2: Tensor::cat(c2, 0),
                absmax2: cat(a2),
            },
        };
        let s = Step {
            n: step,
            lr,
            h: self.config.hyper(),
        };
        let (p, s) = update::bnb_adam8_blockwise(cat(ps), group.g, state, &maps, s);
        self.blockwise_cache = Some(BlockwiseCache {
            order: order.clone(),
            step,
            state: s.clone(),
        });
        let padded = |n: usize| n.div_ceil(BLOCK) * BLOCK;
        self.split_back(p, order, group.lens, step, padded, |off, n| {
            let (b0, nb) = (off / BLOCK, n.div_ceil(BLOCK));
            Moments::Blockwise8(Blockwise8 {
                state1: s.state1.clone().narrow(0, off, n),
                absmax1: s.absmax1.clone().narrow(0, b0, nb),
                state2: s.state2.clone().narrow(0, off, n),
                absmax2: s.absmax2.clone().narrow(0, b0, nb),
            })
        })
    }
}

/// Tensors updated together (one update rule, one step count), read from the module.
struct Group<B: Backend> {
    items: Vec<Item<B>>,
    /// Where the tensors live (that of the first).
    device: B::Device,
    /// Each tensor's length.
    lens: Vec<usize>,
    /// The gradients concatenated (8-bit ones padded to whole blocks).
    g: Tensor<B, 1>,
    /// The step count the tensors' state has reached.
    prev_step: u64,
}

/// The global L2 norm of the (normalized) group gradients — each group's f32 sum of squares on
/// the device, read back once and added in f64 — and `clip_grad_norm`'s factor for `max_norm`.
fn group_norm<'a, B: Backend>(
    gs: impl Iterator<Item = &'a Tensor<B, 1>>,
    max_norm: f64,
) -> GradNorm {
    // Sums in a fixed order (`sum_all`): the norm, and so a clipped update, is the same in every
    // run.
    let sums: Vec<Tensor<B, 1>> = gs
        .map(|g| qtune_kernels::sum_all(g.clone() * g.clone()))
        .collect();
    let total_norm = if sums.is_empty() {
        0.0
    } else {
        match Tensor::cat(sums, 0)
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
        {
            Ok(v) => v.iter().sum::<f64>().sqrt(),
            Err(_) => f64::NAN,
        }
    };
    let coef = max_norm / (total_norm + crate::grads::CLIP_EPS);
    let clip = total_norm.is_finite() && max_norm.is_finite() && max_norm > 0.0 && coef < 1.0;
    GradNorm {
        total_norm,
        scale: if clip { coef as f32 as f64 } else { 1.0 },
    }
}

/// `Tensor::cat` along dim 0 ([`QBackend::q_cat_flat`]: on CUDA one device copy per part
/// rather than a kernel each), without a copy for a single tensor.
fn cat<B: QBackend>(mut ts: Vec<Tensor<B, 1>>) -> Tensor<B, 1> {
    if ts.len() == 1 {
        ts.pop().expect("one tensor")
    } else {
        let parts = ts
            .into_iter()
            .map(|t| t.into_primitive().tensor())
            .collect();
        Tensor::from_primitive(TensorPrimitive::Float(B::q_cat_flat(parts)))
    }
}
