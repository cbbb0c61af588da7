//! The batch-1 dense GEMV of decoding (LoRA factors, the LM head): one weight, or two or three
//! of the same shape in one launch (the LoRA factors of q and v).

use cubecl::prelude::*;

use super::GEMV_ROWS;

/// The longest row, in vectors, that [`dense_gemv_kernel`] takes with `per_lane`.
pub const LANE_ROW_VECS: usize = 4;

/// Batch-1 dense GEMV `y[o] = Σ_k x[k]·W[o, k]` for a row-major `W [rows, k]` in `x`'s dtype
/// (f32 accumulation), or with `accumulate` `y[o] += alpha·Σ…` (cuBLAS' β = 1), `Vector<F, N>`
/// loads, two per thread in flight as in [`super::gemv_kernel`]. One plane per output row (many
/// long rows: the LM head); with `split` one whole cube per row, its planes' sums added through
/// shared memory (few long rows: LoRA's `A`, 16 rows of 4096, would otherwise keep only 16
/// planes busy); with `per_lane` one lane per row (rows of at most [`LANE_ROW_VECS`] vectors:
/// LoRA's `B`, 4096 rows of 16, where a plane per row left 30 of its 32 lanes idle). For the
/// LoRA factors and the LM head at decode, where cuBLAS' small-`m` kernels cost more.
///
/// Every way forms a row's sum alike: each vector's `lanes` products added in order
/// from zero, those vector sums added as the plane's xor butterfly (`plane_sum`) adds its lanes'
/// values (vector `j` in lane `j mod 32`), so they agree bit for bit where both apply.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn dense_gemv_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    y: &mut Array<F>,
    rows: usize,
    vecs_per_row: usize,
    alpha: f32,
    #[comptime] lanes: usize,
    #[comptime] accumulate: bool,
    #[comptime] split: bool,
    #[comptime] per_lane: bool,
) {
    dense_gemv_rows::<F, N>(
        x,
        w,
        y,
        rows,
        vecs_per_row,
        alpha,
        CUBE_POS,
        lanes,
        accumulate,
        split,
        per_lane,
    );
}

/// [`dense_gemv_kernel`] for two or three weights of the same shape in one launch, each with
/// its own input, output and `alpha`: part `p` takes cubes `p·cubes_per_part ..`. A two-part
/// launch repeats part 1 as part 2 (no cube reaches it). Each output equals that part's own
/// [`dense_gemv_kernel`] bit for bit.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
pub fn dense_gemv_parts_kernel<F: Float, N: Size>(
    x0: &Array<Vector<F, N>>,
    w0: &Array<Vector<F, N>>,
    y0: &mut Array<F>,
    x1: &Array<Vector<F, N>>,
    w1: &Array<Vector<F, N>>,
    y1: &mut Array<F>,
    x2: &Array<Vector<F, N>>,
    w2: &Array<Vector<F, N>>,
    y2: &mut Array<F>,
    rows: usize,
    vecs_per_row: usize,
    cubes_per_part: usize,
    alpha0: f32,
    alpha1: f32,
    alpha2: f32,
    #[comptime] lanes: usize,
    #[comptime] accumulate: bool,
    #[comptime] split: bool,
    #[comptime] per_lane: bool,
) {
    let part = CUBE_POS / cubes_per_part;
    let cube = CUBE_POS % cubes_per_part;
    if part == 0usize {
        dense_gemv_rows::<F, N>(
            x0,
            w0,
            y0,
            rows,
            vecs_per_row,
            alpha0,
            cube,
            lanes,
            accumulate,
            split,
            per_lane,
        );
    } else if part == 1usize {
        dense_gemv_rows::<F, N>(
            x1,
            w1,
            y1,
            rows,
            vecs_per_row,
            alpha1,
            cube,
            lanes,
            accumulate,
            split,
            per_lane,
        );
    } else {
        dense_gemv_rows::<F, N>(
            x2,
            w2,
            y2,
            rows,
            vecs_per_row,
            alpha2,
            cube,
            lanes,
            accumulate,
            split,
            per_lane,
        );
    }
}

/// Cube `cube`'s rows of [`dense_gemv_kernel`].
#[cube]
#[allow(clippy::too_many_arguments)]
fn dense_gemv_rows<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    y: &mut Array<F>,
    rows: usize,
    vecs_per_row: usize,
    alpha: f32,
    cube: usize,
    #[comptime] lanes: usize,
    #[comptime] accumulate: bool,
    #[comptime] split: bool,
    #[comptime] per_lane: bool,
) {
    if per_lane {
        dense_gemv_lane_row::<F, N>(x, w, y, rows, vecs_per_row, alpha, cube, lanes, accumulate);
    } else {
        dense_gemv_plane_row::<F, N>(
            x,
            w,
            y,
            rows,
            vecs_per_row,
            alpha,
            cube,
            lanes,
            accumulate,
            split,
        );
    }
}

/// A row per plane, or with `split` per cube.
#[cube]
#[allow(clippy::too_many_arguments)]
fn dense_gemv_plane_row<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    y: &mut Array<F>,
    rows: usize,
    vecs_per_row: usize,
    alpha: f32,
    cube: usize,
    #[comptime] lanes: usize,
    #[comptime] accumulate: bool,
    #[comptime] split: bool,
) {
    let mut partial = SharedMemory::<f32>::new(GEMV_ROWS as usize);
    let mut row = cube;
    let mut first = usize::cast_from(UNIT_POS_X);
    let mut stride = 32usize;
    if split {
        first = usize::cast_from(UNIT_POS_Y * 32u32 + UNIT_POS_X);
        stride = 32usize * (GEMV_ROWS as usize);
    } else {
        row = cube * (GEMV_ROWS as usize) + usize::cast_from(UNIT_POS_Y);
    }
    if row >= rows {
        terminate!();
    }
    let last = vecs_per_row - 1usize;
    let iters = vecs_per_row.div_ceil(2usize * stride);
    let base = row * vecs_per_row;
    let mut acc = 0.0f32;
    for k in 0..iters {
        let j0 = first + k * 2usize * stride;
        let j1 = j0 + stride;
        let w0 = w[base + select(j0 < vecs_per_row, j0, last)];
        let w1 = w[base + select(j1 < vecs_per_row, j1, last)];
        if j0 < vecs_per_row {
            let xv = x[j0];
            #[unroll]
            for i in 0..lanes {
                acc += f32::cast_from(w0[i]) * f32::cast_from(xv[i]);
            }
        }
        if j1 < vecs_per_row {
            let xv = x[j1];
            #[unroll]
            for i in 0..lanes {
                acc += f32::cast_from(w1[i]) * f32::cast_from(xv[i]);
            }
        }
    }
    acc = plane_sum(acc);
    if split {
        if UNIT_POS_X == 0u32 {
            partial[UNIT_POS_Y as usize] = acc;
        }
        sync_cube();
        acc = 0.0f32;
        #[unroll]
        for p in 0..GEMV_ROWS {
            acc += partial[p as usize];
        }
    }
    // A comptime flag guards a runtime condition in its own `if` (see fused.rs).
    let mut writer = UNIT_POS_X == 0u32;
    if split {
        writer = UNIT_POS_X == 0u32 && UNIT_POS_Y == 0u32;
    }
    if writer {
        dense_gemv_store::<F>(y, row, acc, alpha, accumulate);
    }
}

/// A row per lane (rows of at most [`LANE_ROW_VECS`] vectors): vector `j`'s sum
/// `s_j` as a plane row's lane `j` forms it, then `(s0 + s1) + (s2 + s3)` as `plane_sum`'s
/// first two butterfly steps add lanes 0–3 (the later steps add zeros).
#[cube]
#[allow(clippy::too_many_arguments)]
fn dense_gemv_lane_row<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    y: &mut Array<F>,
    rows: usize,
    vecs_per_row: usize,
    alpha: f32,
    cube: usize,
    #[comptime] lanes: usize,
    #[comptime] accumulate: bool,
) {
    let row = (cube * (GEMV_ROWS as usize) + usize::cast_from(UNIT_POS_Y)) * 32usize
        + usize::cast_from(UNIT_POS_X);
    if row >= rows {
        terminate!();
    }
    let last = vecs_per_row - 1usize;
    let base = row * vecs_per_row;
    let mut ws = Array::<Vector<F, N>>::new(LANE_ROW_VECS);
    #[unroll]
    for j in 0..LANE_ROW_VECS {
        ws[j] = w[base + select(j < vecs_per_row, j, last)];
    }
    let mut s = Array::<f32>::new(LANE_ROW_VECS);
    #[unroll]
    for j in 0..LANE_ROW_VECS {
        let mut acc = 0.0f32;
        if j < vecs_per_row {
            let xv = x[j];
            let wv = ws[j];
            #[unroll]
            for i in 0..lanes {
                acc += f32::cast_from(wv[i]) * f32::cast_from(xv[i]);
            }
        }
        s[j] = acc;
    }
    let acc = (s[0] + s[1]) + (s[2] + s[3]);
    dense_gemv_store::<F>(y, row, acc, alpha, accumulate);
}

/// `y[row] = acc`, or with `accumulate` `y[row] += alpha·acc` (in f32, one rounding).
#[cube]
fn dense_gemv_store<F: Float>(
    y: &mut Array<F>,
    row: usize,
    acc: f32,
    alpha: f32,
    #[comptime] accumulate: bool,
) {
    if accumulate {
        y[row] = F::cast_from(f32::cast_from(y[row]) + alpha * acc);
    } else {
        y[row] = F::cast_from(acc);
    }
}
