//! The backward of selecting distinct rows (`crate::select_rows`): each selected row's gradient
//! written into its place in a zeroed `[rows, D]` tensor, one unit per vector.

use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::{ew_lanes, unit_index};
use crate::cuda::launch::array;

/// `out[idx[r], c] = dy[r, c]` for rows `r` of `dy [n, d]` (`d_vec` vectors a row); the
/// indices are distinct, so no unit writes another's value.
#[cube(launch_unchecked)]
fn scatter_rows_kernel<F: Float, N: Size>(
    dy: &Array<Vector<F, N>>,
    idx: &Array<i32>,
    out: &mut Array<Vector<F, N>>,
    units: usize,
    d_vec: usize,
) {
    let i = unit_index(units);
    let row = usize::cast_from(idx[i / d_vec]);
    out[row * d_vec + i % d_vec] = dy[i];
}

/// `[rows, D]` zeros with row `idx[i]` = `dy[i]` for `dy [n, D]` and `n` distinct indices in
/// `[0, rows)` (checked by `crate::select_rows`).
///
/// # Panics
/// On a `dy` that is not 2-D or an index count other than its rows (wiring bugs).
pub fn scatter_rows<R: CubeRuntime>(
    dy: CubeTensor<R>,
    idx: CubeTensor<R>,
    rows: usize,
) -> CubeTensor<R> {
    let dy = into_contiguous(dy);
    let shape = dy.meta.shape().to_vec();
    assert_eq!(
        shape.len(),
        2,
        "qtune-kernels: select_rows gradient must be [n, D]"
    );
    let (n, d) = (shape[0], shape[1]);
    let idx = into_contiguous(if idx.dtype == DType::I32 {
        idx
    } else {
        burn_cubecl::kernel::cast(idx, DType::I32)
    });
    assert_eq!(
        idx.meta.num_elements(),
        n,
        "qtune-kernels: one index per selected row"
    );
    let out = into_contiguous(burn_cubecl::ops::numeric::zeros_client::<R>(
        dy.client.clone(),
        dy.device.clone(),
        Shape::new([rows, d]),
        dy.dtype,
    ));
    if n == 0 || d == 0 {
        return out;
    }
    let vec = ew_lanes(d);
    let units = n * d / vec;
    // SAFETY: dy holds n·d values, idx n in-range distinct indices, out rows·d; d % vec == 0.
    unsafe {
        launch_float!(
            dy.dtype,
            "select_rows backward",
            scatter_rows_kernel(
                &dy.client,
                CubeCount::Static(units.div_ceil(256) as u32, 1, 1),
                CubeDim::new_1d(256),
                vec,
                array(&dy, n * d),
                array(&idx, n),
                array(&out, rows * d),
                units,
                d / vec,
            )
        )
    }
    out
}
