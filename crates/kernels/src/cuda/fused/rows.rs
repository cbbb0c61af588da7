//! What the row kernels (attention softmax, LayerNorm, RMSNorm, cross-entropy) share: one plane
//! (warp) of [`LANES`] lanes per row, [`ROWS_PER_CUBE`] rows per cube; lane `l` reads the row's
//! vectors `l`, `l + 32`, … (`vec` values each) and keeps f32 partials, which `plane_sum` or
//! `plane_max` then combine across the plane.
//!
//! The loops over a row take [`UNROLL`] of a lane's vectors per iteration (`j`, `j + 32`,
//! `j + 64`, `j + 96`): [`load_vecs`] issues all their loads first (indices clamped to the row's
//! last vector, so unconditional), then they are used one after another, each under its own
//! `j < len` guard. A loop that loaded one vector and used it at once kept one load in flight
//! per lane per iteration and stalled on it every time: memory-latency bound (LayerNorm of one
//! 4096-value bf16 row, batch-1 decode, took 8.2 µs on the H100; cross-entropy over 50400-logit
//! rows ran at ~0.7 TB/s). The vectors are consumed in the same order as before (`j` first,
//! then `j + 32`, …), so every per-lane f32 partial, and the online max/sum rescaling of
//! cross-entropy and softmax, sees the same terms in the same order: the results are meant to
//! be bit-identical to the one-vector loops, by design. NOT yet measured (or run) on a GPU.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::row_vec;

/// Lanes per row in the row kernels: one plane (warp) per row, reduced with plane intrinsics;
/// each lane reads `vec` consecutive values at a time.
const LANES: u32 = 32;
/// Rows (planes) per cube in the row kernels: 256 threads per cube keep the SMs occupied.
const ROWS_PER_CUBE: u32 = 8;
/// Vectors a lane loads per iteration of a row loop, all before it uses any (see the module
/// docs).
pub(super) const UNROLL: usize = 4;
/// Vectors a plane covers per iteration: lane `l` of iteration `k` has `l + STRIDE·k + 32·u`,
/// `u < UNROLL`.
pub(super) const STRIDE: usize = LANES as usize * UNROLL;

/// Cubes for `rows` rows of `len` values at [`ROWS_PER_CUBE`] per cube, their shape, and the
/// values per load ([`row_vec`]; the kernels take `len / vec` vectors per row).
pub(super) fn rows_launch(rows: usize, len: usize) -> (CubeCount, CubeDim, usize) {
    const MAX_X: usize = 65_535;
    let cubes = rows.div_ceil(ROWS_PER_CUBE as usize);
    let count = if cubes <= MAX_X {
        CubeCount::Static(cubes as u32, 1, 1)
    } else {
        CubeCount::Static(MAX_X as u32, cubes.div_ceil(MAX_X) as u32, 1)
    };
    (count, CubeDim::new_2d(LANES, ROWS_PER_CUBE), row_vec(len))
}

/// `x` contiguous, as rows over its last dim: `(x, shape, rows, len)`.
pub(super) fn as_rows<R: CubeRuntime>(
    x: CubeTensor<R>,
) -> (CubeTensor<R>, Vec<usize>, usize, usize) {
    let x = into_contiguous(x);
    let shape = x.meta.shape().to_vec();
    let len = *shape.last().unwrap_or(&0);
    let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
    (x, shape, rows, len)
}

/// This plane's place in a launch of [`rows_launch`] over rows of `len` vectors:
/// `(row, lane, base, iters)`, `base` the row's first vector; in iteration `k < iters` the lane
/// reads vectors `lane + STRIDE·k + 32·u` (`u <` [`UNROLL`]) that are below `len`. A plane past
/// the last row terminates.
#[cube]
pub(super) fn plane_row(rows: usize, len: usize) -> (usize, usize, usize, usize) {
    let row = CUBE_POS * (ROWS_PER_CUBE as usize) + usize::cast_from(UNIT_POS_Y);
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS_X);
    (row, lane, row * len, len.div_ceil(STRIDE))
}

/// Loads `dst[u] = src[at + j0 + 32·u]` for `u <` [`UNROLL`], every one before any is used: an
/// index past the row's `len` vectors (`len ≥ 1`) reads its last one instead (in range; the
/// caller skips that vector under its own `j < len`). `dst` is a local array of `UNROLL`, only
/// ever indexed by unrolled constants (registers, as in gemv.rs).
#[cube]
pub(super) fn load_vecs<E: Scalar, N: Size>(
    src: &Array<Vector<E, N>>,
    dst: &mut Array<Vector<E, N>>,
    at: usize,
    j0: usize,
    len: usize,
) {
    load_strided(src, dst, at, j0, len, UNROLL, 32usize);
}

/// [`load_vecs`] for `count` vectors `stride` apart (`dst[u] = src[at + j0 + stride·u]`), both
/// known at compile time; the few-row norms' (`norm_row.rs`) take 256 apart.
#[cube]
pub(super) fn load_strided<E: Scalar, N: Size>(
    src: &Array<Vector<E, N>>,
    dst: &mut Array<Vector<E, N>>,
    at: usize,
    j0: usize,
    len: usize,
    #[comptime] count: usize,
    #[comptime] stride: usize,
) {
    let last = len - 1usize;
    #[unroll]
    for u in 0..count {
        let j = j0 + u * stride;
        dst[u] = src[at + select(j < len, j, last)];
    }
}

/// `Σ x`, with `squared` `Σ x²`, with `centered` as well `Σ (x − mean)²` (else `mean` is unused),
/// over the row at `base`: f32, each lane's partial in order (`j`, `j + 32`, …: as one vector per
/// iteration would), then `plane_sum`.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(super) fn row_sum<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    base: usize,
    lane: usize,
    len: usize,
    iters: usize,
    mean: f32,
    #[comptime] squared: bool,
    #[comptime] centered: bool,
    #[comptime] vec: usize,
) -> f32 {
    let mut sum = 0.0f32;
    let mut xs = Array::<Vector<F, N>>::new(UNROLL);
    for k in 0..iters {
        let j0 = lane + k * STRIDE;
        load_vecs(x, &mut xs, base, j0, len);
        #[unroll]
        for u in 0..UNROLL {
            if j0 + u * 32usize < len {
                let xv = xs[u];
                #[unroll]
                for q in 0..vec {
                    let mut d = f32::cast_from(xv[q]);
                    if centered {
                        d -= mean;
                    }
                    if squared {
                        sum += d * d;
                    } else {
                        sum += d;
                    }
                }
            }
        }
    }
    plane_sum(sum)
}
