//! The attention core on CUDA (see `crate::attention` for the contract and the reference): q, k,
//! v and o stay in the token-major `[B, T, H, hd]` layout of the projections. Per batch row, one
//! strided-batched cuBLAS GEMM over the heads reads head `h` as the `[T, hd]` matrix at offset
//! `h·hd` with row stride `D = H·hd`, so no head transposes are copied (they were ~10 % of the
//! CubeCL time of a training step), and the softmax backward writes `ds` straight in the GEMM
//! dtype.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;

use super::fused::{attn_softmax, attn_softmax_backward};
use super::gemm::{on_device, strided_gemm, Gemm, Mat};
use super::launch::empty;

type T = CubeTensor<CudaRuntime>;

/// Sizes `[b, t, l, h, hd]` of token-major q `[B, T, H, hd]` and k, v `[B, L, H, hd]`.
fn dims(q: &T, k: &T, v: &T) -> [usize; 5] {
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
            && sq[2] == sk[2]
            && sq[3] == sk[3],
        "qtune-kernels: attention needs q [B, T, H, hd] and k, v [B, L, H, hd], got {sq:?}, {sk:?}, {sv:?}"
    );
    assert!(
        q.dtype == k.dtype && k.dtype == v.dtype,
        "qtune-kernels: attention q, k, v must share a dtype"
    );
    [sq[0], sq[1], sk[1], sq[2], sq[3]]
}

/// Head `h`'s rows of batch row `bi` in a token-major `[B, rows, H, hd]` buffer, as a batch
/// over the heads.
fn token_major(bi: usize, rows: usize, h: usize, hd: usize) -> Mat {
    Mat {
        offset: bi * rows * h * hd,
        ld: h * hd,
        stride: hd,
    }
}

/// Batch row `bi` of a contiguous `[B, H, rows, cols]` buffer, as a batch over the heads.
fn head_major(bi: usize, h: usize, rows: usize, cols: usize) -> Mat {
    Mat {
        offset: bi * h * rows * cols,
        ld: cols,
        stride: rows * cols,
    }
}

/// One strided GEMM per batch row, batched over the `h` heads.
#[allow(clippy::too_many_arguments)]
fn per_row(
    b: usize,
    (x, xm): (&T, &(dyn Fn(usize) -> Mat + Sync)),
    (y, ym): (&T, &(dyn Fn(usize) -> Mat + Sync)),
    (out, om): (&T, &(dyn Fn(usize) -> Mat + Sync)),
    [m, n, k]: [usize; 3],
    h: usize,
    ta: bool,
    tb: bool,
) {
    let g = Gemm {
        m,
        n,
        k,
        batch: h,
        ta,
        tb,
        alpha: 1.0,
        beta: 0.0,
    };
    // All batch rows in one hand-off to cubecl's device thread.
    on_device(x, || {
        for bi in 0..b {
            strided_gemm((x, xm(bi)), (y, ym(bi)), (out, om(bi)), g);
        }
    });
}

/// `(o [B, T, H, hd], p [B, H, T, L])`; see `QBackend::q_attention`.
pub fn attention(q: T, k: T, v: T, mask: Option<T>, div: f32) -> (T, T) {
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let [b, t, l, h, hd] = dims(&q, &k, &v);
    assert!(
        t > 0 && l > 0 && hd > 0,
        "qtune-kernels: attention over an empty query, key or head dim"
    );
    let s = empty(&q, vec![b, h, t, l], DType::F32);
    per_row(
        b,
        (&q, &|bi| token_major(bi, t, h, hd)),
        (&k, &|bi| token_major(bi, l, h, hd)),
        (&s, &|bi| head_major(bi, h, t, l)),
        [t, l, hd],
        h,
        false,
        true,
    );
    let p = attn_softmax(s, mask, div, v.dtype);
    let o = empty(&q, vec![b, t, h, hd], v.dtype);
    per_row(
        b,
        (&p, &|bi| head_major(bi, h, t, l)),
        (&v, &|bi| token_major(bi, l, h, hd)),
        (&o, &|bi| token_major(bi, t, h, hd)),
        [t, hd, l],
        h,
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
    let [b, t, l, h, hd] = dims(&q, &k, &v);
    assert!(
        p.meta.shape().to_vec() == vec![b, h, t, l] && p.dtype == v.dtype,
        "qtune-kernels: attention backward: p must be [B, H, T, L] in v's dtype"
    );
    assert!(
        d_o.meta.shape().to_vec() == vec![b, t, h, hd] && d_o.dtype == q.dtype,
        "qtune-kernels: attention backward: d_o must match q"
    );
    let dtype = q.dtype;
    // dP = dO·Vᵀ, then dS (in the GEMM dtype) by the fused softmax backward.
    let dp = empty(&q, vec![b, h, t, l], dtype);
    per_row(
        b,
        (&d_o, &|bi| token_major(bi, t, h, hd)),
        (&v, &|bi| token_major(bi, l, h, hd)),
        (&dp, &|bi| head_major(bi, h, t, l)),
        [t, l, hd],
        h,
        false,
        true,
    );
    let ds = attn_softmax_backward(p.clone(), dp, mask, div, dtype);
    // dQ = dS·K, dK = dSᵀ·Q, dV = Pᵀ·dO, each written token-major.
    let dq = empty(&q, vec![b, t, h, hd], dtype);
    let dk = empty(&q, vec![b, l, h, hd], dtype);
    let dv = empty(&q, vec![b, l, h, hd], dtype);
    per_row(
        b,
        (&ds, &|bi| head_major(bi, h, t, l)),
        (&k, &|bi| token_major(bi, l, h, hd)),
        (&dq, &|bi| token_major(bi, t, h, hd)),
        [t, hd, l],
        h,
        false,
        false,
    );
    per_row(
        b,
        (&ds, &|bi| head_major(bi, h, t, l)),
        (&q, &|bi| token_major(bi, t, h, hd)),
        (&dk, &|bi| token_major(bi, l, h, hd)),
        [l, hd, t],
        h,
        true,
        false,
    );
    per_row(
        b,
        (&p, &|bi| head_major(bi, h, t, l)),
        (&d_o, &|bi| token_major(bi, t, h, hd)),
        (&dv, &|bi| token_major(bi, l, h, hd)),
        [l, hd, t],
        h,
        true,
        false,
    );
    [dq, dk, dv]
}
