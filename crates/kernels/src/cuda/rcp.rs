//! The quantizers' block scales `1.0 / absmax` on the device: bitsandbytes' approximate
//! reciprocal (`rcp.approx.ftz.f32`) bit for bit from qtune-quant's measured table
//! (`qtune_quant::rcp::table_words`, 2 MiB, uploaded once per device and kept), so GPU codes
//! equal bnb's. The quantizers always use it; [`inv_absmax`] also takes `Reciprocal::Ieee` (the
//! correctly rounded reciprocal) for the GPU check's comparison.

use std::any::Any;
use std::sync::Mutex;

use burn::tensor::{DType, Shape};
use burn_cubecl::{tensor::CubeTensor, CubeRuntime};
use cubecl::prelude::*;
use qtune_quant::Reciprocal;

use super::kernels;
use super::launch::{array, cube_count, cube_dim, empty};

/// The table's words on `like`'s device: uploaded on first use, then the same buffer.
fn table<R: CubeRuntime>(like: &CubeTensor<R>) -> CubeTensor<R> {
    // One entry per (runtime, device); a handful at most, so a list is enough.
    static TABLES: Mutex<Vec<Box<dyn Any + Send + Sync>>> = Mutex::new(Vec::new());
    let mut tables = TABLES.lock().unwrap_or_else(|e| e.into_inner());
    for t in tables.iter() {
        if let Some(t) = t.downcast_ref::<CubeTensor<R>>() {
            if t.device == like.device {
                return t.clone();
            }
        }
    }
    let words = qtune_quant::rcp::table_words();
    let handle = like.client.create_from_slice(u32::as_bytes(words));
    let t = CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        Shape::from(vec![words.len()]),
        handle,
        DType::U32,
    );
    tables.push(Box::new(t.clone()));
    t
}

/// `inv[b]` = the scale of block `b` (F32, `num_blocks` values) for a contiguous F32 `absmax`
/// of `num_blocks` values, with `reciprocal` (the quantizers pass `Reciprocal::BnbCuda`). Public
/// for the GPU check, which compares it with `qtune_quant::rcp::rcp_approx_ftz` over every
/// mantissa.
pub fn inv_absmax<R: CubeRuntime>(
    absmax: &CubeTensor<R>,
    num_blocks: usize,
    reciprocal: Reciprocal,
) -> CubeTensor<R> {
    let inv = empty(absmax, vec![num_blocks], DType::F32);
    let bnb = reciprocal == Reciprocal::BnbCuda;
    let table = table(absmax);
    let words = qtune_quant::rcp::table_words().len();
    // SAFETY: `absmax` and `inv` hold `num_blocks` f32, `table` `words` u32.
    unsafe {
        kernels::rcp_kernel::launch_unchecked::<R>(
            &absmax.client,
            cube_count(num_blocks),
            cube_dim(),
            array(absmax, num_blocks),
            array(&table, words),
            array(&inv, num_blocks),
            num_blocks,
            bnb,
        );
    }
    inv
}
