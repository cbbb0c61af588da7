//! Rotary position embeddings and their inverses: GPT-J's "rotate every two" and HF's
//! rotate-half (Llama, Mistral, Qwen2), one host path for both.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{as_f32_contiguous, row_vec, unit_index};
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
    let i = unit_index(units);
    out[i] = rotate_pairs::<F, N>(x[i], i, cos, sin, hd, row, half, sign, lanes);
}

/// Unit `i` (`lanes` values from value `i·lanes` of `[B, T, H, hd]`, `row = H·hd`) of
/// [`rotary_kernel`], rotated; dims from `2·half` on pass through. Also the fused decode op's
/// (`cuda/decode.rs`), so both round alike.
#[cube]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rotate_pairs<F: Float, N: Size>(
    xv: Vector<F, N>,
    i: usize,
    cos: &Array<f32>,
    sin: &Array<f32>,
    hd: u32,
    row: u32,
    half: u32,
    sign: f32,
    #[comptime] lanes: usize,
) -> Vector<F, N> {
    let e0 = u32::cast_from(i) * (lanes as u32);
    let j0 = e0 % hd;
    let mut o = Vector::<F, N>::empty();
    if j0 < 2u32 * half {
        let a0 = (e0 / row) * half + j0 / 2u32;
        #[unroll]
        for p in 0..lanes / 2 {
            let c = cos[(a0 + p as u32) as usize];
            let s = sin[(a0 + p as u32) as usize] * sign;
            let u = f32::cast_from(xv[2 * p]);
            let v = f32::cast_from(xv[2 * p + 1]);
            o[2 * p] = F::cast_from(u * c - v * s);
            o[2 * p + 1] = F::cast_from(v * c + u * s);
        }
    } else {
        o = xv;
    }
    o
}

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
    let i = unit_index(units);
    let (lo, hi, a) = half_unit(i, half_units, heads);
    let (cv, sv) = (cos[a], sin[a]);
    let (o1, o2) = rotate_halves::<F, N>(x[lo], x[hi], cv, sv, sign, lanes);
    out[lo] = o1;
    out[hi] = o2;
}

/// Where unit `i` of [`rotary_half_kernel`] reads and writes (32-bit index math: 64-bit
/// division is emulated on the GPU): its vectors `lo` and `hi` (the same dims of the head's two
/// halves) and its vector of the angle tables.
#[cube]
pub(crate) fn half_unit(i: usize, half_units: u32, heads: u32) -> (usize, usize, usize) {
    let u = u32::cast_from(i);
    let head = u / half_units; // (b·T + t)·H + h
    let k = u % half_units;
    let lo = (head * 2u32 * half_units + k) as usize;
    (
        lo,
        lo + half_units as usize,
        ((head / heads) * half_units + k) as usize,
    )
}

/// A head's two halves `x1`, `x2` (one vector of each) turned by `cv`/`sv`: [`rotary_half_kernel`]'s
/// math, also the fused decode op's (`cuda/decode.rs`).
#[cube]
pub(crate) fn rotate_halves<F: Float, N: Size>(
    x1: Vector<F, N>,
    x2: Vector<F, N>,
    cv: Vector<f32, N>,
    sv: Vector<f32, N>,
    sign: f32,
    #[comptime] lanes: usize,
) -> (Vector<F, N>, Vector<F, N>) {
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
    (o1, o2)
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
    rope(x, cos, sin, inverse, false)
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
    rope(x, cos, sin, inverse, true)
}

/// [`rotary`], or with `halves` [`rotary_half`].
fn rope<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    inverse: bool,
    halves: bool,
) -> CubeTensor<R> {
    let what = if halves { "rotary_half" } else { "rotary" };
    let x = into_contiguous(x);
    let shape = x.meta.shape().to_vec();
    assert_eq!(
        shape.len(),
        4,
        "qtune-kernels: {what} input must be [B, T, H, hd]"
    );
    let (bt, h, hd) = (shape[0] * shape[1], shape[2], shape[3]);
    let (cos, sin) = (as_f32_contiguous(cos), as_f32_contiguous(sin));
    let half = if halves {
        hd / 2
    } else {
        cos.meta.num_elements() / bt.max(1)
    };
    let tables = cos.meta.num_elements() == bt * half && sin.meta.num_elements() == bt * half;
    if halves {
        assert!(
            hd % 2 == 0 && tables,
            "qtune-kernels: rotary_half needs an even head_dim and cos/sin [B, T, 1, head_dim/2, 1]"
        );
    } else {
        assert!(
            tables && 2 * half <= hd && hd % 2 == 0,
            "qtune-kernels: rotary cos/sin must be [B, T, 1, half, 1] with 2·half ≤ head_dim"
        );
    }
    let n = x.meta.num_elements();
    let out = empty(&x, shape, x.dtype);
    if n == 0 {
        return out;
    }
    assert!(
        u32::try_from(n).is_ok(),
        "qtune-kernels: {what} of more than 2³² values"
    );
    let sign = if inverse { -1.0f32 } else { 1.0 };
    // The two kernels' arguments: the same buffers and sign, their own index constants.
    macro_rules! launch {
        ($kernel:ident, $units:expr, $lanes:expr, $($index:expr),+) => {
            launch_float!(
                x.dtype,
                what,
                $kernel(
                    &x.client,
                    cube_count($units),
                    cube_dim(),
                    $lanes,
                    array(&x, n),
                    array(&cos, bt * half),
                    array(&sin, bt * half),
                    array(&out, n),
                    $units,
                    $($index,)+
                    sign,
                    $lanes,
                )
            )
        };
    }
    if halves {
        // A unit holds `lanes` dims of one half of one head: the widest of 8, 4, 2, 1 dividing it.
        let lanes = row_vec(half);
        let half_units = half / lanes;
        // SAFETY: x/out hold n values, cos/sin bt × half, all multiples of lanes (half % lanes
        // == 0); every index stays below them (head < bt·h, k < half_units).
        unsafe {
            launch!(
                rotary_half_kernel,
                n / 2 / lanes,
                lanes,
                half_units as u32,
                h as u32
            )
        }
    } else {
        // A unit must hold whole pairs of one head, all rotated or all passed through.
        let lanes = if hd % 8 == 0 && (2 * half) % 8 == 0 {
            8
        } else {
            2
        };
        // SAFETY: x/out hold n values (n % lanes == 0 as hd % lanes == 0); cos/sin bt × half.
        unsafe {
            launch!(
                rotary_kernel,
                n / lanes,
                lanes,
                hd as u32,
                (h * hd) as u32,
                half as u32
            )
        }
    }
    out
}
