//! The Llama family's layers as HF `modeling_llama.py` (Mistral and Qwen2 are the same code with
//! other config). Read top-down: RmsNorm → rotate-half RoPE → grouped-query Attention → SwiGLU
//! Mlp → Block. Every linear is a `qtune_lora::Linear` (dense or quantized, optional LoRA).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use qtune_kernels::{attention, rms_norm, rotary_half, silu_mul, QBackend};
use qtune_lm::{frozen, rope_cache_kv, BlockContext, DecoderBlock, KvSlot};
use qtune_lora::Linear;

/// HF `LlamaRMSNorm`: `weight * (x / sqrt(mean(x²) + eps))`, the normalization in f32, the
/// product in the input's dtype (HF casts back before multiplying by the weight): one fused
/// kernel on CUDA (`qtune_kernels::rms_norm`).
#[derive(Module, Debug)]
pub struct RmsNorm<B: Backend> {
    pub weight: Param<Tensor<B, 1>>,
    pub eps: f64,
}

impl<B: Backend> RmsNorm<B> {
    pub fn new(weight: Tensor<B, 1>, eps: f64) -> Self {
        Self {
            weight: frozen(weight),
            eps,
        }
    }
}

impl<B: QBackend> RmsNorm<B> {
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        rms_norm(x, self.weight.val(), self.eps as f32)
    }
}

/// HF `apply_rotary_pos_emb` with `rotate_half`: the head's two halves `(x1, x2)` become
/// `(x1·cos − x2·sin, x2·cos + x1·sin)`, every dim of the head rotated (GPT-J instead rotates
/// interleaved pairs of the first `rotary_dim`). HF casts cos/sin to the activations' dtype
/// first; so does the reference (the CUDA kernel computes in f32 and rounds once). `x`:
/// `[B, T, H, head_dim]`; cos/sin: the context's `[B, T, 1, hd/2, 1]`.
pub fn rotate_half<B: QBackend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 5>,
    sin: &Tensor<B, 5>,
) -> Tensor<B, 4> {
    rotary_half(x, cos.clone(), sin.clone())
}

/// HF `repeat_kv` in the token-major layout: `[B, S, H_kv, hd]` → `[B, S, H_kv·n_rep, hd]`, query
/// head `i` reading kv head `i / n_rep`. The model no longer needs it (`qtune_kernels::attention`
/// takes the H_kv heads as they are); kept for callers that want the repeated tensors.
pub fn repeat_kv<B: Backend>(x: Tensor<B, 4>, n_rep: usize) -> Tensor<B, 4> {
    if n_rep == 1 {
        return x;
    }
    let [b, s, kv, hd] = x.dims();
    x.reshape([b, s, kv, 1, hd])
        .repeat_dim(3, n_rep)
        .reshape([b, s, kv * n_rep, hd])
}

#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
}

impl<B: QBackend> Attention<B> {
    /// `x [B, T, D]` (after `input_layernorm`) → `[B, T, D]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        ctx: &BlockContext<B>,
        salt: u64,
        cache: Option<KvSlot<'_, B>>,
    ) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (h, kv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        // One launch for the three base products of a decode step (qtune_lora's forward_parts).
        let [q, k, v] = Linear::forward_parts(
            [
                (&self.q_proj, ctx.pass(salt)),
                (&self.k_proj, ctx.pass(salt + 1)),
                (&self.v_proj, ctx.pass(salt + 2)),
            ],
            x,
        );
        // Rotate-half on q and k (`rotate_half`'s op), then the cache; one op with a fixed cache.
        let (q, k, v) = rope_cache_kv(
            cache,
            q.reshape([b, t, h, hd]),
            k.reshape([b, t, kv, hd]),
            v.reshape([b, t, kv, hd]),
            ctx,
            true,
        );
        // Eager attention as HF's: scores over √hd, masked, soft-maxed in f32, probabilities
        // in v's dtype. The cache keeps H_kv heads; the attention op reads kv head i / (H/H_kv)
        // for query head i, as HF's `repeat_kv`, without repeating k, v in memory.
        let out = attention(q, k, v, ctx.mask.clone(), (hd as f32).sqrt()).reshape([b, t, h * hd]);
        self.o_proj.forward_with(out, ctx.pass(salt + 3))
    }
}

/// HF `LlamaMLP`: `down_proj(silu(gate_proj(x)) * up_proj(x))`, the product one fused kernel on
/// CUDA (`qtune_kernels::silu_mul`).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: QBackend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>, ctx: &BlockContext<B>, salt: u64) -> Tensor<B, 3> {
        let [gate, up] = Linear::forward_parts(
            [
                (&self.gate_proj, ctx.pass(salt)),
                (&self.up_proj, ctx.pass(salt + 1)),
            ],
            x,
        );
        let h = silu_mul(gate, up);
        // Its output only joins the residual: unread in a checkpointed recompute.
        self.down_proj.forward_with(h, ctx.output_pass(salt + 2))
    }
}

/// One decoder layer (`model.layers.{index}`): pre-norm attention, then pre-norm MLP, each
/// added to the residual.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
    /// Position in the stack; salts the LoRA dropout seeds.
    pub index: usize,
}

impl<B: QBackend> DecoderBlock<B> for Block<B> {
    fn forward_cached(
        &self,
        h: Tensor<B, 3>,
        ctx: &BlockContext<B>,
        cache: Option<KvSlot<'_, B>>,
    ) -> Tensor<B, 3> {
        let salt = (self.index as u64) << 8;
        let a = self
            .self_attn
            .forward(self.input_layernorm.forward(h.clone()), ctx, salt, cache);
        let h = h + a;
        let m = self.mlp.forward(
            self.post_attention_layernorm.forward(h.clone()),
            ctx,
            salt + 4,
        );
        // Unread in a checkpointed recompute: only the gradient passes (no add).
        if ctx.output_unread {
            qtune_kernels::sum_unread(vec![h, m])
        } else {
            h + m
        }
    }
}
