//! The attention softmax (scale, mask, softmax over the last dim) and its backward.

use burn::tensor::{bf16, f16, DType};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::rows::{load_vecs, plane_row, rows_launch, STRIDE, UNROLL};
use crate::cuda::launch::{array, empty};

/// `p[r, j] = softmax_j(masked(s[r, j] / div))` for rows `r` of `[B, H, T, L]` scores; `mask`
/// is `[B, T, L]` (1 = masked, broadcast over heads), masked scores become `f32::MIN` (a fully
/// masked row comes out uniform, as Burn's `mask_fill` + softmax). f32 math, `p` in `F`; rows
/// are `len` vectors of `vec` values.
///
/// Two passes over the row: an online max and sum (each lane rescales its running sum when
/// its maximum grows, once per vector; the lanes' pairs are then combined), then the
/// probabilities. Scores are multiplied by `inv_div = 1/div` and exponentials by `1/sum`: the
/// three f32 divisions per score of a plain three-pass kernel made it instruction-bound.
#[cube(launch_unchecked)]
fn attn_softmax_kernel<F: Float, N: Size>(
    s: &Array<Vector<f32, N>>,
    mask: &Array<Vector<u8, N>>,
    p: &mut Array<Vector<F, N>>,
    rows: usize,
    len: usize,
    heads_t: usize,
    t: usize,
    inv_div: f32,
    #[comptime] masked: bool,
    #[comptime] vec: usize,
) {
    let (row, lane, base, iters) = plane_row(rows, len);
    let mbase = mask_base(row, len, heads_t, t);
    let mut mx = 0.0f32;
    mx -= 3.402_823_5e38f32;
    let mut sum = 0.0f32;
    // Each loop: the iteration's UNROLL score (and mask) vectors loaded first, then used in
    // order, vector by vector as one per iteration would (see rows.rs).
    let mut ss = Array::<Vector<f32, N>>::new(UNROLL);
    let mut ms = Array::<Vector<u8, N>>::new(UNROLL);
    for k in 0..iters {
        let j0 = lane + k * STRIDE;
        load_vecs(s, &mut ss, base, j0, len);
        if masked {
            load_vecs(mask, &mut ms, mbase, j0, len);
        }
        #[unroll]
        for u in 0..UNROLL {
            if j0 + u * 32usize < len {
                let sv = ss[u];
                let mut vmax = mx;
                #[unroll]
                for q in 0..vec {
                    let v = score(sv, &ms, u, q, inv_div, masked);
                    if v > vmax {
                        vmax = v;
                    }
                }
                // exp(MIN − MIN) = 1 would count a masked score before any real one: the
                // running sum starts at 0, so rescaling it is harmless either way.
                sum *= f32::exp(mx - vmax);
                mx = vmax;
                #[unroll]
                for q in 0..vec {
                    sum += f32::exp(score(sv, &ms, u, q, inv_div, masked) - mx);
                }
            }
        }
    }
    let row_max = plane_max(mx);
    let total = plane_sum(sum * f32::exp(mx - row_max));
    let inv_sum = 1.0f32 / total;
    for k in 0..iters {
        let j0 = lane + k * STRIDE;
        load_vecs(s, &mut ss, base, j0, len);
        if masked {
            load_vecs(mask, &mut ms, mbase, j0, len);
        }
        #[unroll]
        for u in 0..UNROLL {
            let j = j0 + u * 32usize;
            if j < len {
                let sv = ss[u];
                let mut o = Vector::<F, N>::empty();
                #[unroll]
                for q in 0..vec {
                    let v = score(sv, &ms, u, q, inv_div, masked);
                    o[q] = F::cast_from(f32::exp(v - row_max) * inv_sum);
                }
                p[base + j] = o;
            }
        }
    }
}

/// The first mask vector of score row `row` (`len` vectors) of `[B, H, T, L]` scores, the mask
/// being `[B, T, L]` (`heads_t` = H·T).
#[cube]
fn mask_base(row: usize, len: usize, heads_t: usize, t: usize) -> usize {
    ((row / heads_t) * t + row % t) * len
}

/// Score `q` of `sv` times `inv_div`, or `f32::MIN` where `masked` and value `q` of the loaded
/// mask vector `ms[u]` is set (`ms` is not read unless `masked`).
#[cube]
fn score<N: Size>(
    sv: Vector<f32, N>,
    ms: &Array<Vector<u8, N>>,
    u: usize,
    q: usize,
    inv_div: f32,
    #[comptime] masked: bool,
) -> f32 {
    let mut v = sv[q] * inv_div;
    if masked {
        if ms[u][q] != 0u8 {
            v = 0.0f32 - 3.402_823_5e38f32;
        }
    }
    v
}

/// `ds[r, j] = p[r, j] · (dp[r, j] − Σ_k p[r, k]·dp[r, k]) · inv_div` (f32 math, `G` out), and 0
/// where masked (a masked score does not reach the output; for a fully masked row `p` is
/// uniform, not 0). Rows are `len` vectors of `vec` values.
#[cube(launch_unchecked)]
fn attn_softmax_backward_kernel<F: Float, G: Float, N: Size>(
    p: &Array<Vector<F, N>>,
    dp: &Array<Vector<F, N>>,
    mask: &Array<Vector<u8, N>>,
    ds: &mut Array<Vector<G, N>>,
    rows: usize,
    len: usize,
    heads_t: usize,
    t: usize,
    inv_div: f32,
    #[comptime] masked: bool,
    #[comptime] vec: usize,
) {
    let (row, lane, base, iters) = plane_row(rows, len);
    let mbase = mask_base(row, len, heads_t, t);
    let mut dot = 0.0f32;
    // Each loop: the iteration's UNROLL vectors of every operand loaded first, then used in
    // order (see rows.rs).
    let mut ps = Array::<Vector<F, N>>::new(UNROLL);
    let mut dps = Array::<Vector<F, N>>::new(UNROLL);
    let mut ms = Array::<Vector<u8, N>>::new(UNROLL);
    for k in 0..iters {
        let j0 = lane + k * STRIDE;
        load_vecs(p, &mut ps, base, j0, len);
        load_vecs(dp, &mut dps, base, j0, len);
        #[unroll]
        for u in 0..UNROLL {
            if j0 + u * 32usize < len {
                let (pv, dv) = (ps[u], dps[u]);
                #[unroll]
                for q in 0..vec {
                    dot += f32::cast_from(pv[q]) * f32::cast_from(dv[q]);
                }
            }
        }
    }
    dot = plane_sum(dot);
    for k in 0..iters {
        let j0 = lane + k * STRIDE;
        load_vecs(p, &mut ps, base, j0, len);
        load_vecs(dp, &mut dps, base, j0, len);
        if masked {
            load_vecs(mask, &mut ms, mbase, j0, len);
        }
        #[unroll]
        for u in 0..UNROLL {
            let j = j0 + u * 32usize;
            if j < len {
                let (pv, dv) = (ps[u], dps[u]);
                let mut o = Vector::<G, N>::empty();
                #[unroll]
                for q in 0..vec {
                    let mut g = f32::cast_from(pv[q]) * (f32::cast_from(dv[q]) - dot) * inv_div;
                    if masked {
                        if ms[u][q] != 0u8 {
                            g = 0.0f32;
                        }
                    }
                    o[q] = G::cast_from(g);
                }
                ds[base + j] = o;
            }
        }
    }
}

/// Fused scale + mask + softmax of attention scores `s [B, H, T, L]` (F32) → probabilities in
/// `out` (F32/F16/BF16). `mask`: `[B, 1, T, L]` bool (u8 storage), true = masked.
///
/// # Panics
/// On a non-F32 `s`, a mask of another shape, or an unsupported `out` (wiring bugs).
pub fn attn_softmax<R: CubeRuntime>(
    s: CubeTensor<R>,
    mask: Option<CubeTensor<R>>,
    div: f32,
    out: DType,
) -> CubeTensor<R> {
    assert_eq!(
        s.dtype,
        DType::F32,
        "qtune-kernels: attention scores must be F32"
    );
    let s = into_contiguous(s);
    let shape = s.meta.shape().to_vec();
    assert_eq!(shape.len(), 4, "qtune-kernels: scores must be [B, H, T, L]");
    let (b, h, t, len) = (shape[0], shape[1], shape[2], shape[3]);
    let rows = b * h * t;
    let p = empty(&s, shape.clone(), out);
    if rows == 0 || len == 0 {
        return p;
    }
    let (mask_t, mask_len, masked) = mask_arg(&s, mask, b, t, len);
    let (count, dim, vec) = rows_launch(rows, len);
    // SAFETY: contiguous buffers of the stated lengths (len % vec == 0); a plane per row.
    unsafe {
        launch_float!(
            out,
            "attention softmax",
            attn_softmax_kernel(
                &s.client,
                count,
                dim,
                vec,
                array(&s, rows * len),
                array(&mask_t, mask_len),
                array(&p, rows * len),
                rows,
                len / vec,
                h * t,
                t,
                1.0 / div,
                masked,
                vec,
            )
        )
    }
    p
}

/// Backward of [`attn_softmax`]: `dp` (the probabilities' gradient, `p`'s dtype) → `ds` in
/// `out` (F32, or `p`'s dtype to feed the next GEMM directly), zero where `mask` is set.
///
/// # Panics
/// On mismatched shapes/dtypes or another `out` (wiring bugs).
pub fn attn_softmax_backward<R: CubeRuntime>(
    p: CubeTensor<R>,
    dp: CubeTensor<R>,
    mask: Option<CubeTensor<R>>,
    div: f32,
    out: DType,
) -> CubeTensor<R> {
    let (p, dp) = (into_contiguous(p), into_contiguous(dp));
    assert!(
        p.meta.shape() == dp.meta.shape() && p.dtype == dp.dtype,
        "qtune-kernels: softmax backward: dp must match p"
    );
    let shape = p.meta.shape().to_vec();
    assert_eq!(
        shape.len(),
        4,
        "qtune-kernels: probabilities must be [B, H, T, L]"
    );
    let (b, h, t, len) = (shape[0], shape[1], shape[2], shape[3]);
    let rows = b * h * t;
    assert!(
        out == DType::F32 || out == p.dtype,
        "qtune-kernels: softmax backward writes F32 or p's dtype, not {out:?}"
    );
    let ds = empty(&p, shape, out);
    if rows == 0 || len == 0 {
        return ds;
    }
    let (mask_t, mask_len, masked) = mask_arg(&p, mask, b, t, len);
    let (count, dim, vec) = rows_launch(rows, len);
    macro_rules! launch {
        ($f:ty, $g:ty) => {
            // SAFETY: contiguous buffers of rows × len values (len % vec == 0); a plane per row.
            unsafe {
                attn_softmax_backward_kernel::launch_unchecked::<$f, $g, R>(
                    &p.client,
                    count,
                    dim,
                    vec,
                    array(&p, rows * len),
                    array(&dp, rows * len),
                    array(&mask_t, mask_len),
                    array(&ds, rows * len),
                    rows,
                    len / vec,
                    h * t,
                    t,
                    1.0 / div,
                    masked,
                    vec,
                )
            }
        };
    }
    macro_rules! go {
        ($f:ty) => {
            if out == DType::F32 {
                launch!($f, f32)
            } else {
                launch!($f, $f)
            }
        };
    }
    dispatch_float!(p.dtype, "attention softmax backward", go);
    ds
}

/// The mask as a kernel argument: `(buffer, length, masked)`; a 1-byte dummy when unmasked
/// (never read: `masked` is comptime false).
fn mask_arg<R: CubeRuntime>(
    like: &CubeTensor<R>,
    mask: Option<CubeTensor<R>>,
    b: usize,
    t: usize,
    len: usize,
) -> (CubeTensor<R>, usize, bool) {
    match mask.map(into_contiguous) {
        Some(m) => {
            assert!(
                m.meta.shape().to_vec() == vec![b, 1, t, len] && m.dtype.size() == 1,
                "qtune-kernels: attention mask must be [B, 1, T, L] u8-backed bools, got {:?} {:?}",
                m.meta.shape(),
                m.dtype
            );
            (m, b * t * len, true)
        }
        None => (empty(like, vec![1], DType::U8), 1, false),
    }
}
