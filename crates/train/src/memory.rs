//! Activation memory with and without per-block checkpointing, measured by the caller's byte
//! counter (xtask and a test install [`CountingAlloc`] as their global allocator; NdArray tensors live on the
//! heap). "Kept" = bytes alive after the forward and before the backward, minus the bytes alive
//! before the forward: the autodiff graph's saved tensors in plain mode, the block inputs
//! `h_0 … h_L` in checkpointed mode.
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use serde::Serialize;

use qtune_lm::BlockContext;

use crate::step::{self, SegmentedLm};
use crate::TrainError;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// The system allocator plus a count of live heap bytes. A binary that measures installs it with
/// `#[global_allocator] static A: CountingAlloc = CountingAlloc;` and passes [`live_bytes`] to
/// [`measure`]; without that the count stays 0.
pub struct CountingAlloc;

// SAFETY: forwards to the system allocator; only adds bookkeeping.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
}

/// Heap bytes alive now, as counted by [`CountingAlloc`].
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

#[derive(Debug, Clone, Serialize)]
pub struct ActivationBytes {
    pub n_blocks: usize,
    /// Bytes of one block input `[B, T, D]` (f32).
    pub block_input_bytes: usize,
    pub plain_bytes: usize,
    pub checkpointed_bytes: usize,
}

pub fn measure<B, M>(
    model: &M,
    batch: &qtune_data::Batch,
    d_model: usize,
    bytes_now: &dyn Fn() -> usize,
) -> Result<ActivationBytes, TrainError>
where
    B: AutodiffBackend,
    M: SegmentedLm<B, Ctx = BlockContext<B>> + AutodiffModule<B>,
    M::InnerModule: SegmentedLm<B::InnerBackend, Ctx = BlockContext<B::InnerBackend>>,
{
    let [b, t] = batch.shape();
    // Plain: the whole graph is alive once the loss exists.
    let before = bytes_now();
    let ctx = model.context(batch, None, qtune_kernels::LinearBackward::Quantized);
    let mut h = model.embed(batch);
    for i in 0..model.num_blocks() {
        h = model.block(i, h, &ctx);
    }
    let loss = model.loss_sum(h, batch)?;
    let plain = bytes_now().saturating_sub(before);
    drop(loss.backward());
    drop(ctx);

    // Checkpointed: only the block inputs are alive between the two halves.
    let before = bytes_now();
    let hs = step::forward_keep_block_inputs::<B, M>(model, batch, None, false, None);
    let checkpointed = bytes_now().saturating_sub(before);
    step::backward_recompute::<B, M>(model, batch, hs, 1.0, None)?;
    Ok(ActivationBytes {
        n_blocks: model.num_blocks(),
        block_input_bytes: b * t * d_model * 4,
        plain_bytes: plain,
        checkpointed_bytes: checkpointed,
    })
}
