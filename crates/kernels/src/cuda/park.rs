//! [`HostCopy`] on CUDA: a tensor parked in pinned host memory by copies on a side stream of
//! the device, ordered against cubecl's compute stream by events (see `crate::park` for the
//! calls' order).
//!
//! Ordering, for a tensor `t` whose buffer lies on the compute stream `S` (cubecl's stream of
//! the calling thread) and the side stream `C` (one per device, copies only):
//! - park: an event recorded on `S` after `t`'s writers; `C` waits for it and copies `t` to a
//!   pinned buffer; `done` is recorded on `C`. `t` stays held, so nothing reuses its memory.
//! - settle: `S` waits for `done`, then `t` is dropped: whatever the pool puts in that memory
//!   later is enqueued on `S` after the wait, so after the copy.
//! - prefetch: a fresh buffer from the pool (its earlier users are on `S` before an event that
//!   `C` waits for); `C` copies the pinned bytes into it and records `done` again.
//! - take: `S` waits for `done`; the buffer is the tensor's.
//!
//! All of it runs on cubecl's device thread (`DeviceHandle::submit`, the channel of the client's
//! own launches, so in program order with them) and nothing waits on the host. Pinned memory
//! comes from one arena per device ([`crate::park::Arena`]: steps of any shapes reuse it); the
//! copies on `C` run in order, so memory handed back once its copy to the device is enqueued
//! cannot be overwritten before that copy reads it, and chunks are freed only after `C` has
//! drained.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use burn::tensor::{ops::FloatTensor, DType};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, FloatElement, IntElement};
use cubecl::cuda::CudaRuntime;
use cubecl::zspace::metadata::Metadata;
use cudarc::driver::sys::{self, CUresult};

use super::gemm::{device_handle, lookup, stop_on_device_failure, Operand};
use crate::park::{padded_rows_span, Arena, ChunkAlloc};
use crate::{HostCopy, Place};

/// What the device thread's tasks of one parked tensor share: the pinned buffer holding its
/// bytes (0: none yet) and the event of its last copy not yet waited for on `S` (0: none).
#[derive(Default)]
struct Slot {
    host: usize,
    done: usize,
}

/// A tensor parked in pinned host memory (module docs).
pub(super) struct CudaParked {
    /// The device buffer: the parked tensor until settled, then the prefetched one.
    tensor: Option<CubeTensor<CudaRuntime>>,
    /// Whether `tensor` holds the copy back (prefetched), not the original.
    fetched: bool,
    template: Template,
    slot: Arc<Mutex<Slot>>,
}

/// What a fresh device buffer for the copy back needs.
struct Template {
    client: cubecl::client::ComputeClient<CudaRuntime>,
    device: cubecl::cuda::CudaDevice,
    /// Shape and strides, row padding included.
    meta: Box<Metadata>,
    dtype: DType,
    /// Bytes copied: first element to last.
    bytes: usize,
    /// Bytes of the parked tensor's buffer (its last row's padding too), as the fresh one gets.
    buffer: usize,
}

/// Parks `x` (CUDA's [`crate::QBackend::q_park`]): the bytes from its first element to its
/// last, row padding included ([`padded_rows_span`]: cubecl pads rows whose width in bytes is not
/// a multiple of 512). An empty tensor, or a view that is not dense by rows (transposed,
/// sliced), stays on the device.
pub(super) fn park<F: FloatElement, I: IntElement, BT: BoolElement>(
    x: CubeTensor<CudaRuntime>,
) -> Place<CubeBackend<CudaRuntime, F, I, BT>> {
    let span = padded_rows_span(x.meta.shape(), x.meta.strides(), x.dtype.size());
    let buffer = x.handle.size() as usize;
    let Some(bytes) = span.filter(|&b| b <= buffer) else {
        return Place::Device(x);
    };
    let template = Template {
        client: x.client.clone(),
        device: x.device.clone(),
        meta: x.meta.clone(),
        dtype: x.dtype,
        bytes,
        buffer,
    };
    let slot = Arc::new(Mutex::new(Slot::default()));
    let (op, s) = (Operand::of(&x), slot.clone());
    let index = x.device.index;
    device_handle(index).submit(move |server| {
        on_device("a parking copy to the host", || {
            let ([src], main) = lookup(server, &[op])?;
            let side = side_stream(index)?;
            let host = pinned(index, bytes, side)?;
            after(side, main)?;
            // SAFETY: `src` holds `bytes` bytes (the tensor is contiguous and held until settled),
            // `host` is a pinned buffer of at least `bytes` bytes owned by this slot.
            check("cuMemcpyDtoHAsync", unsafe {
                sys::cuMemcpyDtoHAsync_v2(host as *mut _, src, bytes, side)
            })?;
            let mut s = lock(&s);
            s.host = host;
            s.done = record(side)?;
            Ok(())
        })
    });
    Place::Host(Box::new(CudaParked {
        tensor: Some(x),
        fetched: false,
        template,
        slot,
    }))
}

impl<F: FloatElement, I: IntElement, BT: BoolElement> HostCopy<CubeBackend<CudaRuntime, F, I, BT>>
    for CudaParked
{
    fn settle(&mut self) {
        self.settle_original();
    }

    fn prefetch(&mut self) {
        self.fetch();
    }

    fn take(mut self: Box<Self>) -> FloatTensor<CubeBackend<CudaRuntime, F, I, BT>> {
        // Settled by `fetch`, or still the original (never settled): either way `S` waits for
        // the last copy before anything else touches the buffer.
        if !self.fetched && self.tensor.is_none() {
            self.fetch();
        }
        let t = self
            .tensor
            .take()
            .expect("a parked tensor holds its buffer until taken");
        wait_done(&t, &self.slot);
        t
    }
}

impl CudaParked {
    fn settle_original(&mut self) {
        if !self.fetched {
            if let Some(t) = self.tensor.take() {
                wait_done(&t, &self.slot);
            }
        }
    }

    fn fetch(&mut self) {
        if self.fetched {
            return;
        }
        self.settle_original();
        let Template {
            client,
            device,
            meta,
            dtype,
            bytes,
            buffer,
        } = &self.template;
        let (bytes, index) = (*bytes, device.index);
        let t = CubeTensor::new(
            client.clone(),
            client.empty(*buffer),
            (**meta).clone(),
            device.clone(),
            *dtype,
        );
        let (op, s) = (Operand::of(&t), self.slot.clone());
        device_handle(index).submit(move |server| {
            on_device("a parking copy back to the device", || {
                let ([dst], main) = lookup(server, &[op])?;
                let side = side_stream(index)?;
                after(side, main)?;
                let mut s = lock(&s);
                // SAFETY: `dst` is a fresh buffer of `buffer` ≥ `bytes` bytes, held by the caller's tensor;
                // `s.host` holds the parked bytes (its copy from the device ran earlier on `side`).
                check("cuMemcpyHtoDAsync", unsafe {
                    sys::cuMemcpyHtoDAsync_v2(dst, s.host as *const _, bytes, side)
                })?;
                unpin(index, std::mem::take(&mut s.host));
                if s.done != 0 {
                    destroy(std::mem::take(&mut s.done));
                }
                s.done = record(side)?;
                Ok(())
            })
        });
        self.tensor = Some(t);
        self.fetched = true;
    }
}

impl Drop for CudaParked {
    /// A parked tensor dropped before it was taken (a backward that stops early): `S` waits
    /// for its copy in flight before its buffer can be reused, and the pinned buffer goes back.
    fn drop(&mut self) {
        if let Some(t) = self.tensor.take() {
            wait_done(&t, &self.slot);
        }
        // After that wait on the device thread's queue (FIFO), as every earlier task of the slot.
        let (index, s) = (self.template.device.index, self.slot.clone());
        device_handle(index).submit(move |_| unpin(index, std::mem::take(&mut lock(&s).host)));
    }
}

/// Makes `t`'s stream wait for the slot's last copy (if not waited for yet), on the device
/// thread; `t`'s binding keeps its buffer allocated until that wait is enqueued.
fn wait_done(t: &CubeTensor<CudaRuntime>, slot: &Arc<Mutex<Slot>>) {
    let (op, s) = (Operand::of(t), slot.clone());
    device_handle(t.device.index).submit(move |server| {
        on_device("a parking copy's wait", || {
            let (_, main) = lookup(server, &[op])?;
            let mut s = lock(&s);
            if s.done != 0 {
                wait(main, std::mem::take(&mut s.done))?;
            }
            Ok(())
        })
    });
}

/// Runs a task of ours on the device thread; a failure there stops the process
/// ([`stop_on_device_failure`]: nothing can unwind into the caller).
fn on_device(task: &str, f: impl FnOnce() -> Result<(), String>) {
    if let Err(e) = f() {
        stop_on_device_failure(task, e);
    }
}

fn lock(s: &Mutex<Slot>) -> std::sync::MutexGuard<'_, Slot> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn check(what: &str, status: CUresult) -> Result<(), String> {
    if status == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what}: {status:?}"))
    }
}

/// An event recorded on `stream` now.
fn record(stream: sys::CUstream) -> Result<usize, String> {
    let mut ev = std::ptr::null_mut();
    // SAFETY: out-pointer to a fresh event handle; the device thread's context is current
    // (`lookup` made it so).
    check("cuEventCreate", unsafe {
        sys::cuEventCreate(&mut ev, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32)
    })?;
    // SAFETY: a live event and stream of the current context.
    check("cuEventRecord", unsafe { sys::cuEventRecord(ev, stream) })?;
    Ok(ev as usize)
}

/// Makes `stream` wait for the event `ev` and destroys it (the driver frees it once done).
fn wait(stream: sys::CUstream, ev: usize) -> Result<(), String> {
    // SAFETY: `ev` is an event made by `record` and not destroyed yet.
    check("cuStreamWaitEvent", unsafe {
        sys::cuStreamWaitEvent(stream, ev as sys::CUevent, 0)
    })?;
    destroy(ev);
    Ok(())
}

fn destroy(ev: usize) {
    // SAFETY: as in `wait`; destroying an event whose work is pending is allowed.
    unsafe { sys::cuEventDestroy_v2(ev as sys::CUevent) };
}

/// Makes `stream` wait for the work enqueued on `before` so far.
fn after(stream: sys::CUstream, before: sys::CUstream) -> Result<(), String> {
    wait(stream, record(before)?)
}

/// The device's side stream for parking copies, made on first use.
fn side_stream(index: usize) -> Result<sys::CUstream, String> {
    static STREAMS: OnceLock<Mutex<HashMap<usize, usize>>> = OnceLock::new();
    let mut map = STREAMS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(&s) = map.get(&index) {
        return Ok(s as sys::CUstream);
    }
    let mut s = std::ptr::null_mut();
    // SAFETY: out-pointer to a fresh stream of the current context, kept for the process.
    check("cuStreamCreate", unsafe {
        sys::cuStreamCreate(&mut s, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
    })?;
    map.insert(index, s as usize);
    Ok(s)
}

/// Pinned host memory of each device, handed out by a [`crate::park::Arena`]: chunks of
/// `cuMemHostAlloc`, freed (after the side stream's copies are done) when the arena
/// consolidates them.
fn arena() -> std::sync::MutexGuard<'static, HashMap<usize, Arena>> {
    static ARENAS: OnceLock<Mutex<HashMap<usize, Arena>>> = OnceLock::new();
    ARENAS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// The chunks behind a device's arena: pinned in the current context; `side` is the stream
/// whose copies may still use them.
struct Pinned {
    side: sys::CUstream,
}

impl ChunkAlloc for Pinned {
    fn alloc(&mut self, bytes: usize) -> Result<usize, String> {
        let mut p = std::ptr::null_mut();
        // SAFETY: out-pointer for a fresh page-locked allocation in the current context.
        check("cuMemHostAlloc", unsafe {
            sys::cuMemHostAlloc(&mut p, bytes, 0)
        })?;
        Ok(p as usize)
    }

    fn free(&mut self, bases: &[usize]) -> Result<(), String> {
        // SAFETY: a live stream; every copy that touches the chunks was enqueued on it.
        check("cuStreamSynchronize", unsafe {
            sys::cuStreamSynchronize(self.side)
        })?;
        for &b in bases {
            // SAFETY: a chunk of `alloc`, no copy left in flight (synchronized above).
            check("cuMemFreeHost", unsafe { sys::cuMemFreeHost(b as *mut _) })?;
        }
        Ok(())
    }
}

/// `bytes` bytes of pinned host memory of device `index` (copies on `side`).
fn pinned(index: usize, bytes: usize, side: sys::CUstream) -> Result<usize, String> {
    arena()
        .entry(index)
        .or_default()
        .alloc(bytes, &mut Pinned { side })
}

/// Hands pinned memory back to its device's arena (0: none). A later copy into it runs on the
/// same side stream, after every copy enqueued before.
fn unpin(index: usize, p: usize) {
    if p != 0 {
        if let Some(a) = arena().get_mut(&index) {
            a.free(p);
        }
    }
}
