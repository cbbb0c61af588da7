//! The bandwidth reference of the dequant benchmark (`cargo xtask bench dequant`): a plain
//! vectorized bf16 copy with the dequant kernels' launch shape. It lives here, not in xtask,
//! because its source must be part of the JIT cache's kernel fingerprint (`jit_cache.rs`).

use burn::tensor::{DType, Tensor};
use cubecl::cuda::CudaRuntime;
use cubecl::prelude::*;

use super::Cuda;

/// Plain vectorized copy, the bandwidth reference for the dequant kernels (same launch shape).
#[cube(launch_unchecked)]
pub fn copy_kernel<F: Float, N: Size>(
    input: &Array<Vector<F, N>>,
    output: &mut Array<Vector<F, N>>,
    count: usize,
) {
    let i = ABSOLUTE_POS;
    if i >= count {
        terminate!();
    }
    output[i] = input[i];
}

/// A bf16 copy of `src` by [`copy_kernel`] (`numel % 8 == 0`).
pub fn copy_bf16(src: &Tensor<Cuda, 2>) -> Tensor<Cuda, 2> {
    let p = src.clone().into_primitive().tensor();
    let numel = p.meta.num_elements();
    let out = super::launch::empty(&p, p.meta.shape().to_vec(), DType::BF16);
    let vectors = numel / 8;
    // SAFETY: both buffers hold `numel` bf16 values; numel % 8 == 0 for the bench shape.
    unsafe {
        copy_kernel::launch_unchecked::<burn::tensor::bf16, CudaRuntime>(
            &p.client,
            CubeCount::Static(vectors.div_ceil(256) as u32, 1, 1),
            CubeDim::new_1d(256),
            8,
            ArrayArg::from_raw_parts(p.handle.clone(), numel),
            ArrayArg::from_raw_parts(out.handle.clone(), numel),
            vectors,
        );
    }
    Tensor::from_primitive(burn::tensor::TensorPrimitive::Float(out))
}
