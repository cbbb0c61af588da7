//! Perplexity with Hugging Face's sliding-window recipe ("Perplexity of fixed-length models").

use burn::tensor::{Int, Tensor, TensorData};
use qtune_kernels::QBackend;

use crate::error::LmError;
use crate::lm::{CausalLm, IGNORE_INDEX};

/// Result of [`perplexity`]: HF's recipe and the plain count side by side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Perplexity {
    /// `exp(nll_sum / tokens)`: HF's recipe ("Perplexity of fixed-length models").
    pub ppl: f64,
    /// Tokens counted as HF's recipe counts them (non-ignored labels − 1 per window).
    pub tokens: usize,
    pub nll_sum: f64,
    /// Labels actually scored (after the shift), summed over the windows; every scored token
    /// of the text once.
    pub scored_tokens: usize,
    /// `exp(Σ window nll sums / scored_tokens)`: the per-token perplexity of exactly the labels
    /// scored.
    pub ppl_scored: f64,
}

/// Windows of `max_length` tokens starting every `stride`; each window scores only the
/// tokens not scored by the previous one (earlier ones are context, label −100).
///
/// Faithful to HF's recipe, including its count: a window's mean loss is weighted by
/// `(non-ignored labels) − 1`, although after the shift it averages over all its
/// `trg_len` scored tokens (for every window but the first the two differ by one). This is
/// what HF users compare against; the fixture's 94 tokens over 100 ids come from it.
pub fn perplexity<B: QBackend, M: CausalLm<B>>(
    model: &M,
    ids: &[u32],
    max_length: usize,
    stride: usize,
) -> Result<Perplexity, LmError> {
    if max_length < 2 || stride == 0 || stride > max_length {
        return Err(LmError::Input(format!("perplexity: need max_length ≥ 2 and 0 < stride ≤ max_length, got {max_length}, {stride}")));
    }
    if ids.len() < 2 {
        return Err(LmError::Input("perplexity: need at least 2 tokens".into()));
    }
    if max_length > model.max_positions() {
        return Err(LmError::Input(format!(
            "perplexity: max_length {max_length} exceeds n_positions {}",
            model.max_positions()
        )));
    }
    let device = model.device();
    let (mut nll_sum, mut tokens, mut prev_end) = (0.0f64, 0usize, 0usize);
    let (mut scored_sum, mut scored_tokens) = (0.0f64, 0usize);
    let mut begin = 0;
    while begin < ids.len() {
        let end = (begin + max_length).min(ids.len());
        let trg_len = end - prev_end;
        let window: Vec<i64> = ids[begin..end].iter().map(|&t| t as i64).collect();
        let t = window.len();
        let labels: Vec<i64> = window
            .iter()
            .enumerate()
            .map(|(i, &y)| if i < t - trg_len { IGNORE_INDEX } else { y })
            .collect();
        let n_valid = labels
            .iter()
            .filter(|&&y| y != IGNORE_INDEX)
            .count()
            .saturating_sub(1);
        let ids_t = Tensor::<B, 2, Int>::from_data(TensorData::new(window, [1, t]), &device);
        let ctx = model.context(1, t, None, None, None);
        let h = model.hidden(ids_t, &ctx, None);
        let (sum, n) = model.loss_sum(h, &labels)?;
        if n > 0 {
            let sum: f64 = sum
                .into_data()
                .convert::<f64>()
                .into_vec::<f64>()
                .map_err(|e| LmError::Input(format!("{e:?}")))?[0];
            nll_sum += sum / n as f64 * n_valid as f64;
            tokens += n_valid;
            scored_sum += sum;
            scored_tokens += n;
        }
        prev_end = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    Ok(Perplexity {
        ppl: (nll_sum / tokens as f64).exp(),
        tokens,
        nll_sum,
        scored_tokens,
        ppl_scored: (scored_sum / scored_tokens.max(1) as f64).exp(),
    })
}
