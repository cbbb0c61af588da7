//! Building a [`Gptj`] from a source of dense tensors (a checkpoint or random init), quantizing
//! each block linear as soon as its dense tensor exists, so two full copies of the weights never
//! coexist: at most one dense block tensor beyond the model being built.

use burn::tensor::{DType, Distribution, Tensor};
use qtune_kernels::{QBackend, QuantWeight};
use qtune_lora::Linear;
use qtune_quant::{FloatDType, QuantSpec};

use crate::config::GptjConfig;
use crate::error::GptjError;
use crate::layers::{frozen, Attention, Block, LayerNorm, Mlp};
use crate::model::Gptj;
use crate::names::block_name;

/// Where dense tensors come from, by HF name and expected shape.
pub(crate) trait TensorSource<B: QBackend> {
    fn tensor1(&mut self, name: &str, shape: [usize; 1]) -> Result<Tensor<B, 1>, GptjError>;
    fn tensor2(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>, GptjError>;
    /// Whether the source has this tensor (for tied `lm_head`).
    fn contains(&self, name: &str) -> bool;
    /// The weight of linear `module` if the source stores it already quantized (bnb/HF format).
    fn quantized(
        &mut self,
        _module: &str,
    ) -> Result<Option<qtune_quant::QuantizedTensor>, GptjError> {
        Ok(None)
    }
}

pub(crate) fn float_dtype(dtype: DType) -> FloatDType {
    match dtype {
        DType::BF16 => FloatDType::BF16,
        DType::F16 => FloatDType::F16,
        _ => FloatDType::F32,
    }
}

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
    let linear = |src: &mut S,
                  name: String,
                  shape: [usize; 2],
                  bias: bool|
     -> Result<Linear<B>, GptjError> {
        let b = if bias {
            Some(src.tensor1(&format!("{name}.bias"), [shape[0]])?)
        } else {
            None
        };
        if let Some(q) = src.quantized(&name)? {
            // A pre-quantized checkpoint (e.g. saved by HF + bitsandbytes) is used as stored.
            if q.shape != shape {
                return Err(GptjError::Input(format!(
                    "{name}.weight: quantized shape {:?}, expected {shape:?}",
                    q.shape
                )));
            }
            let w = QuantWeight::try_from_quantized(&name, &q, device).map_err(|source| {
                GptjError::Quantize {
                    name: name.clone(),
                    source: Box::new(source),
                }
            })?;
            return Ok(Linear::quantized(w, b));
        }
        let w = src.tensor2(&format!("{name}.weight"), shape)?;
        Ok(match quant {
            None => Linear::dense(w, b),
            Some(spec) => {
                let q = QuantWeight::quantize(
                    &name,
                    w,
                    spec.format,
                    spec.blocksize,
                    spec.double_quant,
                    float_dtype(dtype),
                )
                .map_err(|source| GptjError::Quantize {
                    name: name.clone(),
                    source: Box::new(source),
                })?;
                Linear::quantized(q, b)
            }
        })
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

/// HF's `_init_weights` for GPT-J: linear and embedding weights N(0, 0.02), biases 0,
/// LayerNorm weight 1 and bias 0. Drawn on the device after `B::seed(device, seed)`.
pub(crate) struct RandomSource<'a, B: QBackend> {
    pub device: &'a B::Device,
    pub dtype: DType,
}

impl<B: QBackend> TensorSource<B> for RandomSource<'_, B> {
    fn tensor1(&mut self, name: &str, shape: [usize; 1]) -> Result<Tensor<B, 1>, GptjError> {
        let t = if name.ends_with("ln_1.weight") || name.ends_with("ln_f.weight") {
            Tensor::ones(shape, self.device)
        } else {
            Tensor::zeros(shape, self.device)
        };
        Ok(crate::layers::to_dtype(t, self.dtype))
    }

    fn tensor2(&mut self, _name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>, GptjError> {
        let t = Tensor::random(shape, Distribution::Normal(0.0, 0.02), self.device);
        Ok(crate::layers::to_dtype(t, self.dtype))
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }
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
        build(
            cfg,
            &mut RandomSource::<B> { device, dtype },
            quant,
            dtype,
            device,
        )
    }
}
