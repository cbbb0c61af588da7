//! One micro-batch forward + backward, with or without per-block gradient checkpointing.
//!
//! Checkpointing is the segment-wise scheme of shared/notes/burn-0.21.md §5 (a nested
//! `.backward()` inside a backward node deadlocks in burn-autodiff 0.21):
//! 1. forward through all blocks on the **inner** backend (no graph), keeping only the block
//!    inputs `h_0 … h_{L-1}` and the last output `h_L`;
//! 2. `h_L` becomes a leaf; the head + loss run with autodiff and `backward()` gives `dL/dh_L`;
//! 3. for `i = L-1 … 0`: recompute block `i` with autodiff from the leaf `h_i`, and backpropagate
//!    `sum(block_i(h_i) ⊙ g)` with `g = dL/dh_{i+1}`; that yields block `i`'s LoRA grads and
//!    `dL/dh_i`. Every backward is top-level.
//!
//! Between forward and backward only `L + 1` hidden states `[B, T, D]` are alive instead of every
//! block's activations. [`Backprop::Offloaded`] parks them in host memory as well
//! ([`qtune_kernels::park`]: each input's copy runs beside the block it feeds), so only the
//! inputs of the blocks at work stay on the device. LoRA dropout masks are derived from one seed
//! per micro-batch, the block index and the projection, so the recomputed block applies the very
//! masks of the first forward.
use burn::module::AutodiffModule;
use burn::module::{ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use qtune_kernels::{LinearBackward, Parked};
use qtune_lm::BlockContext;

use crate::TrainError;

/// A hook called at the memory high-water points of a checkpointed step (all block inputs
/// alive; each recomputed block's graph alive; after its backward). Benchmarks pass one to
/// sample the device allocator, which has no peak counter; training passes `None`.
pub type MemoryProbe<'a> = Option<&'a dyn Fn()>;

fn probe_memory(probe: MemoryProbe<'_>) {
    if let Some(p) = probe {
        p();
    }
}

/// What the training loop needs from a causal LM, cut at block boundaries. Implemented for
/// `qtune_gptj::Gptj` in `model.rs`; generic so the same code runs on every backend.
pub trait SegmentedLm<B: Backend> {
    /// Per-batch inputs shared by all blocks (attention mask, rotary angles, dropout seed).
    type Ctx;
    /// The context of a batch; `dropout_seed` drives LoRA dropout (`None`: no dropout, as in
    /// evaluation). Each block derives its masks from it and its index, so a recomputed block
    /// draws the masks of its first run. `backward`: what the quantized linears keep for their
    /// backward (the dense weight only in a checkpointed block's recompute).
    fn context(
        &self,
        batch: &qtune_data::Batch,
        dropout_seed: Option<u64>,
        backward: LinearBackward,
    ) -> Self::Ctx;
    /// Token embeddings `h_0 [B, T, D]` of a batch.
    fn embed(&self, batch: &qtune_data::Batch) -> Tensor<B, 3>;
    fn num_blocks(&self) -> usize;
    fn block(&self, i: usize, h: Tensor<B, 3>, ctx: &Self::Ctx) -> Tensor<B, 3>;
    /// Summed token cross-entropy of `ln_f + lm_head` on `h_L` against the batch labels (HF's
    /// shift, -100 ignored), as a one-element tensor.
    fn loss_sum(
        &self,
        h: Tensor<B, 3>,
        batch: &qtune_data::Batch,
    ) -> Result<Tensor<B, 1>, TrainError>;
    /// A scalar whose backward gives `y` the gradient `dy`: how the checkpointed backward
    /// starts each block. The default, `(y ⊙ dy).sum()`, computes a product and a full
    /// reduction nobody reads; models on a [`qtune_kernels::QBackend`] use its free seed op.
    fn grad_seed(&self, y: Tensor<B, 3>, dy: Tensor<B, 3>) -> Tensor<B, 1> {
        (y * dy).sum()
    }
    /// Starts parking a kept block input in host memory ([`Backprop::Offloaded`]). The default
    /// keeps it on the device; models on a [`qtune_kernels::QBackend`] park it there.
    fn park(&self, h: Tensor<B, 3>) -> Parked<B, 3> {
        Parked::keep(h)
    }
    /// Visits block `i`'s parameters only.
    fn visit_block<V: ModuleVisitor<B>>(&self, i: usize, visitor: &mut V);
}

/// Moves the gradients of the visited parameters out of a backward's `grads` into `out`
/// (adding to one already there): one block's parameters per checkpointed backward, where
/// `GradientsParams::from_grads` + `GradientsAccumulator` walked the whole model twice per
/// block (host time growing with the square of the depth).
struct TakeGrads<'a, B: AutodiffBackend> {
    grads: &'a mut B::Gradients,
    out: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for TakeGrads<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(g) = param.val().grad_remove(self.grads) else {
            return;
        };
        let g = match self.out.remove::<B::InnerBackend, D>(param.id) {
            Some(prev) => prev + g,
            None => g,
        };
        self.out.register::<B::InnerBackend, D>(param.id, g);
    }
}

/// Result of one micro-batch: the summed (not averaged) loss and the gradients of
/// `loss_sum / norm`.
pub struct MicroStep {
    pub loss_sum: f64,
    pub grads: GradientsParams,
}

/// How a micro-batch's backward gets the activations it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backprop {
    /// Plain autodiff over the whole model: every block's activations stay alive until backward.
    Plain,
    /// Per-block gradient checkpointing (see the module docs): only the block inputs stay
    /// alive, each block is recomputed for its backward.
    Checkpointed,
    /// [`Backprop::Checkpointed`] with the block inputs parked in host memory between the
    /// forward and their block's backward, all but the last two (the first the backward reads).
    Offloaded,
}

impl Backprop {
    /// Whether the block inputs are parked ([`Backprop::Offloaded`]).
    pub fn parks(self) -> bool {
        self == Self::Offloaded
    }
}

/// One micro-batch: forward, then backward of `loss_sum / norm` as `backprop` says. Its graphs
/// are built and consumed under [`crate::replica::compute_lock`]: burn-autodiff 0.21 keeps one
/// process-wide graph locator, and a `backward()` finishing in one thread can free a graph
/// another thread is building, silently dropping its gradient (tracel-ai/burn#5573, fixed after
/// 0.21). Data-parallel ranks are threads; so are tests.
pub fn micro_step<B, M>(
    model: &M,
    batch: &qtune_data::Batch,
    norm: f32,
    dropout_seed: Option<u64>,
    backprop: Backprop,
) -> Result<MicroStep, TrainError>
where
    B: AutodiffBackend,
    M: SegmentedLm<B, Ctx = BlockContext<B>> + AutodiffModule<B>,
    M::InnerModule: SegmentedLm<B::InnerBackend, Ctx = BlockContext<B::InnerBackend>>,
{
    let (loss, grads) = {
        let _graphs = crate::replica::compute_lock();
        match backprop {
            Backprop::Plain => {
                let loss = whole_loss_sum(model, batch, dropout_seed)?;
                let grads = loss.clone().div_scalar(norm).backward();
                (loss.inner(), GradientsParams::from_grads(grads, model))
            }
            Backprop::Checkpointed | Backprop::Offloaded => {
                let park = backprop.parks();
                let inputs =
                    forward_keep_block_inputs::<B, M>(model, batch, dropout_seed, park, None);
                recompute_backward::<B, M>(model, batch, inputs, norm, None)?
            }
        }
    };
    // Read back (a device sync) once the lock is released: another rank issues its micro-step
    // while this one's work runs.
    Ok(MicroStep {
        loss_sum: loss.into_scalar().elem::<f64>(),
        grads,
    })
}

/// What the forward half of checkpointing hands the backward half: the hidden states
/// `[h_0, …, h_L]` (parked or kept) and the batch's context, both on the inner backend (built
/// once per step).
pub struct BlockInputs<B: AutodiffBackend> {
    pub hs: Vec<Parked<B::InnerBackend, 3>>,
    pub ctx: BlockContext<B::InnerBackend>,
}

/// Largest quantized weight (in elements) whose dequantized copy a recomputed block keeps for
/// its backward: the attention projections of 7–8B models (4096² = 2²⁴) are kept, their MLP
/// weights (45–67 M elements) dequantized once more instead. That is one more dequantization
/// of the MLP per step (about 1 % of a 7B step) for 0.25 GiB less at the step's peak.
pub const DENSE_BACKWARD_MAX: usize = 1 << 25;

/// The forward half of checkpointing: hidden states `[h_0, …, h_L]` on the inner backend,
/// `h_0 … h_{L-2}` parked in host memory if `park` ([`Backprop::Offloaded`]).
pub fn forward_keep_block_inputs<B, M>(
    model: &M,
    batch: &qtune_data::Batch,
    dropout_seed: Option<u64>,
    park: bool,
    probe: MemoryProbe<'_>,
) -> BlockInputs<B>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    M::InnerModule: SegmentedLm<B::InnerBackend, Ctx = BlockContext<B::InnerBackend>>,
{
    let inner = model.valid(); // refcount clones of the parameters, no graph
    let ctx = inner.context(batch, dropout_seed, LinearBackward::Quantized);
    let n = inner.num_blocks();
    let mut h = inner.embed(batch);
    let mut hs: Vec<Parked<B::InnerBackend, 3>> = Vec::with_capacity(n + 1);
    for i in 0..n {
        // h_i's copy to the host runs beside block i; its device buffer goes once block i
        // is enqueued (the compute stream waits for the copy there, not the host).
        let mut kept = if park && i + 2 <= n {
            inner.park(h.clone())
        } else {
            Parked::keep(h.clone())
        };
        h = inner.block(i, h, &ctx);
        kept.settle();
        hs.push(kept);
    }
    hs.push(Parked::keep(h));
    probe_memory(probe);
    BlockInputs { hs, ctx }
}

/// The backward half of checkpointing (see the module docs).
pub fn backward_recompute<B, M>(
    model: &M,
    batch: &qtune_data::Batch,
    inputs: BlockInputs<B>,
    norm: f32,
    probe: MemoryProbe<'_>,
) -> Result<MicroStep, TrainError>
where
    B: AutodiffBackend,
    M: SegmentedLm<B, Ctx = BlockContext<B>> + AutodiffModule<B>,
{
    let (loss, grads) = recompute_backward::<B, M>(model, batch, inputs, norm, probe)?;
    Ok(MicroStep {
        loss_sum: loss.into_scalar().elem::<f64>(),
        grads,
    })
}

/// [`backward_recompute`] with the summed loss left on the device (not read back).
fn recompute_backward<B, M>(
    model: &M,
    batch: &qtune_data::Batch,
    inputs: BlockInputs<B>,
    norm: f32,
    probe: MemoryProbe<'_>,
) -> Result<(Tensor<B::InnerBackend, 1>, GradientsParams), TrainError>
where
    B: AutodiffBackend,
    M: SegmentedLm<B, Ctx = BlockContext<B>> + AutodiffModule<B>,
{
    let BlockInputs { mut hs, ctx } = inputs;
    let n = model.num_blocks();
    assert_eq!(
        hs.len(),
        n + 1,
        "forward_keep_block_inputs returns L + 1 states"
    );
    let h_last = hs.pop().map(|h| Tensor::<B, 3>::from_inner(h.take()));
    let h_last = h_last.expect("L + 1 ≥ 1 states").require_grad();
    let loss = model.loss_sum(h_last.clone(), batch)?;
    let loss_sum = loss.clone().inner();
    let mut grads = loss.div_scalar(norm).backward();
    probe_memory(probe);
    let mut g = h_last.grad_remove(&mut grads);
    // Head params (LoRA on lm_head, if targeted) got their grads in this first backward.
    let mut out = GradientsParams::from_grads(grads, model);
    // The forward's context (mask, positions, dropout seed) on the autodiff backend, as
    // constants. The recompute keeps each small quantized weight's dequantized copy for the
    // backward that follows at once (one block's weights at a time): one dequantization per
    // such linear saved; see [`DENSE_BACKWARD_MAX`].
    // The block's output only carries the upstream gradient (`grad_seed` reads no values):
    // the linears that only form it skip their products.
    let ctx = BlockContext::from_inner(ctx)
        .with_backward(LinearBackward::DenseUpTo(DENSE_BACKWARD_MAX))
        .output_unread();
    while let Some(h) = hs.pop() {
        let i = hs.len();
        let Some(dy) = g.take() else {
            break; // nothing upstream depends on h_{i+1}: earlier blocks get no gradient
        };
        // h_{i-1} comes back from the host while block i runs.
        if let Some(next) = hs.last_mut() {
            next.prefetch();
        }
        let x = Tensor::<B, 3>::from_inner(h.take()).require_grad();
        let y = model.block(i, x.clone(), &ctx);
        probe_memory(probe);
        // `(y ⊙ dy).sum().backward()` without the product and the full reduction.
        let mut gb = model
            .grad_seed(y, Tensor::<B, 3>::from_inner(dy))
            .backward();
        probe_memory(probe);
        g = x.grad_remove(&mut gb);
        model.visit_block(
            i,
            &mut TakeGrads::<B> {
                grads: &mut gb,
                out: &mut out,
            },
        );
    }
    Ok((loss_sum, out))
}

/// Summed loss of a batch without gradients or dropout (evaluation).
pub fn eval_loss_sum<B: Backend, M: SegmentedLm<B>>(
    model: &M,
    batch: &qtune_data::Batch,
) -> Result<f64, TrainError> {
    Ok(whole_loss_sum(model, batch, None)?
        .into_scalar()
        .elem::<f64>())
}

/// Embedding, every block and the summed loss of a batch in one graph (no checkpointing).
fn whole_loss_sum<B: Backend, M: SegmentedLm<B>>(
    model: &M,
    batch: &qtune_data::Batch,
    dropout_seed: Option<u64>,
) -> Result<Tensor<B, 1>, TrainError> {
    let ctx = model.context(batch, dropout_seed, LinearBackward::Quantized);
    let mut h = model.embed(batch);
    for i in 0..model.num_blocks() {
        h = model.block(i, h, &ctx);
    }
    model.loss_sum(h, batch)
}
