//! Tokenized examples and padded batches, in HF's layout so the model code reads like HF's.
//!
//! - `labels` are **not shifted**: `labels[t]` is `input_ids[t]` where the token is a target and
//!   [`IGNORE_INDEX`] (-100) elsewhere; the loss compares the logits at `t - 1` with `labels[t]`
//!   (HF `GPTJForCausalLM`, `loss_sum` in qtune-gptj). Pad positions are always -100.
//! - **Right padding for training** ([`Padding::Right`]): real tokens start at position 0 in every
//!   row, so position ids are simply `0..len` and a causal model never attends to a pad (pads come
//!   after every real token). **Left padding for generation** ([`Padding::Left`]): the last real
//!   token of every row sits at column `T - 1`, so all rows append their next token at the same
//!   column and the KV cache stays rectangular.
//! - `position_ids` follow HF's generation recipe for both: `cumsum(attention_mask) - 1`, and 1 on
//!   pad positions (`position_ids.masked_fill_(attention_mask == 0, 1)`), so a left-padded row gets
//!   the same positions as the row alone.
//! - Packed rows ([`crate::pack::collate_packed`]) hold several examples each, with
//!   `segment_ids`, positions restarting at 0 for each example and −100 on each example's first
//!   label (no loss across a boundary).
//! - Everything is flat row-major `[B, T]` `i64` (Burn's NdArray int element), ready for
//!   `TensorData::new(batch.input_ids, [b, t])`; no Burn dependency here.

use crate::error::{DataError, Result};

/// Label value meaning "no loss here" (PyTorch `CrossEntropyLoss(ignore_index=-100)`).
pub const IGNORE_INDEX: i64 = -100;

/// One tokenized training example: the full text's ids and, aligned with them, the labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`; [`IGNORE_INDEX`] on prompt tokens.
    pub labels: Vec<i64>,
}

impl Example {
    /// Builds `prompt ++ completion` with the loss on the completion only.
    pub fn from_prompt_completion(prompt: &[u32], completion: &[u32]) -> Self {
        let mut input_ids = Vec::with_capacity(prompt.len() + completion.len());
        input_ids.extend_from_slice(prompt);
        input_ids.extend_from_slice(completion);
        let mut labels = vec![IGNORE_INDEX; prompt.len()];
        labels.extend(completion.iter().map(|&t| i64::from(t)));
        Example { input_ids, labels }
    }

    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }

    /// Tokens that contribute to the loss after HF's shift (position 0 never does: nothing
    /// predicts it).
    pub fn n_target_tokens(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&l| l != IGNORE_INDEX)
            .count()
    }

    /// A batch's check of one example: as many labels as ids, at least one token. `name` says
    /// which example in the error ("example 3").
    pub(crate) fn check(&self, name: impl Fn() -> String) -> Result<()> {
        if self.input_ids.len() != self.labels.len() {
            return Err(DataError::Batch(format!(
                "{}: {} input ids but {} labels",
                name(),
                self.input_ids.len(),
                self.labels.len()
            )));
        }
        if self.is_empty() {
            return Err(DataError::Batch(format!("{} has no tokens", name())));
        }
        Ok(())
    }
}

/// Which side gets the pad tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// Training and teacher-forced evaluation.
    Right,
    /// Batched generation.
    Left,
}

/// A padded batch, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub batch_size: usize,
    pub seq_len: usize,
    pub input_ids: Vec<i64>,
    /// 1 on real tokens, 0 on pads.
    pub attention_mask: Vec<i64>,
    pub position_ids: Vec<i64>,
    /// [`IGNORE_INDEX`] on prompt tokens and pads.
    pub labels: Vec<i64>,
    /// Real (unpadded) length of each row.
    pub lengths: Vec<usize>,
    /// Packed rows ([`crate::pack`]): which example each token belongs to, `1, 2, …` in row
    /// order, 0 on pads; attention never crosses from one to another. `None`: one example per
    /// row (every batch but a packed training batch).
    pub segment_ids: Option<Vec<i64>>,
}

impl Batch {
    /// A `[batch_size, seq_len]` batch of pads only (`pad_id`, mask 0, label [`IGNORE_INDEX`],
    /// position 0), no `lengths` yet and no `segment_ids`: the collators write their rows into it.
    pub(crate) fn all_pad(batch_size: usize, seq_len: usize, pad_id: u32) -> Self {
        let n = batch_size * seq_len;
        Self {
            batch_size,
            seq_len,
            input_ids: vec![i64::from(pad_id); n],
            attention_mask: vec![0; n],
            position_ids: vec![0; n],
            labels: vec![IGNORE_INDEX; n],
            lengths: Vec::with_capacity(batch_size),
            segment_ids: None,
        }
    }

    /// `[batch_size, seq_len]`, the shape every field has.
    pub fn shape(&self) -> [usize; 2] {
        [self.batch_size, self.seq_len]
    }

    /// Target tokens in the batch after HF's shift: what to divide a summed loss by. Sum this over
    /// the micro-batches of one optimizer step to normalize by the step's total.
    pub fn n_target_tokens(&self) -> usize {
        self.labels
            .chunks(self.seq_len.max(1))
            .map(|row| row.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count())
            .sum()
    }
}

/// Pads `examples` to the longest one. `pad_id` only fills `input_ids` (GPT-J has no pad token;
/// HF uses eos = 50256): pads are masked out of attention and loss, so its value never matters.
pub fn collate(examples: &[&Example], pad_id: u32, padding: Padding) -> Result<Batch> {
    if examples.is_empty() {
        return Err(DataError::Batch("no examples to collate".into()));
    }
    for (i, ex) in examples.iter().enumerate() {
        ex.check(|| format!("example {i}"))?;
    }
    let rows: Vec<(&[u32], &[i64])> = examples
        .iter()
        .map(|e| (e.input_ids.as_slice(), e.labels.as_slice()))
        .collect();
    Ok(pad_rows(&rows, pad_id, padding))
}

/// Pads prompts for generation (no labels): left padding, labels all [`IGNORE_INDEX`].
pub fn collate_prompts(prompts: &[&[u32]], pad_id: u32) -> Result<Batch> {
    if prompts.is_empty() {
        return Err(DataError::Batch("no prompts to collate".into()));
    }
    if let Some(i) = prompts.iter().position(|p| p.is_empty()) {
        return Err(DataError::Batch(format!("prompt {i} has no tokens")));
    }
    let ignore: Vec<Vec<i64>> = prompts
        .iter()
        .map(|p| vec![IGNORE_INDEX; p.len()])
        .collect();
    let rows: Vec<(&[u32], &[i64])> = prompts
        .iter()
        .zip(&ignore)
        .map(|(p, l)| (*p, l.as_slice()))
        .collect();
    Ok(pad_rows(&rows, pad_id, Padding::Left))
}

fn pad_rows(rows: &[(&[u32], &[i64])], pad_id: u32, padding: Padding) -> Batch {
    let seq_len = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let mut batch = Batch::all_pad(rows.len(), seq_len, pad_id);
    for (b, (ids, labs)) in rows.iter().enumerate() {
        let len = ids.len();
        let start = b * seq_len
            + match padding {
                Padding::Right => 0,
                Padding::Left => seq_len - len,
            };
        for (j, (&id, &lab)) in ids.iter().zip(labs.iter()).enumerate() {
            batch.input_ids[start + j] = i64::from(id);
            batch.attention_mask[start + j] = 1;
            batch.labels[start + j] = lab;
        }
        batch.lengths.push(len);
    }
    batch.position_ids = hf_position_ids(&batch.attention_mask, seq_len);
    batch
}

/// HF: `position_ids = attention_mask.cumsum(-1) - 1; position_ids.masked_fill_(mask == 0, 1)`.
pub fn hf_position_ids(attention_mask: &[i64], seq_len: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(attention_mask.len());
    for row in attention_mask.chunks(seq_len.max(1)) {
        let mut cum = 0i64;
        for &m in row {
            cum += m;
            out.push(if m == 0 { 1 } else { cum - 1 });
        }
    }
    out
}
