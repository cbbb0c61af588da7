//! Static-shape greedy decoding on CUDA: the in-place KV-cache row write, the on-device argmax
//! bookkeeping, and CUDA-graph capture/replay of a decode step on cubecl's own stream (the
//! vendored cubecl-cuda's `capture` module, third_party/README.md). With the step recorded once,
//! a token costs one `cuGraphLaunch` instead of ~30 host-side launches per layer.

use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use super::launch::{array, cube_count, cube_dim, CubeB};
use crate::{DeviceGraph, KernelError};

/// Expands `$go!(float type, int type)` for a (float dtype, int dtype) pair.
macro_rules! dispatch_float_int {
    ($fd:expr, $id:expr, $what:expr, $go:ident) => {
        match ($fd, $id) {
            (burn::tensor::DType::F32, burn::tensor::DType::I32) => $go!(f32, i32),
            (burn::tensor::DType::F32, burn::tensor::DType::I64) => $go!(f32, i64),
            (burn::tensor::DType::F16, burn::tensor::DType::I32) => $go!(burn::tensor::f16, i32),
            (burn::tensor::DType::F16, burn::tensor::DType::I64) => $go!(burn::tensor::f16, i64),
            (burn::tensor::DType::BF16, burn::tensor::DType::I32) => $go!(burn::tensor::bf16, i32),
            (burn::tensor::DType::BF16, burn::tensor::DType::I64) => $go!(burn::tensor::bf16, i64),
            (f, i) => panic!(
                "qtune-kernels: {} supports F32/F16/BF16 with I32/I64, not {f:?}/{i:?}",
                $what
            ),
        }
    };
}
pub(crate) use dispatch_float_int;

#[cube(launch_unchecked)]
fn write_row_kernel<F: Float, I: Int>(
    dst: &mut Array<F>,
    src: &Array<F>,
    row: &Array<I>,
    rows: u32,
    cols: usize,
    n: usize,
) {
    let i = ABSOLUTE_POS;
    if i >= n * cols {
        terminate!();
    }
    let s = i / cols;
    // A negative index wraps to a large u32 and writes nothing, like one past the end.
    let r = u32::cast_from(row[s]);
    if r >= rows {
        terminate!();
    }
    dst[usize::cast_from(r) * cols + (i - s * cols)] = src[i];
}

/// `dst [R, C]` with row `s` of `src` (`n·C` values) written into row `row[s]`, for each of the
/// `n` indices of `row`; in place when `dst` is exclusively owned and dense (else into a copy).
pub(crate) fn write_row<B: CubeB<CudaRuntime>>(
    dst: CubeTensor<CudaRuntime>,
    src: CubeTensor<CudaRuntime>,
    row: CubeTensor<CudaRuntime>,
) -> CubeTensor<CudaRuntime> {
    let shape = dst.meta.shape().to_vec();
    assert_eq!(
        shape.len(),
        2,
        "qtune-kernels: write_row needs a 2-D destination"
    );
    let (rows, cols) = (shape[0], shape[1]);
    let n = row.meta.num_elements();
    assert_eq!(
        src.meta.num_elements(),
        n * cols,
        "qtune-kernels: write_row source has {} values for {n} rows of {cols}",
        src.meta.num_elements()
    );
    let src = into_contiguous(if src.dtype == dst.dtype {
        src
    } else {
        cast(src, dst.dtype)
    });
    let dst = if dst.can_mut() && dst.is_contiguous_buffer() {
        dst
    } else {
        // Shared (or strided): write into a fresh dense copy, Burn's value semantics.
        B::float_mul_scalar(dst, 1.0f32.into())
    };
    let row = into_contiguous(row);
    macro_rules! go {
        ($f:ty, $i:ty) => {
            // SAFETY: dst holds rows·cols values, src n·cols, row n (the shapes above); the
            // kernel bounds every index.
            unsafe {
                write_row_kernel::launch_unchecked::<$f, $i, CudaRuntime>(
                    &dst.client,
                    cube_count(n * cols),
                    cube_dim(),
                    array(&dst, rows * cols),
                    array(&src, n * cols),
                    array(&row, n),
                    rows as u32,
                    cols,
                    n,
                )
            }
        };
    }
    dispatch_float_int!(dst.dtype, row.dtype, "write_row", go);
    dst
}

/// Threads of the argmax cube.
const ARGMAX_THREADS: u32 = 1024;
/// Logits each argmax unit loads before it compares them.
const ARGMAX_BATCH: usize = 8;
/// Empty slot of the argmax reduction.
const NONE: u32 = u32::MAX;

/// Whether `(v, i)` beats the current best `(bv, bi)` under `torch.argmax`'s order: NaN is the
/// maximum, ties go to the lower index, `bi == NONE` is empty.
#[cube]
fn beats(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    let mut out = false;
    if bi == NONE {
        out = true;
    } else if f32::is_nan(v) {
        out = !f32::is_nan(bv) || i < bi;
    } else if !f32::is_nan(bv) {
        out = v > bv || (v == bv && i < bi);
    }
    out
}

#[cube(launch_unchecked)]
fn greedy_advance_kernel<F: Float, I: Int>(
    state: &mut Array<I>,
    logits: &Array<F>,
    len: usize,
    cap: u32,
) {
    // One cube per row: row `CUBE_POS` of `logits` (`len` values) and of the state (`3 + cap`).
    let lo = CUBE_POS * len;
    let so = CUBE_POS * (3usize + cap as usize);
    let t = UNIT_POS as usize;
    let threads = 1024usize;
    let mut bv = 0.0f32;
    let mut bi = 4_294_967_295u32; // NONE
                                   // ARGMAX_BATCH independent loads in flight per unit before any comparison (one at a time,
                                   // each waited for, a 50,400-value row took ~20 µs). `beats` is a total order, so the order
                                   // in which a unit visits its values does not change the result.
    let mut vals = Array::<f32>::new(ARGMAX_BATCH);
    let span = threads * ARGMAX_BATCH;
    for k in 0..len.div_ceil(span) {
        #[unroll]
        for u in 0..ARGMAX_BATCH {
            let j = t + k * span + u * threads;
            vals[u] = f32::cast_from(logits[lo + select(j < len, j, len - 1usize)]);
        }
        #[unroll]
        for u in 0..ARGMAX_BATCH {
            let j = t + k * span + u * threads;
            if j < len && beats(vals[u], u32::cast_from(j), bv, bi) {
                bv = vals[u];
                bi = u32::cast_from(j);
            }
        }
    }
    let mut sv = SharedMemory::<f32>::new(1024usize);
    let mut si = SharedMemory::<u32>::new(1024usize);
    sv[t] = bv;
    si[t] = bi;
    sync_cube();
    // A literal (not `threads / 2`, a compile-time value cubecl will not let us update).
    let mut stride = 512usize;
    for _ in 0..10u32 {
        if t < stride {
            let oi = si[t + stride];
            if oi != NONE && beats(sv[t + stride], oi, sv[t], si[t]) {
                sv[t] = sv[t + stride];
                si[t] = oi;
            }
        }
        sync_cube();
        stride /= 2;
    }
    if t == 0 {
        let mut tok = si[0];
        if tok == NONE {
            tok = 0u32;
        }
        let count = u32::cast_from(state[so + 2]);
        state[so] = I::cast_from(tok);
        if count < cap {
            state[so + 3 + usize::cast_from(count)] = I::cast_from(tok);
        }
        state[so + 1] = state[so + 1] + I::cast_from(1u32);
        state[so + 2] = state[so + 2] + I::cast_from(1u32);
    }
}

/// [`crate::QBackend::q_greedy_advance`], one cube per row: argmax of the row's logits then
/// its state update, in place when `state` is exclusively owned and dense.
pub(crate) fn greedy_advance<B: CubeB<CudaRuntime>>(
    state: CubeTensor<CudaRuntime>,
    logits: CubeTensor<CudaRuntime>,
) -> CubeTensor<CudaRuntime> {
    let n = state.meta.num_elements();
    let shape = logits.meta.shape().to_vec();
    let rows = if shape.len() == 2 { shape[0] } else { 1 };
    assert!(
        rows >= 1 && n % rows == 0 && n / rows >= 3,
        "qtune-kernels: greedy state of {n} values for {rows} rows needs [token, pos, count, ..] each"
    );
    let state = if state.can_mut() && state.is_contiguous_buffer() {
        state
    } else {
        B::int_add_scalar(state, 0.into())
    };
    let logits = into_contiguous(logits);
    let len = logits.meta.num_elements() / rows;
    macro_rules! go {
        ($f:ty, $i:ty) => {
            // SAFETY: state has rows·(3 + cap) values, logits rows·len; a cube of
            // ARGMAX_THREADS per row.
            unsafe {
                greedy_advance_kernel::launch_unchecked::<$f, $i, CudaRuntime>(
                    &state.client,
                    CubeCount::Static(rows as u32, 1, 1),
                    CubeDim::new_1d(ARGMAX_THREADS),
                    array(&state, n),
                    array(&logits, rows * len),
                    len,
                    (n / rows - 3) as u32,
                )
            }
        };
    }
    dispatch_float_int!(logits.dtype, state.dtype, "greedy_advance", go);
    state
}

/// A recorded decode step: the instantiated CUDA graph and the stream it replays on.
struct CudaDeviceGraph {
    graph: cubecl::cuda::capture::CudaGraph,
    client: ComputeClient<CudaRuntime>,
    probe: cubecl::server::Handle,
}

/// cubecl's stream for this thread's work, read on its device thread (as every GEMM does).
fn stream_of(client: &ComputeClient<CudaRuntime>, probe: &cubecl::server::Handle) -> usize {
    client
        .get_resource(probe.clone())
        .unwrap_or_else(|e| panic!("qtune-kernels: device pointer for a graph: {e:?}"))
        .resource()
        .stream as usize
}

fn graph_error(reason: impl std::fmt::Debug) -> KernelError {
    KernelError::Graph {
        reason: format!("{reason:?}"),
    }
}

impl DeviceGraph for CudaDeviceGraph {
    fn replay(&self) -> Result<(), KernelError> {
        let (graph, client, probe) = (&self.graph, &self.client, &self.probe);
        client
            .exclusive(|| {
                let stream = stream_of(client, probe);
                // SAFETY: the stream the graph was captured on; its buffers are owned by the
                // caller (inputs/outputs) or kept by the capture (metadata, deferred frees).
                unsafe { graph.launch(stream as cubecl::cuda::capture::Stream) }
            })
            .map_err(graph_error)?
            .map_err(graph_error)
    }

    fn describe(&self) -> String {
        self.graph
            .node_summary()
            .unwrap_or_else(|e| format!("({e})"))
    }
}

/// [`crate::QBackend::q_graph_capture`] on CUDA. Whether to record at all is the caller's
/// choice (`qtune_lm::GenerationConfig::device_graphs`).
pub(crate) fn capture(
    device: &CudaDevice,
    record: &mut dyn FnMut(),
) -> Result<Option<Box<dyn DeviceGraph>>, KernelError> {
    let client = CudaRuntime::client(device);
    let probe = client.empty(16);
    client
        .exclusive(|| {
            let stream = stream_of(&client, &probe);
            // SAFETY: cubecl's live stream for this thread, on its device thread.
            unsafe { cubecl::cuda::capture::begin(stream as cubecl::cuda::capture::Stream) }
        })
        .map_err(graph_error)?
        .map_err(graph_error)?;
    // A panic inside `record` must still end the capture, or the stream stays unusable.
    let recorded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(record));
    let graph = client
        .exclusive(|| {
            let stream = stream_of(&client, &probe);
            // SAFETY: the stream `begin` captured.
            unsafe { cubecl::cuda::capture::end(stream as cubecl::cuda::capture::Stream) }
        })
        .map_err(graph_error)?;
    if let Err(panic) = recorded {
        std::panic::resume_unwind(panic);
    }
    let graph = graph.map_err(graph_error)?;
    Ok(Some(Box::new(CudaDeviceGraph {
        graph,
        client,
        probe,
    })))
}
