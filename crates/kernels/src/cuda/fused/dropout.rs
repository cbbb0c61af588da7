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

/// One unit of counter-based dropout (see `crate::dropout`): keep `x[e]·scale` iff
/// `mix32(mix32(e ^ seed_lo) ^ seed_hi) ≥ threshold`, else 0, for the `lanes` elements `e` of
/// unit `i`; f32 math.
#[cube]
fn drop_unit<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    y: &mut Array<Vector<F, N>>,
    i: usize,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
    #[comptime] lanes: usize,
) {
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

/// Counter-based dropout of `units` vectors of `lanes` values.
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
    drop_unit::<F, N>(x, y, i, seed_lo, seed_hi, threshold, scale, lanes);
}

/// LoRA's forward inputs in one launch: units `[0, units)` drop `x` as [`dropout_kernel`]
/// (none when `units` is 0), the next `na` units cast one value of the f32 factor `A` each to
/// `F`, the last `nb` one of `B`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn lora_prep_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    y: &mut Array<Vector<F, N>>,
    a: &Array<f32>,
    a_out: &mut Array<F>,
    b: &Array<f32>,
    b_out: &mut Array<F>,
    units: usize,
    na: usize,
    nb: usize,
    seed_lo: u32,
    seed_hi: u32,
    threshold: u32,
    scale: f32,
    #[comptime] lanes: usize,
) {
    let i = unit_index(units + na + nb);
    if i < units {
        drop_unit::<F, N>(x, y, i, seed_lo, seed_hi, threshold, scale, lanes);
    } else {
        let j = i - units;
        if j < na {
            a_out[j] = F::cast_from(a[j]);
        } else {
            b_out[j - na] = F::cast_from(b[j - na]);
        }
    }
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

/// Whether [`lora_prep`] takes these operands: f32 factors and a 16-bit `x` (else the caller
/// casts and drops with the separate ops).
pub fn lora_prep_fits<R: CubeRuntime>(x: &CubeTensor<R>, [a, b]: [&CubeTensor<R>; 2]) -> bool {
    use burn::tensor::DType;
    a.dtype == DType::F32 && b.dtype == DType::F32 && matches!(x.dtype, DType::F16 | DType::BF16)
}

/// LoRA's forward inputs ([`crate::QBackend::q_lora_prep`]) in one launch: `dropout(x)` when
/// `dropout` is `Some` with `p > 0` (else `x` itself) and the factors `a`, `b` in `x`'s dtype.
///
/// # Panics
/// Unless [`lora_prep_fits`]; on more than 2³² values of `x`.
pub fn lora_prep<R: CubeRuntime>(
    x: CubeTensor<R>,
    dropout: Option<(f32, u64)>,
    [a, b]: [CubeTensor<R>; 2],
) -> [CubeTensor<R>; 3] {
    assert!(
        lora_prep_fits(&x, [&a, &b]),
        "qtune-kernels: lora_prep needs f32 factors and a 16-bit input"
    );
    let dtype = x.dtype;
    let (a, b) = (into_contiguous(a), into_contiguous(b));
    let (na, nb) = (a.meta.num_elements(), b.meta.num_elements());
    let a_out = empty(&a, a.meta.shape().to_vec(), dtype);
    let b_out = empty(&b, b.meta.shape().to_vec(), dtype);
    // Without dropout `xd` is `x` itself and no unit reads or writes the x arrays (n = 0).
    let (x, xd, n, (threshold, scale), seed) = match dropout.filter(|&(p, _)| p > 0.0) {
        Some((p, seed)) => {
            let x = into_contiguous(x);
            let n = x.meta.num_elements();
            assert!(
                u32::try_from(n).is_ok(),
                "qtune-kernels: dropout of more than 2³² values"
            );
            let xd = empty(&x, x.meta.shape().to_vec(), dtype);
            (x, xd, n, crate::dropout::params(p), seed)
        }
        None => (x.clone(), x, 0, (0, 1.0), 0),
    };
    let lanes = ew_lanes(n.max(1));
    let units = n / lanes;
    let total = units + na + nb;
    if total > 0 {
        // SAFETY: contiguous buffers of the stated lengths in the dispatched types; units past
        // `units + na + nb` terminate; with no dropout the x arrays have length 0 and no unit
        // indexes them.
        unsafe {
            launch_float!(
                dtype,
                "lora_prep",
                lora_prep_kernel(
                    &x.client,
                    cube_count(total),
                    cube_dim(),
                    lanes,
                    array(&x, n),
                    array(&xd, n),
                    array(&a, na),
                    array(&a_out, na),
                    array(&b, nb),
                    array(&b_out, nb),
                    units,
                    na,
                    nb,
                    seed as u32,
                    (seed >> 32) as u32,
                    threshold,
                    scale,
                    lanes,
                )
            )
        }
    }
    [xd, a_out, b_out]
}
