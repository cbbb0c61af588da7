//! The backends the binaries train on. Everything else is generic over
//! `B: QAutodiffBackend` (with a `QBackend` inner backend), so CUDA is a type switch.

/// CPU: NdArray (f32) under Autodiff. The default everywhere.
pub type Cpu = burn::backend::Autodiff<burn::backend::NdArray>;

/// NVIDIA GPU: burn-cuda's `CubeBackend` without fusion (our backend extension is implemented
/// for `CubeBackend`, see shared notes pitfall 1) under Autodiff.
#[cfg(feature = "cuda")]
pub type Cuda =
    burn::backend::Autodiff<burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>>;
