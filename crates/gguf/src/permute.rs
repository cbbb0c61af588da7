//! Undoing llama.cpp's q/k row permutation.
//!
//! `convert_hf_to_gguf.py` (`LlamaModel.permute`) stores HF's `q_proj`/`k_proj` weight
//! `W: [rows, cols]` (rows = out features = n_head · head_dim) with the rows of each head
//! reordered from "rotate halves" (HF: row `h·hd + j·hd/2 + i`) to "interleaved pairs"
//! (GGUF: row `h·hd + 2i + j`), for i < hd/2, j ∈ {0, 1}:
//! `W.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(rows, cols)`.
//! `n_head` is `attention.head_count` for q and `attention.head_count_kv` for k.
//! transformers undoes it the same way (`_reverse_permute_weights` in its GGUF loader).

use crate::GgufError;

/// The inverse of llama.cpp's `permute`: `w` is the GGUF tensor dequantized row-major as
/// `[rows, cols]` (HF shape), the result is HF's weight. Errors when `w.len() != rows * cols` or
/// `rows` is not a multiple of `2 * n_head`.
pub fn unpermute_qk(
    w: &[f32],
    n_head: usize,
    rows: usize,
    cols: usize,
) -> Result<Vec<f32>, GgufError> {
    let bad = || GgufError::BadPermute {
        rows,
        cols,
        n_head,
        len: w.len(),
    };
    if n_head == 0 || rows % (2 * n_head) != 0 || rows.checked_mul(cols) != Some(w.len()) {
        return Err(bad());
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let src = (h * hd + 2 * i + j) * cols;
                let dst = (h * hd + j * half + i) * cols;
                out[dst..dst + cols].copy_from_slice(&w[src..src + cols]);
            }
        }
    }
    Ok(out)
}
