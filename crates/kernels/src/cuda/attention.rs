//! The attention core on CUDA (see `crate::attention` for the contract and the reference): q, k,
//! v and o stay in the token-major `[B, T, H, hd]` layout of the projections. A cuBLAS GEMM
//! batched over the heads (strided for one batch row, a pointer array over every row and head
//! otherwise) reads head `h` as the `[T, hd]` matrix at offset `h·hd` with row stride
//! `D = H·hd`, so no head transposes are copied (they were ~10 % of the
//! CubeCL time of a training step), and the softmax backward writes `ds` straight in the GEMM
//! dtype. Grouped-query attention (k, v with fewer heads) reads each kv head in place for its
//! group of query heads: no repeated copy of k, v.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;

use super::fused::{attn_softmax, attn_softmax_backward};
use super::gemm::{pointer_batched_gemm, strided_gemm, Gemm, Mat};
use super::launch::empty;

type T = CubeTensor<CudaRuntime>;

/// Sizes `[b, t, l, h, h_kv, hd]` of token-major q `[B, T, H, hd]` and k, v `[B, L, H_kv, hd]`
/// (`H_kv` divides `H`: grouped-query attention, query head `i` reads kv head `i / (H/H_kv)`).
pub(super) fn dims(q: &T, k: &T, v: &T) -> [usize; 6] {
    let (sq, sk, sv) = (
        q.meta.shape().to_vec(),
        k.meta.shape().to_vec(),
        v.meta.shape().to_vec(),
    );
    assert!(
        sq.len() == 4
            && sk == sv
            && sk.len() == 4
            && sq[0] == sk[0]
            && sk[2] > 0
            && sq[2] % sk[2] == 0
            && sq[3] == sk[3],
        "qtune-kernels: attention needs q [B, T, H, hd] and k, v [B, L, H_kv, hd] with H_kv dividing H, got {sq:?}, {sk:?}, {sv:?}"
    );
    assert!(
        q.dtype == k.dtype && k.dtype == v.dtype,
        "qtune-kernels: attention q, k, v must share a dtype"
    );
    [sq[0], sq[1], sk[1], sq[2], sk[2], sq[3]]
}

/// Heads `first + i·step` (`i` over the GEMM batch) of batch row `bi` in a token-major
/// `[B, rows, heads, hd]` buffer: head `j` is the `[rows, hd]` matrix at `j·hd`, row stride
/// `heads·hd`.
fn token_major(bi: usize, rows: usize, heads: usize, hd: usize, first: usize, step: usize) -> Mat {
    Mat {
        offset: bi * rows * heads * hd + first * hd,
        ld: heads * hd,
        stride: step * hd,
    }
}

/// Heads `first + i·step` of batch row `bi` of a contiguous `[B, H, rows, cols]` buffer.
fn head_major(bi: usize, h: usize, rows: usize, cols: usize, first: usize, step: usize) -> Mat {
    Mat {
        offset: (bi * h + first) * rows * cols,
        ld: cols,
        stride: step * rows * cols,
    }
}

/// Where operand matrices sit for batch row `bi` and query-head offset `r` in each kv group.
type At<'a> = &'a (dyn Fn(usize, usize) -> Mat + Sync);

/// Strided GEMMs batched over the `groups` kv heads: for each batch row `bi` and each `r <
/// n_rep`, query head `g·n_rep + r` pairs with kv head `g`. With `accumulate` the outputs of
/// every `r` are summed into one (β = 1 after the first): the kv-side gradients of
/// grouped-query attention. Without GQA (`n_rep = 1`) it is one GEMM per batch row over the
/// heads.
#[allow(clippy::too_many_arguments)]
fn per_row(
    (b, n_rep, groups): (usize, usize, usize),
    (x, xm): (&T, At<'_>),
    (y, ym): (&T, At<'_>),
    (out, om): (&T, At<'_>),
    [m, n, k]: [usize; 3],
    ta: bool,
    tb: bool,
    accumulate: bool,
) {
    let gemm = |beta: f32| Gemm {
        m,
        n,
        k,
        batch: groups,
        ta,
        tb,
        alpha: 1.0,
        beta,
    };
    if b == 1 {
        for r in 0..n_rep {
            let beta = if accumulate && r > 0 { 1.0 } else { 0.0 };
            strided_gemm((x, xm(0, r)), (y, ym(0, r)), (out, om(0, r)), gemm(beta));
        }
        return;
    }
    // Several batch rows: no single stride reaches every head of every row, so one
    // pointer-array GEMM over (row, kv head) per query-head offset `r` (the `r` passes of one
    // output are stream-ordered), where a strided batch takes one call per row and `r`.
    for r in 0..n_rep {
        let beta = if accumulate && r > 0 { 1.0 } else { 0.0 };
        let (m0, lds) = (
            [xm(0, r), ym(0, r), om(0, r)],
            [xm(0, r).ld, ym(0, r).ld, om(0, r).ld],
        );
        let mut offsets = Vec::with_capacity(b * groups);
        for bi in 0..b {
            let rows = [xm(bi, r), ym(bi, r), om(bi, r)];
            debug_assert!(rows
                .iter()
                .zip(&m0)
                .all(|(m, f)| m.ld == f.ld && m.stride == f.stride));
            for g in 0..groups {
                offsets.push(rows.map(|m| m.offset + g * m.stride));
            }
        }
        pointer_batched_gemm([x, y, out], lds, offsets, gemm(beta));
    }
}

/// `(o [B, T, H, hd], p [B, H, T, L])`; see `QBackend::q_attention`.
pub fn attention(q: T, k: T, v: T, mask: Option<T>, div: f32) -> (T, T) {
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let [b, t, l, h, h_kv, hd] = dims(&q, &k, &v);
    assert!(
        t > 0 && l > 0 && hd > 0,
        "qtune-kernels: attention over an empty query, key or head dim"
    );
    let n_rep = h / h_kv;
    let rows = (b, n_rep, h_kv);
    let s = empty(&q, vec![b, h, t, l], DType::F32);
    per_row(
        rows,
        (&q, &|bi, r| token_major(bi, t, h, hd, r, n_rep)),
        (&k, &|bi, _| token_major(bi, l, h_kv, hd, 0, 1)),
        (&s, &|bi, r| head_major(bi, h, t, l, r, n_rep)),
        [t, l, hd],
        false,
        true,
        false,
    );
    let p = attn_softmax(s, mask, div, v.dtype);
    let o = empty(&q, vec![b, t, h, hd], v.dtype);
    per_row(
        rows,
        (&p, &|bi, r| head_major(bi, h, t, l, r, n_rep)),
        (&v, &|bi, _| token_major(bi, l, h_kv, hd, 0, 1)),
        (&o, &|bi, r| token_major(bi, t, h, hd, r, n_rep)),
        [t, hd, l],
        false,
        false,
        false,
    );
    (o, p)
}

/// `[dq, dk, dv]` for `d_o`; see `QBackend::q_attention_backward`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(q: T, k: T, v: T, p: T, d_o: T, mask: Option<T>, div: f32) -> [T; 3] {
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let (p, d_o) = (into_contiguous(p), into_contiguous(d_o));
    let [b, t, l, h, h_kv, hd] = dims(&q, &k, &v);
    assert!(
        p.meta.shape().to_vec() == vec![b, h, t, l] && p.dtype == v.dtype,
        "qtune-kernels: attention backward: p must be [B, H, T, L] in v's dtype"
    );
    assert!(
        d_o.meta.shape().to_vec() == vec![b, t, h, hd] && d_o.dtype == q.dtype,
        "qtune-kernels: attention backward: d_o must match q"
    );
    let dtype = q.dtype;
    let n_rep = h / h_kv;
    let rows = (b, n_rep, h_kv);
    let qs = |n: usize| move |bi: usize, r: usize| token_major(bi, n, h, hd, r, n_rep);
    let kvs = |n: usize| move |bi: usize, _: usize| token_major(bi, n, h_kv, hd, 0, 1);
    let hm = move |bi: usize, r: usize| head_major(bi, h, t, l, r, n_rep);
    // dP = dO·Vᵀ, then dS (in the GEMM dtype) by the fused softmax backward.
    let dp = empty(&q, vec![b, h, t, l], dtype);
    per_row(
        rows,
        (&d_o, &qs(t)),
        (&v, &kvs(l)),
        (&dp, &hm),
        [t, l, hd],
        false,
        true,
        false,
    );
    let ds = attn_softmax_backward(p.clone(), dp, mask, div, dtype);
    // dQ = dS·K, dK = Σ dSᵀ·Q, dV = Σ Pᵀ·dO (sums over the query heads of a kv group), each
    // written token-major.
    let dq = empty(&q, vec![b, t, h, hd], dtype);
    let dk = empty(&q, vec![b, l, h_kv, hd], dtype);
    let dv = empty(&q, vec![b, l, h_kv, hd], dtype);
    per_row(
        rows,
        (&ds, &hm),
        (&k, &kvs(l)),
        (&dq, &qs(t)),
        [t, hd, l],
        false,
        false,
        false,
    );
    per_row(
        rows,
        (&ds, &hm),
        (&q, &qs(t)),
        (&dk, &kvs(l)),
        [l, hd, t],
        true,
        false,
        true,
    );
    per_row(
        rows,
        (&p, &hm),
        (&d_o, &qs(t)),
        (&dv, &kvs(l)),
        [l, hd, t],
        true,
        false,
        true,
    );
    [dq, dk, dv]
}
