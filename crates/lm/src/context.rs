//! What every block of a decoder needs besides the hidden states, shared by the model families:
//! the attention mask (causal, padding, optional sliding window), the rotary angles of each
//! position, the LoRA dropout seed; and the KV caches of incremental decoding.

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use qtune_kernels::{write_row, LinearBackward, QBackend};
use qtune_lora::Pass;

/// Rotary position embedding and attention window of a model, the same for every block.
#[derive(Debug, Clone, PartialEq)]
pub struct Positions {
    /// Rotated dims per head (GPT-J: `rotary_dim`; Llama: the whole head).
    pub rotary_dim: usize,
    /// `rotary_dim / 2` inverse frequencies (after any `rope_scaling`), f32 as HF computes them.
    pub inv_freq: Vec<f32>,
    /// HF's `attention_scaling` of the rotary angles (1 for every scaling qtune supports).
    pub attention_scaling: f32,
    /// A query at position i sees keys j with `i - j < window` only (Mistral's
    /// `sliding_window`); `None`: every earlier key.
    pub sliding_window: Option<usize>,
}

impl Positions {
    /// HF's default RoPE: `inv_freq = 1 / base^(arange(0, dim, 2) / dim)`, in f32.
    pub fn rope(rotary_dim: usize, base: f64) -> Self {
        let inv_freq = (0..rotary_dim / 2)
            .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / rotary_dim as f32))
            .collect();
        Self {
            rotary_dim,
            inv_freq,
            attention_scaling: 1.0,
            sliding_window: None,
        }
    }

    /// `cos`/`sin` of `pos · inv_freq` for each position, `rotary_dim / 2` values each, f32.
    pub fn tables(&self, positions: impl Iterator<Item = i64>) -> (Vec<f32>, Vec<f32>) {
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for pos in positions {
            for f in &self.inv_freq {
                let a = pos as f32 * f;
                cos.push(a.cos() * self.attention_scaling);
                sin.push(a.sin() * self.attention_scaling);
            }
        }
        (cos, sin)
    }
}

/// The per-forward inputs every block shares. Built once per forward ([`BlockContext::new`]),
/// so per-block gradient checkpointing can re-run a block alone.
#[derive(Debug, Clone)]
pub struct BlockContext<B: Backend> {
    /// `[B, 1, T, past+T]`, true = masked (causal, padding, window); `None` when nothing is.
    pub mask: Option<Tensor<B, 4, Bool>>,
    /// Rotary `cos`/`sin` of each query position, `[B, T, 1, rotary_dim/2, 1]`, f32.
    pub cos: Tensor<B, 5>,
    pub sin: Tensor<B, 5>,
    /// LoRA dropout is on iff this is `Some` (training). Each linear derives its own mask seed
    /// from it, the block index and the projection, so a re-run block draws the same masks.
    pub dropout_seed: Option<u64>,
    /// What the quantized linears keep for their backward: the dense weight in a checkpointed
    /// block's recompute (its backward follows at once), else the quantized one. Constructors
    /// set [`LinearBackward::Quantized`]; see [`BlockContext::with_backward`].
    pub backward: LinearBackward,
    /// The block's output values are never read, only its gradient path (a checkpointed
    /// recompute, [`BlockContext::output_unread`]): the linears that only form the block's
    /// output skip their product ([`BlockContext::output_pass`]).
    pub output_unread: bool,
}

impl<B: burn::tensor::backend::AutodiffBackend> BlockContext<B> {
    /// A context built on the inner backend, on the autodiff one: the same device tensors, as
    /// constants (no graph). The checkpointed step builds its context once for the no-graph
    /// forward and hands it to the recompute this way.
    pub fn from_inner(inner: BlockContext<B::InnerBackend>) -> Self {
        Self {
            mask: inner.mask.map(Tensor::from_inner),
            cos: Tensor::from_inner(inner.cos),
            sin: Tensor::from_inner(inner.sin),
            dropout_seed: inner.dropout_seed,
            backward: inner.backward,
            output_unread: inner.output_unread,
        }
    }
}

/// SplitMix64 finalizer: decorrelates the per-linear dropout seeds.
pub fn mix_seed(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The optional host-side token inputs of a forward, each row-major; see [`BlockContext::new`]
/// and [`BlockContext::from_inputs`] for their conventions.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenInputs<'a> {
    /// `[batch, past_len + seq_len]`, 1 = token, 0 = padding.
    pub attention_mask: Option<&'a [i64]>,
    /// `[batch, seq_len]`.
    pub position_ids: Option<&'a [i64]>,
    /// `[batch, seq_len]`, packed rows: which example each token belongs to (0 = padding).
    /// Only without a KV cache (`past_len = 0`).
    pub segment_ids: Option<&'a [i64]>,
}

/// The `[batch, seq_len, past_len + seq_len]` mask of [`BlockContext::from_inputs`], row-major,
/// true = masked: each query row starts causal and the padding, window and segment rules
/// are or-ed in over whole slices (this runs on the host once per training step).
pub(crate) fn mask_bits(
    [batch, seq_len, past_len]: [usize; 3],
    attention_mask: Option<&[i64]>,
    segment_ids: Option<&[i64]>,
    window: Option<usize>,
) -> Vec<bool> {
    let total = past_len + seq_len;
    let mut bits = vec![false; batch * seq_len * total];
    for (r, row) in bits.chunks_exact_mut(total.max(1)).enumerate() {
        let (b, i) = (r / seq_len, r % seq_len);
        let q = past_len + i;
        row[q + 1..].fill(true);
        if let Some(m) = attention_mask {
            for (bit, &keep) in row.iter_mut().zip(&m[b * total..(b + 1) * total]) {
                *bit |= keep == 0;
            }
        }
        if let Some(w) = window {
            // q ≥ j + w ⇔ j < q + 1 − w
            row[..(q + 1).saturating_sub(w)].fill(true);
        }
        if let Some(s) = segment_ids {
            // past_len = 0 with segments: key column j is token j of the row.
            let seg = &s[b * seq_len..(b + 1) * seq_len];
            for (bit, &sj) in row[..=q].iter_mut().zip(seg) {
                *bit |= sj != seg[i];
            }
        }
    }
    bits
}

impl<B: Backend> BlockContext<B> {
    /// Host-side inputs → device context.
    /// - `attention_mask`: `[batch, past_len + seq_len]` row-major, 1 = token, 0 = padding
    ///   (HF semantics: it covers the cached positions too); `None` = no padding.
    /// - `position_ids`: `[batch, seq_len]`; `None` = `past_len..past_len+seq_len` as HF's
    ///   forward (generation passes `cumsum(mask) - 1` itself).
    ///
    /// Panics only on length mismatches between these slices and the given sizes (caller bug).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        positions: &Positions,
        batch: usize,
        seq_len: usize,
        past_len: usize,
        attention_mask: Option<&[i64]>,
        position_ids: Option<&[i64]>,
        dropout_seed: Option<u64>,
        device: &B::Device,
    ) -> Self {
        let inputs = TokenInputs {
            attention_mask,
            position_ids,
            segment_ids: None,
        };
        Self::from_inputs(
            positions,
            batch,
            seq_len,
            past_len,
            inputs,
            dropout_seed,
            device,
        )
    }

    /// [`BlockContext::new`] with every optional input, segment ids included (padding-free
    /// packing: several examples in one row). Key `j` is visible from query `i` iff `j ≤ i`
    /// (causal), `attention_mask[j] ≠ 0`, `segment_ids[j] = segment_ids[i]` (attention never
    /// crosses an example boundary: the mask is block-diagonal causal) and, with a sliding
    /// window `w`, `i − j < w`. The window counts columns, which within one example are its
    /// positions. Segment 0 marks padding: pads see earlier pads of their row only, unless the
    /// attention mask hides those too (then the row is fully masked; its output is never read).
    /// Position ids are the caller's (packed rows restart them at 0 for each example).
    ///
    /// Panics on length mismatches (caller bug) and on segment ids with `past_len > 0`.
    pub fn from_inputs(
        positions: &Positions,
        batch: usize,
        seq_len: usize,
        past_len: usize,
        inputs: TokenInputs<'_>,
        dropout_seed: Option<u64>,
        device: &B::Device,
    ) -> Self {
        let TokenInputs {
            attention_mask,
            position_ids,
            segment_ids,
        } = inputs;
        let total = past_len + seq_len;
        if let Some(m) = attention_mask {
            assert_eq!(
                m.len(),
                batch * total,
                "attention_mask must be [batch, past_len + seq_len]"
            );
        }
        if let Some(p) = position_ids {
            assert_eq!(
                p.len(),
                batch * seq_len,
                "position_ids must be [batch, seq_len]"
            );
        }
        if let Some(s) = segment_ids {
            assert_eq!(
                s.len(),
                batch * seq_len,
                "segment_ids must be [batch, seq_len]"
            );
            assert_eq!(past_len, 0, "segment_ids are for forwards without a cache");
        }
        let padded = attention_mask.is_some_and(|m| m.contains(&0));
        // One segment per row everywhere hides nothing beyond the causal rule.
        let segmented = segment_ids.is_some_and(|s| {
            s.chunks(seq_len.max(1))
                .any(|row| row.iter().any(|&x| x != row[0]))
        });
        let window = positions.sliding_window.filter(|&w| w < total);
        let mask = (seq_len > 1 || padded || segmented || window.is_some()).then(|| {
            let segment_ids = segment_ids.filter(|_| segmented);
            let bits = mask_bits(
                [batch, seq_len, past_len],
                attention_mask,
                segment_ids,
                window,
            );
            Tensor::<B, 4, Bool>::from_data(
                TensorData::new(bits, [batch, 1, seq_len, total]),
                device,
            )
        });
        let half = positions.rotary_dim / 2;
        let pos = (0..batch).flat_map(|b| {
            (0..seq_len)
                .map(move |t| position_ids.map_or((past_len + t) as i64, |p| p[b * seq_len + t]))
        });
        let (cos, sin) = positions.tables(pos);
        let shape = [batch, seq_len, 1, half, 1];
        Self {
            mask,
            cos: Tensor::from_data(TensorData::new(cos, shape), (device, DType::F32)),
            sin: Tensor::from_data(TensorData::new(sin, shape), (device, DType::F32)),
            dropout_seed,
            backward: LinearBackward::Quantized,
            output_unread: false,
        }
    }

    /// This context with the quantized linears keeping `backward` for their backward.
    pub fn with_backward(mut self, backward: LinearBackward) -> Self {
        self.backward = backward;
        self
    }

    /// This context for a forward whose block outputs are never read, only their gradient
    /// path: a checkpointed block's recompute, whose output only receives the upstream
    /// gradient (`grad_seed`). Blocks pass [`BlockContext::output_pass`] to the linears whose
    /// outputs feed nothing but the block's output.
    pub fn output_unread(mut self) -> Self {
        self.output_unread = true;
        self
    }

    /// How the linear salted `salt` runs: its LoRA dropout seed (`None` without dropout) and
    /// the context's backward state.
    pub fn pass(&self, salt: u64) -> Pass {
        Pass {
            dropout_seed: self.dropout_seed.map(|s| mix_seed(s, salt)),
            backward: self.backward,
            output_unread: false,
        }
    }

    /// [`BlockContext::pass`] for a linear whose output feeds only the block's output (added to
    /// the residual): its values are skipped when the context's output is unread.
    pub fn output_pass(&self, salt: u64) -> Pass {
        Pass {
            output_unread: self.output_unread,
            ..self.pass(salt)
        }
    }
}

/// A frozen (no-gradient) parameter.
pub fn frozen<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::from_tensor(t).set_require_grad(false)
}

/// `t` in `dtype` (no cast when it already is).
pub fn to_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(dtype)
    }
}

/// Host copy of an int tensor as i64 (labels, masks, positions are small).
pub fn host_i64<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    t.into_data()
        .convert::<i64>()
        .into_vec::<i64>()
        .expect("converted to i64 just above")
}

/// Host copy of a float tensor as f32 (any dtype), for files written from the device.
pub(crate) fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, String> {
    to_dtype(t, DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| format!("reading it back: {e:?}"))
}

/// Keys and values of one layer for all cached positions, `[B, T_past, H_kv, head_dim]` each.
pub type LayerKv<B> = Option<(Tensor<B, 4>, Tensor<B, 4>)>;

/// One layer's static-shape cache for greedy decoding: keys and values `[B · L, H_kv·head_dim]`
/// (each batch row's `L` columns together), preallocated for every column of the generation and
/// written one row per batch row and step in place
/// (so a recorded device graph of the step stays valid). `None` only while a step holds them.
#[derive(Debug)]
pub struct FixedKv<B: Backend> {
    pub k: Option<Tensor<B, 2>>,
    pub v: Option<Tensor<B, 2>>,
}

/// How attention keeps keys and values across decoding steps.
pub enum KvSlot<'a, B: Backend> {
    /// Concatenate this step's onto the layer's cache (shapes grow by the step's length).
    Append(&'a mut LayerKv<B>),
    /// Write this step's token of batch row `r` at cache row `pos[r]` (on the device) of a
    /// [`FixedKv`] (`[B · L, D]`, each batch row's `L` cache rows together) and attend over all
    /// `L`; the context's mask hides the ones not (yet) in the sequence.
    Fixed {
        kv: &'a mut FixedKv<B>,
        pos: &'a Tensor<B, 1, Int>,
    },
}

/// This step's keys and values `[B, T, H_kv, hd]` (after rotary) → the keys and values to attend
/// over, with the layer's cache read and extended as `cache` says.
pub fn cache_kv<B: QBackend>(
    cache: Option<KvSlot<'_, B>>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    match cache {
        None => (k, v),
        Some(KvSlot::Append(cache)) => {
            let (k, v) = match cache.take() {
                Some((pk, pv)) => (Tensor::cat(vec![pk, k], 1), Tensor::cat(vec![pv, v], 1)),
                None => (k, v),
            };
            *cache = Some((k.clone(), v.clone()));
            (k, v)
        }
        Some(KvSlot::Fixed { kv, pos }) => {
            let ((k, v), ()) = fixed_step(kv, pos, k.dims(), |kc, vc| {
                (
                    write_row(kc, k, pos.clone()),
                    write_row(vc, v, pos.clone()),
                    (),
                )
            });
            (k, v)
        }
    }
}

/// One step of a fixed cache whose step keys have `dims` (`[b, 1, h, hd]`): the shapes checked,
/// the caches taken, `write` (their rows written in place: the caches are not shared, so the
/// same buffers every step) and put back, and their `[b, l, h, hd]` views to attend over.
fn fixed_step<B: Backend, X>(
    kv: &mut FixedKv<B>,
    pos: &Tensor<B, 1, Int>,
    [b, t, h, hd]: [usize; 4],
    write: impl FnOnce(Tensor<B, 2>, Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>, X),
) -> ((Tensor<B, 4>, Tensor<B, 4>), X) {
    assert_eq!(t, 1, "a fixed KV cache decodes one token per row");
    assert_eq!(
        pos.dims()[0],
        b,
        "a fixed KV cache needs a cache row per batch row"
    );
    let (Some(kc), Some(vc)) = (kv.k.take(), kv.v.take()) else {
        panic!("fixed KV cache used while taken");
    };
    let (kc, vc, x) = write(kc, vc);
    let l = kc.dims()[0] / b;
    let out = (
        kc.clone().reshape([b, l, h, hd]),
        vc.clone().reshape([b, l, h, hd]),
    );
    (kv.k, kv.v) = (Some(kc), Some(vc));
    (out, x)
}

/// This step's queries and keys rotated by `ctx`'s angles (GPT-J's rotate-every-two, or with
/// `halves` rotate-half) and the keys and values to attend over: [`cache_kv`] of the rotated
/// keys, except that with a fixed cache the rotation and both row writes are one op
/// ([`qtune_kernels::rope_write_kv`], one launch on CUDA; the same values).
pub fn rope_cache_kv<B: QBackend>(
    cache: Option<KvSlot<'_, B>>,
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    ctx: &BlockContext<B>,
    halves: bool,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let rotate = |x: Tensor<B, 4>| match halves {
        true => qtune_kernels::rotary_half(x, ctx.cos.clone(), ctx.sin.clone()),
        false => qtune_kernels::rotary(x, ctx.cos.clone(), ctx.sin.clone()),
    };
    match cache {
        Some(KvSlot::Fixed { kv, pos }) => {
            let dims = k.dims();
            let ((k, v), q) = fixed_step(kv, pos, dims, |kc, vc| {
                let (q, kc, vc) = qtune_kernels::rope_write_kv(
                    q,
                    k,
                    v,
                    kc,
                    vc,
                    pos.clone(),
                    ctx.cos.clone(),
                    ctx.sin.clone(),
                    halves,
                );
                (kc, vc, q)
            });
            (q, k, v)
        }
        cache => {
            let (k, v) = cache_kv(cache, rotate(k), v);
            (rotate(q), k, v)
        }
    }
}

/// Past keys/values of every layer, for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub layers: Vec<LayerKv<B>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(n_layer: usize) -> Self {
        Self {
            layers: vec![None; n_layer],
        }
    }

    /// Number of cached positions.
    pub fn past_len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map_or(0, |(k, _)| k.dims()[1])
    }

    /// Keeps batch rows `rows` (in that order, repeats allowed): beam search's reordering.
    pub fn select_rows(&mut self, rows: &[usize]) {
        let Some(device) = self.layers.iter().flatten().next().map(|(k, _)| k.device()) else {
            return;
        };
        let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [rows.len()]), &device);
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.clone().select(0, idx.clone());
            *v = v.clone().select(0, idx.clone());
        }
    }
}

#[cfg(test)]
#[path = "context_tests.rs"]
mod tests;
