//! CUDA implementation (feature `cuda`): CubeCL dequant/quantize kernels and cuBLAS GEMMs on
//! Burn's buffers, plus the GPU self-test and the dequant/linear benchmark that run on the
//! device machine (`qtune-kernels-gpu` binary, `cargo xtask bench dequant`).

mod attention;
mod backend;
pub mod bench;
mod decode;
mod fused;
pub mod gemm;
mod jit_cache;
mod kernels;
pub mod launch;
mod rcp;
pub mod selftest;

pub use backend::sync;
pub use decode::{graphs_enabled, set_graphs_enabled, GRAPHS_ENV};
pub use jit_cache::{cache_dir, init_kernel_cache, CACHE_ENV, PROFILE_ENV};
pub use launch::{dense_gemv_enabled, set_dense_gemv};
pub use rcp::{inv_absmax, reciprocal, set_reciprocal};

/// The CUDA backend our ops are implemented for (burn-cuda without `fusion`).
pub type Cuda<F = f32> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
