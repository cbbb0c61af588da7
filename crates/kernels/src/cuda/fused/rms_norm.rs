//! HF `LlamaRMSNorm` (frozen weight) and its input gradient, one plane (warp) per row as the
//! LayerNorm kernel.

use burn::tensor::{bf16, f16, DType};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{row_vec, rows_launch, ROWS_PER_CUBE};
use crate::cuda::launch::{array, empty};

/// RMSNorm of rows of `len` vectors of `vec` values: `r = 1/√(mean(x²) + eps)` in f32,
/// `normed = x·r` rounded to `F` (HF casts back to the input dtype), then `normed·w` with `w`
/// in `F`, rounded once to `F`: the product of two `F` values is exact in f32, so this is the
/// correctly rounded `F` product HF computes. With `backward`, writes `dx` for `dy` instead:
/// `dx = r·g − x·r³·mean(g·x)`, `g = dy·w`, f32 math.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<F, N>>,
    dy: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    rows: usize,
    len: usize,
    len_f: f32,
    eps: f32,
    #[comptime] backward: bool,
    #[comptime] vec: usize,
) {
    let row = CUBE_POS * (ROWS_PER_CUBE as usize) + usize::cast_from(UNIT_POS_Y);
    if row >= rows {
        terminate!();
    }
    let lane = usize::cast_from(UNIT_POS_X);
    let base = row * len;
    let iters = len.div_ceil(32usize);
    let mut sq = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let xv = x[base + j];
            #[unroll]
            for q in 0..vec {
                let v = f32::cast_from(xv[q]);
                sq += v * v;
            }
        }
    }
    let r = 1.0f32 / f32::sqrt(plane_sum(sq) / len_f + eps);
    if backward {
        let mut sgx = 0.0f32;
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let (xv, dv, wv) = (x[base + j], dy[base + j], w[j]);
                #[unroll]
                for q in 0..vec {
                    let g = f32::cast_from(dv[q]) * f32::cast_from(wv[q]);
                    sgx += g * f32::cast_from(xv[q]);
                }
            }
        }
        let c = r * r * r * (plane_sum(sgx) / len_f);
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let (xv, dv, wv) = (x[base + j], dy[base + j], w[j]);
                let mut o = Vector::<F, N>::empty();
                #[unroll]
                for q in 0..vec {
                    let g = f32::cast_from(dv[q]) * f32::cast_from(wv[q]);
                    o[q] = F::cast_from(g * r - f32::cast_from(xv[q]) * c);
                }
                out[base + j] = o;
            }
        }
    } else {
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let (xv, wv) = (x[base + j], w[j]);
                let mut o = Vector::<F, N>::empty();
                #[unroll]
                for q in 0..vec {
                    let normed = F::cast_from(f32::cast_from(xv[q]) * r);
                    o[q] = F::cast_from(f32::cast_from(normed) * f32::cast_from(wv[q]));
                }
                out[base + j] = o;
            }
        }
    }
}

/// RMSNorm over the last dim of `x` (any rank) with a frozen `w` (`[len]`, any float dtype,
/// cast to `x`'s as HF does), in `x`'s dtype; with `dy`, its input gradient instead.
///
/// # Panics
/// On mismatched shapes or an unsupported dtype (wiring bugs).
pub fn rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    dy: Option<CubeTensor<R>>,
    eps: f32,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let shape = x.meta.shape().to_vec();
    let len = *shape.last().unwrap_or(&0);
    let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
    let w = into_contiguous(if w.dtype == x.dtype {
        w
    } else {
        burn_cubecl::kernel::cast(w, x.dtype)
    });
    assert_eq!(
        w.meta.num_elements(),
        len,
        "qtune-kernels: RMSNorm weight must have {len} values"
    );
    let dy = dy.map(into_contiguous);
    if let Some(d) = &dy {
        assert!(
            d.meta.shape() == x.meta.shape() && d.dtype == x.dtype,
            "qtune-kernels: RMSNorm backward: dy must match x"
        );
    }
    let out = empty(&x, shape, x.dtype);
    if rows == 0 || len == 0 {
        return out;
    }
    let backward = dy.is_some();
    let dy_t = dy.unwrap_or_else(|| x.clone()); // not read in the forward
    let vec = row_vec(len);
    let (count, dim) = rows_launch(rows);
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: contiguous buffers: x, dy, out rows × len; w len (len % vec == 0), all of
            // the dispatched type; a plane per row.
            unsafe {
                rms_norm_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    count,
                    dim,
                    vec,
                    array(&x, rows * len),
                    array(&w, len),
                    array(&dy_t, rows * len),
                    array(&out, rows * len),
                    rows,
                    len / vec,
                    len as f32,
                    eps,
                    backward,
                    vec,
                )
            }
        };
    }
    dispatch_float!(x.dtype, "RMSNorm", go);
    out
}
