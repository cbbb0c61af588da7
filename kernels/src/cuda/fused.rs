//! Fused elementwise kernels for the ops that dominate once the GEMMs run in cuBLAS: one read and
//! one write per value instead of a chain of Burn ops (each a kernel launch and a full pass over
//! the activation) plus the autodiff copies of every intermediate.

use burn::tensor::{bf16, f16, DType};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::launch::{array, cube_count, cube_dim, empty};

/// √(2/π), HF `NewGELUActivation`'s constant.
const GELU_C: f32 = 0.797_884_6;

/// `y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, computed in f32.
#[cube(launch_unchecked)]
fn gelu_new_kernel<F: Float>(x: &Array<F>, y: &mut Array<F>, n: usize) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let v = f32::cast_from(x[i]);
    let t = f32::tanh(GELU_C * (v + 0.044715f32 * v * v * v));
    y[i] = F::cast_from(0.5f32 * v * (1.0f32 + t));
}

/// `dx = dy · gelu_new'(x)`, computed in f32.
#[cube(launch_unchecked)]
fn gelu_new_backward_kernel<F: Float>(x: &Array<F>, dy: &Array<F>, dx: &mut Array<F>, n: usize) {
    let i = ABSOLUTE_POS;
    if i >= n {
        terminate!();
    }
    let v = f32::cast_from(x[i]);
    let t = f32::tanh(GELU_C * (v + 0.044715f32 * v * v * v));
    let inner = GELU_C * (1.0f32 + 0.134145f32 * v * v);
    let d = 0.5f32 * (1.0f32 + t) + 0.5f32 * v * (1.0f32 - t * t) * inner;
    dx[i] = F::cast_from(f32::cast_from(dy[i]) * d);
}

fn launch_gelu<R: CubeRuntime, F: Float + CubeElement>(
    x: &CubeTensor<R>,
    dy: Option<&CubeTensor<R>>,
    out: &CubeTensor<R>,
    n: usize,
) {
    // SAFETY: all buffers are contiguous with n elements of F (checked by the caller).
    unsafe {
        match dy {
            None => gelu_new_kernel::launch_unchecked::<F, R>(
                &x.client,
                cube_count(n),
                cube_dim(),
                array(x, n),
                array(out, n),
                n,
            ),
            Some(dy) => gelu_new_backward_kernel::launch_unchecked::<F, R>(
                &x.client,
                cube_count(n),
                cube_dim(),
                array(x, n),
                array(dy, n),
                array(out, n),
                n,
            ),
        }
    }
}

/// `gelu_new(x)` (no `dy`) or its input gradient `dy·gelu_new'(x)`, in `x`'s dtype.
///
/// # Panics
/// On a dtype other than F32/F16/BF16, or `dy` of another shape/dtype (a wiring bug).
pub fn gelu_new<R: CubeRuntime>(x: CubeTensor<R>, dy: Option<CubeTensor<R>>) -> CubeTensor<R> {
    let x = into_contiguous(x);
    let dy = dy.map(into_contiguous);
    if let Some(d) = &dy {
        assert!(
            d.meta.shape() == x.meta.shape() && d.dtype == x.dtype,
            "qtune-kernels: gelu_new backward: dy must match x"
        );
    }
    let n = x.meta.num_elements();
    let out = empty(&x, x.meta.shape().to_vec(), x.dtype);
    if n == 0 {
        return out;
    }
    match x.dtype {
        DType::F32 => launch_gelu::<R, f32>(&x, dy.as_ref(), &out, n),
        DType::F16 => launch_gelu::<R, f16>(&x, dy.as_ref(), &out, n),
        DType::BF16 => launch_gelu::<R, bf16>(&x, dy.as_ref(), &out, n),
        other => panic!("qtune-kernels: gelu_new supports F32, F16, BF16, not {other:?}"),
    }
    out
}
