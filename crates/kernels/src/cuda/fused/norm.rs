//! The norms with frozen weights and their input gradients, one plane (warp) per row:
//! LayerNorm (GPT-J's `ln_1`, `ln_f`) and HF `LlamaRMSNorm`; a forward over a few rows takes a
//! cube per row instead (`norm_row.rs`).

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::norm_row::{layer_norm_row_kernel, rms_norm_row_kernel, ROW_PLANES, ROW_VECS};
use super::rows::{as_rows, load_vecs, plane_row, row_sum, rows_launch, STRIDE, UNROLL};
use super::{as_f32_contiguous, grad_arg};
use crate::cuda::launch::{array, empty};

/// The most rows whose forward norm runs a cube per row (`norm_row.rs`: decode, batched
/// generation); more rows fill the GPU with a plane per row.
const ROW_PATH_ROWS: usize = 64;

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
    let (_, lane, base, iters) = plane_row(rows, len);
    let mean = row_sum(x, base, lane, len, iters, 0.0f32, false, false, vec) / len_f;
    let sq = row_sum(x, base, lane, len, iters, mean, true, true, vec);
    let rstd = 1.0f32 / f32::sqrt(sq / len_f + eps);
    // Each loop: the iteration's UNROLL vectors of every operand loaded first, then used in
    // order (see rows.rs).
    let mut xs = Array::<Vector<F, N>>::new(UNROLL);
    let mut ws = Array::<Vector<f32, N>>::new(UNROLL);
    if backward {
        let mut ds = Array::<Vector<F, N>>::new(UNROLL);
        let mut sg = 0.0f32;
        let mut sgx = 0.0f32;
        for k in 0..iters {
            let j0 = lane + k * STRIDE;
            load_vecs(x, &mut xs, base, j0, len);
            load_vecs(dy, &mut ds, base, j0, len);
            load_vecs(w, &mut ws, 0usize, j0, len);
            #[unroll]
            for u in 0..UNROLL {
                if j0 + u * 32usize < len {
                    let (xv, dv, wv) = (xs[u], ds[u], ws[u]);
                    #[unroll]
                    for q in 0..vec {
                        let g = f32::cast_from(dv[q]) * wv[q];
                        let xh = normed(xv, q, mean, rstd);
                        sg += g;
                        sgx += g * xh;
                    }
                }
            }
        }
        let mg = plane_sum(sg) / len_f;
        let mgx = plane_sum(sgx) / len_f;
        for k in 0..iters {
            let j0 = lane + k * STRIDE;
            load_vecs(x, &mut xs, base, j0, len);
            load_vecs(dy, &mut ds, base, j0, len);
            load_vecs(w, &mut ws, 0usize, j0, len);
            #[unroll]
            for u in 0..UNROLL {
                let j = j0 + u * 32usize;
                if j < len {
                    let (xv, dv, wv) = (xs[u], ds[u], ws[u]);
                    let mut o = Vector::<F, N>::empty();
                    #[unroll]
                    for q in 0..vec {
                        let g = f32::cast_from(dv[q]) * wv[q];
                        let xh = normed(xv, q, mean, rstd);
                        o[q] = F::cast_from(rstd * (g - mg - xh * mgx));
                    }
                    out[base + j] = o;
                }
            }
        }
    } else {
        let mut bs = Array::<Vector<f32, N>>::new(UNROLL);
        for k in 0..iters {
            let j0 = lane + k * STRIDE;
            load_vecs(x, &mut xs, base, j0, len);
            load_vecs(w, &mut ws, 0usize, j0, len);
            load_vecs(b, &mut bs, 0usize, j0, len);
            #[unroll]
            for u in 0..UNROLL {
                let j = j0 + u * 32usize;
                if j < len {
                    let (xv, wv, bv) = (xs[u], ws[u], bs[u]);
                    let mut o = Vector::<F, N>::empty();
                    #[unroll]
                    for q in 0..vec {
                        o[q] = F::cast_from(normed(xv, q, mean, rstd) * wv[q] + bv[q]);
                    }
                    out[base + j] = o;
                }
            }
        }
    }
}

/// `x̂ = (x − mean)·rstd` for value `q` of `xv`, f32.
#[cube]
fn normed<F: Float, N: Size>(xv: Vector<F, N>, q: usize, mean: f32, rstd: f32) -> f32 {
    (f32::cast_from(xv[q]) - mean) * rstd
}

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
    let (_, lane, base, iters) = plane_row(rows, len);
    let sq = row_sum(x, base, lane, len, iters, 0.0f32, true, false, vec);
    let r = 1.0f32 / f32::sqrt(sq / len_f + eps);
    // Each loop: the iteration's UNROLL vectors of every operand loaded first, then used in
    // order (see rows.rs).
    let mut xs = Array::<Vector<F, N>>::new(UNROLL);
    let mut ws = Array::<Vector<F, N>>::new(UNROLL);
    if backward {
        let mut ds = Array::<Vector<F, N>>::new(UNROLL);
        let mut sgx = 0.0f32;
        for k in 0..iters {
            let j0 = lane + k * STRIDE;
            load_vecs(x, &mut xs, base, j0, len);
            load_vecs(dy, &mut ds, base, j0, len);
            load_vecs(w, &mut ws, 0usize, j0, len);
            #[unroll]
            for u in 0..UNROLL {
                if j0 + u * 32usize < len {
                    let (xv, dv, wv) = (xs[u], ds[u], ws[u]);
                    #[unroll]
                    for q in 0..vec {
                        sgx += rms_grad(dv, wv, q) * f32::cast_from(xv[q]);
                    }
                }
            }
        }
        let c = r * r * r * (plane_sum(sgx) / len_f);
        for k in 0..iters {
            let j0 = lane + k * STRIDE;
            load_vecs(x, &mut xs, base, j0, len);
            load_vecs(dy, &mut ds, base, j0, len);
            load_vecs(w, &mut ws, 0usize, j0, len);
            #[unroll]
            for u in 0..UNROLL {
                let j = j0 + u * 32usize;
                if j < len {
                    let (xv, dv, wv) = (xs[u], ds[u], ws[u]);
                    let mut o = Vector::<F, N>::empty();
                    #[unroll]
                    for q in 0..vec {
                        o[q] = F::cast_from(rms_grad(dv, wv, q) * r - f32::cast_from(xv[q]) * c);
                    }
                    out[base + j] = o;
                }
            }
        }
    } else {
        for k in 0..iters {
            let j0 = lane + k * STRIDE;
            load_vecs(x, &mut xs, base, j0, len);
            load_vecs(w, &mut ws, 0usize, j0, len);
            #[unroll]
            for u in 0..UNROLL {
                let j = j0 + u * 32usize;
                if j < len {
                    out[base + j] = rms_scale(xs[u], ws[u], r, vec);
                }
            }
        }
    }
}

/// RMSNorm's output for one vector: `normed = x·r` rounded to `F`, then `normed·w` rounded to
/// `F` (HF's order). Also the few-row kernel's (`norm_row.rs`), so both round alike.
#[cube]
pub(super) fn rms_scale<F: Float, N: Size>(
    xv: Vector<F, N>,
    wv: Vector<F, N>,
    r: f32,
    #[comptime] vec: usize,
) -> Vector<F, N> {
    let mut o = Vector::<F, N>::empty();
    #[unroll]
    for q in 0..vec {
        let normed = F::cast_from(f32::cast_from(xv[q]) * r);
        o[q] = F::cast_from(f32::cast_from(normed) * f32::cast_from(wv[q]));
    }
    o
}

/// `g = dy·w` for value `q`, f32.
#[cube]
fn rms_grad<F: Float, N: Size>(dv: Vector<F, N>, wv: Vector<F, N>, q: usize) -> f32 {
    f32::cast_from(dv[q]) * f32::cast_from(wv[q])
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
    norm(x, w, Some(b), dy, eps)
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
    norm(x, w, None, dy, eps)
}

/// [`layer_norm`] with a bias `b`, else [`rms_norm`].
fn norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    b: Option<CubeTensor<R>>,
    dy: Option<CubeTensor<R>>,
    eps: f32,
) -> CubeTensor<R> {
    let (x, shape, rows, len) = as_rows(x);
    // LayerNorm's weight and bias go to the kernel in f32, RMSNorm's weight in x's dtype.
    let (what, w, b) = match b {
        Some(b) => {
            let (w, b) = (as_f32_contiguous(w), as_f32_contiguous(b));
            assert!(
                w.meta.num_elements() == len && b.meta.num_elements() == len,
                "qtune-kernels: layer norm weight/bias must have {len} values"
            );
            ("layer norm", w, Some(b))
        }
        None => {
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
            ("RMSNorm", w, None)
        }
    };
    let (dy, backward) = grad_arg(dy, &x, what);
    let out = empty(&x, shape, x.dtype);
    if rows == 0 || len == 0 {
        return out;
    }
    let (count, dim, vec) = rows_launch(rows, len);
    if !backward && rows <= ROW_PATH_ROWS && len / vec <= 256 * ROW_VECS {
        // A few rows (decode): a cube per row (norm_row.rs).
        let (count, dim) = (
            CubeCount::Static(rows as u32, 1, 1),
            CubeDim::new_2d(32, ROW_PLANES),
        );
        // SAFETY: as below, a cube per row (rows ≤ ROW_PATH_ROWS), each unit reading at most
        // ROW_VECS clamped vectors of its row.
        unsafe {
            match &b {
                Some(b) => launch_float!(
                    x.dtype,
                    what,
                    layer_norm_row_kernel(
                        &x.client,
                        count,
                        dim,
                        vec,
                        array(&x, rows * len),
                        array(&w, len),
                        array(b, len),
                        array(&out, rows * len),
                        len / vec,
                        len as f32,
                        eps,
                        vec,
                    )
                ),
                None => launch_float!(
                    x.dtype,
                    what,
                    rms_norm_row_kernel(
                        &x.client,
                        count,
                        dim,
                        vec,
                        array(&x, rows * len),
                        array(&w, len),
                        array(&out, rows * len),
                        len / vec,
                        len as f32,
                        eps,
                        vec,
                    )
                ),
            }
        }
        return out;
    }
    // The two kernels' arguments, LayerNorm's bias (`b`) after the weight.
    macro_rules! launch {
        ($kernel:ident $(, $b:expr)?) => {
            launch_float!(
                x.dtype,
                what,
                $kernel(
                    &x.client,
                    count,
                    dim,
                    vec,
                    array(&x, rows * len),
                    array(&w, len),
                    $($b,)?
                    array(&dy, rows * len),
                    array(&out, rows * len),
                    rows,
                    len / vec,
                    len as f32,
                    eps,
                    backward,
                    vec,
                )
            )
        };
    }
    // SAFETY: contiguous buffers: x, dy, out rows × len; w (and b) len (len % vec == 0), of the
    // kernel's types (LayerNorm's w, b f32, RMSNorm's w the dispatched type); a plane per row.
    unsafe {
        match &b {
            Some(b) => launch!(layer_norm_kernel, array(b, len)),
            None => launch!(rms_norm_kernel),
        }
    }
    out
}
