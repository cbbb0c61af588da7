//! Building a [`Gptj`] from a source of dense tensors (a checkpoint or random init), quantizing
//! each block linear as soon as its dense tensor exists, so two full copies of the weights never
//! coexist: at most one dense block tensor beyond the model being built.

use burn::tensor::{DType, Tensor};
use qtune_kernels::QBackend;
use qtune_lm::source::{build_linear, RandomSource, TensorSource};
use qtune_lm::{frozen, LmError as GptjError};
use qtune_lora::Linear;
use qtune_quant::QuantSpec;

use crate::config::GptjConfig;
use crate::layers::{Attention, Block, LayerNorm, Mlp};
use crate::model::Gptj;
use crate::names::block_name;

pub(crate) fn build<B: QBackend, S: TensorSource<B>>(
    cfg: &GptjConfig,
    src: &mut S,
    quant: Option<QuantSpec>,
    dtype: DType,
    device: &B::Device,
) -> Result<Gptj<B>, GptjError> {
    cfg.validate().map_err(GptjError::Input)?;
    let act = cfg.activation().map_err(GptjError::Input)?;
    let (d, v, f) = (cfg.n_embd, cfg.vocab_size, cfg.inner_dim());
    let wte = src.tensor2("transformer.wte.weight", [v, d])?;
    let linear = |src: &mut S, name: String, shape: [usize; 2], bias: bool| {
        build_linear(src, &name, shape, bias, quant, dtype, device)
    };
    let mut blocks = Vec::with_capacity(cfg.n_layer);
    for i in 0..cfg.n_layer {
        let ln_1 = LayerNorm::new(
            src.tensor1(&block_name(i, "ln_1.weight"), [d])?,
            src.tensor1(&block_name(i, "ln_1.bias"), [d])?,
            cfg.layer_norm_epsilon,
        );
        let attn = Attention {
            q_proj: linear(src, block_name(i, "attn.q_proj"), [d, d], false)?,
            k_proj: linear(src, block_name(i, "attn.k_proj"), [d, d], false)?,
            v_proj: linear(src, block_name(i, "attn.v_proj"), [d, d], false)?,
            out_proj: linear(src, block_name(i, "attn.out_proj"), [d, d], false)?,
            n_head: cfg.n_head,
        };
        let mlp = Mlp {
            fc_in: linear(src, block_name(i, "mlp.fc_in"), [f, d], true)?,
            fc_out: linear(src, block_name(i, "mlp.fc_out"), [d, f], true)?,
            act,
        };
        blocks.push(Block {
            ln_1,
            attn,
            mlp,
            index: i,
        });
    }
    let ln_f = LayerNorm::new(
        src.tensor1("transformer.ln_f.weight", [d])?,
        src.tensor1("transformer.ln_f.bias", [d])?,
        cfg.layer_norm_epsilon,
    );
    let head_w = if cfg.tie_word_embeddings && !src.contains("lm_head.weight") {
        wte.clone()
    } else {
        src.tensor2("lm_head.weight", [v, d])?
    };
    let head_b = if src.contains("lm_head.bias") || !cfg.tie_word_embeddings {
        src.tensor1("lm_head.bias", [v])?
    } else {
        Tensor::zeros([v], device)
    };
    Ok(Gptj {
        wte: frozen(wte),
        blocks,
        ln_f,
        lm_head: Linear::dense(head_w, Some(head_b)),
        config: cfg.clone(),
    })
}

impl<B: QBackend> Gptj<B> {
    /// A randomly initialized model of `cfg` (HF's init, seeded), optionally with quantized
    /// block linears: the tiny default model and benchmarks.
    pub fn random(
        cfg: &GptjConfig,
        seed: u64,
        quant: Option<QuantSpec>,
        dtype: DType,
        device: &B::Device,
    ) -> Result<Self, GptjError> {
        B::seed(device, seed);
        let mut src = RandomSource::<B> {
            device,
            dtype,
            is_norm_weight: |n| n.ends_with("ln_1.weight") || n.ends_with("ln_f.weight"),
        };
        build(cfg, &mut src, quant, dtype, device)
    }
}
