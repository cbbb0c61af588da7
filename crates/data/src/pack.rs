//! Padding-free packing (`[data] packing = true`): several training examples share one row of
//! at most `max_length` tokens.
//!
//! - **Which examples share a row** ([`Packing::new`]): once, before training, the examples are
//!   shuffled with the data seed (ChaCha8 stream [`PACK_STREAM`], not an epoch's) and placed in
//!   that order by **first fit**: each example goes into the first row (lowest index) that still
//!   has room for it, else opens a new row. Deterministic in `(seed, lengths, max_length)`; a
//!   max-tree over the rows' free space makes it O(n log n). Examples are never split.
//! - **The sampler draws rows**: a [`crate::Sampler`] over `0..n_rows` shuffles the rows each
//!   epoch, and its saved position indexes rows, so checkpoints and exact resume work unchanged.
//! - **A row** ([`collate_packed`]): the examples back to back, `segment_ids` 1, 2, … (0 on the
//!   pads after the last, up to the batch's longest row), positions restarting at 0 for each
//!   example, and −100 on the first label of each example: the last token of one example never
//!   predicts the first of the next (position t predicts `labels[t+1]`), so a packed row's
//!   summed loss is exactly the sum of its examples' losses, and its target-token count theirs.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::batch::{Batch, Example, IGNORE_INDEX};
use crate::error::{DataError, Result};

/// ChaCha8 stream of the packing shuffle (the sampler's epochs use streams 0, 1, …).
pub const PACK_STREAM: u64 = u64::MAX;

/// Which examples share each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    pub max_length: usize,
    /// Indices into the example list, per row, in the order they sit in the row.
    pub rows: Vec<Vec<usize>>,
    /// Tokens in each row.
    pub row_tokens: Vec<usize>,
}

impl Packing {
    /// First-fit packing of examples of these `lengths` (see the module docs). Errors on an
    /// empty list, an empty example, or one longer than `max_length`.
    pub fn new(lengths: &[usize], max_length: usize, seed: u64) -> Result<Self> {
        if lengths.is_empty() {
            return Err(DataError::Empty {
                what: "packing".into(),
            });
        }
        if max_length == 0 {
            return Err(DataError::Batch("packing: max_length must be ≥ 1".into()));
        }
        if let Some(i) = lengths.iter().position(|&l| l == 0 || l > max_length) {
            return Err(DataError::Batch(format!(
                "packing: example {i} has {} tokens, outside 1..={max_length} (max_length)",
                lengths[i]
            )));
        }
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(PACK_STREAM);
        order.shuffle(&mut rng);

        let mut free = FreeTree::new(lengths.len(), max_length);
        let mut rows: Vec<Vec<usize>> = Vec::new();
        let mut row_tokens: Vec<usize> = Vec::new();
        for i in order {
            let len = lengths[i];
            // Rows ≥ rows.len() are unopened (all free): the first fit always exists.
            let r = free.first_fit(len);
            if r == rows.len() {
                rows.push(Vec::new());
                row_tokens.push(0);
            }
            rows[r].push(i);
            row_tokens[r] += len;
            free.set(r, max_length - row_tokens[r]);
        }
        Ok(Packing {
            max_length,
            rows,
            row_tokens,
        })
    }

    /// [`Packing::new`] over the examples' lengths.
    pub fn of_examples(examples: &[Example], max_length: usize, seed: u64) -> Result<Self> {
        let lengths: Vec<usize> = examples.iter().map(Example::len).collect();
        Self::new(&lengths, max_length, seed)
    }

    pub fn n_rows(&self) -> usize {
        self.rows.len()
    }

    pub fn n_examples(&self) -> usize {
        self.rows.iter().map(Vec::len).sum()
    }

    pub fn n_tokens(&self) -> usize {
        self.row_tokens.iter().sum()
    }

    /// Real tokens / (rows × `max_length`).
    pub fn fill_ratio(&self) -> f64 {
        self.n_tokens() as f64 / (self.n_rows() * self.max_length).max(1) as f64
    }

    /// The examples of row `r`, in row order.
    pub fn row<'a>(&self, r: usize, examples: &'a [Example]) -> Vec<&'a Example> {
        self.rows[r].iter().map(|&i| &examples[i]).collect()
    }
}

/// A max-tree over the free space of each row: the leftmost row with room for `len` in
/// O(log n).
struct FreeTree {
    leaves: usize,
    node: Vec<usize>,
}

impl FreeTree {
    fn new(n: usize, cap: usize) -> Self {
        let leaves = n.next_power_of_two();
        Self {
            leaves,
            node: vec![cap; 2 * leaves],
        }
    }

    fn set(&mut self, leaf: usize, free: usize) {
        let mut i = leaf + self.leaves;
        self.node[i] = free;
        while i > 1 {
            i /= 2;
            self.node[i] = self.node[2 * i].max(self.node[2 * i + 1]);
        }
    }

    /// Leftmost leaf with at least `len` free (the caller guarantees one exists).
    fn first_fit(&self, len: usize) -> usize {
        debug_assert!(self.node[1] >= len);
        let mut i = 1;
        while i < self.leaves {
            i = if self.node[2 * i] >= len {
                2 * i
            } else {
                2 * i + 1
            };
        }
        i - self.leaves
    }
}

/// Packed rows → a right-padded [`Batch`] with `segment_ids` (see the module docs). Each row is
/// its examples back to back; rows are padded to the longest one.
pub fn collate_packed(rows: &[Vec<&Example>], pad_id: u32) -> Result<Batch> {
    if rows.is_empty() {
        return Err(DataError::Batch("no rows to collate".into()));
    }
    for (r, row) in rows.iter().enumerate() {
        if row.is_empty() {
            return Err(DataError::Batch(format!("packed row {r} has no examples")));
        }
        for (k, ex) in row.iter().enumerate() {
            ex.check(|| format!("packed row {r}, example {k}"))?;
        }
    }
    let lengths: Vec<usize> = rows
        .iter()
        .map(|row| row.iter().map(|e| e.len()).sum())
        .collect();
    let batch_size = rows.len();
    let seq_len = lengths.iter().copied().max().unwrap_or(0);
    let n = batch_size * seq_len;
    let mut input_ids = vec![i64::from(pad_id); n];
    let mut attention_mask = vec![0i64; n];
    let mut position_ids = vec![0i64; n];
    let mut labels = vec![IGNORE_INDEX; n];
    let mut segment_ids = vec![0i64; n];
    for (b, row) in rows.iter().enumerate() {
        let mut at = b * seq_len;
        for (k, ex) in row.iter().enumerate() {
            for (t, (&id, &lab)) in ex.input_ids.iter().zip(&ex.labels).enumerate() {
                input_ids[at] = i64::from(id);
                attention_mask[at] = 1;
                position_ids[at] = t as i64;
                // Nothing of this example predicts its first token.
                labels[at] = if t == 0 { IGNORE_INDEX } else { lab };
                segment_ids[at] = k as i64 + 1;
                at += 1;
            }
        }
    }
    Ok(Batch {
        batch_size,
        seq_len,
        input_ids,
        attention_mask,
        position_ids,
        labels,
        lengths,
        segment_ids: Some(segment_ids),
    })
}
