//! CUDA implementation (feature `cuda`): CubeCL dequant/quantize kernels and cuBLAS GEMMs on
//! Burn's buffers. Their GPU self-test and benchmarks live in xtask (`cargo xtask bench
//! gpu-check`, `cargo xtask bench dequant`), reaching kernel internals through [`launch`] and
//! [`gemm`] only.

mod attention;
mod backend;
#[doc(hidden)]
pub mod copy;
mod decode;
mod fused;
pub mod gemm;
mod gemm_lt;
mod jit_cache;
mod kernels;
pub mod launch;
mod rcp;
mod upload;

pub use backend::sync;
pub use jit_cache::{cache_dir, init_kernel_cache, CACHE_ENV, PROFILE_ENV};
pub use rcp::inv_absmax;

/// The CUDA backend our ops are implemented for (burn-cuda without `fusion`).
pub type Cuda<F = f32> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
