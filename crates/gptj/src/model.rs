//! `Gptj`: HF `GPTJForCausalLM` (embedding → blocks → ln_f → lm_head with bias), and its
//! [`CausalLm`] implementation: the forward, loss, generation, perplexity and adapter I/O come
//! from qtune-lm.
//!
//! Module layout ↔ HF names: `wte` = `transformer.wte`, `blocks[i]` = `transformer.h.{i}`,
//! `ln_f` = `transformer.ln_f`, `lm_head` = `lm_head` (see [`crate::names`]).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use qtune_kernels::QBackend;
use qtune_lm::{CausalLm, DecoderBlock, Positions};
use qtune_lora::Linear;

use crate::config::GptjConfig;
use crate::layers::{Block, LayerNorm};

#[derive(Module, Debug)]
pub struct Gptj<B: Backend> {
    /// Token embedding `[vocab_size, n_embd]`, frozen.
    pub wte: Param<Tensor<B, 2>>,
    pub blocks: Vec<Block<B>>,
    pub ln_f: LayerNorm<B>,
    /// `[vocab_size, n_embd]` + bias `[vocab_size]`, kept dense.
    pub lm_head: Linear<B>,
    #[module(skip)]
    pub config: GptjConfig,
}

impl<B: QBackend> CausalLm<B> for Gptj<B> {
    fn model_type(&self) -> &str {
        "gptj"
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.config.n_positions
    }

    fn num_layers(&self) -> usize {
        self.blocks.len()
    }

    /// GPT-J's rotary angles: base 10,000 over the first `rotary_dim` dims of a head.
    fn positions(&self) -> Positions {
        Positions::rope(self.config.rotary_dim(), 10_000.0)
    }

    fn embedding(&self) -> &Param<Tensor<B, 2>> {
        &self.wte
    }

    fn base_params(&self) -> u64 {
        self.config.num_params()
    }

    fn layer(&self, i: usize) -> &dyn DecoderBlock<B> {
        &self.blocks[i]
    }

    /// `transformer.ln_f`.
    fn final_norm<const D: usize>(&self, h_last: Tensor<B, D>) -> Tensor<B, D> {
        self.ln_f.forward(h_last)
    }

    fn lm_head(&self) -> &Linear<B> {
        &self.lm_head
    }

    fn visit_block<V: burn::module::ModuleVisitor<B>>(&self, i: usize, visitor: &mut V) {
        burn::module::Module::visit(&self.blocks[i], visitor);
    }

    fn linears(&self) -> Vec<(String, &Linear<B>)> {
        Gptj::linears(self)
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        Gptj::linears_mut(self)
    }

    fn other_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<B, 1>)> {
        let flat = |name: String, t: Tensor<B, 2>| {
            let shape = t.dims().to_vec();
            (name, shape, t.flatten(0, 1))
        };
        let ln = |name: &str, l: &LayerNorm<B>| {
            [
                (
                    format!("{name}.weight"),
                    l.weight.dims().to_vec(),
                    l.weight.val(),
                ),
                (format!("{name}.bias"), l.bias.dims().to_vec(), l.bias.val()),
            ]
        };
        let mut out = vec![flat("transformer.wte.weight".into(), self.wte.val())];
        for (i, b) in self.blocks.iter().enumerate() {
            out.extend(ln(&format!("transformer.h.{i}.ln_1"), &b.ln_1));
        }
        out.extend(ln("transformer.ln_f", &self.ln_f));
        out
    }

    fn eos_token_id(&self) -> Option<u32> {
        self.config.eos_token_id
    }

    fn hf_config(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "architectures".into(),
                serde_json::json!(["GPTJForCausalLM"]),
            );
            obj.insert("model_type".into(), "gptj".into());
        }
        v
    }
}
