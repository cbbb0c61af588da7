//! CubeCL compiles every kernel with NVRTC at first use. Without a cache that is paid again in
//! every process: minutes before the first training step on a GPT-J block (BENCHMARKS.md). This
//! points CubeCL's PTX cache and its autotune cache at one directory that outlives the process,
//! so a machine compiles each kernel once.
//!
//! CubeCL keys a cached PTX by the kernel's type and launch-time (comptime) arguments, not by its
//! source: after a kernel's body changes, a process would load the old PTX and run the old code.
//! The PTX cache therefore lives in a subdirectory named by a hash of the kernel sources
//! ([`kernel_fingerprint`]); a changed kernel source starts a fresh one (autotune results, which
//! depend on shapes and the device only, stay shared).

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

/// Every source file holding `#[cube]` code, compiled in: [`kernel_fingerprint`] hashes them.
/// `tests/kernel_sources.rs` checks that no such file under `src/cuda` is missing (three were:
/// a change to them would have run the cached PTX of the old code).
const KERNEL_SOURCES: [&str; 18] = [
    include_str!("kernels/mod.rs"),
    include_str!("kernels/gemv.rs"),
    include_str!("kernels/dense_gemv.rs"),
    include_str!("fused/mod.rs"),
    include_str!("fused/adam8.rs"),
    include_str!("fused/scatter.rs"),
    include_str!("fused/gelu.rs"),
    include_str!("fused/dropout.rs"),
    include_str!("fused/softmax.rs"),
    include_str!("fused/norm.rs"),
    include_str!("fused/norm_row.rs"),
    include_str!("fused/rows.rs"),
    include_str!("fused/rotary.rs"),
    include_str!("fused/cross_entropy.rs"),
    include_str!("fused/swiglu.rs"),
    include_str!("decode.rs"),
    include_str!("copy.rs"),
    include_str!("rope_kv.rs"),
];

/// 64-bit FNV-1a of the kernel sources and this crate's version, as 16 hex digits.
pub fn kernel_fingerprint() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for src in KERNEL_SOURCES
        .iter()
        .chain(std::iter::once(&env!("CARGO_PKG_VERSION")))
    {
        for &b in src.as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff; // separator: moving text between files changes the hash
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Installs CubeCL's global configuration with both caches in [`cache_dir`], the PTX one in a
/// subdirectory per kernel-source fingerprint (module docs; other settings from
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
        let ptx = dir.join(format!("ptx-{}", kernel_fingerprint()));
        config.compilation.cache = Some(CacheConfig::File(ptx));
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
