//! Dequantization ahead (`QBackend::q_prefetch` on CUDA): a decoder stack hands over the next
//! block's quantized weights at the start of each block, they are dequantized on a second
//! cubecl stream while this block's GEMMs run on the compute stream, and each quantized linear
//! of the next block takes its dense copy ([`take`]) instead of dequantizing in front of its
//! GEMM. The values are the same kernels' on the same inputs, so the outputs are bit-identical
//! with it off (`QTUNE_PREFETCH=0`; gpu-check `ahead`).
//!
//! Ordering, at each [`prefetch`] call (block `i` about to be enqueued, the dense copies of
//! block `i` being the newest batch held):
//! 1. the compute stream waits for the side stream's work so far (block `i`'s dequantization,
//!    never block `i + 1`'s, which is enqueued after): through cubecl's own cross-stream
//!    bookkeeping (a lookup of the newest dense copy), so its GEMMs of block `i` find those
//!    copies synchronized and wait no more;
//! 2. the side stream waits for the compute stream's work so far (an event): block `i + 1`'s
//!    dequantization starts when block `i - 1` is done, which bounds the lead to one block,
//!    and no buffer dropped before this call (read by block `i - 1` or earlier) is reused by
//!    the side stream before its readers ran;
//! 3. the batches older than block `i`'s are dropped (copies nobody took);
//! 4. block `i + 1`'s weights are dequantized on the side stream (whose memory pool they come
//!    from: cubecl keeps one per stream).
//!
//! So at most two blocks' dense weights exist at a time (the one read, the one written). It is
//! off while a CUDA graph records (a second stream would join the recording) and does nothing
//! for an empty list.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use burn::tensor::DType;
use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cubecl::stream_id::StreamId;
use cudarc::driver::{result, sys};

use super::cublas::{device_handle, lookup, stop_on_device_failure, Operand, Server};
use super::launch::{self, CubeB};
use crate::{KernelError, QLayout, QWeightPrimitive};

/// Environment variable: `0` dequantizes every weight on the compute stream just before its
/// GEMM (as before the prefetch), `1` (or unset) ahead; any other value is refused by
/// `QBackend::q_check_device`, before any work.
pub const PREFETCH_ENV: &str = "QTUNE_PREFETCH";

/// [`PREFETCH_ENV`]'s setting, read once.
///
/// # Errors
/// [`KernelError::Setting`] for a value other than `0` or `1`.
pub(crate) fn prefetch_from_env() -> Result<bool, KernelError> {
    static SETTING: OnceLock<Option<String>> = OnceLock::new();
    let value = SETTING.get_or_init(|| std::env::var(PREFETCH_ENV).ok());
    crate::switch_setting(
        PREFETCH_ENV,
        value.as_deref(),
        "each weight dequantized just before its GEMM",
        "the next block's weights dequantized during this block",
    )
}

/// 0: [`PREFETCH_ENV`] decides; 1: on; 2: off ([`set_prefetch`]).
static OVERRIDE: AtomicU8 = AtomicU8::new(0);

/// Turns the prefetch on or off in this process whatever [`PREFETCH_ENV`] says (`None`: the
/// variable decides again); for gpu-check and the bench, which compare both.
pub fn set_prefetch(on: Option<bool>) {
    let v = match on {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    };
    OVERRIDE.store(v, Ordering::Relaxed);
}

/// Whether [`prefetch`] works now.
///
/// # Panics
/// On a value of [`PREFETCH_ENV`] that `q_check_device` would have refused before any work.
pub fn prefetch_on() -> bool {
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => prefetch_from_env().unwrap_or_else(|e| panic!("qtune-kernels: {e}")),
    }
}

/// The side stream of the calling thread's stream: cubecl maps a `StreamId` to one of its
/// streams by the value modulo its stream count (128 by default), so this one is another
/// stream. (With a count that divides the offset both are one stream: no overlap, the same
/// values.)
fn side_of(main: StreamId) -> StreamId {
    StreamId {
        value: main.value + 64,
    }
}

/// A dense copy waiting for its linear.
struct Entry {
    id: u64,
    layout: QLayout,
    dtype: DType,
    dense: CubeTensor<CudaRuntime>,
}

/// Batches kept at a call: the one the block about to run reads; the new one is added after.
const KEEP: usize = 1;

/// The batches held per device, oldest first.
fn held() -> MutexGuard<'static, HashMap<usize, VecDeque<Vec<Entry>>>> {
    static HELD: OnceLock<Mutex<HashMap<usize, VecDeque<Vec<Entry>>>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// See the module docs. `after`: a tensor of the compute stream (the block's input).
pub(crate) fn prefetch<B: CubeB<CudaRuntime>>(
    ws: Vec<QWeightPrimitive<B>>,
    dtype: DType,
    after: &CubeTensor<CudaRuntime>,
) {
    if ws.is_empty() || !prefetch_on() || super::decode::recording() {
        return;
    }
    let device = after.device.index;
    let main = StreamId::current();
    let side = side_of(main);
    let handle = device_handle(device);
    let mut held = held();
    let batches = held.entry(device).or_default();
    // 1. The compute stream waits for the side stream so far (the newest batch).
    if let Some(newest) = batches.back().and_then(|b| b.last()) {
        let op = Operand::of(&newest.dense);
        handle.submit(move |server| {
            if let Err(e) = lookup(server, &[op]) {
                stop_on_device_failure("a prefetch's wait", e);
            }
        });
    }
    // 2. The side stream waits for the compute stream so far.
    let ops = [Operand::of(after), Operand::of(after)];
    side.executes(|| handle.submit(move |server| side_waits(server, main, ops)));
    // 3. Copies nobody took, from before the batch about to be read.
    while batches.len() > KEEP {
        batches.pop_front();
    }
    // 4. The next block's weights, on the side stream.
    let batch = side.executes(|| {
        ws.into_iter()
            .map(|w| Entry {
                id: w.id,
                layout: w.layout,
                dtype,
                dense: launch::dequantize::<CudaRuntime, B>(w, dtype),
            })
            .collect()
    });
    batches.push_back(batch);
}

/// On the device thread, under the side stream's id: makes the side stream wait for everything
/// enqueued on `main`'s so far (a CUDA event; `after`, twice, is any buffer of `main`'s stream,
/// looked up under each id for the two streams).
fn side_waits(server: &mut Server, main: StreamId, [on_side, on_main]: [Operand; 2]) {
    let streams = lookup(server, &[on_side]).and_then(|(_, side)| {
        main.executes(|| lookup(server, &[on_main]))
            .map(|(_, main)| (side, main))
    });
    let (side, main) = match streams {
        Ok(s) => s,
        Err(e) => return stop_on_device_failure("a prefetch's wait", e),
    };
    // SAFETY: both are cubecl's live streams of the current context (looked up just now); the
    // event is destroyed after the wait is enqueued, which the driver allows.
    let waited = unsafe {
        result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING).and_then(|ev| {
            let wait = sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT;
            let r = result::event::record(ev, main)
                .and_then(|()| result::stream::wait_event(side, ev, wait));
            result::event::destroy(ev).and(r)
        })
    };
    if let Err(e) = waited {
        stop_on_device_failure("a prefetch's wait", format!("{e:?}"));
    }
}

/// Dense copies taken by linears so far in this process ([`prefetch_taken`]).
static TAKEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many dense copies made ahead the linears have taken in this process: gpu-check's proof
/// that the path ran.
pub fn prefetch_taken() -> u64 {
    TAKEN.load(Ordering::Relaxed)
}

/// The dense copy of `w` in `dtype` that [`prefetch`] made, if it holds one (taken: a second
/// call finds none).
pub(crate) fn take<B: CubeB<CudaRuntime>>(
    w: &QWeightPrimitive<B>,
    dtype: DType,
) -> Option<CubeTensor<CudaRuntime>> {
    // Never into a graph being recorded: its work would depend on the side stream's.
    if super::decode::recording() {
        return None;
    }
    let mut held = held();
    let batches = held.get_mut(&w.codes.device.index)?;
    for batch in batches.iter_mut() {
        let found = batch
            .iter()
            .position(|e| e.id == w.id && e.layout == w.layout && e.dtype == dtype);
        if let Some(i) = found {
            TAKEN.fetch_add(1, Ordering::Relaxed);
            return Some(batch.swap_remove(i).dense);
        }
    }
    None
}

/// Drops every batch held on `device` (`QBackend::q_prefetch_end`). The side stream reuses
/// their memory only after its next wait (step 2), so pending reads are safe.
pub(crate) fn end(device: usize) {
    held().remove(&device);
}
