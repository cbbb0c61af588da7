//! CubeCL compiles every kernel with NVRTC at first use. Without a cache that is paid again in
//! every process: minutes before the first training step on a GPT-J block (BENCHMARKS.md). This
//! points CubeCL's PTX cache and its autotune cache at one directory that outlives the process,
//! so a machine compiles each kernel once.

use std::path::PathBuf;

use cubecl::config::{
    cache::CacheConfig, profiling::ProfilingLogLevel, CubeClRuntimeConfig, RuntimeConfig,
};

/// Environment variable naming the kernel cache directory.
pub const CACHE_ENV: &str = "QTUNE_KERNEL_CACHE";

/// Environment variable naming a file for CubeCL's per-kernel timings (off when unset).
pub const PROFILE_ENV: &str = "QTUNE_KERNEL_PROFILE";

/// The kernel cache directory: `$QTUNE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/qtune/kernels`, else
/// `$HOME/.cache/qtune/kernels`, else `./.qtune-kernels`.
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env(CACHE_ENV)
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("qtune").join("kernels")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("qtune").join("kernels")))
        .unwrap_or_else(|| PathBuf::from(".qtune-kernels"))
}

/// Installs CubeCL's global configuration with both caches in [`cache_dir`] (other settings from
/// a `cubecl.toml` if one is found from the working directory up, and the `CUBECL_*` environment
/// variables). Call once, before the first CUDA tensor exists; later calls, or a call after
/// CubeCL already read its configuration, leave it as it is and return `None`.
pub fn init_kernel_cache() -> Option<PathBuf> {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    let mut installed = None;
    ONCE.call_once(|| {
        if CubeClRuntimeConfig::storage().lock().is_some() {
            return;
        }
        let dir = cache_dir();
        let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
        config.compilation.cache = Some(CacheConfig::File(dir.clone()));
        config.autotune.cache = CacheConfig::File(dir.clone());
        // Per-kernel GPU times (each launch timed by CubeCL, so slower): one line per kernel
        // `| duration | name` in the named file; `cargo xtask bench train` docs show how to sum.
        if let Some(file) = std::env::var_os(PROFILE_ENV).filter(|v| !v.is_empty()) {
            config.profiling.logger.level = ProfilingLogLevel::Basic;
            config.profiling.logger.file = Some(PathBuf::from(file));
        }
        let mut slot = CubeClRuntimeConfig::storage().lock();
        if slot.is_none() {
            *slot = Some(std::sync::Arc::new(config));
            installed = Some(dir);
        }
    });
    installed
}
