//! The batch-1 dense GEMV of decoding (LoRA factors, the LM head).

use cubecl::prelude::*;

use super::GEMV_ROWS;

/// Batch-1 dense GEMV `y[o] = Σ_k x[k]·W[o, k]` for a row-major `W [rows, k]` in `x`'s dtype
/// (f32 accumulation), or with `accumulate` `y[o] += alpha·Σ…` (cuBLAS' β = 1), `Vector<F, N>`
/// loads, two per thread in flight as in [`gemv_kernel`]. One plane per output row, or with
/// `split` one whole cube per row (few long rows: LoRA's `A`, 16 rows of 4096, would otherwise
/// keep only 16 planes busy, each walking its row alone), its planes' sums added through shared
/// memory. For the LoRA factors and the LM head at decode, where cuBLAS' small-`m` kernels cost
/// more.
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
) {
    let mut partial = SharedMemory::<f32>::new(GEMV_ROWS as usize);
    let mut row = CUBE_POS;
    let mut first = usize::cast_from(UNIT_POS_X);
    let mut stride = 32usize;
    if split {
        first = usize::cast_from(UNIT_POS_Y * 32u32 + UNIT_POS_X);
        stride = 32usize * (GEMV_ROWS as usize);
    } else {
        row = CUBE_POS * (GEMV_ROWS as usize) + usize::cast_from(UNIT_POS_Y);
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
        if accumulate {
            y[row] = F::cast_from(f32::cast_from(y[row]) + alpha * acc);
        } else {
            y[row] = F::cast_from(acc);
        }
    }
}
