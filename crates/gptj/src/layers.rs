//! GPT-J's layers as HF `modeling_gptj.py`. Read top-down: LayerNorm → rotary → Attention →
//! Mlp → Block. Every linear is a `qtune_lora::Linear` (dense or quantized, optional LoRA).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};
use qtune_kernels::{attention, write_row, QBackend};
use qtune_lora::Linear;

use crate::config::Activation;

/// Frozen LayerNorm with HF's `weight`/`bias` names (stored in f32); computed in f32 whatever
/// the model dtype.
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub bias: Param<Tensor<B, 1>>,
    pub eps: f64,
}

pub(crate) fn frozen<B: Backend, const D: usize>(t: Tensor<B, D>) -> Param<Tensor<B, D>> {
    Param::from_tensor(t).set_require_grad(false)
}

pub(crate) fn to_dtype<B: Backend, const D: usize>(t: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if t.dtype() == dtype {
        t
    } else {
        t.cast(dtype)
    }
}

impl<B: Backend> LayerNorm<B> {
    /// Weight and bias are kept in f32 (exactly their values in the model's dtype): the fused
    /// kernel computes in f32 and would otherwise cast them on every call.
    pub fn new(weight: Tensor<B, 1>, bias: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: frozen(to_dtype(weight, DType::F32)),
            bias: frozen(to_dtype(bias, DType::F32)),
            eps,
        }
    }

    /// Frozen weight and bias (no gradients for them); one fused kernel on CUDA.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D>
    where
        B: QBackend,
    {
        qtune_kernels::layer_norm(x, self.weight.val(), self.bias.val(), self.eps as f32)
    }
}

/// What every block needs besides the hidden states: the attention mask, the rotary angles of
/// each position, and the LoRA dropout seed. Built once per forward ([`BlockContext::new`]) and
/// shared by all blocks, so per-block gradient checkpointing can re-run a block alone.
#[derive(Debug, Clone)]
pub struct BlockContext<B: Backend> {
    /// `[B, 1, T, past+T]`, true = masked (causal and padding); `None` when nothing is masked.
    pub mask: Option<Tensor<B, 4, Bool>>,
    /// Rotary `cos`/`sin` of each query position, `[B, T, 1, rotary_dim/2, 1]`, f32.
    pub cos: Tensor<B, 5>,
    pub sin: Tensor<B, 5>,
    /// LoRA dropout is on iff this is `Some` (training). Each linear derives its own mask seed
    /// from it, the block index and the projection, so a re-run block draws the same masks.
    pub dropout_seed: Option<u64>,
}

/// Rotary `cos`/`sin` of each position, `rotary_dim / 2` values per position, in f32 as HF:
/// `inv_freq = 1 / 10000^(arange(0, dim, 2) / dim)`, `angle = pos * inv_freq`.
pub(crate) fn rotary_tables(
    rotary_dim: usize,
    positions: impl Iterator<Item = i64>,
) -> (Vec<f32>, Vec<f32>) {
    let half = rotary_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / rotary_dim as f32))
        .collect();
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for pos in positions {
        for f in &inv_freq {
            let a = pos as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// SplitMix64 finalizer: decorrelates the per-linear dropout seeds.
pub(crate) fn mix_seed(seed: u64, salt: u64) -> u64 {
    let mut z = seed ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
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
        rotary_dim: usize,
        batch: usize,
        seq_len: usize,
        past_len: usize,
        attention_mask: Option<&[i64]>,
        position_ids: Option<&[i64]>,
        dropout_seed: Option<u64>,
        device: &B::Device,
    ) -> Self {
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
        let padded = attention_mask.is_some_and(|m| m.contains(&0));
        let mask = (seq_len > 1 || padded).then(|| {
            let mut bits = Vec::with_capacity(batch * seq_len * total);
            for b in 0..batch {
                for i in 0..seq_len {
                    for j in 0..total {
                        let pad = attention_mask.is_some_and(|m| m[b * total + j] == 0);
                        bits.push(j > past_len + i || pad);
                    }
                }
            }
            Tensor::<B, 4, Bool>::from_data(
                TensorData::new(bits, [batch, 1, seq_len, total]),
                device,
            )
        });
        let half = rotary_dim / 2;
        let positions = (0..batch).flat_map(|b| {
            (0..seq_len)
                .map(move |t| position_ids.map_or((past_len + t) as i64, |p| p[b * seq_len + t]))
        });
        let (cos, sin) = rotary_tables(rotary_dim, positions);
        let shape = [batch, seq_len, 1, half, 1];
        Self {
            mask,
            cos: Tensor::from_data(TensorData::new(cos, shape), (device, DType::F32)),
            sin: Tensor::from_data(TensorData::new(sin, shape), (device, DType::F32)),
            dropout_seed,
        }
    }

    fn seed(&self, salt: u64) -> Option<u64> {
        self.dropout_seed.map(|s| mix_seed(s, salt))
    }
}

/// GPT-J rotates interleaved pairs (x0,x1),(x2,x3)… ("rotate_every_two"), not halves like
/// NeoX/Llama, and only the first `rotary_dim` dims of each head. Rotating halves would still
/// load the checkpoint fine and then produce wrong logits. Computed in f32 (HF's sin/cos are f32
/// and promote q/k), returned in `x`'s dtype. `x`: `[B, T, H, head_dim]`.
pub(crate) fn apply_rotary<B: QBackend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 5>,
    sin: &Tensor<B, 5>,
) -> Tensor<B, 4> {
    qtune_kernels::rotary(x, cos.clone(), sin.clone())
}

/// Keys and values of one layer for all cached positions, `[B, T_past, H, head_dim]` each.
pub type LayerKv<B> = Option<(Tensor<B, 4>, Tensor<B, 4>)>;

/// One layer's static-shape cache for batch-1 decoding: keys and values `[L, H·head_dim]`,
/// preallocated for every position of the generation and written one row per step in place
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
    /// Write this step's single token at row `pos` (on the device) of a [`FixedKv`] and attend
    /// over all its rows; the context's mask hides the rows after `pos`.
    Fixed {
        kv: &'a mut FixedKv<B>,
        pos: &'a Tensor<B, 1, Int>,
    },
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub out_proj: Linear<B>,
    pub n_head: usize,
}

impl<B: QBackend> Attention<B> {
    /// `x [B, T, D]` (after ln_1) → `[B, T, D]`. With `cache`, attends over the cached keys and
    /// values too and appends this step's to it.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &BlockContext<B>,
        salt: u64,
        cache: Option<KvSlot<'_, B>>,
    ) -> Tensor<B, 3> {
        let [b, t, d] = x.dims();
        let (h, hd) = (self.n_head, d / self.n_head);
        let q = self
            .q_proj
            .forward_with(x.clone(), ctx.seed(salt))
            .reshape([b, t, h, hd]);
        let k = self
            .k_proj
            .forward_with(x.clone(), ctx.seed(salt + 1))
            .reshape([b, t, h, hd]);
        let v = self
            .v_proj
            .forward_with(x, ctx.seed(salt + 2))
            .reshape([b, t, h, hd]);
        // Token-major [B, T, H, hd] throughout: the attention op reads each head in place.
        let q = apply_rotary(q, &ctx.cos, &ctx.sin);
        let mut k = apply_rotary(k, &ctx.cos, &ctx.sin);
        let mut v = v;
        match cache {
            None => {}
            Some(KvSlot::Append(cache)) => {
                if let Some((pk, pv)) = cache.take() {
                    k = Tensor::cat(vec![pk, k], 1);
                    v = Tensor::cat(vec![pv, v], 1);
                }
                *cache = Some((k.clone(), v.clone()));
            }
            Some(KvSlot::Fixed { kv, pos }) => {
                assert_eq!(
                    (b, t),
                    (1, 1),
                    "a fixed KV cache decodes one token of one row"
                );
                let (Some(kc), Some(vc)) = (kv.k.take(), kv.v.take()) else {
                    panic!("fixed KV cache used while taken");
                };
                // In place (the caches are not shared): the same buffers every step.
                let kc = write_row(kc, k, pos.clone());
                let vc = write_row(vc, v, pos.clone());
                let l = kc.dims()[0];
                k = kc.clone().reshape([1, l, h, hd]);
                v = vc.clone().reshape([1, l, h, hd]);
                (kv.k, kv.v) = (Some(kc), Some(vc));
            }
        }
        // As HF's GPTJAttention._attn: scores accumulated and soft-maxed in f32 (HF upcasts q, k;
        // under bf16 they enter the GEMM in bf16, as flash attention), divided by √hd, masked
        // scores = f32::MIN (a fully masked padding row stays finite), probabilities in v's
        // dtype. One op (cuBLAS GEMMs + a fused softmax on CUDA).
        let out = attention(q, k, v, ctx.mask.clone(), (hd as f32).sqrt()).reshape([b, t, d]);
        self.out_proj.forward_with(out, ctx.seed(salt + 3))
    }
}

#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub fc_in: Linear<B>,
    pub fc_out: Linear<B>,
    #[module(skip)]
    pub act: Activation,
}

impl<B: QBackend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &BlockContext<B>, salt: u64) -> Tensor<B, 3> {
        self.forward_plus(x, ctx, salt, Vec::new())
    }

    /// [`Mlp::forward`] plus `adds` (the block's other branches), summed by `fc_out`
    /// ([`Linear::forward_plus`]: in its kernel for one decoded token).
    pub fn forward_plus(
        &self,
        x: Tensor<B, 3>,
        ctx: &BlockContext<B>,
        salt: u64,
        adds: Vec<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let hdn = match (self.act, self.fc_in.bias()) {
            // HF `NewGELUActivation` with fc_in's bias folded in: one fused kernel on CUDA.
            (Activation::GeluNew, Some(b)) => {
                qtune_kernels::bias_gelu_new(self.fc_in.forward_unbiased(x, ctx.seed(salt)), b)
            }
            (act, _) => {
                let hdn = self.fc_in.forward_with(x, ctx.seed(salt));
                match act {
                    Activation::GeluNew => qtune_kernels::gelu_new(hdn),
                    Activation::Gelu => burn::tensor::activation::gelu(hdn),
                    Activation::Relu => burn::tensor::activation::relu(hdn),
                }
            }
        };
        self.fc_out.forward_plus(hdn, ctx.seed(salt + 1), adds)
    }
}

/// One GPT-J block (`transformer.h.{index}`): attention and MLP in parallel on one LayerNorm,
/// both added to the residual.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub ln_1: LayerNorm<B>,
    pub attn: Attention<B>,
    pub mlp: Mlp<B>,
    /// Position in the stack; salts the LoRA dropout seeds.
    pub index: usize,
}

impl<B: QBackend> Block<B> {
    /// `h [B, T, D] → h'` without a KV cache (training, scoring).
    pub fn forward(&self, h: Tensor<B, 3>, ctx: &BlockContext<B>) -> Tensor<B, 3> {
        self.forward_cached(h, ctx, None)
    }

    /// A copy whose LoRA factors are in `dtype` (the activations' dtype), so an inference
    /// forward does not cast them on every call; weights are shared, not copied.
    pub fn with_adapter_dtype(&self, dtype: DType) -> Self {
        let a = &self.attn;
        Self {
            ln_1: self.ln_1.clone(),
            attn: Attention {
                q_proj: a.q_proj.with_adapter_dtype(dtype),
                k_proj: a.k_proj.with_adapter_dtype(dtype),
                v_proj: a.v_proj.with_adapter_dtype(dtype),
                out_proj: a.out_proj.with_adapter_dtype(dtype),
                n_head: a.n_head,
            },
            mlp: Mlp {
                fc_in: self.mlp.fc_in.with_adapter_dtype(dtype),
                fc_out: self.mlp.fc_out.with_adapter_dtype(dtype),
                act: self.mlp.act,
            },
            index: self.index,
        }
    }

    /// As [`Block::forward`], reading and extending this layer's KV cache.
    pub fn forward_cached(
        &self,
        h: Tensor<B, 3>,
        ctx: &BlockContext<B>,
        cache: Option<KvSlot<'_, B>>,
    ) -> Tensor<B, 3> {
        let x = self.ln_1.forward(h.clone());
        let salt = (self.index as u64) << 8;
        let attn = self.attn.forward(x.clone(), ctx, salt, cache);
        // ff + attn + h: the same sums as `attn + ff + h` (addition commutes), or for one
        // decoded token one f32 sum in fc_out's kernel.
        self.mlp.forward_plus(x, ctx, salt + 4, vec![attn, h])
    }
}
