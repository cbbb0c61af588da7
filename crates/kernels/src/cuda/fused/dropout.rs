//! Counter-based dropout: the mask is a hash of (seed, index), never stored.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{ew_lanes, unit_index};
use crate::cuda::launch::{array, cube_count, cube_dim, empty};

/// murmur3's 32-bit finalizer, as `crate::dropout::mix32` (u32 arithmetic wraps on the GPU).
#[cube]
fn mix32(x: u32) -> u32 {
    let mut h = x;
    h ^= h >> 16u32;
    h *= 0x85eb_ca6bu32;
    h ^= h >> 13u32;
    h *= 0xc2b2_ae35u32;
    h ^= h >> 16u32;
    h
}

/// Counter-based dropout (see `crate::dropout`): keep `x[e]·scale` iff
/// `mix32(mix32(e ^ seed_lo) ^ seed_hi) ≥ threshold`, else 0, for the `lanes` elements `e` of
/// unit `i`; f32 math.
#[cube(launch_unchecked)]
fn dropout_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    y: &mut Array<Vector<F, N>>,
    units: usize,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
    #[comptime] lanes: usize,
) {
    let i = unit_index(units);
    let xv = x[i];
    let mut o = Vector::<F, N>::empty();
    let first = u32::cast_from(i) * (lanes as u32);
    #[unroll]
    for k in 0..lanes {
        let h = mix32(mix32((first + k as u32) ^ seed_lo) ^ seed_hi);
        let mut v = 0.0f32;
        if h >= threshold {
            v = f32::cast_from(xv[k]) * scale;
        }
        o[k] = F::cast_from(v);
    }
    y[i] = o;
}

/// Dropout of `x` (any shape; `x`'s dtype) with the counter-based mask of `seed`.
///
/// # Panics
/// On a dtype other than F32/F16/BF16 or more than 2³² values.
pub fn dropout<R: CubeRuntime>(x: CubeTensor<R>, p: f32, seed: u64) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let n = x.meta.num_elements();
    assert!(
        u32::try_from(n).is_ok(),
        "qtune-kernels: dropout of more than 2³² values"
    );
    let out = empty(&x, x.meta.shape().to_vec(), x.dtype);
    if n == 0 {
        return out;
    }
    let (threshold, scale) = crate::dropout::params(p);
    let lanes = ew_lanes(n);
    let units = n / lanes;
    // SAFETY: contiguous buffers of n values of the dispatched type, n % lanes == 0.
    unsafe {
        launch_float!(
            x.dtype,
            "dropout",
            dropout_kernel(
                &x.client,
                cube_count(units),
                cube_dim(),
                lanes,
                array(&x, n),
                array(&out, n),
                units,
                seed as u32,
                (seed >> 32) as u32,
                threshold,
                scale,
                lanes,
            )
        )
    }
    out
}
