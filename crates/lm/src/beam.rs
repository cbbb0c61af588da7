//! Beam search as HF `GenerationMixin._beam_search`: per step, log-softmax of the f32 logits,
//! logits processors (repetition penalty) applied to those log-probs, plus the running beam
//! score; the top `2·num_beams` candidates of each prompt are scanned best first: an EOS
//! candidate within the first `num_beams` ranks becomes a finished hypothesis scored
//! `sum_logprobs / generated_len^length_penalty`, other candidates fill the next beams.
//! At the end the running beams are added as hypotheses and the best one is returned.

use qtune_kernels::QBackend;

use crate::error::LmError;
use crate::generate::{left_pad, repetition_penalty, Decoder, EarlyStopping, GenerationConfig};
use crate::lm::CausalLm;

/// Finished hypotheses of one prompt (HF `BeamHypotheses`).
struct Hyps {
    items: Vec<(f64, Vec<u32>)>,
    num_beams: usize,
    length_penalty: f64,
    early_stopping: EarlyStopping,
    done: bool,
}

impl Hyps {
    fn worst(&self) -> f64 {
        self.items.iter().map(|h| h.0).fold(f64::INFINITY, f64::min)
    }

    fn add(&mut self, tokens: Vec<u32>, sum_logprobs: f64, generated_len: usize) {
        let score = sum_logprobs / (generated_len as f64).powf(self.length_penalty);
        if self.items.len() < self.num_beams || score > self.worst() {
            self.items.push((score, tokens));
            if self.items.len() > self.num_beams {
                let (wi, _) = self
                    .items
                    .iter()
                    .enumerate()
                    .min_by(|a, b| a.1 .0.total_cmp(&b.1 .0))
                    .unwrap_or((0, &self.items[0]));
                self.items.remove(wi);
            }
        }
    }

    /// HF `BeamHypotheses.is_done`.
    fn is_done(&self, best_running: f64, generated_len: usize, max_new: usize) -> bool {
        if self.items.len() < self.num_beams {
            return false;
        }
        match self.early_stopping {
            EarlyStopping::True => true,
            EarlyStopping::False => {
                best_running / (generated_len as f64).powf(self.length_penalty) <= self.worst()
            }
            EarlyStopping::Never => {
                let len = if self.length_penalty > 0.0 {
                    max_new
                } else {
                    generated_len
                };
                best_running / (len as f64).powf(self.length_penalty) <= self.worst()
            }
        }
    }
}

fn log_softmax(xs: &[f32]) -> Vec<f32> {
    let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = xs
        .iter()
        .map(|&x| ((x - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
        + max;
    xs.iter().map(|&x| x - lse).collect()
}

pub(crate) fn beam_search<B: QBackend, M: CausalLm<B>>(
    model: &M,
    prompts: &[Vec<u32>],
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>, LmError> {
    let nb = cfg.num_beams;
    let vocab = model.vocab_size();
    let pad = cfg.pad();
    let (padded, mask) = left_pad(prompts, pad);
    // Rows are prompt-major: row = prompt * nb + beam.
    let mut seqs: Vec<Vec<u32>> = padded
        .iter()
        .flat_map(|p| std::iter::repeat_n(p.clone(), nb))
        .collect();
    let mut gen: Vec<Vec<u32>> = vec![Vec::new(); seqs.len()];
    // HF starts with beam 0 at 0 and the others at -1e9 so the first step expands one beam.
    let mut scores: Vec<f64> = (0..seqs.len())
        .map(|r| if r % nb == 0 { 0.0 } else { -1e9 })
        .collect();
    let mut hyps: Vec<Hyps> = (0..prompts.len())
        .map(|_| Hyps {
            items: Vec::new(),
            num_beams: nb,
            length_penalty: cfg.length_penalty,
            early_stopping: cfg.early_stopping,
            done: false,
        })
        .collect();
    let mut dec = Decoder::new(model);
    let mut step_tokens = seqs.clone();
    let mut step_mask: Vec<Vec<i64>> = mask
        .iter()
        .flat_map(|m| std::iter::repeat_n(m.clone(), nb))
        .collect();
    for step in 0..cfg.max_new_tokens {
        let logits = dec.step(&step_tokens, &step_mask)?;
        let generated_len = step + 1;
        let mut next_rows = Vec::with_capacity(seqs.len());
        let mut next_tok = Vec::with_capacity(seqs.len());
        let mut next_scores = Vec::with_capacity(seqs.len());
        for (p, hyp) in hyps.iter_mut().enumerate() {
            if hyp.done {
                // Keep the (finished) prompt's rows alive with padding, as HF.
                for beam in 0..nb {
                    next_rows.push(p * nb + beam);
                    next_tok.push(pad);
                    next_scores.push(0.0);
                }
                continue;
            }
            let mut cand: Vec<(f64, usize, u32)> = Vec::with_capacity(nb * vocab);
            for beam in 0..nb {
                let r = p * nb + beam;
                let mut lp = log_softmax(&logits[r * vocab..(r + 1) * vocab]);
                let pad_len = padded[p].len() - prompts[p].len();
                repetition_penalty(&mut lp, &seqs[r][pad_len..], cfg.repetition_penalty);
                cand.extend(
                    lp.iter()
                        .enumerate()
                        .map(|(t, &s)| (s as f64 + scores[r], r, t as u32)),
                );
            }
            // Top 2·nb, best first (stable on ties, like a sorted topk over beam-major order).
            let k = 2 * nb;
            cand.select_nth_unstable_by(k - 1, |a, b| b.0.total_cmp(&a.0));
            cand.truncate(k);
            cand.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut filled = 0;
            for (rank, &(s, r, t)) in cand.iter().enumerate() {
                if cfg.eos_token_id == Some(t) {
                    if rank < nb {
                        let mut toks = gen[r].clone();
                        toks.push(t);
                        hyp.add(toks, s, generated_len);
                    }
                } else if filled < nb {
                    next_rows.push(r);
                    next_tok.push(t);
                    next_scores.push(s);
                    filled += 1;
                }
            }
            let best_running = next_scores[next_scores.len() - nb];
            hyp.done = hyp.is_done(best_running, generated_len, cfg.max_new_tokens);
        }
        let new_seqs: Vec<Vec<u32>> = next_rows
            .iter()
            .zip(&next_tok)
            .map(|(&r, &t)| {
                let mut s = seqs[r].clone();
                s.push(t);
                s
            })
            .collect();
        gen = next_rows
            .iter()
            .zip(&next_tok)
            .map(|(&r, &t)| {
                let mut g = gen[r].clone();
                g.push(t);
                g
            })
            .collect();
        seqs = new_seqs;
        scores = next_scores;
        dec.cache.select_rows(&next_rows);
        dec.mask = next_rows.iter().map(|&r| dec.mask[r].clone()).collect();
        if hyps.iter().all(|h| h.done) {
            break;
        }
        step_tokens = next_tok.iter().map(|&t| vec![t]).collect();
        step_mask = vec![vec![1]; seqs.len()];
    }
    let mut out = Vec::with_capacity(prompts.len());
    for (p, hyp) in hyps.iter_mut().enumerate() {
        if !hyp.done {
            for beam in 0..nb {
                let r = p * nb + beam;
                hyp.add(gen[r].clone(), scores[r], gen[r].len());
            }
        }
        let best = hyp
            .items
            .iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|h| h.1.clone())
            .unwrap_or_default();
        out.push(best);
    }
    Ok(out)
}
