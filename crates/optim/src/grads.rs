//! Gradient utilities over a whole module: global-norm clipping (Burn's `GradientClipping::Norm`
//! clips each tensor by its own norm, pitfall 7) and token-normalized gradient accumulation.

use crate::OptimError;
use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

/// torch's `clip_grad_norm_` adds this to the norm before dividing.
pub const CLIP_EPS: f64 = 1e-6;

/// Result of [`clip_grad_norm`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradNorm {
    /// L2 norm over all gradients of the module before clipping.
    pub total_norm: f64,
    /// Factor the gradients were multiplied by (1.0 when not clipped).
    pub scale: f64,
}

/// Sums of squares, one `[1]` tensor per parameter with a gradient.
struct SquaredNorms<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sums: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorms<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.sums.push(qtune_kernels::sum_all(g.clone() * g));
        }
    }
}

/// How [`ScaleGrads`] changes each gradient.
#[derive(Clone, Copy)]
enum Scale {
    Mul(f32),
    Div(f32),
}

struct ScaleGrads<'a> {
    grads: &'a mut GradientsParams,
    scale: Scale,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let g = match self.scale {
                Scale::Mul(f) => g.mul_scalar(f),
                Scale::Div(d) => g.div_scalar(d),
            };
            self.grads.register::<B::InnerBackend, D>(param.id, g);
        }
    }
}

/// L2 norm of all gradients of `module`'s parameters taken together (one device sync): each
/// tensor's sum of squares in f32 on the device, summed on the host in f64.
pub fn global_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = SquaredNorms::<B> {
        grads,
        sums: Vec::new(),
    };
    module.visit(&mut v);
    if v.sums.is_empty() {
        return 0.0;
    }
    let sums = Tensor::cat(v.sums, 0).into_data().convert::<f64>();
    match sums.to_vec::<f64>() {
        Ok(s) => s.iter().sum::<f64>().sqrt(),
        // convert::<f64>() guarantees the dtype; treat a failure as a non-finite norm.
        Err(_) => f64::NAN,
    }
}

/// `torch.nn.utils.clip_grad_norm_` over ALL trainable parameters of `module`: if the global
/// norm exceeds `max_norm`, every gradient is multiplied by `max_norm / (norm + 1e-6)`.
/// A non-finite norm leaves the gradients untouched and is returned: the caller should skip
/// the step (bnb would skip the non-finite elements, torch would write NaN into the weights).
/// `max_norm <= 0` or non-finite disables clipping (the norm is still computed and returned).
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> GradNorm {
    let total_norm = global_grad_norm::<B, M>(module, grads);
    let coef = max_norm / (total_norm + CLIP_EPS);
    if !(total_norm.is_finite() && max_norm.is_finite() && max_norm > 0.0) || coef >= 1.0 {
        return GradNorm {
            total_norm,
            scale: 1.0,
        };
    }
    // torch multiplies by the f32 coefficient tensor.
    module.visit(&mut ScaleGrads {
        grads,
        scale: Scale::Mul(coef as f32),
    });
    GradNorm {
        total_norm,
        scale: coef as f32 as f64,
    }
}

/// Gradient accumulation where the update is the mean over all target tokens of the whole
/// batch, however it is split into micro-batches: backpropagate each micro-batch's **summed**
/// token loss, `accumulate` its gradients with its target-token count, then `finish` divides
/// the summed gradients once by the total count. (Averaging per-micro-batch means would weight
/// a token of a short micro-batch more than one of a long micro-batch.)
pub struct TokenAccumulator<M> {
    inner: GradientsAccumulator<M>,
    tokens: u64,
    micro_batches: usize,
}

impl<M> Default for TokenAccumulator<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> TokenAccumulator<M> {
    pub fn new() -> Self {
        Self {
            inner: GradientsAccumulator::new(),
            tokens: 0,
            micro_batches: 0,
        }
    }

    /// Adds the gradients of one micro-batch's summed loss over `target_tokens` tokens.
    pub fn accumulate<B: AutodiffBackend>(
        &mut self,
        module: &M,
        grads: GradientsParams,
        target_tokens: usize,
    ) where
        M: AutodiffModule<B>,
    {
        self.inner.accumulate::<B>(module, grads);
        self.tokens += target_tokens as u64;
        self.micro_batches += 1;
    }

    /// Target tokens accumulated so far (the loss of the step is `sum of losses / tokens()`).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    /// The summed (not yet normalized) gradients with their target tokens and micro-batch
    /// count; resets the accumulator. The hand-off point for a data-parallel all-reduce of
    /// sums, after which [`normalize_by_tokens`] divides once by the global count.
    pub fn take<B: AutodiffBackend>(&mut self) -> (GradientsParams, u64, usize)
    where
        M: AutodiffModule<B>,
    {
        let (tokens, micro_batches) = (self.tokens, self.micro_batches);
        self.tokens = 0;
        self.micro_batches = 0;
        (self.inner.grads(), tokens, micro_batches)
    }

    /// The summed gradients divided by the total number of target tokens; resets the
    /// accumulator. Errors when no target token was seen (a fully masked batch).
    pub fn finish<B: AutodiffBackend>(&mut self, module: &M) -> Result<GradientsParams, OptimError>
    where
        M: AutodiffModule<B>,
    {
        let (grads, tokens, micro_batches) = self.take::<B>();
        normalize_by_tokens::<B, M>(module, grads, tokens, micro_batches)
    }
}

/// Summed gradients over `tokens` target tokens (from `micro_batches` micro-batches, for the
/// error) divided once by `tokens`: the token-mean gradient of the whole step.
pub fn normalize_by_tokens<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    tokens: u64,
    micro_batches: usize,
) -> Result<GradientsParams, OptimError> {
    if tokens == 0 {
        return Err(OptimError::NoTokens { micro_batches });
    }
    module.visit(&mut ScaleGrads {
        grads: &mut grads,
        scale: Scale::Div(tokens as f32),
    });
    Ok(grads)
}
