//! Building a [`Llama`] from a source of dense tensors by HF name (a safetensors folder, a GGUF
//! file, or a seeded random init), quantizing each block linear as soon as it exists.

use burn::tensor::DType;
use qtune_kernels::QBackend;
use qtune_lm::source::{build_linear, RandomSource, TensorSource};
use qtune_lm::{frozen, LmError};
use qtune_lora::Linear;
use qtune_quant::QuantSpec;

use crate::config::LlamaConfig;
use crate::layers::{Attention, Block, Mlp, RmsNorm};
use crate::model::{layer_name, Llama};

pub(crate) fn build<B: QBackend, S: TensorSource<B>>(
    cfg: &LlamaConfig,
    src: &mut S,
    quant: Option<QuantSpec>,
    dtype: DType,
    device: &B::Device,
) -> Result<Llama<B>, LmError> {
    cfg.validate().map_err(LmError::Input)?;
    let positions = cfg.positions().map_err(LmError::Input)?;
    let (d, v, f) = (cfg.hidden_size, cfg.vocab_size, cfg.intermediate_size);
    let (h, kv, hd) = (cfg.num_attention_heads, cfg.kv_heads(), cfg.head_dim());
    let eps = cfg.rms_norm_eps;
    let embed = src.tensor2("model.embed_tokens.weight", [v, d])?;
    let linear = |src: &mut S, i: usize, s: &str, shape: [usize; 2], bias: bool| {
        build_linear(src, &layer_name(i, s), shape, bias, quant, dtype, device)
    };
    let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let (qb, ob, mb) = (cfg.qkv_bias(), cfg.o_bias(), cfg.mlp_bias);
        let self_attn = Attention {
            q_proj: linear(src, i, "self_attn.q_proj", [h * hd, d], qb)?,
            k_proj: linear(src, i, "self_attn.k_proj", [kv * hd, d], qb)?,
            v_proj: linear(src, i, "self_attn.v_proj", [kv * hd, d], qb)?,
            o_proj: linear(src, i, "self_attn.o_proj", [d, h * hd], ob)?,
            n_head: h,
            n_kv_head: kv,
            head_dim: hd,
        };
        let mlp = Mlp {
            gate_proj: linear(src, i, "mlp.gate_proj", [f, d], mb)?,
            up_proj: linear(src, i, "mlp.up_proj", [f, d], mb)?,
            down_proj: linear(src, i, "mlp.down_proj", [d, f], mb)?,
        };
        let norm = |src: &mut S, s: &str| -> Result<RmsNorm<B>, LmError> {
            Ok(RmsNorm::new(src.tensor1(&layer_name(i, s), [d])?, eps))
        };
        layers.push(Block {
            input_layernorm: norm(src, "input_layernorm.weight")?,
            self_attn,
            post_attention_layernorm: norm(src, "post_attention_layernorm.weight")?,
            mlp,
            index: i,
        });
    }
    let norm = RmsNorm::new(src.tensor1("model.norm.weight", [d])?, eps);
    let head = if cfg.tie_word_embeddings && !src.contains("lm_head.weight") {
        embed.clone()
    } else {
        src.tensor2("lm_head.weight", [v, d])?
    };
    Ok(Llama {
        embed_tokens: frozen(embed),
        layers,
        norm,
        lm_head: Linear::dense(head, None),
        config: cfg.clone(),
        positions,
    })
}

impl<B: QBackend> Llama<B> {
    /// A randomly initialized model of `cfg` (HF's init: N(0, 0.02), norms 1, biases 0,
    /// seeded), optionally with quantized block linears: tiny defaults and benchmarks.
    pub fn random(
        cfg: &LlamaConfig,
        seed: u64,
        quant: Option<QuantSpec>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self, LmError> {
        B::seed(device, seed);
        let mut src = RandomSource::<B> {
            device,
            dtype,
            is_norm_weight: |n| n.ends_with("norm.weight"),
        };
        build(cfg, &mut src, quant, dtype, device)
    }
}
