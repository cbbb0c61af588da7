//! The dense ops every block runs, as tensor-level wrappers of the [`QBackend`] primitives:
//! GEMMs (`matmul`, `linear_t`, `linear_t_acc`), attention and its softmax, dropout, the fused
//! activations and norms of GPT-J (`gelu_new`, `layer_norm`, `rotary`) and the Llama family
//! (`rms_norm`, `silu_mul`, `rotary_half`), `cross_entropy`, `grad_seed` and `sum_all` (a sum
//! of every value in a fixed order).

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorPrimitive};

use crate::{
    AttentionInput, AttnMask, GemmAccOptions, GemmOptions, NormInput, QBackend, RotaryOptions,
};

/// `op(a)·op(b)` over the last two dims through [`QBackend::q_gemm`]; the leading dims
/// (batch, heads, …) must be equal (no broadcasting). Output in `out` (inputs' dtype or F32).
///
/// # Panics
/// On mismatched leading dims or inner dims (a model wiring bug, like a Burn matmul mismatch).
pub fn matmul<B: QBackend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
    ta: bool,
    tb: bool,
    out: DType,
) -> Tensor<B, D> {
    assert!(D >= 2, "matmul needs at least 2 dims");
    let (da, db) = (a.dims(), b.dims());
    assert_eq!(
        da[..D - 2],
        db[..D - 2],
        "matmul: leading dims differ ({da:?} vs {db:?})"
    );
    let batch = da[..D - 2].iter().product::<usize>();
    let m = if ta { da[D - 1] } else { da[D - 2] };
    let n = if tb { db[D - 2] } else { db[D - 1] };
    let a3 = a
        .reshape([batch, da[D - 2], da[D - 1]])
        .into_primitive()
        .tensor();
    let b3 = b
        .reshape([batch, db[D - 2], db[D - 1]])
        .into_primitive()
        .tensor();
    let c = B::q_gemm(a3, b3, GemmOptions::new(ta, tb, out));
    let mut shape = da;
    shape[D - 2] = m;
    shape[D - 1] = n;
    Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(c)).reshape(shape)
}

/// `x · wᵀ` over the last dim of `x` for a dense `w [out, in]` in `x`'s dtype (a dense linear
/// layer without bias), through [`QBackend::q_gemm`].
///
/// # Panics
/// If `x`'s last dim is not `w`'s `in` (a model wiring bug).
pub fn linear_t<B: QBackend, const D: usize>(x: Tensor<B, D>, w: Tensor<B, 2>) -> Tensor<B, D> {
    crate::linear::rows_through(x, w.dims(), "linear", |x2| {
        let ([m, in_f], [out_f, _]) = (x2.dims(), w.dims());
        let dtype = x2.dtype();
        let y = matmul::<B, 3>(
            x2.reshape([1, m, in_f]),
            w.reshape([1, out_f, in_f]),
            false,
            true,
            dtype,
        );
        y.reshape([m, out_f])
    })
}

/// [`linear_t`] for an output nobody reads, only differentiates: a checkpointed recompute's
/// block-output linear over a frozen dense weight ([`QBackend::q_dense_linear_unread`], as
/// [`crate::q_linear_unread`] for a quantized one). Under autodiff no GEMM runs and the output
/// is uninitialized memory; `x`'s gradient is [`linear_t`]'s. A `w` that wants a gradient goes
/// through [`linear_t`] (the op differentiates `x` only). Otherwise it is [`linear_t`].
///
/// # Panics
/// As [`linear_t`].
pub fn linear_t_unread<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
) -> Tensor<B, D> {
    if w.is_require_grad() {
        return linear_t(x, w);
    }
    crate::linear::rows_through(x, w.dims(), "linear", |x2| {
        let y = B::q_dense_linear_unread(x2.into_primitive().tensor(), w.into_primitive().tensor());
        Tensor::from_primitive(TensorPrimitive::Float(y))
    })
}

/// `y + alpha·x·wᵀ` over the last dim of `x` (`in` → `out`) for a dense `w [out, in]` in `x`'s
/// dtype, accumulated into `y [.., out]` by [`QBackend::q_gemm_acc`] (LoRA's scaled `B`
/// product added onto the base output in one GEMM).
///
/// # Panics
/// On mismatched shapes (a model wiring bug).
pub fn linear_t_acc<B: QBackend, const D: usize>(
    y: Tensor<B, D>,
    x: Tensor<B, D>,
    w: Tensor<B, 2>,
    alpha: f32,
) -> Tensor<B, D> {
    let (dims, ydims) = (x.dims(), y.dims());
    let [out_f, in_f] = w.dims();
    assert!(
        dims[D - 1] == in_f && ydims[D - 1] == out_f && dims[..D - 1] == ydims[..D - 1],
        "linear_acc: x {dims:?}, w [{out_f}, {in_f}] and y {ydims:?} do not fit"
    );
    let m = dims[..D - 1].iter().product::<usize>();
    let c = B::q_gemm_acc(
        y.reshape([1, m, out_f]).into_primitive().tensor(),
        [
            x.reshape([1, m, in_f]).into_primitive().tensor(),
            w.reshape([1, out_f, in_f]).into_primitive().tensor(),
        ],
        GemmAccOptions {
            ta: false,
            tb: true,
            alpha,
        },
    );
    Tensor::<B, 3>::from_primitive(TensorPrimitive::Float(c)).reshape(ydims)
}

/// Dropout through [`QBackend::q_dropout`]: counter-based mask from `seed`, drop probability
/// `p` (`0 ≤ p < 1`; `p = 0` returns `x`).
///
/// # Panics
/// If `p` is outside `[0, 1)` (configs are validated before a model is built).
pub fn dropout<B: QBackend, const D: usize>(x: Tensor<B, D>, p: f64, seed: u64) -> Tensor<B, D> {
    assert!(
        (0.0..1.0).contains(&p),
        "dropout probability {p} outside [0, 1)"
    );
    if p == 0.0 {
        return x;
    }
    let y = B::q_dropout(x.into_primitive().tensor(), p as f32, seed);
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// GPT-J's `gelu_new` activation through [`QBackend::q_gelu_new`] (fused on CUDA).
pub fn gelu_new<B: QBackend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let y = B::q_gelu_new(x.into_primitive().tensor(), None);
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// `gelu_new(x + bias)` for a frozen `bias [D]` over the last dim of `x`, in one fused kernel on
/// CUDA (no separate bias pass over the activation).
///
/// # Panics
/// If `bias` does not have `x`'s last dim (a model wiring bug).
pub fn bias_gelu_new<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    bias: Tensor<B, 1>,
) -> Tensor<B, D> {
    assert_eq!(
        x.dims()[D - 1],
        bias.dims()[0],
        "bias_gelu_new: bias length differs from the last dim"
    );
    let bias = if bias.dtype() == x.dtype() {
        bias
    } else {
        bias.cast(x.dtype())
    };
    let y = B::q_gelu_new(
        x.into_primitive().tensor(),
        Some(bias.into_primitive().tensor()),
    );
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// Attention probabilities `softmax(mask(scores / div))` over the last dim through
/// [`QBackend::q_attn_softmax`] (fused on CUDA). `scores [B, H, T, L]` must be F32; `mask`
/// `[B, 1, T, L]`, true = masked.
pub fn attention_softmax<B: QBackend>(
    scores: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    div: f32,
    out: DType,
) -> Tensor<B, 4> {
    let s = scores.into_primitive().tensor();
    let mask = mask.map(Tensor::into_primitive);
    let p = B::q_attn_softmax(s, AttnMask { mask, div }, out);
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// Multi-head attention `softmax(mask(q·kᵀ / div))·v` through [`QBackend::q_attention_output`]
/// (the probabilities are kept only where autodiff tracks the inputs), in the
/// token-major layout: `q [B, T, H, hd]`, `k`, `v [B, L, H_kv, hd]` (e.g. a `[B, T, D]` projection
/// reshaped; `H_kv` divides `H`: grouped-query attention, query head `i` reads kv head
/// `i / (H/H_kv)` as HF's `repeat_kv`, without a repeated copy on CUDA) → `[B, T, H, hd]`;
/// `mask [B, 1, T, L]`, true = masked.
pub fn attention<B: QBackend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    div: f32,
) -> Tensor<B, 4> {
    let o = B::q_attention_output(AttentionInput {
        q: q.into_primitive().tensor(),
        k: k.into_primitive().tensor(),
        v: v.into_primitive().tensor(),
        mask: mask.map(Tensor::into_primitive),
        div,
    });
    Tensor::from_primitive(TensorPrimitive::Float(o))
}

/// `(y ⊙ dy).sum()` for backpropagation only: its value is 0, its gradient w.r.t. `y` is `dy`
/// ([`QBackend::q_grad_seed`]).
pub fn grad_seed<B: QBackend, const D: usize>(y: Tensor<B, D>, dy: Tensor<B, D>) -> Tensor<B, 1> {
    let dy = if dy.dtype() == y.dtype() {
        dy
    } else {
        dy.cast(y.dtype())
    };
    let s = B::q_grad_seed(y.into_primitive().tensor(), dy.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(s))
}

/// LayerNorm with frozen weight and bias through [`QBackend::q_layer_norm`] (fused on CUDA).
pub fn layer_norm<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 1>,
    b: Tensor<B, 1>,
    eps: f32,
) -> Tensor<B, D> {
    let n = NormInput {
        x: x.into_primitive().tensor(),
        w: w.into_primitive().tensor(),
        eps,
    };
    let y = B::q_layer_norm(n, b.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// GPT-J's rotary embedding through [`QBackend::q_rotary`] (fused on CUDA).
pub fn rotary<B: QBackend>(x: Tensor<B, 4>, cos: Tensor<B, 5>, sin: Tensor<B, 5>) -> Tensor<B, 4> {
    let r = RotaryOptions {
        cos: cos.into_primitive().tensor(),
        sin: sin.into_primitive().tensor(),
        inverse: false,
    };
    let y = B::q_rotary(x.into_primitive().tensor(), r);
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// HF `LlamaRMSNorm` with a frozen weight `w [D]` over the last dim through
/// [`QBackend::q_rms_norm`] (fused on CUDA). `w` may be in any float dtype: it is cast to
/// `x`'s dtype, as HF does.
///
/// # Panics
/// If `w` does not have `x`'s last dim (a model wiring bug).
pub fn rms_norm<B: QBackend, const D: usize>(
    x: Tensor<B, D>,
    w: Tensor<B, 1>,
    eps: f32,
) -> Tensor<B, D> {
    assert_eq!(
        x.dims()[D - 1],
        w.dims()[0],
        "rms_norm: weight length differs from the last dim"
    );
    let y = B::q_rms_norm(NormInput {
        x: x.into_primitive().tensor(),
        w: w.into_primitive().tensor(),
        eps,
    });
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// SwiGLU's `silu(gate)·up` through [`QBackend::q_silu_mul`] (fused on CUDA).
///
/// # Panics
/// If `gate` and `up` differ in shape or dtype (a model wiring bug).
pub fn silu_mul<B: QBackend, const D: usize>(gate: Tensor<B, D>, up: Tensor<B, D>) -> Tensor<B, D> {
    assert!(
        gate.dims() == up.dims() && gate.dtype() == up.dtype(),
        "silu_mul: gate {:?} {:?} and up {:?} {:?} differ",
        gate.dims(),
        gate.dtype(),
        up.dims(),
        up.dtype()
    );
    let y = B::q_silu_mul(gate.into_primitive().tensor(), up.into_primitive().tensor());
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// HF's rotate-half RoPE through [`QBackend::q_rotary_half`] (fused on CUDA): `x [B, T, H, hd]`,
/// f32 `cos`/`sin [B, T, 1, hd/2, 1]`.
///
/// # Panics
/// If the tables do not have `B·T·hd/2` values or `hd` is odd (a model wiring bug).
pub fn rotary_half<B: QBackend>(
    x: Tensor<B, 4>,
    cos: Tensor<B, 5>,
    sin: Tensor<B, 5>,
) -> Tensor<B, 4> {
    let [b, t, _, hd] = x.dims();
    assert!(
        hd % 2 == 0 && cos.dims() == [b, t, 1, hd / 2, 1] && sin.dims() == cos.dims(),
        "rotary_half: x {:?} needs cos/sin [{b}, {t}, 1, {}, 1], got {:?} / {:?}",
        x.dims(),
        hd / 2,
        cos.dims(),
        sin.dims()
    );
    let r = RotaryOptions {
        cos: cos.into_primitive().tensor(),
        sin: sin.into_primitive().tensor(),
        inverse: false,
    };
    let y = B::q_rotary_half(x.into_primitive().tensor(), r);
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// Rows `rows` of `x [N, D]` → `[rows.len(), D]`, as `x.select(0, rows)`, through
/// [`QBackend::q_select_rows`]: the backward writes each row's gradient in place (one kernel on
/// CUDA) instead of Burn's select-assign.
///
/// # Panics
/// If `rows` is not strictly increasing inside `[0, N)` (a caller bug: the loss selects its
/// target rows in order).
pub fn select_rows<B: QBackend>(x: Tensor<B, 2>, rows: &[i64]) -> Tensor<B, 2> {
    let n = x.dims()[0] as i64;
    assert!(
        rows.windows(2).all(|w| w[0] < w[1]) && rows.iter().all(|&r| (0..n).contains(&r)),
        "select_rows: rows must be strictly increasing inside [0, {n})"
    );
    let idx = Tensor::<B, 1, Int>::from_data(
        burn::tensor::TensorData::new(rows.to_vec(), [rows.len()]),
        &x.device(),
    );
    let y = B::q_select_rows(x.into_primitive().tensor(), idx.into_primitive());
    Tensor::from_primitive(TensorPrimitive::Float(y))
}

/// Per-row cross-entropy through [`QBackend::q_cross_entropy`] (fused on CUDA): logits
/// `[rows, vocab]`, targets `[rows]` (each in `[0, vocab)`) → `[rows]` f32 negative log-likelihoods.
pub fn cross_entropy<B: QBackend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let nll = B::q_cross_entropy(logits.into_primitive().tensor(), targets.into_primitive());
    Tensor::from_primitive(TensorPrimitive::Float(nll))
}

/// `parts[0] + parts[1] + …` for a sum nobody reads, only differentiates: a checkpointed block's
/// recompute output, which exists to hand the upstream gradient to its terms (GPT-J's
/// `fc_out(x) + attn + h`, Llama's `h + mlp`). Under autodiff (two or three parts, one of
/// them tracked) no add runs and the result is uninitialized memory; every part's gradient is
/// the sum's, exactly as for `+`. Otherwise it is the sum. A single part is returned as is.
///
/// # Panics
/// With no parts, or parts of different shapes (autodiff) as `+` would.
pub fn sum_unread<B: QBackend, const D: usize>(parts: Vec<Tensor<B, D>>) -> Tensor<B, D> {
    assert!(!parts.is_empty(), "sum_unread: no parts");
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one part");
    }
    let shape = parts[0].shape();
    assert!(
        parts.iter().all(|p| p.shape() == shape),
        "sum_unread: parts of different shapes"
    );
    let prims = parts
        .into_iter()
        .map(|p| p.into_primitive().tensor())
        .collect();
    Tensor::from_primitive(TensorPrimitive::Float(B::q_sum_unread(prims)))
}

/// Values per row of [`sum_all`]'s first pass.
const SUM_ROW: usize = 4096;

/// The sum of all of `t`'s values as a `[1]` tensor, in an order fixed by its length: rows of
/// 4,096 values summed each, then those row sums and the tail's. `Tensor::sum` on Burn's CubeCL
/// backend adds per-cube partial sums with float atomics, in an order that varies from run to
/// run: a loss or a gradient norm (and so a clipped update) then differs by an f32 ulp between
/// runs of one program (BENCHMARKS.md, session 24). `sum_dim`'s kernels have no atomics. Under
/// autodiff the gradient reaches every value, as `sum`'s does.
pub fn sum_all<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, 1> {
    let n = t.shape().num_elements();
    let flat = t.reshape([n]);
    if n == 0 {
        return flat.sum();
    }
    let q = n / SUM_ROW;
    if q == 0 {
        return flat.sum_dim(0);
    }
    let rows = flat
        .clone()
        .slice(0..q * SUM_ROW)
        .reshape([q, SUM_ROW])
        .sum_dim(1)
        .reshape([q])
        .sum_dim(0);
    match n - q * SUM_ROW {
        0 => rows,
        _ => rows + flat.slice(q * SUM_ROW..n).sum_dim(0),
    }
}
