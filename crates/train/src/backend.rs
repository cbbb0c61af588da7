//! The backends the binaries train on. Everything else is generic over the backend (a
//! `QBackend` under `Autodiff`), so the CUDA build is a type switch: [`Train`].

/// CPU: NdArray (f32) under Autodiff. The default everywhere.
pub type Cpu = burn::backend::Autodiff<burn::backend::NdArray>;

/// NVIDIA GPU: burn-cuda's `CubeBackend` without fusion (our backend extension is implemented
/// for `CubeBackend`, see shared notes pitfall 1) under Autodiff.
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Autodiff<qtune_kernels::cuda::Cuda>;

/// What the binaries train on: CUDA in a `--features cuda` build, else the CPU.
#[cfg(feature = "cuda")]
pub type Train = Cuda;
#[cfg(not(feature = "cuda"))]
pub type Train = Cpu;

/// Human-readable name of [`Train`] for logs.
pub const TRAIN_BACKEND: &str = if cfg!(feature = "cuda") {
    "cuda (CubeBackend, autodiff)"
} else {
    "cpu (ndarray f32, autodiff)"
};

/// Process-wide setup before the first GPU tensor exists: CubeCL's PTX and autotune caches go to
/// a directory that outlives the process (`$QTUNE_KERNEL_CACHE`, default `~/.cache/qtune/kernels`),
/// so each kernel is JIT-compiled once per machine instead of once per run. No-op on the CPU.
pub fn init() {
    #[cfg(feature = "cuda")]
    if let Some(dir) = qtune_kernels::cuda::init_kernel_cache() {
        tracing::info!(
            "GPU kernel cache: {} (the first run on a machine compiles kernels; set {} to move it)",
            dir.display(),
            qtune_kernels::cuda::CACHE_ENV
        );
    }
}
