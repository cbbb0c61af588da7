//! Text generation with a KV cache, following HF `GenerationMixin.generate` semantics: left
//! padding with `position_ids = cumsum(mask) - 1`, greedy, sampling (temperature → top-k →
//! top-p, seeded ChaCha8 RNG), beam search, repetition penalty, `max_new_tokens`, stop on EOS.
//! Logit processing happens on the host in f32 (one `[rows, vocab]` read-back per step).

use burn::tensor::{Int, Tensor, TensorData};
use qtune_kernels::QBackend;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::context::{BlockContext, KvCache};
use crate::error::LmError;
use crate::lm::CausalLm;

/// HF `GenerationConfig`'s fields that qtune supports, with HF's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    pub do_sample: bool,
    pub temperature: f64,
    /// HF default 50; `None` or 0 disables.
    pub top_k: Option<usize>,
    pub top_p: f64,
    pub num_beams: usize,
    pub length_penalty: f64,
    pub early_stopping: EarlyStopping,
    pub repetition_penalty: f64,
    pub eos_token_id: Option<u32>,
    /// Used for left padding and after EOS; defaults to the EOS id, then 0.
    pub pad_token_id: Option<u32>,
    pub seed: u64,
    /// qtune's own: how many decode steps batch-1 greedy decoding on a GPU records in one
    /// device graph (1, 2, 4, 8 or 16; other values round down to one of these). More steps per
    /// replay spread the per-replay cost over more tokens; recording takes that many
    /// steps' host time. On an H100 (GPT-J-6B NF4, 128 new tokens, session 21 in
    /// BENCHMARKS.md) 1 step decoded 278.1 tok/s timed first in its process and 276.8 timed
    /// after 4 steps; 4 steps 266.4 and 268.5, 8 steps 239–241: hence the default of 1.
    pub graph_steps: usize,
    /// qtune's own: whether batch-1 greedy decoding records its steps as device graphs (CUDA
    /// graphs; the default). `false` launches the same kernels from the host each step. Binaries
    /// set it from [`DEVICE_GRAPHS_ENV`] ([`device_graphs_from_env`]).
    pub device_graphs: bool,
}

/// The default of [`GenerationConfig::graph_steps`].
pub const DEFAULT_GRAPH_STEPS: usize = 1;

/// The environment variable the binaries read [`GenerationConfig::device_graphs`] from:
/// `1` (or unset) records device graphs, `0` decodes eagerly.
pub const DEVICE_GRAPHS_ENV: &str = "QTUNE_CUDA_GRAPHS";

/// [`GenerationConfig::device_graphs`] from [`DEVICE_GRAPHS_ENV`]; for binaries, read once.
///
/// # Errors
/// [`LmError::Input`] naming the variable for a value other than `0` or `1`.
pub fn device_graphs_from_env() -> Result<bool, LmError> {
    device_graphs_setting(std::env::var(DEVICE_GRAPHS_ENV).ok().as_deref())
}

/// [`device_graphs_from_env`] for a given value of the variable (`None`: unset).
pub fn device_graphs_setting(value: Option<&str>) -> Result<bool, LmError> {
    qtune_kernels::switch_setting(DEVICE_GRAPHS_ENV, value, "eager decoding", "CUDA graphs")
        .map_err(|e| LmError::Input(e.to_string()))
}

/// HF's `early_stopping`: `true`, `false` (heuristic) or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlyStopping {
    True,
    False,
    Never,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 20,
            do_sample: false,
            temperature: 1.0,
            top_k: Some(50),
            top_p: 1.0,
            num_beams: 1,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::False,
            repetition_penalty: 1.0,
            eos_token_id: None,
            pad_token_id: None,
            seed: 0,
            graph_steps: DEFAULT_GRAPH_STEPS,
            device_graphs: true,
        }
    }
}

impl GenerationConfig {
    fn validate(&self) -> Result<(), LmError> {
        let bad = |m: &str| Err(LmError::Input(format!("generation config: {m}")));
        if self.num_beams == 0 {
            return bad("num_beams must be at least 1");
        }
        if self.do_sample && self.num_beams > 1 {
            return bad("beam sampling (do_sample with num_beams > 1) is not supported");
        }
        if self.temperature.is_nan() || self.temperature <= 0.0 {
            return bad("temperature must be > 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p must be in (0, 1]");
        }
        if self.repetition_penalty.is_nan() || self.repetition_penalty <= 0.0 {
            return bad("repetition_penalty must be > 0");
        }
        Ok(())
    }

    pub(crate) fn pad(&self) -> u32 {
        self.pad_token_id.or(self.eos_token_id).unwrap_or(0)
    }
}

/// HF `RepetitionPenaltyLogitsProcessor`: for every token id present in `seq`, a negative score
/// is multiplied by `penalty`, a positive one divided. Callers pass a row without its left
/// padding: transformers ≥ 5.2 ignores the padding (`prompt_ignore_length` = each row's padding
/// length), earlier versions penalized the pad id too.
pub(crate) fn repetition_penalty(scores: &mut [f32], seq: &[u32], penalty: f64) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; scores.len()];
    for &t in seq {
        let t = t as usize;
        if t < scores.len() && !seen[t] {
            seen[t] = true;
            let s = scores[t];
            scores[t] = if s < 0.0 {
                s * penalty as f32
            } else {
                s / penalty as f32
            };
        }
    }
}

/// The incremental decoder shared by greedy, sampling and beam search: keeps the KV cache,
/// the full attention mask and each row's count of real tokens (for HF's position ids).
pub(crate) struct Decoder<'a, B: QBackend, M: CausalLm<B>> {
    model: &'a M,
    pub cache: KvCache<B>,
    /// `[rows][past]`, 1 = token.
    pub mask: Vec<Vec<i64>>,
    /// Whether the next call is the prefill.
    started: bool,
}

impl<'a, B: QBackend, M: CausalLm<B>> Decoder<'a, B, M> {
    pub fn new(model: &'a M) -> Self {
        Self {
            model,
            cache: KvCache::new(model.num_layers()),
            mask: Vec::new(),
            started: false,
        }
    }

    /// Runs `tokens` (`[rows][t]`, same t, with their 0/1 `mask`) and returns each row's f32
    /// logits for the last position, `[rows * vocab]`.
    pub fn step(&mut self, tokens: &[Vec<u32>], mask: &[Vec<i64>]) -> Result<Vec<f32>, LmError> {
        let rows = tokens.len();
        let t = tokens.first().map_or(0, Vec::len);
        if !self.started {
            self.mask = vec![Vec::new(); rows];
            self.started = true;
        }
        let vocab = self.model.vocab_size();
        let mut ids = Vec::with_capacity(rows * t);
        let mut pos = Vec::with_capacity(rows * t);
        for (r, (row, m)) in tokens.iter().zip(mask).enumerate() {
            // HF: position_ids = cumsum(mask) - 1 over the whole row, masked_fill(mask == 0, 1).
            let mut real = self.mask[r].iter().sum::<i64>();
            for (&tok, &mv) in row.iter().zip(m) {
                check_token(tok, vocab)?;
                ids.push(tok as i64);
                real += mv;
                pos.push(if mv == 0 { 1 } else { real - 1 });
            }
            self.mask[r].extend_from_slice(m);
        }
        let full: Vec<i64> = self.mask.iter().flatten().copied().collect();
        let past = self.cache.past_len();
        let device = self.model.device();
        let ctx = BlockContext::new(
            &self.model.positions(),
            rows,
            t,
            past,
            Some(&full),
            Some(&pos),
            None,
            &device,
        );
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [rows, t]), &device);
        let h = self.model.hidden(ids, &ctx, Some(&mut self.cache));
        let last = h.narrow(1, t - 1, 1);
        let logits = self.model.head(last);
        logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|e| LmError::Input(format!("reading logits back: {e:?}")))
    }
}

/// Left-pads prompts to one length: `(tokens, mask)`.
pub(crate) fn left_pad(prompts: &[Vec<u32>], pad: u32) -> (Vec<Vec<u32>>, Vec<Vec<i64>>) {
    let t = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut toks = Vec::with_capacity(prompts.len());
    let mut mask = Vec::with_capacity(prompts.len());
    for p in prompts {
        let n = t - p.len();
        toks.push(
            std::iter::repeat_n(pad, n)
                .chain(p.iter().copied())
                .collect(),
        );
        mask.push(
            std::iter::repeat_n(0, n)
                .chain(std::iter::repeat_n(1, p.len()))
                .collect(),
        );
    }
    (toks, mask)
}

/// Temperature, top-k and top-p (HF warper order), then a draw from the softmax.
fn sample(scores: &mut [f32], cfg: &GenerationConfig, rng: &mut ChaCha8Rng) -> u32 {
    let t = cfg.temperature as f32;
    scores.iter_mut().for_each(|s| *s /= t);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let mut keep = scores.len();
    if let Some(k) = cfg.top_k.filter(|&k| k > 0) {
        keep = keep.min(k);
    }
    let max = scores[order[0]];
    let probs: Vec<f64> = order[..keep]
        .iter()
        .map(|&i| ((scores[i] - max) as f64).exp())
        .collect();
    let z: f64 = probs.iter().sum();
    if cfg.top_p < 1.0 {
        // HF keeps the smallest prefix whose mass reaches top_p (at least one token).
        let mut acc = 0.0;
        let mut n = 0;
        for p in &probs {
            acc += p / z;
            n += 1;
            if acc >= cfg.top_p {
                break;
            }
        }
        keep = keep.min(n.max(1));
    }
    let z: f64 = probs[..keep].iter().sum();
    let mut u = rng.random::<f64>() * z;
    for (i, p) in probs[..keep].iter().enumerate() {
        if u < *p {
            return order[i] as u32;
        }
        u -= p;
    }
    order[keep - 1] as u32
}

fn argmax(xs: &[f32]) -> u32 {
    // First maximum, NaN as the maximum: torch.argmax, and the device's greedy_advance.
    qtune_kernels::first_argmax(xs) as u32
}

/// An empty prompt cannot start a generation.
fn empty_prompt() -> LmError {
    LmError::Input("every prompt needs at least one token".into())
}

/// A token id is in the vocabulary.
pub(crate) fn check_token(tok: u32, vocab: usize) -> Result<(), LmError> {
    if tok as usize >= vocab {
        return Err(LmError::Input(format!(
            "token id {tok} is outside the vocabulary ({vocab})"
        )));
    }
    Ok(())
}

/// A prompt has at least one token, each in the vocabulary.
pub(crate) fn check_prompt(prompt: &[u32], vocab: usize) -> Result<(), LmError> {
    if prompt.is_empty() {
        return Err(empty_prompt());
    }
    prompt.iter().try_for_each(|&t| check_token(t, vocab))
}

/// A generation request is valid: a valid config and at least one prompt, none empty.
fn check_request(prompts: &[Vec<u32>], cfg: &GenerationConfig) -> Result<(), LmError> {
    cfg.validate()?;
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(empty_prompt());
    }
    Ok(())
}

/// Generates continuations of `prompts` (batched, left-padded). Returns the new tokens of
/// each prompt, up to and including EOS when one is produced.
pub fn generate<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>, LmError> {
    check_request(prompts, cfg)?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if longest + cfg.max_new_tokens > model.max_positions() {
        tracing::warn!(
            "prompt ({longest}) + max_new_tokens ({}) exceeds n_positions ({}): quality degrades past the trained length",
            cfg.max_new_tokens,
            model.max_positions()
        );
    }
    if cfg.num_beams > 1 {
        return crate::beam::beam_search(model, prompts, cfg);
    }
    if !cfg.do_sample && cfg.repetition_penalty == 1.0 {
        // Greedy takes the static-shape path: no logits read back, no host argmax, no cache
        // copies. One prompt replays its step as device graphs; a batch runs the same step
        // eagerly. With several rows each linear dequantizes its weight for a GEMM, and a
        // recorded graph keeps the dense weights of every captured step: at 32 rows that ran
        // out of an H100's memory, while the eager step was 1.2× the stepwise loop's speed
        // (BENCHMARKS.md, session 14).
        if prompts.len() > 1 && cfg.device_graphs {
            let eager = GenerationConfig {
                device_graphs: false,
                ..cfg.clone()
            };
            return crate::fixed::greedy_fixed_batch(model, prompts, &eager);
        }
        return crate::fixed::greedy_fixed_batch(model, prompts, cfg);
    }
    generate_stepwise(model, prompts, cfg)
}

/// The order [`generate_batched`] takes prompts of lengths `lens` in: longest first (ties in
/// input order), so each batch's rows pad to nearly one length, as lm-evaluation-harness orders
/// its requests.
pub fn length_order(lens: &[usize]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    order
}

/// [`crate::CausalLm::generate`] over any number of prompts, in batches of `batch_size`
/// (left-padded) taken in [`length_order`]; the results come back in prompt order.
///
/// # Errors
/// As [`crate::CausalLm::generate`]; `batch_size` 0.
pub fn generate_batched<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompts: &[Vec<u32>],
    batch_size: usize,
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>, LmError> {
    if batch_size == 0 {
        return Err(LmError::Input(
            "a generation batch needs at least 1 prompt".into(),
        ));
    }
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let order = length_order(&lens);
    let mut out = vec![Vec::new(); prompts.len()];
    for chunk in order.chunks(batch_size) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| prompts[i].clone()).collect();
        for (&i, ids) in chunk.iter().zip(generate(model, &batch, cfg)?) {
            out[i] = ids;
        }
    }
    Ok(out)
}

/// [`generate`] without the greedy fast path ([`crate::fixed::greedy_fixed_batch`]): each
/// step reads every row's logits back and picks tokens on the host (sampling, repetition
/// penalty, batches). Beam search is [`generate`]'s. Same results as the fast path.
///
/// # Errors
/// As [`generate`].
pub fn generate_stepwise<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>, LmError> {
    check_request(prompts, cfg)?;
    let pad = cfg.pad();
    let vocab = model.vocab_size();
    let (mut seqs, mask) = left_pad(prompts, pad);
    let longest = seqs.first().map_or(0, Vec::len);
    let mut out = vec![Vec::new(); prompts.len()];
    let mut done = vec![false; prompts.len()];
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut dec = Decoder::new(model);
    let mut step_tokens = seqs.clone();
    let mut step_mask = mask;
    for _ in 0..cfg.max_new_tokens {
        let logits = dec.step(&step_tokens, &step_mask)?;
        let mut next = Vec::with_capacity(seqs.len());
        for (r, seq) in seqs.iter_mut().enumerate() {
            let scores = &mut logits[r * vocab..(r + 1) * vocab].to_vec();
            let pad_len = longest - prompts[r].len();
            repetition_penalty(scores, &seq[pad_len..], cfg.repetition_penalty);
            let tok = if done[r] {
                pad
            } else if cfg.do_sample {
                sample(scores, cfg, &mut rng)
            } else {
                argmax(scores)
            };
            if !done[r] {
                out[r].push(tok);
                done[r] = cfg.eos_token_id == Some(tok);
            }
            seq.push(tok);
            next.push(vec![tok]);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        step_mask = vec![vec![1]; seqs.len()];
        step_tokens = next;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_graphs_setting_accepts_0_and_1_and_names_the_variable_otherwise() {
        assert!(device_graphs_setting(None).unwrap());
        assert!(device_graphs_setting(Some("1")).unwrap());
        assert!(!device_graphs_setting(Some("0")).unwrap());
        for bad in ["off", "", "true", "2"] {
            let e = device_graphs_setting(Some(bad)).unwrap_err().to_string();
            assert!(e.contains(DEVICE_GRAPHS_ENV), "{e}");
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
