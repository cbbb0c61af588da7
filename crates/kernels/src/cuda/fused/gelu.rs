//! HF `NewGELUActivation` (GPT-J's `gelu_new`), optionally with `fc_in`'s bias folded in.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{ew_lanes, grad_arg, unit_index, LANES_EW};
use crate::cuda::kernels::{gelu_tanh, GELU_C};
use crate::cuda::launch::{array, cube_count, cube_dim, empty};

/// `gelu_new` (`y = 0.5·v·(1 + tanh(√(2/π)·(v + 0.044715·v³)))`, `v = x + bias`) or, with
/// `backward`, its input gradient `dy·gelu_new'(v)`; f32 math, `lanes` values per unit; the
/// bias (when `has_bias`) has `bias_units` units, one row of `x`.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gelu_new_kernel<F: Float, N: Size>(
    x: &Array<Vector<F, N>>,
    bias: &Array<Vector<F, N>>,
    dy: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    units: usize,
    bias_units: u32,
    #[comptime] lanes: usize,
    #[comptime] has_bias: bool,
    #[comptime] backward: bool,
) {
    let i = unit_index(units);
    let xv = x[i];
    let mut bv = Vector::<F, N>::empty();
    if has_bias {
        bv = bias[(u32::cast_from(i) % bias_units) as usize];
    }
    let mut o = Vector::<F, N>::empty();
    if backward {
        let dv = dy[i];
        #[unroll]
        for k in 0..lanes {
            let v = gelu_input(xv, bv, k, has_bias);
            let t = gelu_tanh(v);
            let inner = GELU_C * (1.0f32 + 0.134145f32 * v * v);
            let d = 0.5f32 * (1.0f32 + t) + 0.5f32 * v * (1.0f32 - t * t) * inner;
            o[k] = F::cast_from(f32::cast_from(dv[k]) * d);
        }
    } else {
        #[unroll]
        for k in 0..lanes {
            let v = gelu_input(xv, bv, k, has_bias);
            o[k] = F::cast_from(0.5f32 * v * (1.0f32 + gelu_tanh(v)));
        }
    }
    out[i] = o;
}

/// `v = x + bias` (the bias only with `has_bias`) for value `k`, in f32.
#[cube]
fn gelu_input<F: Float, N: Size>(
    xv: Vector<F, N>,
    bv: Vector<F, N>,
    k: usize,
    #[comptime] has_bias: bool,
) -> f32 {
    let mut v = f32::cast_from(xv[k]);
    if has_bias {
        v += f32::cast_from(bv[k]);
    }
    v
}

/// `gelu_new(x + bias)` (no `dy`) or its input gradient `dy·gelu_new'(x + bias)`, in `x`'s
/// dtype; `bias` (optional) has `x`'s last dim.
///
/// # Panics
/// On a dtype other than F32/F16/BF16, or `dy`/`bias` not matching `x` (a wiring bug).
pub fn gelu_new<R: CubeRuntime>(
    x: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
    dy: Option<CubeTensor<R>>,
) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let (dy, backward) = grad_arg(dy, &x, "gelu_new");
    let n = x.meta.num_elements();
    let d = x.meta.shape().to_vec().last().copied().unwrap_or(1).max(1);
    let bias = bias.map(into_contiguous);
    if let Some(b) = &bias {
        assert!(
            b.meta.num_elements() == d && b.dtype == x.dtype,
            "qtune-kernels: gelu_new bias must have x's last dim and dtype"
        );
    }
    assert!(
        u32::try_from(n).is_ok(),
        "qtune-kernels: gelu_new of more than 2³² values"
    );
    let out = empty(&x, x.meta.shape().to_vec(), x.dtype);
    if n == 0 {
        return out;
    }
    // The bias is indexed by unit within a row: a unit must not straddle two rows.
    let lanes = if d % LANES_EW == 0 { ew_lanes(n) } else { 1 };
    let units = n / lanes;
    let has_bias = bias.is_some();
    let bias = bias.unwrap_or_else(|| x.clone()); // not read without a bias
    let bias_len = if has_bias { d } else { n };
    // SAFETY: contiguous buffers of n (bias: d) values of the dispatched type, both multiples
    // of lanes.
    unsafe {
        launch_float!(
            x.dtype,
            "gelu_new",
            gelu_new_kernel(
                &x.client,
                cube_count(units),
                cube_dim(),
                lanes,
                array(&x, n),
                array(&bias, bias_len),
                array(&dy, n),
                array(&out, n),
                units,
                (d / lanes) as u32,
                lanes,
                has_bias,
                backward,
            )
        )
    }
    out
}
