//! The cuBLAS side of [`super::gemm`]: a cuBLAS handle per (device, stream), the strided and
//! pointer-batched GEMM calls, and their hand-over to cubecl's device thread (also used by the
//! device copies of `park.rs` and `concat.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cudarc::cublas::{result as blas, sys, CudaBlas};
use cudarc::driver::{CudaContext, CudaStream};

use super::gemm::{Gemm, Mat};
use super::gemm_lt::{Epilogue, EpilogueArgs, Key, Lt};
use super::launch::empty;

/// One cuBLAS handle per (device, cubecl stream), created on first use and bound to that stream:
/// a handle's workspace must not be shared by GEMMs that may overlap on different streams.
/// (`_stream` owns the stream cudarc creates the handle with; it is never used.)
struct StreamBlas {
    _stream: Arc<CudaStream>,
    blas: CudaBlas,
    /// cuBLASLt with cached plans (`None` if its handle or workspace could not be made: every
    /// GEMM then goes through `blas`).
    lt: Option<Lt>,
}

type BlasMap = HashMap<(usize, usize), Arc<Mutex<StreamBlas>>>;

fn stream_blas(index: usize, stream: sys::cudaStream_t) -> Arc<Mutex<StreamBlas>> {
    static MAP: OnceLock<Mutex<BlasMap>> = OnceLock::new();
    let mut map = MAP
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry((index, stream as usize))
        .or_insert_with(|| {
            let ctx = CudaContext::new(index).unwrap_or_else(|e| {
                panic!("qtune-kernels: CUDA context for device {index}: {e:?}")
            });
            let own = ctx
                .new_stream()
                .unwrap_or_else(|e| panic!("qtune-kernels: CUDA stream on device {index}: {e:?}"));
            let blas = CudaBlas::new(own.clone()).unwrap_or_else(|e| {
                panic!("qtune-kernels: cuBLAS handle on device {index}: {e:?}")
            });
            // SAFETY: a valid handle and a stream of the same context that outlives it (cubecl
            // keeps its streams for the life of the process).
            unsafe { blas::set_stream(*blas.handle(), stream) }
                .unwrap_or_else(|e| panic!("qtune-kernels: cublasSetStream: {e:?}"));
            let lt = Lt::new(&own);
            Arc::new(Mutex::new(StreamBlas {
                _stream: own,
                blas,
                lt,
            }))
        })
        .clone()
}

fn cuda_type(dtype: DType) -> sys::cudaDataType {
    match dtype {
        DType::F32 => sys::cudaDataType::CUDA_R_32F,
        DType::F16 => sys::cudaDataType::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType::CUDA_R_16BF,
        other => panic!("qtune-kernels: cuBLAS GEMM supports F32, F16, BF16, not {other:?}"),
    }
}

/// One `cublasGemmStridedBatchedEx` on cubecl's stream; `a`, `b` of one dtype (F32/F16/BF16),
/// `c` in that dtype or F32, fp32 accumulation. The caller guarantees that the described
/// matrices lie inside the (contiguous) buffers.
///
/// The GEMM is handed to cubecl's device thread without waiting for it (its task queue is
/// FIFO, so the GEMM is enqueued on the stream after every kernel launched before it and before
/// every one launched after): the calling thread goes on building the step while the device
/// thread enqueues, where a blocking hand-off per GEMM made the two take turns. A cuBLAS failure
/// on the device thread stops the process (`stop_on_gemm_failure` says why).
///
/// # Panics
/// On an unsupported dtype or a dimension beyond i32.
pub(crate) fn strided_gemm(
    (a, am): (&CubeTensor<CudaRuntime>, Mat),
    (b, bm): (&CubeTensor<CudaRuntime>, Mat),
    (c, cm): (&CubeTensor<CudaRuntime>, Mat),
    g: Gemm,
) {
    assert_eq!(
        a.dtype, b.dtype,
        "qtune-kernels: matmul operands must share a dtype"
    );
    if g.batch == 0 || g.m == 0 || g.n == 0 {
        return;
    }
    let fits = |v: usize| i32::try_from(v).is_ok();
    assert!(
        [g.m, g.n, g.k, g.batch, am.ld, bm.ld, cm.ld]
            .into_iter()
            .all(fits),
        "qtune-kernels: GEMM dimension exceeds i32 ({g:?})"
    );
    let task = GemmTask {
        operands: [a, b, c].map(Operand::of),
        mats: [am, bm, cm],
        g,
        device: a.device.index,
        epilogue: None,
    };
    device_handle(a.device.index).submit(move |server| task.run(server));
}

/// An epilogue and its operands: the bias vector, the auxiliary matrix and its leading dimension.
pub(crate) type EpilogueOperands<'a> = (
    Epilogue,
    Option<&'a CubeTensor<CudaRuntime>>,
    Option<(&'a CubeTensor<CudaRuntime>, usize)>,
);

/// [`strided_gemm`] of one dense product (batch 1) with a cuBLASLt epilogue: `bias` (`[n]`)
/// for the bias epilogues, `aux` (`[m, n]`, rows `aux_ld` apart) for the auxiliary matrix the
/// GELU epilogues write or read (see `gemm_lt::Epilogue`). There is no GemmEx fallback for an
/// epilogue: a problem cuBLASLt has no algorithm for stops the process, so callers take this
/// only where cuBLASLt's documented requirements hold (`super::epilogue::fits`).
pub(crate) fn strided_gemm_epilogue(
    (a, am): (&CubeTensor<CudaRuntime>, Mat),
    (b, bm): (&CubeTensor<CudaRuntime>, Mat),
    (c, cm): (&CubeTensor<CudaRuntime>, Mat),
    g: Gemm,
    (kind, bias, aux): EpilogueOperands<'_>,
) {
    assert_eq!(
        a.dtype, b.dtype,
        "qtune-kernels: matmul operands must share a dtype"
    );
    assert!(
        g.batch == 1 && kind.has_bias() == bias.is_some() && kind.has_aux() == aux.is_some(),
        "qtune-kernels: GEMM epilogue {kind:?} with bias {} and aux {} (batch {})",
        bias.is_some(),
        aux.is_some(),
        g.batch
    );
    if g.m == 0 || g.n == 0 {
        return;
    }
    let task = GemmTask {
        operands: [a, b, c].map(Operand::of),
        mats: [am, bm, cm],
        g,
        device: a.device.index,
        epilogue: Some(EpilogueTask {
            kind,
            bias: bias.map(Operand::of),
            aux: aux.map(|(t, ld)| (Operand::of(t), ld)),
        }),
    };
    device_handle(a.device.index).submit(move |server| task.run(server));
}

/// `problems` GEMMs of one shape `g` (its `batch` ignored) in one `cublasGemmBatchedEx`:
/// problem `i` reads `a` at element offset `offsets[i][0]` (rows `lds[0]` apart), `b` at
/// `offsets[i][1]` and writes `c` at `offsets[i][2]`; outputs must not overlap. For matrices
/// that no single stride reaches (attention's heads across batch rows): one cuBLAS call where
/// a strided batch needs one per batch row. The pointer arrays are built on the device thread
/// and copied to a device buffer on the GEMM's stream just before it (while a CUDA graph is
/// recorded: into the graph's own memory, one batched node still). Asynchronous as
/// [`strided_gemm`].
///
/// # Panics
/// As [`strided_gemm`].
pub(crate) fn pointer_batched_gemm(
    [a, b, c]: [&CubeTensor<CudaRuntime>; 3],
    lds: [usize; 3],
    offsets: Vec<[usize; 3]>,
    g: Gemm,
) {
    assert_eq!(
        a.dtype, b.dtype,
        "qtune-kernels: matmul operands must share a dtype"
    );
    let problems = offsets.len();
    if problems == 0 || g.m == 0 || g.n == 0 {
        return;
    }
    let fits = |v: usize| i32::try_from(v).is_ok();
    assert!(
        [g.m, g.n, g.k, problems, lds[0], lds[1], lds[2]]
            .into_iter()
            .all(fits),
        "qtune-kernels: GEMM dimension exceeds i32 ({g:?}, {problems} problems)"
    );
    let (ty, out_ty) = (cuda_type(a.dtype), cuda_type(c.dtype));
    // Three arrays of `problems` device pointers, filled on the device thread.
    let arrays = empty(a, vec![3 * problems], DType::U64);
    let operands = [a, b, c, &arrays].map(Operand::of);
    let device = a.device.index;
    device_handle(device).submit(move |server| {
        let (bases, stream) = match lookup(server, &operands) {
            Ok(found) => found,
            Err(e) => return stop_on_gemm_failure(e),
        };
        let [a, b, c, _] = &operands;
        // cuBLAS sees the column-major transposes: its A is our b, its B our a (as in
        // `strided_gemm`), so the arrays are [b pointers, a pointers, c pointers].
        let mut host = Vec::with_capacity(3 * problems);
        for (i, t) in [(1usize, b), (0, a), (2, c)] {
            let base = bases[i];
            host.extend(
                offsets
                    .iter()
                    .map(|o| base + (o[i] * t.dtype.size()) as u64),
            );
        }
        let dev = stream_blas(device, stream as sys::cudaStream_t);
        let dev = dev.lock().unwrap_or_else(|p| p.into_inner());
        let i = |v: usize| v as i32;
        // While a CUDA graph is recorded the arrays go to the graph's own device memory
        // (uploaded before any replay): a recorded copy would read `host` by address at every
        // replay.
        // SAFETY: the u64s' bytes, read while `host` lives.
        let bytes =
            unsafe { std::slice::from_raw_parts(host.as_ptr().cast::<u8>(), host.len() * 8) };
        let dst = match cubecl::cuda::capture::graph_constant(bytes) {
            Some(Ok(ptr)) => ptr,
            Some(Err(e)) => return stop_on_gemm_failure(e),
            None => {
                let dst = bases[3];
                // SAFETY: `dst` holds 3·problems u64 (allocated above); the source is a live
                // pageable host slice, which the driver stages before returning (upload.rs), on
                // the stream the GEMM below runs on.
                let copied = unsafe {
                    cudarc::driver::sys::cuMemcpyHtoDAsync_v2(
                        dst,
                        host.as_ptr() as *const std::ffi::c_void,
                        host.len() * 8,
                        stream as cudarc::driver::sys::CUstream,
                    )
                };
                if copied != cudarc::driver::sys::cudaError_enum::CUDA_SUCCESS {
                    return stop_on_gemm_failure(format!(
                        "pointer arrays for a batched GEMM: {copied:?}"
                    ));
                }
                dst
            }
        };
        let n = problems as u64;
        // SAFETY: every pointer addresses a matrix inside its live buffer (caller), the arrays
        // were copied to `dst` on this stream just before (or sit in the graph's arena, uploaded
        // before its replays), the handle is bound to it.
        let status = unsafe {
            sys::cublasGemmBatchedEx(
                *dev.blas.handle(),
                cublas_op(g.tb),
                cublas_op(g.ta),
                i(g.n),
                i(g.m),
                i(g.k),
                &g.alpha as *const f32 as *const _,
                dst as *const *const std::ffi::c_void,
                ty,
                i(lds[1]),
                (dst + 8 * n) as *const *const std::ffi::c_void,
                ty,
                i(lds[0]),
                &g.beta as *const f32 as *const _,
                (dst + 16 * n) as *const *mut std::ffi::c_void,
                out_ty,
                i(lds[2]),
                i(problems),
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        };
        if status != sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            stop_on_gemm_failure(format!("cublasGemmBatchedEx: {status:?}"));
        }
    });
}

/// cubecl's CUDA server: the state its device thread owns.
pub(super) type Server = <CudaRuntime as cubecl::Runtime>::Server;

/// A handle on the device thread of cubecl's CUDA server for device `index` (the channel the
/// client's own launches go through), made once per device.
pub(super) fn device_handle(index: usize) -> cubecl::device_handle::DeviceHandle<Server> {
    use cubecl::device::Device;
    static HANDLES: OnceLock<Mutex<HashMap<usize, cubecl::device_handle::DeviceHandle<Server>>>> =
        OnceLock::new();
    let mut map = HANDLES
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    map.entry(index)
        .or_insert_with(|| {
            let id = cubecl::cuda::CudaDevice { index }.to_id();
            cubecl::device_handle::DeviceHandle::<Server>::new(id)
        })
        .clone()
}

/// A GEMM failed on cubecl's device thread, where nothing can unwind into the caller (cubecl
/// catches a panicking task and logs it): the device is unusable and every value computed from
/// then on is suspect, so the process stops at once, before anything (a checkpoint) is written
/// from them. The last checkpoint stays intact (checkpoints are written atomically).
fn stop_on_gemm_failure(what: String) {
    stop_on_device_failure("a GEMM", what);
}

/// [`stop_on_gemm_failure`] for any task of ours on cubecl's device thread (`task`: "a GEMM",
/// "a device copy").
pub(super) fn stop_on_device_failure(task: &str, what: String) {
    eprintln!("qtune-kernels: {task} failed on the device thread: {what}; stopping");
    std::process::abort();
}

/// A GEMM operand as the device thread needs it: a binding of its buffer (which keeps the
/// memory allocated, as a kernel launch's bindings do, without counting as a holder of the
/// tensor: in-place ops on it stay possible) and its dtype.
pub(super) struct Operand {
    binding: cubecl::server::Binding,
    dtype: DType,
}

impl Operand {
    pub(super) fn of(t: &CubeTensor<CudaRuntime>) -> Self {
        Self {
            binding: t.handle.clone().binding(),
            dtype: t.dtype,
        }
    }
}

/// Every operand's device pointer (its buffer's start) and the calling thread's stream, looked
/// up on `server` (which makes that stream wait for the buffers' last writers, as for a kernel
/// launch). The operands' bindings keep the buffers allocated until the caller has enqueued.
pub(super) fn lookup<const K: usize>(
    server: &mut Server,
    operands: &[Operand; K],
) -> Result<([u64; K], cudarc::driver::sys::CUstream), String> {
    use cubecl::server::ComputeServer;
    let stream_id = cubecl::stream_id::StreamId::current();
    let mut ptrs = [0u64; K];
    let mut stream = std::ptr::null_mut();
    for (ptr, t) in ptrs.iter_mut().zip(operands) {
        let r = server
            .get_resource(t.binding.clone(), stream_id)
            .map_err(|e| format!("device pointer for GEMM: {e:?}"))?;
        *ptr = r.resource().ptr;
        stream = r.resource().stream;
    }
    Ok((ptrs, stream))
}

/// One GEMM as the device thread runs it: the operands' bindings, where their matrices lie, the
/// problem and the device.
struct GemmTask {
    operands: [Operand; 3],
    mats: [Mat; 3],
    g: Gemm,
    device: usize,
    epilogue: Option<EpilogueTask>,
}

/// A GEMM's epilogue as the device thread needs it: the kind, the bias vector's buffer and the
/// auxiliary matrix's buffer with its leading dimension (elements).
struct EpilogueTask {
    kind: Epilogue,
    bias: Option<Operand>,
    aux: Option<(Operand, usize)>,
}

impl EpilogueTask {
    /// The bias and aux pointers (their buffers' starts), looked up on `server` as the GEMM's
    /// operands are.
    fn args(&self, server: &mut Server) -> Result<EpilogueArgs, String> {
        let ptr = |server: &mut Server, o: Option<&Operand>| match o {
            Some(o) => {
                lookup(server, std::slice::from_ref(o).try_into().expect("one")).map(|([p], _)| p)
            }
            None => Ok(0),
        };
        Ok(EpilogueArgs {
            kind: self.kind,
            bias: ptr(server, self.bias.as_ref())?,
            aux: ptr(server, self.aux.as_ref().map(|(o, _)| o))?,
            aux_ld: self.aux.as_ref().map_or(0, |&(_, ld)| ld),
        })
    }
}

impl GemmTask {
    /// Looks the three buffers up on `server` (ordering the caller's stream after their last
    /// writers, as a kernel launch does) and enqueues the GEMM on that stream.
    fn run(self, server: &mut Server) {
        let ([ra, rb, rc], stream) = match lookup(server, &self.operands) {
            Ok(found) => found,
            Err(e) => return stop_on_gemm_failure(e),
        };
        let epi = match self.epilogue.as_ref().map(|e| e.args(server)).transpose() {
            Ok(epi) => epi.unwrap_or(EpilogueArgs::NONE),
            Err(e) => return stop_on_gemm_failure(e),
        };
        let Self {
            operands: [a, b, c],
            mats: [am, bm, cm],
            g,
            device,
            epilogue: _keep_alive,
        } = self;
        let (ty, out_ty) = (cuda_type(a.dtype), cuda_type(c.dtype));
        let pa = ra + (am.offset * a.dtype.size()) as u64;
        let pb = rb + (bm.offset * b.dtype.size()) as u64;
        let pc = rc + (cm.offset * c.dtype.size()) as u64;
        let dev = stream_blas(device, stream as sys::cudaStream_t);
        let mut dev = dev.lock().unwrap_or_else(|p| p.into_inner());
        // A cached cuBLASLt plan when there is one (the common case); GemmEx otherwise.
        let (mats, ptrs) = ([am, bm, cm], [pa, pb, pc]);
        let key = Key::new(a.dtype, c.dtype, &g, mats, ptrs, &epi);
        if let Some(lt) = dev.lt.as_mut() {
            // SAFETY: as for the GemmEx call below; the epilogue's buffers are live (held by
            // `_keep_alive`) and hold the bias and auxiliary matrix its caller described.
            if unsafe { lt.matmul(key, &g, mats, ptrs, &epi, stream as *mut std::ffi::c_void) } {
                return;
            }
        }
        if epi.kind != Epilogue::None {
            return stop_on_gemm_failure(format!(
                "cuBLASLt has no algorithm for the GEMM {g:?} with epilogue {:?} (set \
                 QTUNE_GEMM_EPILOGUES=0 to compute the bias and GELU separately)",
                epi.kind
            ));
        }
        let lds = [am.ld, bm.ld, cm.ld];
        let strides = [am.stride, bm.stride, cm.stride];
        // SAFETY: live buffers holding the described matrices (caller), on the stream cubecl orders
        // their other uses on (its allocator reuses freed memory in that stream's order, so dropping
        // the resources after enqueueing is safe); the handle is bound to that stream.
        let r = unsafe { gemm_ex(*dev.blas.handle(), &g, (ty, out_ty), ptrs, lds, strides) };
        if let Err(e) = r {
            stop_on_gemm_failure(e);
        }
    }
}

/// `cublasGemmStridedBatchedEx` of `g` (its `batch`; strides in elements) on `handle`'s stream,
/// our row-major `a [m, k]`, `b`, `c` at `ptrs = [a, b, c]` with row strides `lds`, as the
/// column-major `cᵀ[n, m] = op(b)ᵀ·op(a)ᵀ`, fp32 accumulation. Every dimension fits i32 (the
/// callers check).
///
/// # Safety
/// The pointers address live buffers holding the described matrices, ordered on `handle`'s
/// stream.
unsafe fn gemm_ex(
    handle: sys::cublasHandle_t,
    g: &Gemm,
    (ty, out_ty): (sys::cudaDataType, sys::cudaDataType),
    [pa, pb, pc]: [u64; 3],
    lds: [usize; 3],
    strides: [usize; 3],
) -> Result<(), String> {
    let i = |v: usize| v as i32;
    // SAFETY: the caller's.
    unsafe {
        blas::gemm_strided_batched_ex(
            handle,
            cublas_op(g.tb),
            cublas_op(g.ta),
            i(g.n),
            i(g.m),
            i(g.k),
            &g.alpha as *const f32 as *const _,
            pb as *const _,
            ty,
            i(lds[1]),
            strides[1] as i64,
            pa as *const _,
            ty,
            i(lds[0]),
            strides[0] as i64,
            &g.beta as *const f32 as *const _,
            pc as *mut _,
            out_ty,
            i(lds[2]),
            strides[2] as i64,
            i(g.batch),
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| format!("cublasGemmStridedBatchedEx: {e:?}"))
}

/// cuBLAS' transpose flag.
fn cublas_op(t: bool) -> sys::cublasOperation_t {
    if t {
        sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        sys::cublasOperation_t::CUBLAS_OP_N
    }
}
