//! A GEMM that reads 4-bit codes (NF4 or FP4, double-quantized absmax) straight from the
//! quantized weight, for a few hundred rows (the prefill, batched generation): `y = x · Wᵀ`
//! with `W` dequantized tile by tile in registers, never written out. Against dequantize +
//! cuBLAS it saves the dense weight's write and read back (31 % of GPT-J-6B's NF4 prefill,
//! BENCHMARKS.md session 27).
//!
//! The kernels are Triton's (`ptx/nf4_gemm.py aot` wrote them: PTX for sm_90a, one per tile
//! config and epilogue; `ptx/README.md` says with what): a Hopper wgmma GEMM with a pipelined
//! mainloop is what cubecl 0.10 cannot express. They load as a CUDA module on first use and launch on
//! cubecl's stream from its device thread, as cuBLAS does (`cublas.rs`).
//!
//! Numerics: each weight value is the dequant kernel's, bit for bit (`ftz(map[code] ·
//! (ftz(nested_map[c] · nested_absmax) + offset))` rounded once to bf16, no FMA contraction),
//! the products summed in f32 by the tensor cores in another order than cuBLAS's, the epilogue
//! (bias, `gelu_new`, the addend) on the f32 sum before its one rounding. The GPU check compares
//! it with dequantize + cuBLAS (`bench gpu-check --only nf4_gemm`), itself checked against the
//! CPU reference by the `linear` and `mlp` groups.
//!
//! Where it applies (else the caller dequantizes and calls cuBLAS, `None`): an sm_90 device,
//! bf16 activations of 2..=[`MAX_ROWS`] rows, 4-bit codes with absmax blocks of 64 nested in
//! blocks of 256, `in_features` a multiple of the tile's depth and `out_features` of its width,
//! 16-byte aligned buffers, and the switch on.
//!
//! **Off by default: not yet run on a GPU.** Session 28 built it, checked the kernel's logic in
//! Triton's interpreter on the CPU and its PTX with `ptxas`, and then had no device. Turn it on
//! with `QTUNE_NF4_GEMM=1`; `bench gpu-check --only nf4_gemm` checks it against dequantize +
//! cuBLAS and `bench dequant --prefill` times every config (`xtask/device/session28_a.sh` runs
//! both and the whole prefill). Only after that passes may the default change.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::DType;
use burn_cubecl::{kernel::into_contiguous, tensor::CubeTensor};
use cubecl::cuda::CudaRuntime;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule};
use qtune_quant::QuantFormat;

use super::cublas::{device_handle, lookup, stop_on_device_failure, Operand};
use super::launch::{as_f32, as_u8, empty, CubeB};
use crate::{AbsmaxPrimitive, QWeightPrimitive};

/// `1` turns the fused GEMM on; `0` (the default until it has run on a GPU) leaves dequantize +
/// cuBLAS everywhere.
pub const NF4_GEMM_ENV: &str = "QTUNE_NF4_GEMM";

/// Most rows that take the fused GEMM. Not measured yet: with more rows the dense weight's cost
/// spreads over more of them while cuBLAS's GEMM stays the faster GEMM, so somewhere the
/// dequantize-then-cuBLAS path wins again (at 4096 rows, training's, the dequantization is only
/// 10 % of the base linears' time, session 27); `bench dequant --prefill --tokens N` finds where.
pub const MAX_ROWS: usize = 1024;

/// The config of `ptx/kernels.rs` used unless a bench picks another (not chosen by measurement
/// yet: 128 × 128 tiles give one wave of 128 CTAs on a 4096-wide output at 512 rows).
const DEFAULT_CONFIG: usize = 0;

/// What the kernel does to the f32 sum `acc = x · Wᵀ` before its one rounding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Epi {
    /// `y = acc`.
    Plain,
    /// `y = gelu_new(acc + bias)` (GPT-J's `fc_in`).
    BiasGelu,
    /// `y = acc + bias + add` (GPT-J's `fc_out` onto the residual sum).
    BiasAdd,
}

/// One compiled kernel and how to launch it (from Triton's metadata beside the PTX).
struct Kernel {
    ptx: &'static str,
    name: &'static str,
    /// Rows of `x`, rows of `W`, depth of one tile.
    tile: [usize; 3],
    warps: u32,
    /// Dynamic shared memory, bytes.
    shared: u32,
}

include!("ptx/kernels.rs");

/// Parameters of every kernel's entry: 9 pointers, `M`, `N`, `K`, `offset`, then Triton's two
/// scratch pointers (null: the kernels use none, `nf4_gemm.py aot` asserts it). The unit test
/// below checks every shipped entry against it.
const PARAMS: usize = 15;

/// [`NF4_GEMM_ENV`]'s setting, read once (unset: off).
///
/// # Errors
/// [`crate::KernelError::Setting`] for a value other than `0` or `1`.
pub(crate) fn nf4_gemm_from_env() -> Result<bool, crate::KernelError> {
    static SETTING: OnceLock<Option<String>> = OnceLock::new();
    let value = SETTING.get_or_init(|| std::env::var(NF4_GEMM_ENV).ok());
    crate::switch_setting(
        NF4_GEMM_ENV,
        Some(value.as_deref().unwrap_or("0")),
        "dequantize + cuBLAS",
        "the fused NF4 GEMM up to 1024 rows",
    )
}

/// A bench's or check's override of [`NF4_GEMM_ENV`] (0: none, 1: off, 2: on) and its choice of
/// config.
static OVERRIDE: AtomicU8 = AtomicU8::new(0);
static CONFIG: AtomicUsize = AtomicUsize::new(DEFAULT_CONFIG);
/// Fused GEMMs launched so far (all devices): the checks' proof that the fused path ran.
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// How many fused NF4 GEMMs this process has enqueued.
pub fn nf4_gemm_launches() -> u64 {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Turns the fused GEMM on or off for this process whatever [`NF4_GEMM_ENV`] says (`None`: as it
/// says), for A/B timings and checks in one process.
pub fn set_nf4_gemm(on: Option<bool>) {
    OVERRIDE.store(on.map_or(0, |on| 1 + u8::from(on)), Ordering::Relaxed);
}

/// How many configs ship (`ptx/kernels.rs`): [`set_nf4_gemm_config`] takes `0..` this.
pub fn nf4_gemm_configs() -> usize {
    KERNELS.len()
}

/// Picks config `c` of the shipped ones, for timing them.
///
/// # Panics
/// For `c ≥` [`nf4_gemm_configs`] (callers check a user's value against it first).
pub fn set_nf4_gemm_config(c: usize) {
    assert!(
        c < KERNELS.len(),
        "fused NF4 GEMM config {c}: there are {}",
        KERNELS.len()
    );
    CONFIG.store(c, Ordering::Relaxed);
}

/// The config in use (an index into `ptx/kernels.rs`).
pub fn nf4_gemm_config() -> usize {
    CONFIG.load(Ordering::Relaxed)
}

/// Whether the fused GEMM is on.
///
/// # Panics
/// On a value of [`NF4_GEMM_ENV`] that `q_check_device` would have refused before any work.
fn enabled() -> bool {
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => nf4_gemm_from_env().unwrap_or_else(|e| panic!("qtune-kernels: {e}")),
    }
}

/// A loaded kernel (the module kept alive beside its function).
struct Loaded {
    _module: Arc<CudaModule>,
    function: CudaFunction,
}

// SAFETY: a CUfunction handle may be used from any thread of its context; it is only read.
unsafe impl Send for Loaded {}
unsafe impl Sync for Loaded {}

/// The kernel of `config` and `epi` on device `index`, loaded on first use; `None` (logged once) where the
/// device is not sm_90 or the module does not load.
fn function(index: usize, config: usize, epi: Epi) -> Option<Arc<Loaded>> {
    type Map = HashMap<(usize, usize, Epi), Option<Arc<Loaded>>>;
    static MAP: OnceLock<Mutex<Map>> = OnceLock::new();
    let mut map = MAP
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry((index, config, epi))
        .or_insert_with(|| match load(index, &KERNELS[config][epi as usize]) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                eprintln!("qtune-kernels: fused NF4 GEMM unavailable on device {index}: {e}");
                None
            }
        })
        .clone()
}

fn load(index: usize, k: &Kernel) -> Result<Loaded, String> {
    use sys::CUdevice_attribute as A;
    let ctx = CudaContext::new(index).map_err(|e| format!("context: {e:?}"))?;
    let cc = |a| ctx.attribute(a).map_err(|e| format!("{a:?}: {e:?}"));
    let (major, minor) = (
        cc(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        cc(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
    );
    if (major, minor) != (9, 0) {
        return Err(format!(
            "compute capability {major}.{minor}, the PTX is sm_90a"
        ));
    }
    let module = ctx
        .load_module(cudarc::nvrtc::Ptx::from_src(k.ptx))
        .map_err(|e| format!("loading {}: {e:?}", k.name))?;
    let function = module
        .load_function(k.name)
        .map_err(|e| format!("{}: {e:?}", k.name))?;
    function
        .set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            k.shared as i32,
        )
        .map_err(|e| format!("{} shared memory {}: {e:?}", k.name, k.shared))?;
    Ok(Loaded {
        _module: module,
        function,
    })
}

/// A buffer the kernels may read as 16-byte aligned (Triton assumed so when it compiled them).
fn aligned(t: &CubeTensor<CudaRuntime>) -> bool {
    t.handle.offset_start.unwrap_or(0) % 16 == 0
}

/// `x [m, in] · dequant(w)ᵀ → [m, out]` with `epi` (`bias [out]`, `add [m, out]` in `x`'s
/// dtype where it needs them), or `None` where the fused GEMM does not apply (module docs).
pub(crate) fn nf4_linear<B: CubeB<CudaRuntime>>(
    x: &CubeTensor<CudaRuntime>,
    w: &QWeightPrimitive<B>,
    epi: Epi,
    bias: Option<&CubeTensor<CudaRuntime>>,
    add: Option<&CubeTensor<CudaRuntime>>,
) -> Option<CubeTensor<CudaRuntime>> {
    let l = w.layout;
    let config = CONFIG.load(Ordering::Relaxed);
    let k = &KERNELS[config][epi as usize];
    let [bm, bn, bk] = k.tile;
    let shape = x.meta.shape();
    let m = shape.first().copied().unwrap_or(0);
    let AbsmaxPrimitive::Nested(nested) = &w.absmax else {
        return None;
    };
    let applies = enabled()
        && x.dtype == DType::BF16
        && shape.len() == 2
        && shape[1] == l.in_features
        && (2..=MAX_ROWS).contains(&m)
        && matches!(l.format, QuantFormat::Nf4 | QuantFormat::Fp4)
        && l.blocksize == 64
        && nested.blocksize == 256
        && l.in_features % bk == 0
        && l.out_features % bn == 0
        && i32::try_from(l.numel()).is_ok()
        && i32::try_from(m * l.in_features.max(l.out_features)).is_ok()
        && bias.is_some() == (epi != Epi::Plain)
        && add.is_some() == (epi == Epi::BiasAdd)
        && bias.is_none_or(|b| b.dtype == x.dtype && b.meta.num_elements() == l.out_features)
        && add
            .is_none_or(|a| a.dtype == x.dtype && a.meta.shape().as_slice() == [m, l.out_features]);
    if !applies {
        return None;
    }
    let index = x.device.index;
    let loaded = function(index, config, epi)?;
    let x = into_contiguous(x.clone());
    let bias = bias.map(|b| into_contiguous(b.clone()));
    let add = add.map(|a| into_contiguous(a.clone()));
    let codes = as_u8(w.codes.clone());
    let ncodes = as_u8(nested.codes.clone());
    let nabs = as_f32(nested.absmax.clone());
    let nmap = as_f32(nested.map.clone());
    let map = as_f32(w.code_map.clone());
    let y = empty(&x, vec![m, l.out_features], x.dtype);
    let tensors = [
        &x,
        &codes,
        &ncodes,
        &nabs,
        &nmap,
        &map,
        bias.as_ref().unwrap_or(&y),
        add.as_ref().unwrap_or(&y),
        &y,
    ];
    if !tensors.iter().all(|t| aligned(t)) {
        return None;
    }
    let operands = tensors.map(Operand::of);
    let dims = [m, l.out_features, l.in_features].map(|v| v as i32);
    let offset = nested.offset;
    let blocks = (l.out_features / bn) * m.div_ceil(bm);
    let (block, shared) = (32 * k.warps, k.shared);
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    device_handle(index).submit(move |server| {
        let (ptrs, stream) = match lookup(server, &operands) {
            Ok(found) => found,
            Err(e) => return stop_on_device_failure("the fused NF4 GEMM", e),
        };
        let scratch = [0u64; 2];
        let mut args: Vec<*mut c_void> = Vec::with_capacity(PARAMS);
        args.extend(ptrs.iter().map(|p| p as *const u64 as *mut c_void));
        args.extend(dims.iter().map(|d| d as *const i32 as *mut c_void));
        args.push(&offset as *const f32 as *mut c_void);
        args.extend(scratch.iter().map(|p| p as *const u64 as *mut c_void));
        // SAFETY: the arguments follow the kernel's entry (15 parameters, the unit test checks,
        // in `ptx/nf4_gemm.py`'s order), each pointing at a live local; the buffers hold the
        // shapes checked above (codes: out·in/2 bytes, one nested code per 64 values, one nested
        // absmax per 256 codes, 256- and 16-entry maps); the grid covers `out / bn` column tiles
        // times `⌈m / bm⌉` row tiles, rows past `m` masked in the kernel.
        let launched = unsafe {
            cudarc::driver::result::launch_kernel(
                loaded.function.cu_function(),
                (blocks as u32, 1, 1),
                (block, 1, 1),
                shared,
                stream as sys::CUstream,
                &mut args,
            )
        };
        if let Err(e) = launched {
            stop_on_device_failure("the fused NF4 GEMM", format!("launch: {e:?}"));
        }
    });
    Some(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped PTX matches the table that launches it: Hopper target, the ISA a CUDA 12.8
    /// driver reads, the entry's name and parameter count, the block size Triton fixed
    /// (`.reqntid`), shared memory within an H100's 227 KiB, and tiles the checks in
    /// `nf4_linear` rely on (depth a multiple of the absmax block).
    #[test]
    fn every_shipped_kernel_matches_its_launch_table() {
        for (c, kernels) in KERNELS.iter().enumerate() {
            for (e, k) in kernels.iter().enumerate() {
                let what = format!("config {c} epilogue {e}");
                assert!(k.ptx.contains("\n.target sm_90a"), "{what}: target");
                assert!(k.ptx.contains("\n.version 8.7"), "{what}: PTX ISA");
                assert!(
                    k.ptx.contains(&format!(".entry {}(", k.name)),
                    "{what}: entry {}",
                    k.name
                );
                let entry = k.ptx.split(".entry").nth(1).expect("an entry");
                let params = entry.split(')').next().expect("a parameter list");
                assert_eq!(
                    params.matches(".param").count(),
                    PARAMS,
                    "{what}: parameters"
                );
                assert!(
                    entry.contains(&format!(".reqntid {}", 32 * k.warps)),
                    "{what}: {} threads",
                    32 * k.warps
                );
                assert!(k.shared <= 227 * 1024, "{what}: shared memory {}", k.shared);
                let [bm, bn, bk] = k.tile;
                assert!(
                    bk % 64 == 0 && bn % 16 == 0 && bm > 0,
                    "{what}: tile {:?}",
                    k.tile
                );
            }
        }
    }
}
