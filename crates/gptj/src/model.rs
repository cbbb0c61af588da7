//! `Gptj`: HF `GPTJForCausalLM` (embedding → blocks → ln_f → lm_head with bias).
//!
//! Module layout ↔ HF names: `wte` = `transformer.wte`, `blocks[i]` = `transformer.h.{i}`,
//! `ln_f` = `transformer.ln_f`, `lm_head` = `lm_head` (see [`crate::names`]).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use qtune_kernels::QBackend;
use qtune_lora::Linear;

use crate::config::GptjConfig;
use crate::error::GptjError;
use crate::layers::{to_dtype, Block, BlockContext, KvSlot, LayerKv, LayerNorm};

/// HF's label value for "no loss at this position".
pub const IGNORE_INDEX: i64 = -100;

/// Rows of logits computed at once in [`Gptj::loss_sum`]: about 256 MiB of f32 logits per
/// chunk for GPT-J's 50,400-token vocabulary.
pub const LOSS_CHUNK_ELEMS: usize = 1 << 26;

#[derive(Module, Debug)]
pub struct Gptj<B: Backend> {
    /// Token embedding `[vocab_size, n_embd]`, frozen.
    pub wte: Param<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub ln_f: LayerNorm<B>,
    /// `[vocab_size, n_embd]` + bias `[vocab_size]`, kept dense.
    pub lm_head: Linear<B>,
    #[module(skip)]
    pub config: GptjConfig,
}

/// Past keys/values of every layer, for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerKv<B>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: vec![None; n_layer],
        }
    }

    /// Number of cached positions.
    pub fn past_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[1])
    }

    /// Keeps batch rows `rows` (in that order, repeats allowed): beam search's reordering.
    pub fn select_rows(&mut self, rows: &[usize]) {
        let Some(device) = self.layers.iter().flatten().next().map(|(k, _)| k.device()) else {
            return;
        };
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx.clone());
        }
    }
}

/// Host copy of an int tensor as i64 (labels, masks, positions are small).
pub(crate) fn host_i64<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .unwrap_or_default()
}

impl<B: QBackend> Gptj<B> {
    /// `ids [B, T]` → `h0 [B, T, n_embd]` (`transformer.wte`).
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        burn::tensor::module::embedding(self.wte.val(), ids)
    }

    /// The context for a forward without cache over `[batch, seq_len]` tokens; see
    /// [`BlockContext::new`] for the mask/position conventions.
    pub fn context(
        &self,
        batch: usize,
        seq_len: usize,
        attention_mask: Option<&[i64]>,
        position_ids: Option<&[i64]>,
        dropout_seed: Option<u64>,
    ) -> BlockContext<B> {
        BlockContext::new(
            self.config.rotary_dim(),
            batch,
            seq_len,
            0,
            attention_mask,
            position_ids,
            dropout_seed,
            &self.wte.device(),
        )
    }

    /// `ln_f` then `lm_head`, logits in f32 (HF casts them to float32): `[.., D] → [.., V]`.
    pub fn head<const D: usize>(&self, h_last: Tensor<B, D>) -> Tensor<B, D> {
        to_dtype(self.lm_head.forward(self.ln_f.forward(h_last)), DType::F32)
    }

    /// Runs the embedding and all blocks: `ids [B,T]` → last hidden state before `ln_f`.
    pub fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        ctx: &BlockContext<B>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let mut h = self.embed(ids);
        for (i, block) in self.blocks.iter().enumerate() {
            let layer = cache
                .as_deref_mut()
                .map(|c| KvSlot::Append(&mut c.layers[i]));
            h = block.forward_cached(h, ctx, layer);
        }
        h
    }

    /// HF `GPTJForCausalLM.forward`: logits `[B, T, vocab]` in f32.
    /// `attention_mask` is `[B, past+T]` (1 = token), `position_ids` `[B, T]`; with `cache`,
    /// `input_ids` are only the new tokens and the cache is extended.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        position_ids: Option<Tensor<B, 2, Int>>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, seq_len] = input_ids.dims();
        let past_len = cache.as_ref().map_or(0, |c| c.past_len());
        let mask = attention_mask.map(host_i64);
        let pos = position_ids.map(host_i64);
        let ctx = BlockContext::new(
            self.config.rotary_dim(),
            batch,
            seq_len,
            past_len,
            mask.as_deref(),
            pos.as_deref(),
            None,
            &self.wte.device(),
        );
        self.head(self.hidden(input_ids, &ctx, cache))
    }

    /// Sum of next-token cross-entropy losses and the number of target tokens, as HF's
    /// `ForCausalLMLoss`: position t predicts `labels[t+1]`, label −100 is ignored, the mean is
    /// `sum / n`. Only rows with a target go through `ln_f`/`lm_head`, in chunks of
    /// [`LOSS_CHUNK_ELEMS`] logits, so full f32 logits of all tokens never exist at once.
    /// `h_last`: `[B, T, D]` from the blocks (before `ln_f`); `labels`: `[B, T]`.
    pub fn loss_sum(
        &self,
        h_last: Tensor<B, 3>,
        labels: Tensor<B, 2, Int>,
    ) -> Result<(Tensor<B, 1>, usize), GptjError> {
        let rows = (LOSS_CHUNK_ELEMS / self.config.vocab_size).max(1);
        self.loss_sum_chunked(h_last, labels, rows)
    }

    /// [`Gptj::loss_sum`] with an explicit number of rows per chunk.
    pub fn loss_sum_chunked(
        &self,
        h_last: Tensor<B, 3>,
        labels: Tensor<B, 2, Int>,
        rows_per_chunk: usize,
    ) -> Result<(Tensor<B, 1>, usize), GptjError> {
        let [b, t, d] = h_last.dims();
        if labels.dims() != [b, t] {
            return Err(GptjError::Input(format!(
                "labels have shape {:?}, hidden states [{b}, {t}, _]",
                labels.dims()
            )));
        }
        let labels = host_i64(labels);
        let vocab = self.config.vocab_size as i64;
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for bi in 0..b {
            for ti in 0..t.saturating_sub(1) {
                let y = labels[bi * t + ti + 1];
                if y == IGNORE_INDEX {
                    continue;
                }
                if !(0..vocab).contains(&y) {
                    return Err(GptjError::Input(format!(
                        "label {y} at [{bi}, {}] outside [0, {vocab}) and not -100",
                        ti + 1
                    )));
                }
                rows.push((bi * t + ti) as i64);
                targets.push(y);
            }
        }
        let device = h_last.device();
        let n = rows.len();
        if n == 0 {
            // Keep the graph connected so a backward through an all-ignored batch is a no-op.
            return Ok((h_last.sum().mul_scalar(0.0).reshape([1]), 0));
        }
        let flat = h_last.reshape([b * t, d]);
        let mut total: Option<Tensor<B, 1>> = None;
        for start in (0..n).step_by(rows_per_chunk.max(1)) {
            let end = (start + rows_per_chunk.max(1)).min(n);
            let len = end - start;
            let idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(rows[start..end].to_vec(), [len]),
                &device,
            );
            let tgt = Tensor::<B, 1, Int>::from_data(
                TensorData::new(targets[start..end].to_vec(), [len]),
                &device,
            );
            // Logits in the model's dtype; the fused cross-entropy reads them in f32 (HF casts
            // logits to float32 before its loss) and keeps only them for the backward.
            let logits = self
                .lm_head
                .forward(self.ln_f.forward(flat.clone().select(0, idx)));
            let nll = qtune_kernels::cross_entropy(logits, tgt).sum();
            total = Some(match total {
                Some(acc) => acc + nll,
                None => nll,
            });
        }
        Ok((total.unwrap_or_else(|| Tensor::zeros([1], &device)), n))
    }
}
