//! The replica seam of the training loop: what one rank needs from the others. The trainer
//! depends on this module only; one device runs it with [`Single`] (every exchange is the
//! identity), a data-parallel run with `crate::parallel`'s burn-collective implementation, whose
//! launcher calls the trainer (never the reverse).
use std::ops::Range;
use std::sync::{Mutex, MutexGuard};

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend, BackendTypes};

use crate::TrainError;

/// Rank `rank`'s slice of a global batch of `len` indices over `world` ranks: positions
/// `rank·len/world .. (rank+1)·len/world`. The slices of all ranks partition `0..len` in order.
pub fn shard_range(len: usize, world: usize, rank: usize) -> Range<usize> {
    let world = world.max(1);
    (rank * len / world)..((rank + 1) * len / world)
}

/// The LoRA dropout seed of `rank` for a micro-batch whose run-wide seed is `seed` (drawn from
/// the checkpointed RNG, identical on all ranks). Rank 0 uses `seed` itself, so a one-rank run
/// draws the masks it always did; other ranks get a splitmix64-scrambled seed
/// ([`qtune_lm::mix_seed`] with the rank as salt), so ranks do not share mask patterns.
pub fn rank_seed(seed: u64, rank: usize) -> u64 {
    if rank == 0 {
        return seed;
    }
    qtune_lm::mix_seed(seed, rank as u64)
}

static COMPUTE: Mutex<()> = Mutex::new(());

/// Serializes autodiff work and RNG-seeded draws between the ranks of one process
/// (burn-autodiff 0.21's process-global graph cleaner, tracel-ai/burn#5573, and the backend's
/// process-global RNG). Never held across an exchange between ranks.
pub fn compute_lock() -> MutexGuard<'static, ()> {
    COMPUTE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gradients, tokens and loss of one optimizer step: one rank's sums, or their sums over all
/// ranks after [`Replicas::reduce`].
pub struct Reduced {
    /// Summed (not yet token-normalized) gradients.
    pub grads: GradientsParams,
    pub target_tokens: u64,
    pub loss_sum: f64,
    pub input_tokens: u64,
}

/// The inner backend's device type of `B`.
pub type InnerDevice<B> = <<B as AutodiffBackend>::InnerBackend as BackendTypes>::Device;

/// What a rank tells the others at the set-up barrier ([`Replicas::barrier`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetupReport {
    /// Whether this rank's set-up succeeded.
    pub ok: bool,
    /// The step it starts at (the ranks must agree).
    pub start_step: usize,
    /// How many optimizer steps (one [`Replicas::reduce`] each) it will run.
    pub steps: usize,
}

impl SetupReport {
    /// A failed set-up: the peers see the failure before they compare steps.
    pub fn failed() -> Self {
        Self {
            ok: false,
            start_step: 0,
            steps: 0,
        }
    }
}

/// How one rank of the training loop meets the others: exactly one [`Replicas::barrier`] after
/// set-up, then one [`Replicas::reduce`] per optimizer step.
pub trait Replicas {
    /// This rank, `0..world`; rank 0 alone writes.
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Before set-up, with this rank's model replica: sizes the exchange.
    fn prepare<B: AutodiffBackend, M: AutodiffModule<B>>(&mut self, model: &M);
    /// After set-up: every rank sends its [`SetupReport`]; an error if any rank failed or the
    /// ranks disagree.
    fn barrier<B: Backend>(
        &mut self,
        device: &B::Device,
        report: SetupReport,
    ) -> Result<(), TrainError>;
    /// This rank's sums of one optimizer step → the sums over all ranks.
    fn reduce<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        model: &M,
        local: Reduced,
        device: &InnerDevice<B>,
    ) -> Result<Reduced, TrainError>;
}

/// One rank: every exchange is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Replicas for Single {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn prepare<B: AutodiffBackend, M: AutodiffModule<B>>(&mut self, _: &M) {}

    fn barrier<B: Backend>(&mut self, _: &B::Device, _: SetupReport) -> Result<(), TrainError> {
        Ok(())
    }

    fn reduce<B: AutodiffBackend, M: AutodiffModule<B>>(
        &mut self,
        _: &M,
        local: Reduced,
        _: &InnerDevice<B>,
    ) -> Result<Reduced, TrainError> {
        Ok(local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_every_global_batch_in_order() {
        for len in 0..40 {
            for world in 1..9 {
                let mut next = 0;
                for rank in 0..world {
                    let r = shard_range(len, world, rank);
                    assert_eq!(r.start, next, "len {len} world {world} rank {rank}");
                    assert!(r.end >= r.start);
                    // Balanced: sizes differ by at most one.
                    assert!(r.len() == len / world || r.len() == len / world + 1);
                    next = r.end;
                }
                assert_eq!(next, len, "len {len} world {world}: slices cover the batch");
            }
        }
        // 2 ranks × batch 4 = the two halves of a global batch of 8.
        assert_eq!(shard_range(8, 2, 0), 0..4);
        assert_eq!(shard_range(8, 2, 1), 4..8);
    }

    #[test]
    fn rank_seeds_keep_rank_zero_and_differ_between_ranks() {
        assert_eq!(rank_seed(12345, 0), 12345);
        let s: Vec<u64> = (0..8).map(|r| rank_seed(12345, r)).collect();
        let mut d = s.clone();
        d.sort_unstable();
        d.dedup();
        assert_eq!(d.len(), s.len(), "{s:?}");
    }
}
