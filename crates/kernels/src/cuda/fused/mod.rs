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

mod adam8;
mod cross_entropy;
mod dropout;
mod gelu;
mod norm;
mod norm_row;
mod rotary;
mod rows;
mod scatter;
mod softmax;
mod swiglu;

pub use adam8::adam8_blockwise;
pub use cross_entropy::cross_entropy;
pub use dropout::{dropout, lora_prep, lora_prep_fits};
pub use gelu::gelu_new;
pub use norm::{layer_norm, rms_norm};
pub(crate) use rotary::{half_unit, rotate_halves, rotate_pairs};
pub use rotary::{rotary, rotary_half};
pub use scatter::scatter_rows;
pub use softmax::{attn_softmax, attn_softmax_backward};
pub use swiglu::{silu_mul, silu_mul_backward};

/// Values per unit of the element-wise kernels when the length allows: one 16-byte load/store
/// per bf16 operand instead of eight 2-byte ones.
const LANES_EW: usize = 8;

/// This unit's index (`ABSOLUTE_POS`) in an element-wise launch of `units` units; a unit past
/// the last terminates.
#[cube]
fn unit_index(units: usize) -> usize {
    let i = ABSOLUTE_POS;
    if i >= units {
        terminate!();
    }
    i
}

/// Vector width for `n` values: [`LANES_EW`] when it divides `n`, else 1.
fn ew_lanes(n: usize) -> usize {
    if n % LANES_EW == 0 {
        LANES_EW
    } else {
        1
    }
}

/// The widest of 8, 4, 2, 1 values per load that divides a row of `len`.
pub(crate) fn row_vec(len: usize) -> usize {
    [8, 4, 2].into_iter().find(|v| len % v == 0).unwrap_or(1)
}

/// `t` as a contiguous F32 tensor (frozen weights, rotary tables).
pub(crate) fn as_f32_contiguous<R: CubeRuntime>(t: CubeTensor<R>) -> CubeTensor<R> {
    into_contiguous(if t.dtype == DType::F32 {
        t
    } else {
        burn_cubecl::kernel::cast(t, DType::F32)
    })
}

/// `dy` for a kernel with a comptime `backward`: contiguous and checked to match `x` (else a
/// wiring bug: panics naming `what`), or `x` itself as the placeholder the forward never reads;
/// and whether it was given.
fn grad_arg<R: CubeRuntime>(
    dy: Option<CubeTensor<R>>,
    x: &CubeTensor<R>,
    what: &str,
) -> (CubeTensor<R>, bool) {
    match dy.map(into_contiguous) {
        Some(d) => {
            assert!(
                d.meta.shape() == x.meta.shape() && d.dtype == x.dtype,
                "qtune-kernels: {what} backward: dy must match x"
            );
            (d, true)
        }
        None => (x.clone(), false),
    }
}
