//! HF's rotate-half RoPE (Llama, Mistral, Qwen2) and its inverse.

use burn::tensor::{bf16, f16, DType};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{as_f32_contiguous, row_vec};
use crate::cuda::launch::{array, cube_count, cube_dim, empty};

/// Rotate-half on `x [B, T, H, hd]`: unit `i` takes `lanes` consecutive dims `j` of the first
/// half of one head and the same dims `j + half` of the second, and writes
/// `lo = x1·cos − x2·sin`, `hi = x2·cos + x1·sin` with the f32 angle tables at `[b, t, j]`
/// (`[B, T, 1, half, 1]`). f32 math, rounded once to `F`: HF casts cos/sin to the activations'
/// dtype and rounds every product and sum there, so in bf16 the two differ by about an ulp.
/// `sign = −1` turns backwards: the input gradient of the rotation.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rotary_half_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    cos: &Array<Vector<f32, N>>,
    sin: &Array<Vector<f32, N>>,
    out: &mut Array<Vector<F, N>>,
    units: usize,
    half_units: u32,
    heads: u32,
    sign: f32,
    #[comptime] lanes: usize,
) {
    // 32-bit index math (64-bit division is emulated on the GPU).
    let i = ABSOLUTE_POS;
    if i >= units {
        terminate!();
    }
    let u = u32::cast_from(i);
    let head = u / half_units; // (b·T + t)·H + h
    let k = u % half_units;
    let lo = (head * 2u32 * half_units + k) as usize;
    let hi = lo + half_units as usize;
    let a = ((head / heads) * half_units + k) as usize;
    let (cv, sv) = (cos[a], sin[a]);
    let (x1, x2) = (x[lo], x[hi]);
    let mut o1 = Vector::<F, N>::empty();
    let mut o2 = Vector::<F, N>::empty();
    #[unroll]
    for p in 0..lanes {
        let c = cv[p];
        let s = sv[p] * sign;
        let u1 = f32::cast_from(x1[p]);
        let u2 = f32::cast_from(x2[p]);
        o1[p] = F::cast_from(u1 * c - u2 * s);
        o2[p] = F::cast_from(u2 * c + u1 * s);
    }
    out[lo] = o1;
    out[hi] = o2;
}

/// Rotate-half RoPE of `x [B, T, H, hd]` with f32-castable `cos`/`sin [B, T, 1, hd/2, 1]` (see
/// [`rotary_half_kernel`]); `inverse` rotates back.
///
/// # Panics
/// On shapes that do not fit (wiring bugs) or an unsupported dtype.
pub fn rotary_half<R: CubeRuntime>(
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
        "qtune-kernels: rotary_half input must be [B, T, H, hd]"
    );
    let (bt, h, hd) = (shape[0] * shape[1], shape[2], shape[3]);
    let half = hd / 2;
    let (cos, sin) = (as_f32_contiguous(cos), as_f32_contiguous(sin));
    assert!(
        hd % 2 == 0 && cos.meta.num_elements() == bt * half && sin.meta.num_elements() == bt * half,
        "qtune-kernels: rotary_half needs an even head_dim and cos/sin [B, T, 1, head_dim/2, 1]"
    );
    let n = x.meta.num_elements();
    let out = empty(&x, shape, x.dtype);
    if n == 0 {
        return out;
    }
    assert!(
        u32::try_from(n).is_ok(),
        "qtune-kernels: rotary_half of more than 2³² values"
    );
    let sign = if inverse { -1.0f32 } else { 1.0 };
    // A unit holds `lanes` dims of one half of one head: the widest of 8, 4, 2, 1 dividing it.
    let lanes = row_vec(half);
    let half_units = half / lanes;
    let units = n / 2 / lanes;
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: x/out hold n values, cos/sin bt × half, all multiples of lanes (half %
            // lanes == 0); every index stays below them (head < bt·h, k < half_units).
            unsafe {
                rotary_half_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    cube_count(units),
                    cube_dim(),
                    lanes,
                    array(&x, n),
                    array(&cos, bt * half),
                    array(&sin, bt * half),
                    array(&out, n),
                    units,
                    half_units as u32,
                    h as u32,
                    sign,
                    lanes,
                )
            }
        };
    }
    dispatch_float!(x.dtype, "rotary_half", go);
    out
}
