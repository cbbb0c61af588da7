//! Kernels that Triton compiled ahead of time (PTX for sm_90a in `ptx/`, beside the Python that
//! wrote them): loading them as CUDA modules through cudarc on first use, and launching them on
//! cubecl's stream from its device thread, as cuBLAS is (`cublas.rs`). Each such kernel is an
//! optional fast path behind an on/off switch ([`Switch`]), with the cubecl/cuBLAS path it
//! replaces as the fallback and the reference its GPU check compares it with.

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cudarc::driver::{sys, CudaContext, CudaFunction, CudaModule};

use super::cublas::{device_handle, lookup, stop_on_device_failure, Operand};

/// One compiled kernel and how to launch it (from Triton's metadata beside the PTX).
pub(crate) struct Kernel {
    pub ptx: &'static str,
    pub name: &'static str,
    /// The tile: for the NF4 GEMM rows of `x`, rows of `W`, depth; for attention query rows,
    /// keys per step, head dim.
    pub tile: [usize; 3],
    pub warps: u32,
    /// Dynamic shared memory, bytes.
    pub shared: u32,
}

impl Kernel {
    /// Threads per block (Triton fixed them: the entry's `.reqntid`).
    pub fn threads(&self) -> u32 {
        32 * self.warps
    }
}

/// An optional fast path's switch: an environment variable (`0` or `1`; unset: off until the
/// path has run on a GPU), a process-wide override for A/B timings and checks, the shipped config
/// in use, and a count of launches (the checks' proof that the path ran).
pub(crate) struct Switch {
    env: &'static str,
    /// What each setting means, for the error on another value.
    off: &'static str,
    on: &'static str,
    setting: OnceLock<Option<String>>,
    /// 0: as the environment says, 1: off, 2: on.
    over: AtomicU8,
    config: AtomicUsize,
    launches: AtomicU64,
}

impl Switch {
    pub const fn new(env: &'static str, off: &'static str, on: &'static str) -> Self {
        Self {
            env,
            off,
            on,
            setting: OnceLock::new(),
            over: AtomicU8::new(0),
            config: AtomicUsize::new(0),
            launches: AtomicU64::new(0),
        }
    }

    /// The environment's setting, read once (unset: off).
    ///
    /// # Errors
    /// [`crate::KernelError::Setting`] for a value other than `0` or `1`.
    pub fn setting(&self) -> Result<bool, crate::KernelError> {
        let value = self.setting.get_or_init(|| std::env::var(self.env).ok());
        crate::switch_setting(
            self.env,
            Some(value.as_deref().unwrap_or("0")),
            self.off,
            self.on,
        )
    }

    /// On or off whatever the environment says (`None`: as it says).
    pub fn set(&self, on: Option<bool>) {
        self.over
            .store(on.map_or(0, |on| 1 + u8::from(on)), Ordering::Relaxed);
    }

    /// Whether the path is on.
    ///
    /// # Panics
    /// On a value of the variable that `q_check_device` would have refused before any work.
    pub fn enabled(&self) -> bool {
        match self.over.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => self
                .setting()
                .unwrap_or_else(|e| panic!("qtune-kernels: {e}")),
        }
    }

    pub fn config(&self) -> usize {
        self.config.load(Ordering::Relaxed)
    }

    /// Picks config `c` of `configs` shipped.
    ///
    /// # Panics
    /// For `c ≥ configs` (callers check a user's value first).
    pub fn set_config(&self, c: usize, configs: usize) {
        assert!(c < configs, "{}: config {c}, there are {configs}", self.env);
        self.config.store(c, Ordering::Relaxed);
    }

    pub fn launches(&self) -> u64 {
        self.launches.load(Ordering::Relaxed)
    }
}

/// A loaded kernel (the module kept alive beside its function).
pub(crate) struct Loaded {
    _module: Arc<CudaModule>,
    function: CudaFunction,
}

// SAFETY: a CUfunction handle may be used from any thread of its context; it is only read.
unsafe impl Send for Loaded {}
unsafe impl Sync for Loaded {}

/// Kernel `k` on device `index`, loaded on first use; `None` (logged once, naming `what`) where
/// the device is not sm_90 or the module does not load.
pub(crate) fn function(index: usize, k: &Kernel, what: &str) -> Option<Arc<Loaded>> {
    type Map = HashMap<(usize, usize), Option<Arc<Loaded>>>;
    static MAP: OnceLock<Mutex<Map>> = OnceLock::new();
    let mut map = MAP
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry((index, k.ptx.as_ptr() as usize))
        .or_insert_with(|| match load(index, k) {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                eprintln!("qtune-kernels: {what} unavailable on device {index}: {e}");
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

/// A buffer a kernel may read as 16-byte aligned (Triton assumed every pointer so when it
/// compiled them: `tt.divisibility`).
pub(crate) fn aligned(t: &CubeTensor<CudaRuntime>) -> bool {
    t.handle.offset_start.unwrap_or(0) % 16 == 0
}

/// Enqueues `k` (loaded as `f`) on device `index` over a `grid` of blocks, with the entry's
/// parameters in Triton's order: the `tensors`' device pointers, then the 32-bit `scalars` (an
/// `i32` as its value, an `f32` by `to_bits`), then Triton's two scratch pointers (null: the
/// generators assert the kernels use none). Counts the launch on `switch`.
///
/// # Safety
/// The parameters must be the entry's, in its order (each generator's unit test checks the
/// count), and the buffers must hold what the kernel reads and writes over the whole grid.
pub(crate) unsafe fn launch<const K: usize>(
    index: usize,
    (k, f): (&Kernel, Arc<Loaded>),
    switch: &Switch,
    tensors: [&CubeTensor<CudaRuntime>; K],
    scalars: Vec<u32>,
    grid: [u32; 3],
) {
    let operands = tensors.map(Operand::of);
    let (block, shared, what) = (k.threads(), k.shared, k.name);
    switch.launches.fetch_add(1, Ordering::Relaxed);
    device_handle(index).submit(move |server| {
        let (ptrs, stream) = match lookup(server, &operands) {
            Ok(found) => found,
            Err(e) => return stop_on_device_failure(what, e),
        };
        let scratch = [0u64; 2];
        let mut args: Vec<*mut c_void> = Vec::with_capacity(K + scalars.len() + 2);
        args.extend(ptrs.iter().map(|p| p as *const u64 as *mut c_void));
        args.extend(scalars.iter().map(|s| s as *const u32 as *mut c_void));
        args.extend(scratch.iter().map(|p| p as *const u64 as *mut c_void));
        // SAFETY: the caller's contract; each argument points at a live local of this closure.
        let launched = unsafe {
            cudarc::driver::result::launch_kernel(
                f.function.cu_function(),
                (grid[0], grid[1], grid[2]),
                (block, 1, 1),
                shared,
                stream as sys::CUstream,
                &mut args,
            )
        };
        if let Err(e) = launched {
            stop_on_device_failure(what, format!("launch: {e:?}"));
        }
    });
}

/// The parameter count of `ptx`'s entry `name` (the unit tests check each table against it).
#[cfg(test)]
pub(crate) fn entry_params(ptx: &str, name: &str) -> Option<usize> {
    let entry = ptx.split(&format!(".entry {name}(")).nth(1)?;
    Some(entry.split(')').next()?.matches(".param").count())
}
