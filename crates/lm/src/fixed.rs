//! Greedy decoding of a batch of prompts with static shapes and every piece of state on the
//! device, so that a decode step can be recorded once as a device graph (a CUDA graph) and
//! replayed per token: no host work per layer, no logits read back per token. `generate` takes
//! it for every greedy request: one prompt with graphs; a batch eagerly (with several rows each
//! linear dequantizes its weight for a GEMM, and a graph keeps the dense weights of every
//! captured step: out of memory at 32 rows on an H100; BENCHMARKS.md, session 14).
//!
//! The prompts are left-padded to one width `t`, so every row writes its next token's keys and
//! values into the same cache column. State: a KV cache `[rows · L, D]` per layer for all
//! `L = t + max_new_tokens - 1` columns (one row per prompt written in place each step), and one
//! int vector `[token, col, count, out_0 …]` per row that the on-device argmax advances
//! ([`qtune_kernels::greedy_advance`]); `col` is the cache column of the row's next token, the
//! same in every row. A step embeds each row's `token`, takes the rotary angles of its position
//! (`col` less the row's padding, HF's `cumsum(attention_mask) - 1`) from a table, masks each
//! row's padding columns and the columns after `col`, runs the blocks and writes the next
//! tokens. Same ops and order as [`crate::generate::generate_stepwise`]; the attention runs over
//! `L` columns, of which the masked ones get zero weight (so the same values up to summation
//! order).

use burn::tensor::{DType, Int, Tensor, TensorData};
use qtune_kernels::{graph_capture, greedy_advance, QBackend};

use crate::context::{BlockContext, FixedKv, KvCache, KvSlot};
use crate::error::LmError;
use crate::generate::{check_prompt, check_token, left_pad, GenerationConfig};
use crate::lm::CausalLm;

/// Steps between EOS checks (each a host read of the state) when an EOS id is set.
const EOS_CHECK_EVERY: usize = 16;

/// Whether `k` is a [`GenerationConfig::graph_steps`] used as given (a power of two up to the
/// EOS check period, 16); other values round down.
pub fn graph_steps_exact(k: usize) -> bool {
    k.is_power_of_two() && k <= EOS_CHECK_EVERY
}

/// `k` decode steps per device graph as a power of two in `1..=EOS_CHECK_EVERY` (so it divides
/// the EOS check period): [`GenerationConfig::graph_steps`] rounded down.
fn steps_per_graph(k: usize) -> usize {
    debug_assert!(EOS_CHECK_EVERY.is_power_of_two());
    let k = k.clamp(1, EOS_CHECK_EVERY);
    1usize << k.ilog2()
}

/// The static-shape decoder of [`greedy_fixed_batch`], public so a family can time the pieces
/// of its step (`decode_step_breakdown` in qtune-gptj).
pub struct FixedDecoder<B: QBackend, M: CausalLm<B>> {
    /// The model with LoRA factors in the activation dtype (no per-step casts).
    pub model: M,
    pub layers: Vec<FixedKv<B>>,
    /// `[token, col, count, out…]` per row; `None` only inside a step.
    pub state: Option<Tensor<B, 1, Int>>,
    /// Mistral's sliding window: cache columns at or before `col - window` are masked too.
    window: Option<i64>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    /// `0..L`: the cache columns.
    cols: Tensor<B, 1, Int>,
    /// Each row's left padding.
    pads: Tensor<B, 1, Int>,
    /// `r · L` for each row `r`: where its cache rows start.
    bases: Tensor<B, 1, Int>,
    rows: usize,
}

impl<B: QBackend, M: CausalLm<B>> FixedDecoder<B, M> {
    /// The step's inputs from `state`: each row's token `[rows, 1]`, the cache rows its keys and
    /// values go to `[rows]`, and the block context (rotary angles of each row's position from
    /// the `[L, rotary_dim/2]` tables; its padding and the columns after `col` masked).
    pub fn context(
        &self,
        state: &Tensor<B, 1, Int>,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>, BlockContext<B>) {
        let (rows, len) = (self.rows, self.cols.dims()[0]);
        let half = self.cos.dims()[1];
        let per = state.dims()[0] / rows;
        let st = state.clone().reshape([rows, per]);
        let tok = st.clone().narrow(1, 0, 1);
        let col = st.narrow(1, 1, 1).reshape([rows]);
        let pos = col.clone() - self.pads.clone();
        let angles = |t: &Tensor<B, 2>| {
            t.clone()
                .select(0, pos.clone())
                .reshape([rows, 1, 1, half, 1])
        };
        let grid = |t: Tensor<B, 1, Int>| t.reshape([rows, 1]).expand([rows, len]);
        let cols = self.cols.clone().reshape([1, len]).expand([rows, len]);
        let mut mask = cols
            .clone()
            .greater(grid(col.clone()))
            .bool_or(cols.clone().lower(grid(self.pads.clone())));
        if let Some(w) = self.window {
            mask = mask.bool_or(cols.lower_equal(grid(col.clone().sub_scalar(w))));
        }
        let ctx = BlockContext {
            mask: Some(mask.reshape([rows, 1, 1, len])),
            cos: angles(&self.cos),
            sin: angles(&self.sin),
            dropout_seed: None,
            backward: qtune_kernels::LinearBackward::Quantized,
            output_unread: false,
        };
        (tok, self.bases.clone() + col, ctx)
    }

    /// One token per row: static shapes, no host reads; the caches and the state are updated
    /// in place.
    pub fn step(&mut self) {
        let Some(state) = self.state.take() else {
            panic!("decode state taken");
        };
        let (tok, at, ctx) = self.context(&state);
        let mut h = self.model.embed(tok);
        for (i, kv) in self.layers.iter_mut().enumerate() {
            h = self
                .model
                .block(i, h, &ctx, Some(KvSlot::Fixed { kv, pos: &at }));
        }
        drop((at, ctx));
        let vocab = self.model.vocab_size();
        let logits = self.model.head(h).reshape([self.rows, vocab]);
        // The views of `state` are gone: the advance writes in place.
        self.state = Some(greedy_advance(state, logits));
    }

    /// The tokens each row has produced so far (host read: a device sync).
    pub fn produced(&self) -> Result<Vec<Vec<u32>>, LmError> {
        let Some(state) = &self.state else {
            return Err(LmError::Device(
                "decode state taken (a step panicked)".into(),
            ));
        };
        let s = state
            .clone()
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(|e| LmError::Device(format!("reading the decode state back: {e:?}")))?;
        Ok(s.chunks(s.len() / self.rows)
            .map(|r| {
                let count = (r[2].max(0) as usize).min(r.len() - 3);
                r[3..3 + count].iter().map(|&t| t as u32).collect()
            })
            .collect())
    }
}

/// `tokens` up to and including the first `eos`, and whether it was found.
fn cut_at_eos(mut tokens: Vec<u32>, eos: Option<u32>) -> (Vec<u32>, bool) {
    match eos.and_then(|e| tokens.iter().position(|&t| t == e)) {
        Some(i) => {
            tokens.truncate(i + 1);
            (tokens, true)
        }
        None => (tokens, false),
    }
}

/// Greedy decoding of one prompt: [`greedy_fixed_batch`] of one row.
///
/// # Errors
/// As [`greedy_fixed_batch`].
pub fn greedy_fixed<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompt: &[u32],
    cfg: &GenerationConfig,
) -> Result<Vec<u32>, LmError> {
    let mut out = greedy_fixed_batch(model, std::slice::from_ref(&prompt.to_vec()), cfg)?;
    Ok(out.pop().unwrap_or_default())
}

/// Greedy decoding of `prompts` as one left-padded batch (HF `generate` with
/// `do_sample=False`, one beam, no repetition penalty): each row's new tokens, up to and
/// including its EOS. Right after the prefill is enqueued, [`GenerationConfig::graph_steps`]
/// steps are recorded as a device graph ([`qtune_kernels::graph_capture`]: recording runs
/// nothing, so the host records while the device still runs the prefill) and replayed for every
/// further token (a shorter tail eagerly). Every buffer a step reads or writes in place (the KV
/// caches, the state) exists before the recording, as the capture requires; kernels first used
/// in the step compile while it is recorded (a relaxed capture). Before session 25 one step ran
/// eagerly first, its host time added to every `generate` (BENCHMARKS.md). Backends without
/// graphs (CPU), or [`GenerationConfig::device_graphs`] off, run each step eagerly. With an EOS id the state is read back about every 16 tokens and
/// decoding stops once every row has produced EOS; a row that ended keeps decoding until then,
/// and what it produces after its EOS is dropped (it never reaches the other rows).
///
/// Graphs suit one row. With several, each linear dequantizes its weight for a GEMM inside the
/// recorded steps, and the graph keeps those dense weights for every captured step: 32 rows of
/// GPT-J-6B NF4 ran out of an H100's memory. [`crate::CausalLm::generate`] therefore runs a batch
/// with graphs off.
///
/// # Errors
/// [`LmError::Input`] for no prompts, an empty prompt or a token outside the vocabulary; a
/// device graph failure.
pub fn greedy_fixed_batch<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>, LmError> {
    let n_new = cfg.max_new_tokens;
    if n_new == 0 {
        check_prompts(prompts, model.vocab_size())?;
        return Ok(vec![Vec::new(); prompts.len()]);
    }
    let device = model.device();
    let mut dec = fixed_decoder_batch(model, prompts, n_new, cfg.pad())?;

    let eos = cfg.eos_token_id;
    let all_ended = |dec: &FixedDecoder<B, M>| -> Result<bool, LmError> {
        Ok(dec.produced()?.into_iter().all(|r| cut_at_eos(r, eos).1))
    };
    let mut steps = 0; // tokens produced after the prefill's
    let remaining = n_new - 1;
    // The prefill's token may already be every row's EOS (the only host read before the loop).
    let ended = remaining == 0 || (eos.is_some() && all_ended(&dec)?);
    // `k` steps per graph (a divisor of the EOS check period), fewer when few remain: a graph
    // pays when it is replayed at least twice.
    let mut k = steps_per_graph(cfg.graph_steps);
    while k > 1 && remaining < 2 * k {
        k /= 2;
    }
    let graph = if cfg.device_graphs && !ended && remaining >= 2 {
        graph_capture::<B>(&device, || (0..k).for_each(|_| dec.step()))
            .map_err(|e| LmError::Device(format!("recording the decode step: {e}")))?
    } else {
        None
    };
    let mut next_check = EOS_CHECK_EVERY;
    while !ended && steps < remaining {
        if eos.is_some() && steps >= next_check {
            next_check += EOS_CHECK_EVERY;
            if all_ended(&dec)? {
                break;
            }
        }
        match &graph {
            Some(g) if steps + k <= remaining => {
                g.replay()
                    .map_err(|e| LmError::Device(format!("replaying the decode step: {e}")))?;
                steps += k;
            }
            _ => {
                dec.step();
                steps += 1;
            }
        }
    }
    let rows = dec.produced()?;
    drop(graph);
    rows.into_iter()
        .map(|out| {
            let (out, found) = cut_at_eos(out, eos);
            // Every step advances the on-device count; a shortfall means a step did not run
            // (a kernel that failed to compile or launch), never a shorter answer.
            if !found && out.len() != steps + 1 {
                return Err(LmError::Device(format!(
                    "the decode ran {} steps but the device state holds {} tokens",
                    steps + 1,
                    out.len()
                )));
            }
            Ok(out)
        })
        .collect()
}

/// At least one prompt, each valid ([`check_prompt`]).
fn check_prompts(prompts: &[Vec<u32>], vocab: usize) -> Result<(), LmError> {
    if prompts.is_empty() {
        return Err(LmError::Input("no prompts to decode".into()));
    }
    prompts.iter().try_for_each(|p| check_prompt(p, vocab))
}

/// The fixed-shape decoder after the prefill of `prompt`, with room for `n_new ≥ 1` tokens;
/// its state already holds the first new token.
///
/// # Errors
/// As [`fixed_decoder_batch`].
pub fn fixed_decoder<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompt: &[u32],
    n_new: usize,
) -> Result<FixedDecoder<B, M>, LmError> {
    fixed_decoder_batch(model, std::slice::from_ref(&prompt.to_vec()), n_new, 0)
}

/// The fixed-shape decoder after the prefill of `prompts` (left-padded with `pad`), with room
/// for `n_new ≥ 1` tokens; its state already holds each row's first new token.
///
/// # Errors
/// [`LmError::Input`] for no prompts, an empty prompt or a token outside the vocabulary.
pub fn fixed_decoder_batch<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompts: &[Vec<u32>],
    n_new: usize,
    pad: u32,
) -> Result<FixedDecoder<B, M>, LmError> {
    check_prompts(prompts, model.vocab_size())?;
    let (rows, device) = (prompts.len(), model.device());
    let t = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let len = t + n_new - 1;
    let positions = model.positions();
    let pads: Vec<i64> = prompts.iter().map(|p| (t - p.len()) as i64).collect();
    let padded = pads.iter().any(|&p| p > 0);
    if padded {
        check_token(pad, model.vocab_size())?;
    }

    // Prefill with the growing cache (left-padded, HF's position ids), then move it into the
    // fixed one.
    let (seqs, mask) = left_pad(prompts, pad);
    let ids: Vec<i64> = seqs.iter().flatten().map(|&x| i64::from(x)).collect();
    let full: Vec<i64> = mask.iter().flatten().copied().collect();
    let pos: Vec<i64> = pads
        .iter()
        .flat_map(|&p| (0..t as i64).map(move |j| if j < p { 1 } else { j - p }))
        .collect();
    let ctx = BlockContext::new(
        &positions,
        rows,
        t,
        0,
        padded.then_some(&full[..]),
        padded.then_some(&pos[..]),
        None,
        &device,
    );
    let mut cache = KvCache::new(model.num_layers());
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, t]), &device);
    let h = model.hidden(ids, &ctx, Some(&mut cache));
    let logits = model
        .head(h.narrow(1, t - 1, 1))
        .reshape([rows, model.vocab_size()]);
    let layers = cache
        .layers
        .into_iter()
        .map(|layer| {
            let (k, v) =
                layer.ok_or_else(|| LmError::Input("prefill left a layer's cache empty".into()))?;
            let fixed = |x: Tensor<B, 4>| {
                let d = x.dims()[2] * x.dims()[3];
                Tensor::<B, 3>::zeros([rows, len, d], (&device, x.dtype()))
                    .slice_assign([0..rows, 0..t, 0..d], x.reshape([rows, t, d]))
                    .reshape([rows * len, d])
            };
            Ok(FixedKv {
                k: Some(fixed(k)),
                v: Some(fixed(v)),
            })
        })
        .collect::<Result<Vec<_>, LmError>>()?;
    let per = 3 + n_new;
    let mut init = vec![0i64; rows * per];
    for r in 0..rows {
        init[r * per + 1] = t as i64 - 1;
    }
    let state = Tensor::<B, 1, Int>::from_data(TensorData::new(init, [rows * per]), &device);
    let (cos, sin) = positions.tables(0..len as i64);
    let half = positions.rotary_dim / 2;
    let table = |v: Vec<f32>| {
        Tensor::<B, 2>::from_data(TensorData::new(v, [len, half]), (&device, DType::F32))
    };
    let int = |v: Vec<i64>| Tensor::<B, 1, Int>::from_data(TensorData::new(v, [rows]), &device);
    Ok(FixedDecoder {
        model: model.with_adapter_dtype(model.dtype()),
        window: positions.sliding_window.map(|w| w as i64),
        layers,
        state: Some(greedy_advance(state, logits)),
        cos: table(cos),
        sin: table(sin),
        cols: Tensor::arange(0..len as i64, &device),
        pads: int(pads),
        bases: int((0..rows).map(|r| (r * len) as i64).collect()),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::cut_at_eos;

    #[test]
    fn eos_cut_keeps_the_eos() {
        assert_eq!(cut_at_eos(vec![3, 4, 5, 4], Some(4)), (vec![3, 4], true));
        assert_eq!(cut_at_eos(vec![3, 5], Some(4)), (vec![3, 5], false));
        assert_eq!(cut_at_eos(vec![3, 5], None), (vec![3, 5], false));
    }

    #[test]
    fn steps_per_graph_is_a_power_of_two_dividing_the_eos_period() {
        let got: Vec<usize> = [0, 1, 2, 3, 4, 5, 8, 15, 16, 17, 100]
            .into_iter()
            .map(super::steps_per_graph)
            .collect();
        assert_eq!(got, [1, 1, 2, 2, 4, 4, 8, 8, 16, 16, 16]);
    }

    #[test]
    fn exact_graph_steps_are_those_used_as_given() {
        for k in 0..40 {
            assert_eq!(
                super::graph_steps_exact(k),
                super::steps_per_graph(k) == k,
                "{k}"
            );
        }
    }
}
