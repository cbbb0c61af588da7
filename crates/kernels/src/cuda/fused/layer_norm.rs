//! LayerNorm with a frozen weight and bias (GPT-J's `ln_1`, `ln_f`) and its input gradient.

use burn::tensor::{bf16, f16, DType};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{as_f32_contiguous, row_vec, rows_launch, ROWS_PER_CUBE};
use crate::cuda::launch::{array, empty};

/// LayerNorm of rows of `len` values, one plane per row, f32 math (as HF under bf16 autocast:
/// GPT-J's `ln_1` runs in f32 and casts back): `y = (x − mean)/√(var + eps)·w + b`.
/// `w`/`b` are f32. With `backward`, writes instead `dx` for `dy` (frozen `w`, `b`):
/// `dx = rstd·(g − mean(g) − x̂·mean(g·x̂))`, `g = dy·w`, `x̂ = (x − mean)·rstd`.
#[cube(launch_unchecked)]
fn layer_norm_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    w: &Array<Vector<f32, N>>,
    b: &Array<Vector<f32, N>>,
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
    let mut sum = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let xv = x[base + j];
            #[unroll]
            for q in 0..vec {
                sum += f32::cast_from(xv[q]);
            }
        }
    }
    let mean = plane_sum(sum) / len_f;
    let mut sq = 0.0f32;
    for k in 0..iters {
        let j = lane + k * 32usize;
        if j < len {
            let xv = x[base + j];
            #[unroll]
            for q in 0..vec {
                let d = f32::cast_from(xv[q]) - mean;
                sq += d * d;
            }
        }
    }
    let rstd = 1.0f32 / f32::sqrt(plane_sum(sq) / len_f + eps);
    if backward {
        let mut sg = 0.0f32;
        let mut sgx = 0.0f32;
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let (xv, dv, wv) = (x[base + j], dy[base + j], w[j]);
                #[unroll]
                for q in 0..vec {
                    let g = f32::cast_from(dv[q]) * wv[q];
                    let xh = (f32::cast_from(xv[q]) - mean) * rstd;
                    sg += g;
                    sgx += g * xh;
                }
            }
        }
        let mg = plane_sum(sg) / len_f;
        let mgx = plane_sum(sgx) / len_f;
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let (xv, dv, wv) = (x[base + j], dy[base + j], w[j]);
                let mut o = Vector::<F, N>::empty();
                #[unroll]
                for q in 0..vec {
                    let g = f32::cast_from(dv[q]) * wv[q];
                    let xh = (f32::cast_from(xv[q]) - mean) * rstd;
                    o[q] = F::cast_from(rstd * (g - mg - xh * mgx));
                }
                out[base + j] = o;
            }
        }
    } else {
        for k in 0..iters {
            let j = lane + k * 32usize;
            if j < len {
                let (xv, wv, bv) = (x[base + j], w[j], b[j]);
                let mut o = Vector::<F, N>::empty();
                #[unroll]
                for q in 0..vec {
                    let xh = (f32::cast_from(xv[q]) - mean) * rstd;
                    o[q] = F::cast_from(xh * wv[q] + bv[q]);
                }
                out[base + j] = o;
            }
        }
    }
}

/// LayerNorm over the last dim of `x` (any rank) with frozen `w`, `b` (`[len]`, any float
/// dtype), in `x`'s dtype; with `dy`, its input gradient instead.
///
/// # Panics
/// On mismatched shapes or an unsupported dtype (wiring bugs).
pub fn layer_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    b: CubeTensor<R>,
    dy: Option<CubeTensor<R>>,
    eps: f32,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let shape = x.meta.shape().to_vec();
    let len = *shape.last().unwrap_or(&0);
    let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
    let (w, b) = (as_f32_contiguous(w), as_f32_contiguous(b));
    assert!(
        w.meta.num_elements() == len && b.meta.num_elements() == len,
        "qtune-kernels: layer norm weight/bias must have {len} values"
    );
    let dy = dy.map(into_contiguous);
    if let Some(d) = &dy {
        assert!(
            d.meta.shape() == x.meta.shape() && d.dtype == x.dtype,
            "qtune-kernels: layer norm backward: dy must match x"
        );
    }
    let out = empty(&x, shape, x.dtype);
    if rows == 0 || len == 0 {
        return out;
    }
    let backward = dy.is_some();
    let dy_t = dy.unwrap_or_else(|| x.clone());
    let vec = row_vec(len);
    let (count, dim) = rows_launch(rows);
    macro_rules! go {
        ($f:ty) => {
            // SAFETY: contiguous buffers: x, dy, out rows × len; w, b len (len % vec == 0); a
            // plane per row.
            unsafe {
                layer_norm_kernel::launch_unchecked::<$f, R>(
                    &x.client,
                    count,
                    dim,
                    vec,
                    array(&x, rows * len),
                    array(&w, len),
                    array(&b, len),
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
    dispatch_float!(x.dtype, "layer norm", go);
    out
}
