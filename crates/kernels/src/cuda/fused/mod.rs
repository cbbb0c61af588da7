//! Fused elementwise kernels for the ops that dominate once the GEMMs run in cuBLAS: one read and
//! one write per value instead of a chain of Burn ops (each a kernel launch and a full pass over
//! the activation) plus the autodiff copies of every intermediate.

// In `#[cube]` code a comptime flag (`masked`, `backward`) must guard a runtime condition in its
// own `if`: `comptime && runtime` or `else if runtime` under a comptime `if` do not expand as one.
#![allow(clippy::collapsible_if, clippy::collapsible_else_if)]

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

/// Expands the launcher macro `$go` with the Rust float type of a tensor's `$dtype` (F32, F16,
/// BF16); any other dtype is a wiring bug and panics naming the op.
macro_rules! dispatch_float {
    ($dtype:expr, $what:expr, $go:ident) => {
        match $dtype {
            DType::F32 => $go!(f32),
            DType::F16 => $go!(f16),
            DType::BF16 => $go!(bf16),
            other => panic!(
                "qtune-kernels: {} supports F32, F16, BF16, not {other:?}",
                $what
            ),
        }
    };
}

mod cross_entropy;
mod dropout;
mod gelu;
mod layer_norm;
mod rms_norm;
mod rope_half;
mod rotary;
mod softmax;
mod swiglu;

pub use cross_entropy::cross_entropy;
pub use dropout::dropout;
pub use gelu::gelu_new;
pub use layer_norm::layer_norm;
pub use rms_norm::rms_norm;
pub use rope_half::rotary_half;
pub use rotary::rotary;
pub use softmax::{attn_softmax, attn_softmax_backward};
pub use swiglu::{silu_mul, silu_mul_backward};

/// Values per unit of the element-wise kernels when the length allows: one 16-byte load/store
/// per bf16 operand instead of eight 2-byte ones.
const LANES_EW: usize = 8;

/// Vector width for `n` values: [`LANES_EW`] when it divides `n`, else 1.
fn ew_lanes(n: usize) -> usize {
    if n % LANES_EW == 0 {
        LANES_EW
    } else {
        1
    }
}

/// Lanes per row in the row kernels (softmax, LayerNorm, RMSNorm): one plane (warp) per row, reduced
/// with plane intrinsics; each lane reads `vec` consecutive values at a time.
const LANES: u32 = 32;
/// Rows (planes) per cube in the row kernels: 256 threads per cube keep the SMs occupied.
const ROWS_PER_CUBE: u32 = 8;

/// The widest of 8, 4, 2, 1 values per load that divides a row of `len`.
fn row_vec(len: usize) -> usize {
    [8, 4, 2].into_iter().find(|v| len % v == 0).unwrap_or(1)
}

/// Cubes for `rows` rows at [`ROWS_PER_CUBE`] per cube, and their shape.
fn rows_launch(rows: usize) -> (CubeCount, CubeDim) {
    const MAX_X: usize = 65_535;
    let cubes = rows.div_ceil(ROWS_PER_CUBE as usize);
    let count = if cubes <= MAX_X {
        CubeCount::Static(cubes as u32, 1, 1)
    } else {
        CubeCount::Static(MAX_X as u32, cubes.div_ceil(MAX_X) as u32, 1)
    };
    (count, CubeDim::new_2d(LANES, ROWS_PER_CUBE))
}

/// `t` as a contiguous F32 tensor (frozen weights, rotary tables).
fn as_f32_contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    into_contiguous(if t.dtype == DType::F32 {
        t
    } else {
        burn_cubecl::kernel::cast(t, DType::F32)
    })
}
