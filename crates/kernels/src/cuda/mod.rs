//! CUDA implementation (feature `cuda`): CubeCL dequant/quantize kernels and cuBLAS GEMMs on
//! Burn's buffers. Their GPU self-test and benchmarks live in xtask (`cargo xtask bench
//! gpu-check`, `cargo xtask bench dequant`), reaching kernel internals through [`launch`] and
//! [`gemm`] only.

/// `kernel::launch_unchecked::<F, R>(args…)` with `F` the Rust float type of `$dtype` (F32,
/// F16, BF16) and `R` the calling function's runtime parameter. Any other dtype evaluates the
/// `else` expression, or without one is a wiring bug and panics naming the op. Used inside the
/// caller's `unsafe` block, whose `SAFETY` comment says why the arguments fit the kernel.
macro_rules! launch_float {
    ($dtype:expr, else $other:expr, $($kernel:ident)::+($($arg:expr),+ $(,)?)) => {
        match $dtype {
            burn::tensor::DType::F32 => $($kernel)::+::launch_unchecked::<f32, R>($($arg),+),
            burn::tensor::DType::F16 => {
                $($kernel)::+::launch_unchecked::<burn::tensor::f16, R>($($arg),+)
            }
            burn::tensor::DType::BF16 => {
                $($kernel)::+::launch_unchecked::<burn::tensor::bf16, R>($($arg),+)
            }
            _ => $other,
        }
    };
    ($dtype:expr, $what:expr, $($kernel:ident)::+($($arg:expr),+ $(,)?)) => {
        launch_float!(
            $dtype,
            else panic!(
                "qtune-kernels: {} supports F32, F16, BF16, not {:?}",
                $what,
                $dtype
            ),
            $($kernel)::+($($arg),+)
        )
    };
}

mod attention;
mod backend;
mod concat;
#[doc(hidden)]
pub mod copy;
mod cublas;
mod decode;
mod epilogue;
mod flash_attn;
mod fused;
pub mod gemm;
mod gemm_lt;
mod gemv;
mod jit_cache;
mod kernels;
pub mod launch;
mod nf4_gemm;
mod park;
mod rcp;
mod rope_kv;
mod triton;
mod upload;

pub use backend::sync;
pub use epilogue::EPILOGUES_ENV;
pub use flash_attn::{
    flash_attn_config, flash_attn_configs, flash_attn_launches, set_flash_attn,
    set_flash_attn_config, FLASH_ATTN_ENV,
};
pub use jit_cache::{cache_dir, init_kernel_cache, CACHE_ENV, PROFILE_ENV};
pub use nf4_gemm::{
    nf4_gemm_config, nf4_gemm_configs, nf4_gemm_launches, nf4_gemm_twins, set_nf4_gemm,
    set_nf4_gemm_config, MAX_ROWS as NF4_GEMM_MAX_ROWS, NF4_GEMM_ENV,
};
pub use rcp::inv_absmax;

/// The CUDA backend our ops are implemented for (burn-cuda without `fusion`).
pub type Cuda<F = f32> = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, F, i32, u8>;
