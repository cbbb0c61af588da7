//! Greedy decoding of one prompt with static shapes and every piece of state on the device, so
//! that a decode step can be recorded once as a device graph (a CUDA graph) and replayed per
//! token: no host work per layer, no logits read back per token.
//!
//! State: a KV cache `[L, D]` per layer and k/v for all `L = prompt + max_new_tokens - 1`
//! positions (written one row per step in place), and the int vector
//! `[token, pos, count, out_0 …]` that the on-device argmax advances
//! ([`qtune_kernels::greedy_advance`]). A step embeds `token`, takes the rotary angles of `pos`
//! from a table, masks the cache rows after `pos`, runs the blocks and writes the next token.
//! Same ops and order as [`crate::generate::generate_stepwise`]; the attention runs over `L` rows, of which
//! the ones after `pos` are masked (zero weight, so the same values up to summation order).

use burn::tensor::{DType, Int, Tensor, TensorData};
use qtune_kernels::{graph_capture, greedy_advance, QBackend};

use crate::context::{BlockContext, FixedKv, KvCache, KvSlot};
use crate::error::LmError;
use crate::generate::{check_prompt, GenerationConfig};
use crate::lm::CausalLm;

/// Steps between EOS checks (each a host read of the state) when an EOS id is set.
const EOS_CHECK_EVERY: usize = 16;

/// `k` decode steps per device graph as a power of two in `1..=EOS_CHECK_EVERY` (so it divides
/// the EOS check period): [`GenerationConfig::graph_steps`] rounded down.
fn steps_per_graph(k: usize) -> usize {
    let k = k.clamp(1, EOS_CHECK_EVERY);
    1usize << k.ilog2()
}

/// The static-shape decoder of [`greedy_fixed`], public so a family can time the pieces of its
/// step (`decode_step_breakdown` in qtune-gptj).
pub struct FixedDecoder<B: QBackend, M: CausalLm<B>> {
    /// The model with LoRA factors in the activation dtype (no per-step casts).
    pub model: M,
    pub layers: Vec<FixedKv<B>>,
    /// `[token, pos, count, out…]`; `None` only inside a step.
    pub state: Option<Tensor<B, 1, Int>>,
    /// Mistral's sliding window: cache rows at or before `pos - window` are masked too.
    window: Option<i64>,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
    rows: Tensor<B, 1, Int>,
}

impl<B: QBackend, M: CausalLm<B>> FixedDecoder<B, M> {
    /// The step's inputs from `state`: the token `[1, 1]`, its position `[1]` and the block
    /// context (rotary angles of `pos` from the `[L, rotary_dim/2]` tables, the cache rows after
    /// `pos` masked).
    pub fn context(
        &self,
        state: &Tensor<B, 1, Int>,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>, BlockContext<B>) {
        let len = self.rows.dims()[0];
        let half = self.cos.dims()[1];
        let tok = state.clone().narrow(0, 0, 1).reshape([1, 1]);
        let pos = state.clone().narrow(0, 1, 1);
        let angles =
            |t: &Tensor<B, 2>| t.clone().select(0, pos.clone()).reshape([1, 1, 1, half, 1]);
        let mut mask = self.rows.clone().greater(pos.clone().expand([len]));
        if let Some(w) = self.window {
            let old = self
                .rows
                .clone()
                .lower_equal(pos.clone().sub_scalar(w).expand([len]));
            mask = mask.bool_or(old);
        }
        let mask = mask.reshape([1, 1, 1, len]);
        let ctx = BlockContext {
            mask: Some(mask),
            cos: angles(&self.cos),
            sin: angles(&self.sin),
            dropout_seed: None,
            backward: qtune_kernels::LinearBackward::Quantized,
            output_unread: false,
        };
        (tok, pos, ctx)
    }

    /// One token: static shapes, no host reads; the caches and the state are updated in place.
    pub fn step(&mut self) {
        let Some(state) = self.state.take() else {
            panic!("decode state taken");
        };
        let (tok, pos, ctx) = self.context(&state);
        let mut h = self.model.embed(tok);
        for (i, kv) in self.layers.iter_mut().enumerate() {
            h = self
                .model
                .block(i, h, &ctx, Some(KvSlot::Fixed { kv, pos: &pos }));
        }
        drop((pos, ctx));
        let vocab = self.model.vocab_size();
        let logits = self.model.head(h).reshape([1, vocab]);
        // The views of `state` are gone: the advance writes in place.
        self.state = Some(greedy_advance(state, logits));
    }

    /// The tokens produced so far (host read: a device sync).
    pub fn produced(&self) -> Result<Vec<u32>, LmError> {
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
        let count = (s[2].max(0) as usize).min(s.len() - 3);
        Ok(s[3..3 + count].iter().map(|&t| t as u32).collect())
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

/// Greedy decoding of one prompt (HF `generate` with `do_sample=False`, one beam, no
/// repetition penalty): the new tokens, up to and including EOS. The first step after the
/// prefill runs eagerly (it compiles kernels and settles the memory pool), the next
/// [`GenerationConfig::graph_steps`] are recorded as a device graph ([`qtune_kernels::graph_capture`]) and
/// replayed for the further tokens (a shorter tail eagerly); backends without graphs (CPU), or
/// [`GenerationConfig::device_graphs`] off, run each step eagerly. With an EOS id the state is
/// read back about every 16 tokens; up to 16 + [`GenerationConfig::graph_steps`] tokens past
/// EOS may be computed and dropped.
///
/// # Errors
/// [`LmError::Input`] for an empty prompt or a token outside the vocabulary; a device
/// graph failure.
pub fn greedy_fixed<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompt: &[u32],
    cfg: &GenerationConfig,
) -> Result<Vec<u32>, LmError> {
    let n_new = cfg.max_new_tokens;
    if n_new == 0 {
        return check_prompt(prompt, model.vocab_size()).map(|()| Vec::new());
    }
    let device = model.device();
    let mut dec = fixed_decoder(model, prompt, n_new)?;

    let eos = cfg.eos_token_id;
    let mut steps = 0; // tokens produced after the prefill's
    let remaining = n_new - 1;
    if remaining > 0 && !(eos.is_some() && cut_at_eos(dec.produced()?, eos).1) {
        dec.step();
        steps = 1;
    }
    // `k` steps per graph (a divisor of the EOS check period), fewer when few remain.
    let mut k = steps_per_graph(cfg.graph_steps);
    while k > 1 && remaining < steps + 2 * k {
        k /= 2;
    }
    let graph = if cfg.device_graphs && remaining >= steps + 2 {
        graph_capture::<B>(&device, || (0..k).for_each(|_| dec.step()))
            .map_err(|e| LmError::Device(format!("recording the decode step: {e}")))?
    } else {
        None
    };
    let mut next_check = steps.next_multiple_of(EOS_CHECK_EVERY);
    while steps < remaining {
        if eos.is_some() && steps >= next_check {
            next_check += EOS_CHECK_EVERY;
            if cut_at_eos(dec.produced()?, eos).1 {
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
    let out = dec.produced()?;
    drop(graph);
    let (out, found) = cut_at_eos(out, eos);
    // Every step advances the on-device count; a shortfall means a step did not run (a
    // kernel that failed to compile or launch), never a shorter answer.
    if !found && out.len() != steps + 1 {
        return Err(LmError::Device(format!(
            "the decode ran {} steps but the device state holds {} tokens",
            steps + 1,
            out.len()
        )));
    }
    Ok(out)
}

/// The fixed-shape decoder after the prefill of `prompt`, with room for `n_new ≥ 1` tokens;
/// its state already holds the first new token.
pub fn fixed_decoder<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompt: &[u32],
    n_new: usize,
) -> Result<FixedDecoder<B, M>, LmError> {
    check_prompt(prompt, model.vocab_size())?;
    let (t, device) = (prompt.len(), model.device());
    let len = t + n_new - 1;
    let positions = model.positions();

    // Prefill with the growing cache, then move it into the fixed one.
    let mut cache = KvCache::new(model.num_layers());
    let ctx = BlockContext::new(&positions, 1, t, 0, None, None, None, &device);
    let ids: Vec<i64> = prompt.iter().map(|&x| i64::from(x)).collect();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
    let h = model.hidden(ids, &ctx, Some(&mut cache));
    let logits = model
        .head(h.narrow(1, t - 1, 1))
        .reshape([1, model.vocab_size()]);
    let layers = cache
        .layers
        .into_iter()
        .map(|layer| {
            let (k, v) =
                layer.ok_or_else(|| LmError::Input("prefill left a layer's cache empty".into()))?;
            let fixed = |x: Tensor<B, 4>| {
                let d = x.dims()[2] * x.dims()[3];
                Tensor::<B, 2>::zeros([len, d], (&device, x.dtype()))
                    .slice_assign([0..t, 0..d], x.reshape([t, d]))
            };
            Ok(FixedKv {
                k: Some(fixed(k)),
                v: Some(fixed(v)),
            })
        })
        .collect::<Result<Vec<_>, LmError>>()?;
    let mut init = vec![0i64; 3 + n_new];
    init[1] = t as i64 - 1;
    let state = Tensor::<B, 1, Int>::from_data(TensorData::new(init, [3 + n_new]), &device);
    let (cos, sin) = positions.tables(0..len as i64);
    let half = positions.rotary_dim / 2;
    let table = |v: Vec<f32>| {
        Tensor::<B, 2>::from_data(TensorData::new(v, [len, half]), (&device, DType::F32))
    };
    Ok(FixedDecoder {
        model: model.with_adapter_dtype(model.dtype()),
        window: positions.sliding_window.map(|w| w as i64),
        layers,
        state: Some(greedy_advance(state, logits)),
        cos: table(cos),
        sin: table(sin),
        rows: Tensor::arange(0..len as i64, &device),
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
}
