//! The norms' forward over a few rows (batch-1 decode: GPT-J's `ln_1` and `ln_f`, the Llama
//! family's RMSNorms), a whole cube per row. The plane-per-row kernels (`norm.rs`) give one row
//! one warp, which walks a 4,096-value row in four dependent rounds of loads per pass (three
//! passes for LayerNorm): ~6 µs a launch inside the decode graph against ~2 µs for a kernel
//! that loads its data once. Here 256 units each load their (at most [`ROW_VECS`]) vectors of
//! the row, the weight and the bias at once, and the sums go through `plane_sum` and a shared
//! array. The math is the plane kernels' (f32, the same roundings); the sums are added in
//! another order, so results may differ from theirs in the last bit.

use cubecl::prelude::*;

use super::norm::rms_scale;
use super::rows::load_strided;

/// Planes of a cube-per-row launch.
pub(super) const ROW_PLANES: u32 = 8;
/// Vectors each unit holds: rows of up to 256·4 vectors (8,192 bf16 values) take this path.
pub(super) const ROW_VECS: usize = 4;

/// The row's total of each unit's `partial`, the same value in every unit: `plane_sum`, then
/// the planes' sums added in plane order through `shared` (`ROW_PLANES` values), which is free
/// again on return.
#[cube]
fn cube_sum(partial: f32, shared: &mut SharedMemory<f32>) -> f32 {
    let s = plane_sum(partial);
    if UNIT_POS_X == 0u32 {
        shared[UNIT_POS_Y as usize] = s;
    }
    sync_cube();
    let mut total = 0.0f32;
    #[unroll]
    for p in 0..ROW_PLANES {
        total += shared[p as usize];
    }
    sync_cube();
    total
}

/// This unit's index in the cube and the row's first vector.
#[cube]
fn row_unit(len: usize) -> (usize, usize) {
    (
        usize::cast_from(UNIT_POS_Y * 32u32 + UNIT_POS_X),
        CUBE_POS * len,
    )
}

/// This unit's `Σ (x − shift)²` in f32 over its vectors of the row (`shift` 0 for RMSNorm: the
/// same bits as `Σ x²`).
#[cube]
fn sum_sq<F: Float, N: Size>(
    xs: &Array<Vector<F, N>>,
    t: usize,
    len: usize,
    shift: f32,
    #[comptime] vec: usize,
) -> f32 {
    let mut sq = 0.0f32;
    #[unroll]
    for u in 0..ROW_VECS {
        if t + u * 256usize < len {
            #[unroll]
            for q in 0..vec {
                let d = f32::cast_from(xs[u][q]) - shift;
                sq += d * d;
            }
        }
    }
    sq
}

/// LayerNorm forward of row `CUBE_POS` (`len` vectors of `vec` values), f32 `w`, `b`: as
/// `layer_norm_kernel`, `y = (x − mean)/√(var + eps)·w + b`, one cube per row.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub(super) fn layer_norm_row_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<f32, N>>,
    b: &Array<Vector<f32, N>>,
    out: &mut Array<Vector<F, N>>,
    len: usize,
    len_f: f32,
    eps: f32,
    #[comptime] vec: usize,
) {
    let (t, base) = row_unit(len);
    let mut xs = Array::<Vector<F, N>>::new(ROW_VECS);
    let mut ws = Array::<Vector<f32, N>>::new(ROW_VECS);
    let mut bs = Array::<Vector<f32, N>>::new(ROW_VECS);
    load_strided(x, &mut xs, base, t, len, ROW_VECS, 256usize);
    load_strided(w, &mut ws, 0usize, t, len, ROW_VECS, 256usize);
    load_strided(b, &mut bs, 0usize, t, len, ROW_VECS, 256usize);
    let mut shared = SharedMemory::<f32>::new(ROW_PLANES as usize);
    let mut s = 0.0f32;
    #[unroll]
    for u in 0..ROW_VECS {
        if t + u * 256usize < len {
            #[unroll]
            for q in 0..vec {
                s += f32::cast_from(xs[u][q]);
            }
        }
    }
    let mean = cube_sum(s, &mut shared) / len_f;
    let sq = sum_sq(&xs, t, len, mean, vec);
    let rstd = 1.0f32 / f32::sqrt(cube_sum(sq, &mut shared) / len_f + eps);
    #[unroll]
    for u in 0..ROW_VECS {
        let j = t + u * 256usize;
        if j < len {
            let (xv, wv, bv) = (xs[u], ws[u], bs[u]);
            let mut o = Vector::<F, N>::empty();
            #[unroll]
            for q in 0..vec {
                o[q] = F::cast_from((f32::cast_from(xv[q]) - mean) * rstd * wv[q] + bv[q]);
            }
            out[base + j] = o;
        }
    }
}

/// RMSNorm forward of row `CUBE_POS`, `w` in `F`: as `rms_norm_kernel`, `r = 1/√(mean(x²) +
/// eps)` in f32, `normed = x·r` rounded to `F`, then `normed·w` rounded to `F`.
#[cube(launch_unchecked)]
pub(super) fn rms_norm_row_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    len: usize,
    len_f: f32,
    eps: f32,
    #[comptime] vec: usize,
) {
    let (t, base) = row_unit(len);
    let mut xs = Array::<Vector<F, N>>::new(ROW_VECS);
    let mut ws = Array::<Vector<F, N>>::new(ROW_VECS);
    load_strided(x, &mut xs, base, t, len, ROW_VECS, 256usize);
    load_strided(w, &mut ws, 0usize, t, len, ROW_VECS, 256usize);
    let mut shared = SharedMemory::<f32>::new(ROW_PLANES as usize);
    let sq = sum_sq(&xs, t, len, 0.0f32, vec);
    let r = 1.0f32 / f32::sqrt(cube_sum(sq, &mut shared) / len_f + eps);
    #[unroll]
    for u in 0..ROW_VECS {
        let j = t + u * 256usize;
        if j < len {
            out[base + j] = rms_scale(xs[u], ws[u], r, vec);
        }
    }
}
