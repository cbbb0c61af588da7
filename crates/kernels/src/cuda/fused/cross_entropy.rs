//! Per-row cross-entropy of logits against target classes, and its backward.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::as_f32_contiguous;
use super::rows::{load_vecs, plane_row, rows_launch, STRIDE, UNROLL};
use crate::cuda::launch::{array, empty};

/// Cross-entropy of rows of logits (`x [rows, len]`, any float dtype, f32 math) against one
/// target class per row: forward writes `nll[r] = logsumexp(x[r]) − x[r, t[r]]` (f32);
/// `backward` writes instead `dx[r, j] = (softmax(x[r])_j − [j = t[r]]) · g[r]` in `x`'s dtype.
/// With `in_place` (backward only) the logits are read from `dx` and overwritten there: each
/// value is read (in both passes) and then written by the same lane, and no lane reads a value
/// another writes, so the result is the same bits as into a separate buffer.
#[cube(launch_unchecked)]
fn cross_entropy_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    x_scalar: &Array<F>,
    targets: &Array<i32>,
    g: &Array<f32>,
    nll: &mut Array<f32>,
    dx: &mut Array<Vector<F, N>>,
    rows: usize,
    len: usize,
    #[comptime] backward: bool,
    #[comptime] in_place: bool,
    #[comptime] vec: usize,
) {
    let (row, lane, base, iters) = plane_row(rows, len);
    // One pass: running max and the sum of exp(v − max), rescaled when the max grows, value by
    // value in the lane's order; each iteration's UNROLL vectors loaded first (see rows.rs).
    let mut m = 0.0f32;
    m -= 3.402_823_5e38f32;
    let mut acc = 0.0f32;
    let mut xs = Array::<Vector<F, N>>::new(UNROLL);
    for k in 0..iters {
        let j0 = lane + k * STRIDE;
        if in_place {
            load_vecs(dx, &mut xs, base, j0, len);
        } else {
            load_vecs(x, &mut xs, base, j0, len);
        }
        #[unroll]
        for u in 0..UNROLL {
            if j0 + u * 32usize < len {
                let xv = xs[u];
                #[unroll]
                for q in 0..vec {
                    let v = f32::cast_from(xv[q]);
                    if v > m {
                        acc = acc * f32::exp(m - v) + 1.0f32;
                        m = v;
                    } else {
                        acc += f32::exp(v - m);
                    }
                }
            }
        }
    }
    let mx = plane_max(m);
    let mut part = 0.0f32;
    if acc > 0.0f32 {
        part = acc * f32::exp(m - mx);
    }
    let sum = plane_sum(part);
    let t = usize::cast_from(targets[row]);
    if backward {
        let gr = g[row];
        let inv_sum = 1.0f32 / sum;
        for k in 0..iters {
            let j0 = lane + k * STRIDE;
            if in_place {
                load_vecs(dx, &mut xs, base, j0, len);
            } else {
                load_vecs(x, &mut xs, base, j0, len);
            }
            #[unroll]
            for u in 0..UNROLL {
                let j = j0 + u * 32usize;
                if j < len {
                    let xv = xs[u];
                    let mut o = Vector::<F, N>::empty();
                    #[unroll]
                    for q in 0..vec {
                        let mut d = f32::exp(f32::cast_from(xv[q]) - mx) * inv_sum;
                        if j * vec + q == t {
                            d -= 1.0f32;
                        }
                        o[q] = F::cast_from(d * gr);
                    }
                    dx[base + j] = o;
                }
            }
        }
    } else {
        if lane == 0usize {
            let xt = f32::cast_from(x_scalar[base * vec + t]);
            nll[row] = mx + f32::ln(sum) - xt;
        }
    }
}

/// Per-row negative log-likelihood of `targets` (I32, `[rows]`, each in `[0, len)`) under the
/// logits `x [rows, len]` (F32): `nll` (no `g`), or with `g [rows]` the logits' gradient,
/// written over `x` when `x` is exclusively owned and dense (one `[rows, vocab]` buffer instead
/// of two, the same bits: gpu-check `head`), else into a new tensor.
///
/// # Panics
/// On mismatched shapes or an unsupported dtype (wiring bugs; targets are checked by callers).
pub fn cross_entropy<R: CubeRuntime>(
    x: CubeTensor<R>,
    targets: CubeTensor<R>,
    g: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let shape = x.meta.shape().to_vec();
    assert_eq!(
        shape.len(),
        2,
        "qtune-kernels: cross-entropy logits must be [rows, vocab]"
    );
    let (rows, len) = (shape[0], shape[1]);
    let targets = into_contiguous(if targets.dtype == DType::I32 {
        targets
    } else {
        burn_cubecl::kernel::cast(targets, DType::I32)
    });
    assert_eq!(
        targets.meta.num_elements(),
        rows,
        "qtune-kernels: one target per row"
    );
    let backward = g.is_some();
    let g = g.map(as_f32_contiguous);
    let nll = empty(&x, vec![rows], DType::F32);
    let in_place = backward && x.can_mut() && x.is_contiguous_buffer();
    let dx = if in_place {
        x.clone()
    } else if backward {
        empty(&x, shape, x.dtype)
    } else {
        empty(&x, vec![1], x.dtype)
    };
    if rows == 0 || len == 0 {
        return if backward { dx } else { nll };
    }
    let g_t = g.unwrap_or_else(|| nll.clone());
    let dx_len = if backward { rows * len } else { 1 };
    let (count, dim, vec) = rows_launch(rows, len);
    // SAFETY: x rows × len (len % vec == 0), targets/g/nll rows, dx rows × len (or an unused 1);
    // a plane per row; targets index inside the row (checked by callers). In place, `x` and
    // `dx` are one buffer and the kernel reads only `dx`.
    unsafe {
        launch_float!(
            x.dtype,
            "cross-entropy",
            cross_entropy_kernel(
                &x.client,
                count,
                dim,
                vec,
                array(&x, rows * len),
                array(&x, rows * len),
                array(&targets, rows),
                array(&g_t, rows),
                array(&nll, rows),
                array(&dx, dx_len),
                rows,
                len / vec,
                backward,
                in_place,
                vec,
            )
        )
    }
    if backward {
        dx
    } else {
        nll
    }
}
