//! Deterministic shuffling with a resumable position.
//!
//! The order of epoch `e` is a Fisher-Yates permutation drawn from ChaCha8 seeded with `seed` on
//! stream `e`: it depends only on `(seed, epoch, len)`, never on what ran before, so a run resumed
//! from a saved [`Position`] sees exactly the batches an uninterrupted run would have seen.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Where the sampler stands: `index` examples of epoch `epoch`'s order were already handed out.
/// Save it in a checkpoint; [`Sampler::resume`] continues from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub index: usize,
}

/// Hands out batches of example indices, epoch after epoch, forever.
#[derive(Debug, Clone)]
pub struct Sampler {
    seed: u64,
    len: usize,
    batch_size: usize,
    drop_last: bool,
    pos: Position,
    order: Vec<usize>,
}

impl Sampler {
    /// `drop_last`: skip an epoch's final short batch, so every batch has `batch_size` examples.
    pub fn new(len: usize, batch_size: usize, seed: u64, drop_last: bool) -> Result<Self> {
        Self::resume(len, batch_size, seed, drop_last, Position::default())
    }

    /// Continues from `pos` (from [`Sampler::position`] of an earlier run with the same
    /// `len`, `batch_size`, `seed` and `drop_last`).
    pub fn resume(
        len: usize,
        batch_size: usize,
        seed: u64,
        drop_last: bool,
        pos: Position,
    ) -> Result<Self> {
        if len == 0 {
            return Err(DataError::Empty {
                what: "sampler".into(),
            });
        }
        if batch_size == 0 {
            return Err(DataError::Batch("batch_size must be at least 1".into()));
        }
        if drop_last && batch_size > len {
            return Err(DataError::Batch(format!(
                "batch_size {batch_size} > {len} examples with drop_last: no batch at all"
            )));
        }
        if pos.index > len {
            return Err(DataError::Batch(format!(
                "resume position {pos:?} is past the {len} examples of an epoch"
            )));
        }
        Ok(Sampler {
            seed,
            len,
            batch_size,
            drop_last,
            pos,
            order: epoch_order(seed, pos.epoch, len),
        })
    }

    pub fn position(&self) -> Position {
        self.pos
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.len / self.batch_size
        } else {
            self.len.div_ceil(self.batch_size)
        }
    }

    /// The next batch of indices into the dataset; moves to the next epoch when this one is done.
    /// Batches never straddle two epochs.
    pub fn next_batch(&mut self) -> Vec<usize> {
        let left = self.len - self.pos.index;
        if left == 0 || (self.drop_last && left < self.batch_size) {
            self.pos = Position {
                epoch: self.pos.epoch + 1,
                index: 0,
            };
            self.order = epoch_order(self.seed, self.pos.epoch, self.len);
        }
        let start = self.pos.index;
        let end = (start + self.batch_size).min(self.len);
        self.pos.index = end;
        self.order[start..end].to_vec()
    }
}

/// The permutation of `0..len` used in `epoch`.
pub fn epoch_order(seed: u64, epoch: u64, len: usize) -> Vec<usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut rng);
    order
}
