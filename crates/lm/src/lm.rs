//! [`CausalLm`]: the seam between a model family (GPT-J, Llama, …) and everything above it.
//! A family provides its embedding, its blocks, its final norm + head and its linears by HF
//! name; the forward, the chunked loss, generation, perplexity, LoRA attachment and PEFT
//! adapter I/O are written once here, on top of those.

use std::path::Path;

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use qtune_kernels::QBackend;
use qtune_lora::merge::ExportDType;
use qtune_lora::peft::{PeftAdapter, PeftAdapterConfig};
use qtune_lora::{Linear, LoraConfig};

use crate::context::{host_i64, to_dtype, BlockContext, KvCache, KvSlot, Positions, TokenInputs};
use crate::error::LmError;
use crate::generate::GenerationConfig;
use crate::lora::{LoraParam, ParamCounts};
use crate::merge::MergeReport;
use crate::perplexity::Perplexity;

/// HF's label value for "no loss at this position".
pub const IGNORE_INDEX: i64 = -100;

/// Rows of logits computed at once in [`CausalLm::loss_sum`]: about 256 MiB of f32 logits per
/// chunk for a 50,000-token vocabulary. The default of [`loss_chunk_elems`].
pub const LOSS_CHUNK_ELEMS: usize = 1 << 26;

static LOSS_CHUNK: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(LOSS_CHUNK_ELEMS);

/// Logits per chunk of [`CausalLm::loss_sum`] in this process: [`LOSS_CHUNK_ELEMS`] unless
/// [`set_loss_chunk_elems`] changed it.
pub fn loss_chunk_elems() -> usize {
    LOSS_CHUNK.load(std::sync::atomic::Ordering::Relaxed)
}

/// Sets [`loss_chunk_elems`] for this process: for `bench train`, which compares the memory the
/// head's chunks reserve (a chunk's logits and gradient are the step's largest transients,
/// alive only between the forward and the backward). The loss is the same sum in any chunking
/// up to the f32 order of adding the chunks.
///
/// # Errors
/// [`LmError::Input`] for 0.
pub fn set_loss_chunk_elems(n: usize) -> Result<(), LmError> {
    if n == 0 {
        return Err(LmError::Input(
            "the loss chunk must hold at least one logit".into(),
        ));
    }
    LOSS_CHUNK.store(n, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// One decoder block of a family, as [`CausalLm::block`] runs it.
pub trait DecoderBlock<B: QBackend> {
    /// `h [B, T, D] → h'`, reading and extending this layer's KV cache if given.
    fn forward_cached(
        &self,
        h: Tensor<B, 3>,
        ctx: &BlockContext<B>,
        cache: Option<KvSlot<'_, B>>,
    ) -> Tensor<B, 3>;
}

/// A decoder-only causal language model as HF's `*ForCausalLM`: `embed → blocks → logits`.
///
/// Linears are named by their HF module path (`model.layers.0.self_attn.q_proj`, …), the head
/// `lm_head`; PEFT's adapter keys and `target_modules` match those names.
pub trait CausalLm<B: QBackend>: Sized + Clone {
    /// HF's `model_type` (`gptj`, `llama`, `qwen2`, `mistral`).
    fn model_type(&self) -> &str;
    fn vocab_size(&self) -> usize;
    /// Context window (`n_positions` / `max_position_embeddings`).
    fn max_positions(&self) -> usize;
    fn num_layers(&self) -> usize;
    /// Rotary angles and attention window shared by every block.
    fn positions(&self) -> Positions;
    /// The frozen token embedding `[vocab_size, D]` (`transformer.wte`, `model.embed_tokens`):
    /// it fixes the model's device and dtype, and [`CausalLm::embed`] reads it.
    fn embedding(&self) -> &Param<Tensor<B, 2>>;
    fn device(&self) -> B::Device {
        self.embedding().device()
    }
    /// The activations' dtype (that of the embedding).
    fn dtype(&self) -> DType {
        self.embedding().val().dtype()
    }
    /// Parameters of the base model (no adapters), as HF counts them (tied weights once).
    fn base_params(&self) -> u64;
    /// `ids [B, T]` → `h0 [B, T, D]`.
    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        burn::tensor::module::embedding(self.embedding().val(), ids)
    }
    /// Block `i` of the stack (`transformer.h.{i}`, `model.layers.{i}`).
    fn layer(&self, i: usize) -> &dyn DecoderBlock<B>;
    /// Block `i`: `h [B, T, D] → h'`, reading and extending the layer's KV cache if given.
    fn block(
        &self,
        i: usize,
        h: Tensor<B, 3>,
        ctx: &BlockContext<B>,
        cache: Option<KvSlot<'_, B>>,
    ) -> Tensor<B, 3> {
        self.layer(i).forward_cached(h, ctx, cache)
    }
    /// Visits block `i`'s parameters only (the checkpointed backward collects one block's
    /// gradients without walking the whole model once per block).
    fn visit_block<V: burn::module::ModuleVisitor<B>>(&self, i: usize, visitor: &mut V);
    /// The final norm (`ln_f`, `model.norm`) of the last hidden state.
    fn final_norm<const D: usize>(&self, h_last: Tensor<B, D>) -> Tensor<B, D>;
    /// The output projection `lm_head` (for a tied head, a dense linear over the embedding).
    fn lm_head(&self) -> &Linear<B>;
    /// Final norm then `lm_head`, logits in the model's dtype: `[.., D] → [.., V]`.
    fn logits<const D: usize>(&self, h_last: Tensor<B, D>) -> Tensor<B, D> {
        self.lm_head().forward(self.final_norm(h_last))
    }
    /// Every linear with its HF module path, in HF's module order, `lm_head` last.
    fn linears(&self) -> Vec<(String, &Linear<B>)>;
    /// As [`CausalLm::linears`], mutably.
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)>;
    /// Every parameter that is not in a linear (embeddings, norms) by HF name, with its shape,
    /// flattened: what a merged export writes besides the linears.
    fn other_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<B, 1>)>;
    /// HF `config.json` of this model (`model_type` and `architectures` included).
    fn hf_config(&self) -> serde_json::Value;
    /// The end-of-sequence id of the config (the first, where HF lists several).
    fn eos_token_id(&self) -> Option<u32>;
    /// `lm_head` is the embedding (HF saves it once, under the embedding's name).
    fn tied_head(&self) -> bool {
        false
    }

    /// A copy whose LoRA factors are in `dtype` (the activations'), so an inference forward
    /// does not cast them per call; weights are shared, not copied (a module's clone shares
    /// its tensors).
    fn with_adapter_dtype(&self, dtype: DType) -> Self {
        let mut model = self.clone();
        for (_, linear) in model.linears_mut() {
            *linear = linear.with_adapter_dtype(dtype);
        }
        model
    }

    /// The context of a forward without cache over `[batch, seq_len]` tokens; see
    /// [`BlockContext::new`] for the mask/position conventions.
    fn context(
        &self,
        batch: usize,
        seq_len: usize,
        attention_mask: Option<&[i64]>,
        position_ids: Option<&[i64]>,
        dropout_seed: Option<u64>,
    ) -> BlockContext<B> {
        let inputs = TokenInputs {
            attention_mask,
            position_ids,
            segment_ids: None,
        };
        self.context_with(batch, seq_len, inputs, dropout_seed)
    }

    /// [`CausalLm::context`] with every optional input, the segment ids of packed rows
    /// included (block-diagonal causal mask); see [`BlockContext::from_inputs`].
    fn context_with(
        &self,
        batch: usize,
        seq_len: usize,
        inputs: TokenInputs<'_>,
        dropout_seed: Option<u64>,
    ) -> BlockContext<B> {
        BlockContext::from_inputs(
            &self.positions(),
            batch,
            seq_len,
            0,
            inputs,
            dropout_seed,
            &self.device(),
        )
    }

    /// Logits in f32 (HF casts them to float32).
    fn head<const D: usize>(&self, h_last: Tensor<B, D>) -> Tensor<B, D> {
        to_dtype(self.logits(h_last), DType::F32)
    }

    /// Runs the embedding and all blocks: `ids [B,T]` → last hidden state before the final norm.
    fn hidden(
        &self,
        ids: Tensor<B, 2, Int>,
        ctx: &BlockContext<B>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let mut h = self.embed(ids);
        for i in 0..self.num_layers() {
            let layer = cache
                .as_deref_mut()
                .map(|c| KvSlot::Append(&mut c.layers[i]));
            h = self.block(i, h, ctx, layer);
        }
        h
    }

    /// HF `*ForCausalLM.forward`: logits `[B, T, vocab]` in f32.
    /// `attention_mask` is `[B, past+T]` (1 = token), `position_ids` `[B, T]`; with `cache`,
    /// `input_ids` are only the new tokens and the cache is extended.
    fn forward(
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
            &self.positions(),
            batch,
            seq_len,
            past_len,
            mask.as_deref(),
            pos.as_deref(),
            None,
            &self.device(),
        );
        self.head(self.hidden(input_ids, &ctx, cache))
    }

    /// Sum of next-token cross-entropy losses and the number of target tokens, as HF's
    /// `ForCausalLMLoss`: position t predicts `labels[t+1]`, label −100 is ignored, the mean is
    /// `sum / n`. Only rows with a target go through the head, in chunks of
    /// [`loss_chunk_elems`] logits, so full f32 logits of all tokens never exist at once.
    /// `h_last`: `[B, T, D]` from the blocks (before the final norm); `labels`: `[B, T]`
    /// row-major, on the host: they pick the target rows there and go to the device once, as
    /// the gathered row indices and targets.
    fn loss_sum(
        &self,
        h_last: Tensor<B, 3>,
        labels: &[i64],
    ) -> Result<(Tensor<B, 1>, usize), LmError> {
        let rows = (loss_chunk_elems() / self.vocab_size()).max(1);
        self.loss_sum_chunked(h_last, labels, rows)
    }

    /// [`CausalLm::loss_sum`] with an explicit number of rows per chunk.
    fn loss_sum_chunked(
        &self,
        h_last: Tensor<B, 3>,
        labels: &[i64],
        rows_per_chunk: usize,
    ) -> Result<(Tensor<B, 1>, usize), LmError> {
        let [b, t, d] = h_last.dims();
        if labels.len() != b * t {
            return Err(LmError::Input(format!(
                "{} labels for hidden states [{b}, {t}, _]",
                labels.len()
            )));
        }
        let (rows, targets) = target_rows(labels, b, t, self.vocab_size())?;
        let device = h_last.device();
        let n = rows.len();
        if n == 0 {
            // Keep the graph connected so a backward through an all-ignored batch is a no-op.
            return Ok((h_last.sum().mul_scalar(0.0).reshape([1]), 0));
        }
        let flat = h_last.reshape([b * t, d]);
        let step = rows_per_chunk.max(1);
        let mut total: Option<Tensor<B, 1>> = None;
        for start in (0..n).step_by(step) {
            let end = (start + step).min(n);
            let tgt = int1::<B>(&targets[start..end], &device);
            // Logits in the model's dtype; the fused cross-entropy reads them in f32 (HF casts
            // logits to float32 before its loss). A frozen dense head (LoRA never adapts it):
            // the loss op computes the chunk's input gradient now and keeps it instead of the
            // logits (`linear_cross_entropy`); otherwise the cross-entropy keeps the logits for
            // the backward. The target rows are increasing: their backward is one scatter.
            let x = qtune_kernels::select_rows(flat.clone(), &rows[start..end]);
            let nll = match self.lm_head().frozen_dense(x.dtype()) {
                Some((w, bias)) => {
                    qtune_kernels::linear_cross_entropy(self.final_norm(x), w, bias, tgt)
                }
                None => qtune_kernels::cross_entropy(self.logits(x), tgt),
            };
            // A sum in a fixed order: the loss is the same in every run.
            let nll = qtune_kernels::sum_all(nll);
            total = Some(match total {
                Some(acc) => acc + nll,
                None => nll,
            });
        }
        Ok((total.unwrap_or_else(|| Tensor::zeros([1], &device)), n))
    }

    /// Continuations of `prompts` (batched, left-padded) as HF `generate`: the new tokens of
    /// each prompt, up to and including EOS when one is produced ([`crate::generate`]).
    fn generate(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>, LmError> {
        crate::generate::generate(self, prompts, cfg)
    }

    /// [`CausalLm::generate`] without the batch-1 greedy fast path.
    fn generate_stepwise(
        &self,
        prompts: &[Vec<u32>],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>, LmError> {
        crate::generate::generate_stepwise(self, prompts, cfg)
    }

    /// Batch-1 greedy with static shapes, replayed as a device graph ([`crate::fixed`]).
    fn greedy_fixed(&self, prompt: &[u32], cfg: &GenerationConfig) -> Result<Vec<u32>, LmError> {
        crate::fixed::greedy_fixed(self, prompt, cfg)
    }

    /// HF's sliding-window perplexity of `ids` ([`crate::perplexity`]).
    fn perplexity(
        &self,
        ids: &[u32],
        max_length: usize,
        stride: usize,
    ) -> Result<Perplexity, LmError> {
        crate::perplexity::perplexity(self, ids, max_length, stride)
    }

    /// Attaches fresh adapters (PEFT init, A drawn from `ChaCha8Rng::seed_from_u64(seed)` in
    /// module order) to every target linear; an error if the config matches nothing.
    fn with_lora(self, cfg: &LoraConfig, seed: u64) -> Result<Self, LmError> {
        crate::lora::with_lora(self, cfg, seed)
    }

    /// The trainable tensors with PEFT's saved key names, module order, A before B.
    fn lora_params(&self) -> Vec<LoraParam<'_, B>> {
        crate::lora::lora_params(self)
    }

    /// PEFT's `print_trainable_parameters` counts of this model.
    fn param_counts(&self) -> ParamCounts {
        crate::lora::param_counts(self)
    }

    /// The adapter factors as a PEFT adapter with `config`.
    fn export_adapter(&self, config: PeftAdapterConfig) -> Result<PeftAdapter, LmError> {
        crate::lora::export_adapter(self, config)
    }

    /// Replaces the adapters' factors with `adapter`'s (same modules and shapes required).
    fn import_adapter(self, adapter: &PeftAdapter) -> Result<Self, LmError> {
        crate::lora::import_adapter(self, adapter)
    }

    /// Writes the model with its adapters merged as an HF folder ([`crate::merge`]).
    fn export_merged(&self, out: &Path, dtype: ExportDType) -> Result<MergeReport, LmError> {
        crate::merge::export_merged(self, out, dtype)
    }
}

fn int1<B: Backend>(v: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), device)
}

/// The flat rows `b·T + t` whose next label is a target, and those labels.
fn target_rows(
    labels: &[i64],
    b: usize,
    t: usize,
    vocab: usize,
) -> Result<(Vec<i64>, Vec<i64>), LmError> {
    let vocab = vocab as i64;
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for bi in 0..b {
        for ti in 0..t.saturating_sub(1) {
            let y = labels[bi * t + ti + 1];
            if y == IGNORE_INDEX {
                continue;
            }
            if !(0..vocab).contains(&y) {
                return Err(LmError::Input(format!(
                    "label {y} at [{bi}, {}] outside [0, {vocab}) and not -100",
                    ti + 1
                )));
            }
            rows.push((bi * t + ti) as i64);
            targets.push(y);
        }
    }
    Ok((rows, targets))
}
