//! The attention core of a decoder block, `o = softmax(mask(q·kᵀ / div))·v` per batch row and
//! head, in the token-major layout the projections produce (`[B, T, H, head_dim]`, i.e. the
//! `[B, T, D]` projection output reshaped): no transposing copies of q, k, v or o.
//!
//! The composite below (Burn ops + [`QBackend::q_gemm`] + the fused softmax) is the default of
//! [`QBackend::q_attention`] and its backward, the reference every backend is tested against;
//! CUDA overrides both with cuBLAS GEMMs that read and write the token-major layout in place.
//! Grouped-query attention (k, v with `H_kv` heads, `H_kv` dividing `H`): the reference repeats
//! k, v to `H` heads as HF's `repeat_kv` and sums their gradients back over each group.

use burn::tensor::{
    ops::{BoolTensor, FloatTensor},
    DType, Shape, TensorMetadata,
};

use crate::{AttnMask, GemmOptions, QBackend};

/// `[B, T, H, hd]` → `[B·H, T, hd]` (a copy).
fn heads_major<B: QBackend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let s = x.shape().dims::<4>();
    let x = B::float_swap_dims(x, 1, 2);
    B::float_reshape(x, Shape::new([s[0] * s[2], s[1], s[3]]))
}

/// `[B·H, T, hd]` → `[B, T, H, hd]` for `b` batch rows.
fn token_major<B: QBackend>(x: FloatTensor<B>, b: usize) -> FloatTensor<B> {
    let s = x.shape().dims::<3>();
    let x = B::float_reshape(x, Shape::new([b, s[0] / b, s[1], s[2]]));
    B::float_swap_dims(x, 1, 2)
}

/// `[b, t, l, h, h_kv, hd]` of q `[B, T, H, hd]` and k, v `[B, L, H_kv, hd]`, `H_kv` dividing `H`.
fn check<B: QBackend>(q: &FloatTensor<B>, k: &FloatTensor<B>, v: &FloatTensor<B>) -> [usize; 6] {
    let (sq, sk, sv) = (
        q.shape().dims::<4>(),
        k.shape().dims::<4>(),
        v.shape().dims::<4>(),
    );
    assert!(
        sk == sv && sq[0] == sk[0] && sk[2] > 0 && sq[2] % sk[2] == 0 && sq[3] == sk[3],
        "qtune-kernels: attention needs q [B, T, H, hd] and k, v [B, L, H_kv, hd] with H_kv dividing H, got {sq:?}, {sk:?}, {sv:?}"
    );
    assert!(
        q.dtype() == k.dtype() && k.dtype() == v.dtype(),
        "qtune-kernels: attention q, k, v must share a dtype"
    );
    [sq[0], sq[1], sk[1], sq[2], sk[2], sq[3]]
}

/// HF `repeat_kv` in the token-major layout: `[B, L, H_kv, hd]` → `[B, L, H_kv·n_rep, hd]`,
/// query head `i` reading kv head `i / n_rep` (a copy; none when `n_rep = 1`).
fn repeat_kv<B: QBackend>(x: FloatTensor<B>, n_rep: usize) -> FloatTensor<B> {
    if n_rep == 1 {
        return x;
    }
    let [b, l, kv, hd] = x.shape().dims::<4>();
    let x = B::float_reshape(x, Shape::new([b, l, kv, 1, hd]));
    let x = B::float_expand(x, Shape::new([b, l, kv, n_rep, hd]));
    B::float_reshape(x, Shape::new([b, l, kv * n_rep, hd]))
}

/// The gradient of [`repeat_kv`]: `[B, L, H_kv·n_rep, hd]` summed over each group → `[B, L, H_kv, hd]`.
fn sum_groups<B: QBackend>(dx: FloatTensor<B>, n_rep: usize) -> FloatTensor<B> {
    if n_rep == 1 {
        return dx;
    }
    let [b, l, h, hd] = dx.shape().dims::<4>();
    let dx = B::float_reshape(dx, Shape::new([b, l, h / n_rep, n_rep, hd]));
    B::float_reshape(B::float_sum_dim(dx, 3), Shape::new([b, l, h / n_rep, hd]))
}

/// Reference forward: `(o [B, T, H, hd], p [B, H, T, L])`, `p` in v's dtype.
pub(crate) fn forward<B: QBackend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    div: f32,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [b, t, l, h, h_kv, _] = check::<B>(&q, &k, &v);
    let (k, v) = (repeat_kv::<B>(k, h / h_kv), repeat_kv::<B>(v, h / h_kv));
    let dtype = v.dtype();
    let s = B::q_gemm(
        heads_major::<B>(q),
        heads_major::<B>(k),
        GemmOptions::new(false, true, DType::F32),
    );
    let s = B::float_reshape(s, Shape::new([b, h, t, l]));
    let p = B::q_attn_softmax(s, AttnMask { mask, div }, dtype);
    let p3 = B::float_reshape(p.clone(), Shape::new([b * h, t, l]));
    let o = B::q_gemm(
        p3,
        heads_major::<B>(v),
        GemmOptions::new(false, false, dtype),
    );
    (token_major::<B>(o, b), p)
}

/// Reference backward: `[dq, dk, dv]` (token-major, the inputs' dtype) for `d_o [B, T, H, hd]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward<B: QBackend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    p: FloatTensor<B>,
    d_o: FloatTensor<B>,
    mask: Option<BoolTensor<B>>,
    div: f32,
) -> [FloatTensor<B>; 3] {
    let [b, t, l, h, h_kv, _] = check::<B>(&q, &k, &v);
    let n_rep = h / h_kv;
    let (k, v) = (repeat_kv::<B>(k, n_rep), repeat_kv::<B>(v, n_rep));
    let dtype = v.dtype();
    let (qh, kh, vh) = (
        heads_major::<B>(q),
        heads_major::<B>(k),
        heads_major::<B>(v),
    );
    let doh = heads_major::<B>(d_o);
    let dp = B::q_gemm(doh.clone(), vh, GemmOptions::new(false, true, dtype));
    let dp = B::float_reshape(dp, Shape::new([b, h, t, l]));
    let ds = B::q_attn_softmax_backward(p.clone(), dp, AttnMask { mask, div });
    let ds = B::float_reshape(B::float_cast(ds, dtype.into()), Shape::new([b * h, t, l]));
    let p3 = B::float_reshape(p, Shape::new([b * h, t, l]));
    let dq = B::q_gemm(ds.clone(), kh, GemmOptions::new(false, false, dtype));
    let dk = B::q_gemm(ds, qh, GemmOptions::new(true, false, dtype));
    let dv = B::q_gemm(p3, doh, GemmOptions::new(true, false, dtype));
    [
        token_major::<B>(dq, b),
        sum_groups::<B>(token_major::<B>(dk, b), n_rep),
        sum_groups::<B>(token_major::<B>(dv, b), n_rep),
    ]
}
