//! GPT-J's layers as HF `modeling_gptj.py`. Read top-down: LayerNorm → rotary → Attention →
//! Mlp → Block. Every linear is a `qtune_lora::Linear` (dense or quantized, optional LoRA).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};
use qtune_kernels::{attention, Frozen, QBackend};
use qtune_lm::{frozen, rope_cache_kv, to_dtype, BlockContext, DecoderBlock, KvSlot};
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

/// GPT-J rotates interleaved pairs (x0,x1),(x2,x3)… ("rotate_every_two"), not halves like
/// NeoX/Llama, and only the first `rotary_dim` dims of each head. Rotating halves would still
/// load the checkpoint fine and then produce wrong logits. Computed in f32 (HF's sin/cos are f32
/// and promote q/k), returned in `x`'s dtype. `x`: `[B, T, H, head_dim]`.
pub fn apply_rotary<B: QBackend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 5>,
    sin: &Tensor<B, 5>,
) -> Tensor<B, 4> {
    qtune_kernels::rotary(x, cos.clone(), sin.clone())
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
        // One launch for the three base products of a decode step (qtune_lora's forward_parts).
        let [q, k, v] = Linear::forward_parts(
            [
                (&self.q_proj, ctx.pass(salt)),
                (&self.k_proj, ctx.pass(salt + 1)),
                (&self.v_proj, ctx.pass(salt + 2)),
            ],
            x,
        );
        let q = q.reshape([b, t, h, hd]);
        let k = k.reshape([b, t, h, hd]);
        let v = v.reshape([b, t, h, hd]);
        // Token-major [B, T, H, hd] throughout: the attention op reads each head in place.
        // Rotary on q and k (`apply_rotary`'s op), then the cache; one op with a fixed cache.
        let (q, k, v) = rope_cache_kv(cache, q, k, v, ctx, false);
        // As HF's GPTJAttention._attn: scores accumulated and soft-maxed in f32 (HF upcasts q, k;
        // under bf16 they enter the GEMM in bf16, as flash attention), divided by √hd, masked
        // scores = f32::MIN (a fully masked padding row stays finite), probabilities in v's
        // dtype. One op (cuBLAS GEMMs + a fused softmax on CUDA).
        let out = attention(q, k, v, ctx.mask.clone(), (hd as f32).sqrt()).reshape([b, t, d]);
        // Its output only joins the residual (GPT-J's parallel block): unread in a recompute.
        self.out_proj.forward_with(out, ctx.output_pass(salt + 3))
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
        // Both linears frozen (no adapter; quantized, or dense as in bf16 training), several
        // rows: one op whose bias and `gelu_new` ride on the GEMMs' epilogues on CUDA
        // (`qtune_kernels::mlp_gelu_new`).
        let [b, t, _] = x.dims();
        let (pass, out_pass) = (ctx.pass(salt), ctx.output_pass(salt + 1));
        let dtype = x.dtype();
        let several = b * t > 1;
        // The frozen weights are looked up only where they can serve (several rows).
        let pair = match several {
            true => (
                self.fc_in.frozen_base(dtype),
                self.fc_out.frozen_base(dtype),
            ),
            false => (None, None),
        };
        if let (Activation::GeluNew, (Some(w_in), Some(w_out)), Some(b_in)) =
            (self.act, pair, self.fc_in.bias())
        {
            // A quantized pair only where the caller did not ask to keep dense copies.
            let fits = match (&w_in, &w_out) {
                (Frozen::Quant(i), Frozen::Quant(o)) => {
                    qtune_kernels::mlp_fits(pass.backward, i.shape(), o.shape())
                }
                _ => true,
            };
            if fits {
                // A read output with fc_out's bias: the bias and the other branches summed by
                // fc_out's GEMM too (β = 1 on CUDA); else `plus` (for a recompute nobody reads:
                // no sums at all).
                if let (false, Some(b_out)) = (out_pass.output_unread, self.fc_out.bias()) {
                    return qtune_kernels::mlp_gelu_new_plus(x, (w_in, b_in), (w_out, b_out), adds);
                }
                let y = qtune_kernels::mlp_gelu_new(x, w_in, b_in, w_out, out_pass.output_unread);
                return self.fc_out.plus(y, out_pass, adds);
            }
        }
        // One row of a frozen fc_in (decode): the product, bias and `gelu_new` in one op (on
        // CUDA one GEMV launch for a quantized weight).
        let one_row = match several {
            false => self.fc_in.frozen_base(dtype),
            true => None,
        };
        let hdn = match (self.act, self.fc_in.bias(), one_row) {
            (Activation::GeluNew, Some(bias), Some(w)) => {
                qtune_kernels::linear_bias_gelu_new(x, w, bias)
            }
            // HF `NewGELUActivation` with fc_in's bias folded in: one fused kernel on CUDA.
            (Activation::GeluNew, Some(bias), _) => {
                qtune_kernels::bias_gelu_new(self.fc_in.forward_unbiased(x, pass), bias)
            }
            (act, _, _) => {
                let hdn = self.fc_in.forward_with(x, pass);
                match act {
                    Activation::GeluNew => qtune_kernels::gelu_new(hdn),
                    Activation::Gelu => burn::tensor::activation::gelu(hdn),
                    Activation::Relu => burn::tensor::activation::relu(hdn),
                }
            }
        };
        self.fc_out.forward_plus(hdn, out_pass, adds)
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
}

impl<B: QBackend> DecoderBlock<B> for Block<B> {
    /// As [`Block::forward`], reading and extending this layer's KV cache.
    fn forward_cached(
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
