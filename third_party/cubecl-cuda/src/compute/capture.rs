//! qtune patch 3: CUDA-graph capture of the work this runtime enqueues on one stream.
//!
//! Between [`begin`] and [`end`] the stream is in (relaxed) capture mode: kernel launches and
//! copies are recorded, not run, and [`CudaGraph::launch`] replays them with one driver call.
//! cubecl does a few things per launch that a replay would get wrong, so while capturing:
//! - the dynamic kernel metadata (shapes/strides, normally a pinned staging buffer copied into a
//!   pooled device buffer per launch) goes into a device arena owned by the graph, uploaded once
//!   when the capture ends; a replay reads the same values;
//! - host data written to the device (e.g. a constant) stays alive with the graph, so the copy a
//!   replay repeats reads what was written at capture time;
//! - the drop queue (fences: event record + wait) is not flushed, device memory is allocated with
//!   `cuMemAlloc` (a stream-ordered `cuMemAllocAsync` would become a graph allocation node), and
//!   no device memory is freed while a graph exists (its intermediates live in pool pages cubecl
//!   considers free after the capture).
//!
//! The caller keeps the graph's inputs and outputs alive and in place (buffers allocated before
//! the capture and updated in place), and allocates nothing that must outlive a replay in
//! between replays. One capture at a time per process.

use std::ffi::c_void;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use cubecl_common::bytes::Bytes;
use cudarc::driver::sys;

/// A CUDA stream handle.
pub type Stream = sys::CUstream;

static CAPTURING: AtomicBool = AtomicBool::new(false);
static LIVE_GRAPHS: AtomicUsize = AtomicUsize::new(0);
static RECORDING: Mutex<Option<Recording>> = Mutex::new(None);

/// Bytes of metadata arena per capture (a GPT-J-6B decode step needs well under 1 MiB of kernel
/// metadata; a 32-row step adds ~0.7 MiB of cuBLAS pointer arrays, see [`graph_constant`]).
const ARENA_BYTES: usize = 32 << 20;
const ARENA_ALIGN: usize = 16;

struct Recording {
    arena: u64,
    host: Vec<u8>,
    keep: Vec<Bytes>,
    /// Kernel parameters point at a device pointer; these hold the arena ones during a launch.
    slots: Vec<Box<u64>>,
}

fn recording() -> std::sync::MutexGuard<'static, Option<Recording>> {
    RECORDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a capture is in progress.
pub(crate) fn active() -> bool {
    CAPTURING.load(Ordering::Acquire)
}

/// Whether device frees must wait (a capture is running or a graph exists).
pub(crate) fn defer_frees() -> bool {
    active() || LIVE_GRAPHS.load(Ordering::Acquire) > 0
}

/// During a capture: places `data` (kernel metadata) in the arena and returns its device pointer
/// and a kernel-parameter binding pointing at it. `None` when not capturing.
pub(crate) fn metadata(data: &[u8]) -> Option<Result<(u64, *mut c_void), String>> {
    if !active() {
        return None;
    }
    let mut guard = recording();
    let rec = guard.as_mut()?;
    let offset = rec.host.len().next_multiple_of(ARENA_ALIGN);
    if offset + data.len() > ARENA_BYTES {
        return Some(Err(format!(
            "CUDA graph capture: kernel metadata exceeds the {ARENA_BYTES}-byte arena"
        )));
    }
    rec.host.resize(offset, 0);
    rec.host.extend_from_slice(data);
    let mut slot = Box::new(rec.arena + offset as u64);
    let binding = &mut *slot as *mut u64 as *mut c_void;
    let ptr = *slot;
    rec.slots.push(slot);
    Some(Ok((ptr, binding)))
}

/// During a capture: a device copy of `data` that lives with the graph (placed in its arena,
/// uploaded when the capture ends, so before any replay), as its device address; `None` when not
/// capturing. For device-side operands a recorded library call reads and a replay must find
/// unchanged, such as the pointer arrays of `cublasGemmBatchedEx`: a recorded host-to-device copy
/// would read its host source by address at every replay.
pub fn graph_constant(data: &[u8]) -> Option<Result<u64, String>> {
    metadata(data).map(|r| r.map(|(ptr, _)| ptr))
}

/// During a capture: keeps host data a recorded copy reads (returns `None`); otherwise gives it
/// back for the usual drop queue.
pub(crate) fn keep(data: Bytes) -> Option<Bytes> {
    if !active() {
        return Some(data);
    }
    match recording().as_mut() {
        Some(rec) => {
            rec.keep.push(data);
            None
        }
        None => Some(data),
    }
}

fn check(what: &str, r: sys::CUresult) -> Result<(), String> {
    if r == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what} failed: {r:?}"))
    }
}

/// Starts capturing `stream` (relaxed mode). All work queued on it until [`end`] is recorded.
///
/// # Safety
/// `stream` is a live stream of the current context, the one this runtime queues the caller's
/// work on; call from the runtime's device thread (inside `ComputeClient::exclusive`).
pub unsafe fn begin(stream: sys::CUstream) -> Result<(), String> {
    let mut guard = recording();
    if guard.is_some() || active() {
        return Err("CUDA graph capture: a capture is already in progress".into());
    }
    // SAFETY: plain allocation in the current context.
    let arena = unsafe { cudarc::driver::result::malloc_sync(ARENA_BYTES) }
        .map_err(|e| format!("CUDA graph capture: arena allocation: {e:?}"))?;
    // SAFETY: `stream` is live (caller).
    let r = unsafe {
        sys::cuStreamBeginCapture_v2(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
    };
    if let Err(e) = check("cuStreamBeginCapture", r) {
        // SAFETY: allocated above, never handed out.
        let _ = unsafe { cudarc::driver::result::free_sync(arena) };
        return Err(e);
    }
    *guard = Some(Recording {
        arena,
        host: Vec::new(),
        keep: Vec::new(),
        slots: Vec::new(),
    });
    CAPTURING.store(true, Ordering::Release);
    Ok(())
}

/// Ends the capture started by [`begin`] and instantiates the graph; uploads the metadata arena
/// (queued on `stream`, so it precedes any replay). On error the capture is abandoned.
///
/// # Safety
/// As [`begin`], with the same stream.
pub unsafe fn end(stream: sys::CUstream) -> Result<CudaGraph, String> {
    let mut graph: sys::CUgraph = std::ptr::null_mut();
    // SAFETY: `stream` is capturing (begin) or the call fails harmlessly.
    let ended = check("cuStreamEndCapture", unsafe {
        sys::cuStreamEndCapture(stream, &mut graph)
    });
    CAPTURING.store(false, Ordering::Release);
    let rec = recording().take();
    let Some(rec) = rec else {
        return Err("CUDA graph capture: end without begin".into());
    };
    let mut out = CudaGraph {
        graph,
        exec: std::ptr::null_mut(),
        arena: rec.arena,
        _keep: rec.keep,
    };
    LIVE_GRAPHS.fetch_add(1, Ordering::AcqRel);
    ended?;
    // SAFETY: `graph` was produced by a successful end of capture.
    check("cuGraphInstantiateWithFlags", unsafe {
        sys::cuGraphInstantiateWithFlags(&mut out.exec, out.graph, 0)
    })?;
    if !rec.host.is_empty() {
        // SAFETY: the arena holds ARENA_BYTES ≥ host.len(); a pageable source is staged before
        // the call returns.
        unsafe { cudarc::driver::result::memcpy_htod_async(rec.arena, &rec.host, stream) }
            .map_err(|e| format!("CUDA graph capture: arena upload: {e:?}"))?;
    }
    Ok(out)
}

/// A captured and instantiated CUDA graph with the memory its replays read.
pub struct CudaGraph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    arena: u64,
    _keep: Vec<Bytes>,
}

// SAFETY: driver handles are usable from any thread of the process; the host bytes are owned.
unsafe impl Send for CudaGraph {}
// SAFETY: `launch` only reads the handles.
unsafe impl Sync for CudaGraph {}

impl CudaGraph {
    /// Replays the graph on `stream` (asynchronous, ordered after the stream's earlier work).
    ///
    /// # Safety
    /// `stream` is the captured stream (or one of the same context), and every buffer the graph
    /// touches is still allocated.
    pub unsafe fn launch(&self, stream: sys::CUstream) -> Result<(), String> {
        // SAFETY: `exec` is an instantiated graph (construction), `stream` live (caller).
        check("cuGraphLaunch", unsafe { sys::cuGraphLaunch(self.exec, stream) })
    }
}

impl CudaGraph {
    /// The recorded nodes counted by type, e.g. `CU_GRAPH_NODE_TYPE_KERNEL×620` (diagnostics:
    /// a copy or host node in a decode step costs a driver round trip per replay).
    pub fn node_summary(&self) -> Result<String, String> {
        let mut n = 0usize;
        // SAFETY: a valid graph; a null array asks for the count.
        check("cuGraphGetNodes", unsafe {
            sys::cuGraphGetNodes(self.graph, std::ptr::null_mut(), &mut n)
        })?;
        let mut nodes: Vec<sys::CUgraphNode> = vec![std::ptr::null_mut(); n];
        // SAFETY: `nodes` has room for `n` handles.
        check("cuGraphGetNodes", unsafe {
            sys::cuGraphGetNodes(self.graph, nodes.as_mut_ptr(), &mut n)
        })?;
        let mut counts: Vec<(String, usize)> = Vec::new();
        for &node in nodes.iter().take(n) {
            let mut t = sys::CUgraphNodeType::CU_GRAPH_NODE_TYPE_EMPTY;
            // SAFETY: a node of this graph.
            check("cuGraphNodeGetType", unsafe { sys::cuGraphNodeGetType(node, &mut t) })?;
            let name = format!("{t:?}");
            match counts.iter_mut().find(|(k, _)| *k == name) {
                Some((_, c)) => *c += 1,
                None => counts.push((name, 1)),
            }
        }
        Ok(counts
            .iter()
            .map(|(k, c)| format!("{k}×{c}"))
            .collect::<Vec<_>>()
            .join(" "))
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: handles created by `end`, destroyed once. The owner synchronizes the stream
        // before dropping a graph whose replays may still run (they read the arena).
        unsafe {
            if !self.exec.is_null() {
                let _ = sys::cuGraphExecDestroy(self.exec);
            }
            if !self.graph.is_null() {
                let _ = sys::cuGraphDestroy(self.graph);
            }
            let _ = cudarc::driver::result::free_sync(self.arena);
        }
        LIVE_GRAPHS.fetch_sub(1, Ordering::AcqRel);
    }
}
