//! GPT-J's rotary embedding ("rotate every two") and its inverse.

use burn::tensor::{bf16, f16, DType};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::as_f32_contiguous;
use crate::cuda::launch::{array, cube_count, cube_dim, empty};

/// GPT-J rotary ("rotate every two") on `x [B, T, H, hd]`: pairs `(2i, 2i+1)`, `i < half`, turn
/// by the angle whose `cos`/`sin` are at `[b, t, i]` (f32 `[B, T, 1, half, 1]`); dims from
/// `2·half` on pass through. `sign = −1` turns backwards: the input gradient of the rotation.
#[cube(launch_unchecked)]
fn rotary_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    cos: &Array<f32>,
    sin: &Array<f32>,
    out: &mut Array<Vector<F, N>>,
    units: usize,
    hd: u32,
    row: u32,
    half: u32,
    sign: f32,
    #[comptime] lanes: usize,
) {
    // 32-bit index math (64-bit division is emulated on the GPU); unit i holds `lanes`
    // consecutive values of one head, so whole pairs, all inside or all outside the rotary dims.
    let i = ABSOLUTE_POS;
    if i >= units {
        terminate!();
    }
    let e0 = u32::cast_from(i) * (lanes as u32);
    let j0 = e0 % hd;
    let xv = x[i];
    if j0 < 2u32 * half {
        let a0 = (e0 / row) * half + j0 / 2u32;
        let mut o = Vector::<F, N>::empty();
        #[unroll]
        for p in 0..lanes / 2 {
            let c = cos[(a0 + p as u32) as usize];
            let s = sin[(a0 + p as u32) as usize] * sign;
            let u = f32::cast_from(xv[2 * p]);
            let v = f32::cast_from(xv[2 * p + 1]);
            o[2 * p] = F::cast_from(u * c - v * s);
            o[2 * p + 1] = F::cast_from(v * c + u * s);
        }
        out[i] = o;
    } else {
        out[i] = xv;
    }
}

/// Rotary embedding of `x [B, T, H, hd]` (see [`rotary_kernel`]); `inverse` rotates back.
///
/// # Panics
/// On shapes that do not fit (wiring bugs) or an unsupported dtype.
pub fn rotary<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    inverse: bool,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let shape = x.meta.shape().to_vec();
    assert_eq!(
        shape.len(),
        4,
        "qtune-kernels: rotary input must be [B, T, H, hd]"
    );
    let (bt, h, hd) = (shape[0] * shape[1], shape[2], shape[3]);
    let (cos, sin) = (as_f32_contiguous(cos), as_f32_contiguous(sin));
    let half = cos.meta.num_elements() / bt.max(1);
    assert!(
        cos.meta.num_elements() == bt * half
            && sin.meta.num_elements() == bt * half
            && 2 * half <= hd
            && hd % 2 == 0,
        "qtune-kernels: rotary cos/sin must be [B, T, 1, half, 1] with 2·half ≤ head_dim"
    );
    let n = x.meta.num_elements();
    let out = empty(&x, shape, x.dtype);
    if n == 0 {
        return out;
    }
    assert!(
        u32::try_from(n).is_ok(),
        "qtune-kernels: rotary of more than 2³² values"
    );
    let sign = if inverse { -1.0f32 } else { 1.0 };
    // A unit must hold whole pairs of one head, all rotated or all passed through.
    let lanes = if hd % 8 == 0 && (2 * half) % 8 == 0 {
        8
    } else {
        2
    };
    let units = n / lanes;
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: x/out hold n values (n % lanes == 0 as hd % lanes == 0); cos/sin bt × half.
            unsafe {
                rotary_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    cube_count(units),
                    cube_dim(),
                    lanes,
                    array(&x, n),
                    array(&cos, bt * half),
                    array(&sin, bt * half),
                    array(&out, n),
                    units,
                    hd as u32,
                    (h * hd) as u32,
                    half as u32,
                    sign,
                    lanes,
                )
            }
        };
    }
    dispatch_float!(x.dtype, "rotary", go);
    out
}
