//! SwiGLU's product `silu(gate)·up` (HF `LlamaMLP`) and its two input gradients.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{ew_lanes, unit_index};
use crate::cuda::launch::{array, cube_count, cube_dim, empty};

/// `y = silu(g)·u` as torch: `silu(g) = g / (1 + e^(−g))` in f32 rounded to `F`, then the
/// product of the two `F` values (exact in f32) rounded once to `F`; `lanes` values per unit.
#[cube(launch_unchecked)]
fn silu_mul_kernel<F: Float, N: Size>(
    gate: &Array<Vector<F, N>>,
    up: &Array<Vector<F, N>>,
    out: &mut Array<Vector<F, N>>,
    units: usize,
    #[comptime] lanes: usize,
) {
    let i = unit_index(units);
    let (gv, uv) = (gate[i], up[i]);
    let mut o = Vector::<F, N>::empty();
    #[unroll]
    for k in 0..lanes {
        let g = f32::cast_from(gv[k]);
        let silu = F::cast_from(g / sigmoid_denom(g));
        o[k] = F::cast_from(f32::cast_from(silu) * f32::cast_from(uv[k]));
    }
    out[i] = o;
}

/// `dgate = dy·u·σ(g)·(1 + g·(1 − σ(g)))`, `dup = dy·silu(g)` (`silu` rounded to `F` as in
/// the forward), f32 math, `F` out.
#[cube(launch_unchecked)]
fn silu_mul_backward_kernel<F: Float, N: Size>(
    gate: &Array<Vector<F, N>>,
    up: &Array<Vector<F, N>>,
    dy: &Array<Vector<F, N>>,
    dgate: &mut Array<Vector<F, N>>,
    dup: &mut Array<Vector<F, N>>,
    units: usize,
    #[comptime] lanes: usize,
) {
    let i = unit_index(units);
    let (gv, uv, dv) = (gate[i], up[i], dy[i]);
    let mut og = Vector::<F, N>::empty();
    let mut ou = Vector::<F, N>::empty();
    #[unroll]
    for k in 0..lanes {
        let g = f32::cast_from(gv[k]);
        let e1 = sigmoid_denom(g);
        let s = 1.0f32 / e1;
        let silu = F::cast_from(g / e1);
        let d = f32::cast_from(dv[k]);
        og[k] = F::cast_from(d * f32::cast_from(uv[k]) * (s * (1.0f32 + g * (1.0f32 - s))));
        ou[k] = F::cast_from(d * f32::cast_from(silu));
    }
    dgate[i] = og;
    dup[i] = ou;
}

/// `1 + e^(−g)`: `σ(g) = 1/(1 + e^(−g))`, `silu(g) = g/(1 + e^(−g))`, as torch.
#[cube]
fn sigmoid_denom(g: f32) -> f32 {
    1.0f32 + f32::exp(0.0f32 - g)
}

/// Contiguous `gate`, `up` (and `dy`) of one shape and dtype, and their length.
fn operands<R: CubeRuntime>(ts: Vec<CubeTensor<R>>, what: &str) -> (Vec<CubeTensor<R>>, usize) {
    let ts: Vec<_> = ts.into_iter().map(into_contiguous).collect();
    assert!(
        ts.iter()
            .all(|t| t.meta.shape() == ts[0].meta.shape() && t.dtype == ts[0].dtype),
        "qtune-kernels: {what}: gate, up (and dy) must have one shape and dtype"
    );
    let n = ts[0].meta.num_elements();
    assert!(
        u32::try_from(n).is_ok(),
        "qtune-kernels: {what} of more than 2³² values"
    );
    (ts, n)
}

/// `silu(gate)·up` in the inputs' dtype (any shape).
///
/// # Panics
/// On mismatched shapes/dtypes or a dtype other than F32/F16/BF16 (wiring bugs).
pub fn silu_mul<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let (ts, n) = operands(vec![gate, up], "silu_mul");
    let (gate, up) = (&ts[0], &ts[1]);
    let out = empty(gate, gate.meta.shape().to_vec(), gate.dtype);
    if n == 0 {
        return out;
    }
    let lanes = ew_lanes(n);
    let units = n / lanes;
    // SAFETY: contiguous buffers of n values of the dispatched type, n % lanes == 0.
    unsafe {
        launch_float!(
            gate.dtype,
            "silu_mul",
            silu_mul_kernel(
                &gate.client,
                cube_count(units),
                cube_dim(),
                lanes,
                array(gate, n),
                array(up, n),
                array(&out, n),
                units,
                lanes,
            )
        )
    }
    out
}

/// `[dgate, dup]` of [`silu_mul`] for `dy`, in the inputs' dtype.
///
/// # Panics
/// As [`silu_mul`].
pub fn silu_mul_backward<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    dy: CubeTensor<R>,
) -> [CubeTensor<R>; 2] {
    let (ts, n) = operands(vec![gate, up, dy], "silu_mul backward");
    let (gate, up, dy) = (&ts[0], &ts[1], &ts[2]);
    let shape = gate.meta.shape().to_vec();
    let dgate = empty(gate, shape.clone(), gate.dtype);
    let dup = empty(gate, shape, gate.dtype);
    if n == 0 {
        return [dgate, dup];
    }
    let lanes = ew_lanes(n);
    let units = n / lanes;
    // SAFETY: contiguous buffers of n values of the dispatched type, n % lanes == 0.
    unsafe {
        launch_float!(
            gate.dtype,
            "silu_mul backward",
            silu_mul_backward_kernel(
                &gate.client,
                cube_count(units),
                cube_dim(),
                lanes,
                array(gate, n),
                array(up, n),
                array(dy, n),
                array(&dgate, n),
                array(&dup, n),
                units,
                lanes,
            )
        )
    }
    [dgate, dup]
}
