//! What the row kernels (attention softmax, LayerNorm, RMSNorm, cross-entropy) share: one plane
//! (warp) of [`LANES`] lanes per row, [`ROWS_PER_CUBE`] rows per cube; lane `l` reads the row's
//! vectors `l`, `l + 32`, … (`vec` values each) and keeps f32 partials, which `plane_sum` or
//! `plane_max` then combine across the plane.

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
/// `(row, lane, base, iters)`, `base` the row's first vector; the lane reads vectors
/// `lane + 32·k` for `k < iters` that are below `len`. A plane past the last row terminates.
#[cube]
pub(super) fn plane_row(rows: usize, len: usize) -> (usize, usize, usize, usize) {
    let row = CUBE_POS * (ROWS_PER_CUBE as usize) + usize::cast_from(UNIT_POS_Y);
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS_X);
    (row, lane, row * len, len.div_ceil(32usize))
}

/// `Σ x`, with `squared` `Σ x²`, with `centered` as well `Σ (x − mean)²` (else `mean` is unused),
/// over the row at `base`: f32, each lane's partial in order, then `plane_sum`.
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
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let xv = x[base + j];
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
    plane_sum(sum)
}
