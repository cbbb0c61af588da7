//! Reading a checkpoint's tensors ahead of the model build, on a pool of threads: each worker
//! copies a tensor's bytes out of the memory-mapped shard, checks them finite and converts them
//! to the load dtype (exactly what a serial read does, [`crate::source`]'s `dense_data` and
//! `read_quantized`), while the calling thread uploads and quantizes the previous ones on the
//! device. At most `budget` bytes of prepared tensors wait at a time.
//!
//! Order: tensors with a layer number first, by number (`h.2` before `h.10`), then the rest
//! (embeddings, final norm, head) — the order the families build in, up to the few tensors
//! outside the layers. A tensor the build asks for before a worker took it is read by the caller
//! itself, so an order mismatch costs overlap, never a deadlock or a different result.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use burn::tensor::{DType, TensorData};
use safetensors::Dtype;

use qtune_kernels::QBackend;

use crate::error::LmError;

use crate::source::{dense_data, read_quantized, FileSource, WeightFiles};

/// What a worker prepares.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Item {
    /// A float tensor by name, as `TensorData` in the load dtype.
    Dense(String),
    /// The bnb-serialized linear `module` (its `.weight` is packed codes).
    Quantized(String),
}

/// A prepared item.
pub(crate) enum Ready {
    Dense(Result<TensorData, LmError>),
    Quantized(Result<Option<qtune_quant::QuantizedTensor>, LmError>),
}

enum Slot {
    /// A worker is preparing it.
    Working,
    /// Prepared, `bytes` of the budget.
    Done(Ready, usize),
    /// The caller read it itself, or took it.
    Taken,
}

#[derive(Default)]
struct State {
    next: usize,
    slots: HashMap<usize, Slot>,
    held_bytes: usize,
    /// Items handed over prepared by a worker.
    taken: usize,
    stop: bool,
}

/// The shared queue of one load (see the module docs).
pub struct Prefetch<'a> {
    files: &'a WeightFiles,
    dtype: DType,
    budget: usize,
    items: Vec<(Item, usize)>,
    index: HashMap<Item, usize>,
    state: Mutex<State>,
    changed: Condvar,
}

/// Default prepared bytes waiting at a time: a few GPT-J-6B layers (~400 MB each in bf16).
pub const DEFAULT_BUDGET: usize = 2 << 30;

impl<'a> Prefetch<'a> {
    /// The plan for `files` loaded in `dtype`: every float tensor and every bnb-quantized linear.
    pub fn new(files: &'a WeightFiles, dtype: DType, budget: usize) -> Result<Self, LmError> {
        // bnb-quantized linears first: their `.weight.*` companions (absmax, quant_map, …) are
        // read with them, not as tensors of their own. (The headers were parsed once, by
        // `WeightFiles::open`.)
        let quantized: std::collections::HashSet<&str> = files
            .tensors()
            .filter_map(|(name, _, _)| name.strip_suffix(".weight"))
            .filter(|module| files.quant_format(module).is_some())
            .collect();
        let companion = |name: &str| {
            name.split_once(".weight.")
                .is_some_and(|(module, _)| quantized.contains(module))
        };
        let mut items = Vec::new();
        for (name, stored, bytes) in files.tensors() {
            let module = name.strip_suffix(".weight").unwrap_or_default();
            if quantized.contains(module) {
                items.push((Item::Quantized(module.to_string()), bytes));
            } else if !companion(name) && matches!(stored, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                // In f32 a 16-bit tensor takes twice its stored bytes.
                let width = stored.bitsize() / 8;
                let out = if dtype == DType::F32 {
                    bytes / width * 4
                } else {
                    bytes
                };
                items.push((Item::Dense(name.to_string()), out));
            }
        }
        items.sort_by_cached_key(|(item, _)| {
            let name = match item {
                Item::Dense(n) | Item::Quantized(n) => n,
            };
            order_key(name)
        });
        let index = items
            .iter()
            .enumerate()
            .map(|(i, (item, _))| (item.clone(), i))
            .collect();
        Ok(Self {
            files,
            dtype,
            budget,
            items,
            index,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker's loop: prepare the next untaken item within the budget, until none is left or
    /// [`Self::stop`].
    pub fn work(&self) {
        loop {
            let mut st = self.lock();
            let i = loop {
                if st.stop {
                    return;
                }
                while st.next < self.items.len() && st.slots.contains_key(&st.next) {
                    st.next += 1;
                }
                if st.next >= self.items.len() {
                    return;
                }
                let size = self.items[st.next].1;
                // One item may exceed the budget alone; otherwise wait for the caller to take some.
                if st.held_bytes == 0 || st.held_bytes + size <= self.budget {
                    break st.next;
                }
                st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            };
            let size = self.items[i].1;
            st.slots.insert(i, Slot::Working);
            st.held_bytes += size;
            drop(st);
            // A panicking read must not leave the build waiting for it forever.
            let item = &self.items[i].0;
            let ready =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.prepare(item)))
                    .unwrap_or_else(|_| {
                        let err = LmError::Input(format!("{item:?}: the reader thread panicked"));
                        match item {
                            Item::Dense(_) => Ready::Dense(Err(err)),
                            Item::Quantized(_) => Ready::Quantized(Err(err)),
                        }
                    });
            let mut st = self.lock();
            st.slots.insert(i, Slot::Done(ready, size));
            drop(st);
            self.changed.notify_all();
        }
    }

    fn prepare(&self, item: &Item) -> Ready {
        match item {
            Item::Dense(name) => Ready::Dense(
                self.files
                    .stored_shape(name)
                    .and_then(|shape| dense_data(self.files, name, &shape, self.dtype)),
            ),
            Item::Quantized(module) => Ready::Quantized(read_quantized(self.files, module)),
        }
    }

    /// The prepared item, waiting if a worker is on it; `None` when no worker has taken it (the
    /// caller then reads it itself, and no worker will).
    fn take(&self, item: &Item) -> Option<Ready> {
        let &i = self.index.get(item)?;
        let mut st = self.lock();
        loop {
            match st.slots.remove(&i) {
                None => {
                    st.slots.insert(i, Slot::Taken);
                    return None;
                }
                Some(Slot::Working) => {
                    st.slots.insert(i, Slot::Working);
                    st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
                }
                Some(Slot::Done(ready, size)) => {
                    st.slots.insert(i, Slot::Taken);
                    st.held_bytes -= size;
                    st.taken += 1;
                    drop(st);
                    self.changed.notify_all();
                    return Some(ready);
                }
                Some(Slot::Taken) => {
                    // Asked twice: read again, like a serial source.
                    st.slots.insert(i, Slot::Taken);
                    return None;
                }
            }
        }
    }

    /// The float tensor `name` if prefetched (its shape is the stored one; the caller checked it).
    pub(crate) fn take_dense(&self, name: &str) -> Option<Result<TensorData, LmError>> {
        match self.take(&Item::Dense(name.to_string()))? {
            Ready::Dense(r) => Some(r),
            Ready::Quantized(_) => None,
        }
    }

    /// The quantized linear `module` if the plan has it; `Some(Ok(None))` when the plan knows
    /// `module.weight` as a float tensor (not quantized); `None` when the plan does not know it.
    pub(crate) fn take_quantized(
        &self,
        module: &str,
    ) -> Option<Result<Option<qtune_quant::QuantizedTensor>, LmError>> {
        if self
            .index
            .contains_key(&Item::Dense(format!("{module}.weight")))
        {
            return Some(Ok(None));
        }
        match self.take(&Item::Quantized(module.to_string()))? {
            Ready::Quantized(r) => Some(r),
            Ready::Dense(_) => None,
        }
    }

    /// How many tensors the build got prepared by a worker (the rest it read itself).
    pub fn taken(&self) -> usize {
        self.lock().taken
    }

    /// Ends the workers after their current item (an early error, or the build is done).
    pub fn stop(&self) {
        self.lock().stop = true;
        self.changed.notify_all();
    }
}

/// Runs `build` on a [`FileSource`] of `files` whose tensors `threads` workers read ahead
/// (at most [`DEFAULT_BUDGET`] bytes waiting), while
/// `build` uploads and quantizes on this thread; `threads == 0` reads serially. Either way the
/// model is the same, bit for bit, and errors are the serial read's.
pub fn load_files<B: QBackend, T>(
    files: &WeightFiles,
    dtype: DType,
    device: &B::Device,
    threads: usize,
    build: impl FnOnce(&mut FileSource<'_, B>) -> Result<T, LmError>,
) -> Result<T, LmError> {
    let budget = DEFAULT_BUDGET;
    load_files_within(files, dtype, device, threads, budget, build)
}

/// [`load_files`] with at most `budget` prepared bytes waiting.
pub(crate) fn load_files_within<B: QBackend, T>(
    files: &WeightFiles,
    dtype: DType,
    device: &B::Device,
    threads: usize,
    budget: usize,
    build: impl FnOnce(&mut FileSource<'_, B>) -> Result<T, LmError>,
) -> Result<T, LmError> {
    if threads == 0 {
        let mut src = FileSource {
            files,
            dtype,
            device,
            prefetch: None,
        };
        return build(&mut src);
    }
    let prefetch = Prefetch::new(files, dtype, budget)?;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| prefetch.work());
        }
        let mut src = FileSource {
            files,
            dtype,
            device,
            prefetch: Some(&prefetch),
        };
        let out = build(&mut src);
        prefetch.stop();
        out
    })
}

/// Sort key: names with a number first, by their numbers (then text), the rest after by name.
fn order_key(name: &str) -> (bool, Vec<u64>, String) {
    let numbers: Vec<u64> = name
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or(u64::MAX))
        .collect();
    (numbers.is_empty(), numbers, name.to_string())
}

/// Overrides [`threads`]: `0` reads serially on the loading thread.
pub const THREADS_ENV: &str = "QTUNE_LOAD_THREADS";

/// Reader threads for a checkpoint load: `QTUNE_LOAD_THREADS` if set (0: read serially), else
/// the machine's cores, at most 8 (page-cache copies saturate memory bandwidth well before that).
///
/// # Errors
/// A `QTUNE_LOAD_THREADS` that is not a whole number, naming it (never the default instead).
pub fn threads() -> Result<usize, LmError> {
    match std::env::var(THREADS_ENV) {
        Ok(v) => v.trim().parse().map_err(|_| {
            LmError::Input(format!(
                "{THREADS_ENV}={v:?}: expected a whole number of reader threads (0: serial)"
            ))
        }),
        Err(_) => Ok(std::thread::available_parallelism().map_or(1, |t| t.get().min(8))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{build_linear, TensorSource};
    use burn::backend::NdArray;
    use qtune_quant::{FloatDType, QuantSpec, QuantizedTensor};

    fn bf16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect()
    }

    fn vals(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2001) as f32 - 1000.0) / 937.0)
            .collect()
    }

    /// A tensor to write: name, dtype, shape, bytes.
    type Stored = (String, Dtype, Vec<usize>, Vec<u8>);

    /// Two shards + index: an embedding, 12 layers of a bf16 linear (with f32 bias) in
    /// shard order unlike the build's, one bnb-quantized linear, a head, and a tensor holding a
    /// NaN.
    fn checkpoint() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut shards: [Vec<Stored>; 2] = Default::default();
        shards[0].push((
            "embed.weight".into(),
            Dtype::BF16,
            vec![16, 8],
            bf16_bytes(&vals(128, 1)),
        ));
        for i in 0..12 {
            let w = (
                "layers.{i}.proj.weight".replace("{i}", &i.to_string()),
                Dtype::BF16,
                vec![8, 64],
                bf16_bytes(&vals(512, 10 + i)),
            );
            let b: Vec<u8> = vals(8, 50 + i)
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            shards[i % 2].push(w);
            shards[(i + 1) % 2].push((format!("layers.{i}.proj.bias"), Dtype::F32, vec![8], b));
        }
        let mut nan = bf16_bytes(&vals(64, 3));
        nan[10..12].copy_from_slice(&half::bf16::NAN.to_bits().to_le_bytes());
        shards[1].push(("bad.weight".into(), Dtype::BF16, vec![8, 8], nan));
        shards[1].push((
            "head.weight".into(),
            Dtype::BF16,
            vec![16, 8],
            bf16_bytes(&vals(128, 2)),
        ));
        let q = QuantizedTensor::quantize(
            "pre",
            &vals(8 * 64, 7),
            &[8, 64],
            QuantSpec::nf4(),
            FloatDType::BF16,
        )
        .unwrap();
        let pre: Vec<Stored> = q
            .to_safetensors("pre")
            .into_iter()
            .map(|(n, t)| (n, t.dtype, t.shape, t.data))
            .collect();
        shards[0].extend(pre);
        let mut weight_map = serde_json::Map::new();
        for (k, shard) in shards.iter().enumerate() {
            let file = format!("model-0000{}-of-00002.safetensors", k + 1);
            let views: Vec<_> = shard
                .iter()
                .map(|(n, d, s, b)| {
                    weight_map.insert(n.clone(), file.clone().into());
                    (
                        n.clone(),
                        safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
                    )
                })
                .collect();
            safetensors::serialize_to_file(views, None, &dir.path().join(&file)).unwrap();
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            index.to_string(),
        )
        .unwrap();
        dir
    }

    fn quantized(lin: &qtune_lora::Linear<NdArray>) -> Option<QuantizedTensor> {
        match &lin.base {
            qtune_lora::LinearBase::Quant(w) => Some(w.to_quantized()),
            qtune_lora::LinearBase::Dense(_) => None,
        }
    }

    /// One thing a build got: a dense tensor's bytes, a quantized linear (+ bias bytes), or an
    /// error's message.
    #[derive(Debug, PartialEq)]
    enum Got {
        Dense(Vec<u8>, Vec<usize>, DType),
        Linear(Option<QuantizedTensor>, Option<Vec<u8>>),
        Error(String),
    }

    fn dense<const D: usize>(t: burn::tensor::Tensor<NdArray, D>) -> Got {
        let d = t.into_data();
        Got::Dense(d.as_bytes().to_vec(), d.shape.to_vec(), d.dtype)
    }

    /// What a build sees, in a family's order: embedding, layers (quantized on load), the
    /// pre-quantized linear, head, then the NaN tensor's error and a missing tensor's.
    fn build_like(src: &mut FileSource<'_, NdArray>) -> Result<Vec<Got>, LmError> {
        let dev = Default::default();
        let mut out = vec![dense(src.tensor2("embed.weight", [16, 8])?)];
        for i in 0..12 {
            let spec = QuantSpec {
                double_quant: i % 2 == 0,
                ..QuantSpec::nf4()
            };
            let name = format!("layers.{i}.proj");
            let lin = build_linear(src, &name, [8, 64], true, Some(spec), DType::F32, &dev)?;
            let bias = lin.bias().map(|b| b.into_data().as_bytes().to_vec());
            out.push(Got::Linear(quantized(&lin), bias));
        }
        let pre = build_linear(src, "pre", [8, 64], false, None, DType::F32, &dev)?;
        out.push(Got::Linear(quantized(&pre), None));
        out.push(dense(src.tensor2("head.weight", [16, 8])?));
        let err = |e: LmError| Got::Error(e.to_string());
        out.push(src.tensor2("bad.weight", [8, 8]).map_or_else(err, dense));
        out.push(src.tensor1("missing", [3]).map_or_else(err, dense));
        Ok(out)
    }

    #[test]
    fn read_ahead_loads_the_same_as_serial() {
        let dir = checkpoint();
        let files = WeightFiles::open(dir.path()).unwrap();
        let dev = Default::default();
        let serial =
            load_files_within::<NdArray, _>(&files, DType::F32, &dev, 0, 0, build_like).unwrap();
        assert!(
            matches!(&serial[15], Got::Error(e) if e.contains("bad.weight")),
            "{:?}",
            serial[15]
        );
        assert!(
            matches!(&serial[16], Got::Error(e) if e.contains("missing")),
            "{:?}",
            serial[16]
        );
        assert!(matches!(&serial[13], Got::Linear(Some(_), None)));
        assert!(matches!(&serial[1], Got::Linear(Some(_), Some(_))));
        // Budgets from "one tensor at a time" to "everything", 1 to 3 workers; the build
        // starts late so that workers are ahead, and must have got most layers from them.
        for (threads, budget) in [(1, 1), (2, 3000), (3, 1 << 20)] {
            let taken = std::cell::Cell::new(0);
            let ahead =
                load_files_within::<NdArray, _>(&files, DType::F32, &dev, threads, budget, |src| {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    let out = build_like(src);
                    taken.set(src.prefetch.map_or(0, Prefetch::taken));
                    out
                })
                .unwrap();
            assert_eq!(ahead, serial, "threads {threads}, budget {budget}");
            // With room for everything, the 50 ms head start lets the workers read every
            // layer first. Under a small budget how far they get depends on scheduling (a
            // busy 2-core CI machine gave 1), so only the equality above is asserted there.
            if budget >= 1 << 20 {
                assert!(
                    taken.get() >= 6,
                    "threads {threads}, budget {budget}: {} prefetched",
                    taken.get()
                );
            }
        }
    }

    #[test]
    fn a_bad_thread_count_is_refused_naming_the_variable() {
        // The only test of this binary that reads the variable: setting it races with nothing.
        std::env::set_var(THREADS_ENV, "four");
        let e = threads().unwrap_err().to_string();
        std::env::set_var(THREADS_ENV, " 3 ");
        let three = threads().unwrap();
        std::env::remove_var(THREADS_ENV);
        assert!(e.contains(THREADS_ENV) && e.contains("four"), "{e}");
        assert_eq!(three, 3);
        assert!(threads().unwrap() >= 1);
    }

    #[test]
    fn an_early_error_stops_the_readers() {
        let dir = checkpoint();
        let files = WeightFiles::open(dir.path()).unwrap();
        let dev = Default::default();
        let err = load_files_within::<NdArray, ()>(&files, DType::F32, &dev, 2, 1, |src| {
            src.tensor2("embed.weight", [8, 16]).map(|_| ())
        })
        .unwrap_err();
        assert!(err.to_string().contains("embed.weight"), "{err}");
    }

    #[test]
    fn layers_come_first_in_numeric_order() {
        let mut names = vec![
            "lm_head.weight",
            "transformer.wte.weight",
            "transformer.h.10.attn.q_proj.weight",
            "transformer.h.2.mlp.fc_in.weight",
            "transformer.h.2.attn.q_proj.weight",
            "transformer.ln_f.weight",
        ];
        names.sort_by_key(|n| order_key(n));
        assert_eq!(
            names,
            [
                "transformer.h.2.attn.q_proj.weight",
                "transformer.h.2.mlp.fc_in.weight",
                "transformer.h.10.attn.q_proj.weight",
                "lm_head.weight",
                "transformer.ln_f.weight",
                "transformer.wte.weight",
            ]
        );
    }
}
