//! `Llama`: HF `LlamaForCausalLM` (`model.embed_tokens` → `model.layers` → `model.norm` →
//! `lm_head`, tied to the embedding when `tie_word_embeddings`), and its [`CausalLm`]
//! implementation: forward, loss, generation, perplexity and adapter I/O come from qtune-lm.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use qtune_kernels::QBackend;
use qtune_lm::{CausalLm, DecoderBlock, Positions};
use qtune_lora::Linear;

use crate::config::LlamaConfig;
use crate::layers::{Block, RmsNorm};

/// A block's projections in HF's module order, with their path inside `model.layers.{i}`.
pub const BLOCK_LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

/// `model.layers.{i}.{suffix}`.
pub fn layer_name(i: usize, suffix: &str) -> String {
    format!("model.layers.{i}.{suffix}")
}

#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    /// `model.embed_tokens` `[vocab_size, hidden_size]`, frozen.
    pub embed_tokens: Param<Tensor<B, 2>>,
    pub layers: Vec<Block<B>>,
    pub norm: RmsNorm<B>,
    /// `[vocab_size, hidden_size]`, no bias, kept dense (the embedding's values when tied).
    pub lm_head: Linear<B>,
    #[module(skip)]
    pub config: LlamaConfig,
    #[module(skip)]
    pub positions: Positions,
}

impl<B: Backend> Llama<B> {
    fn block_linears(b: &Block<B>) -> [&Linear<B>; 7] {
        let (a, m) = (&b.self_attn, &b.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }
}

impl<B: QBackend> CausalLm<B> for Llama<B> {
    fn model_type(&self) -> &str {
        &self.config.model_type
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> usize {
        self.config.max_position_embeddings
    }

    fn num_layers(&self) -> usize {
        self.layers.len()
    }

    fn positions(&self) -> Positions {
        self.positions.clone()
    }

    fn embedding(&self) -> &Param<Tensor<B, 2>> {
        &self.embed_tokens
    }

    fn base_params(&self) -> u64 {
        self.config.num_params()
    }

    fn layer(&self, i: usize) -> &dyn DecoderBlock<B> {
        &self.layers[i]
    }

    /// `model.norm`.
    fn final_norm<const D: usize>(&self, h_last: Tensor<B, D>) -> Tensor<B, D> {
        self.norm.forward(h_last)
    }

    fn lm_head(&self) -> &Linear<B> {
        &self.lm_head
    }

    fn visit_block<V: burn::module::ModuleVisitor<B>>(&self, i: usize, visitor: &mut V) {
        burn::module::Module::visit(&self.layers[i], visitor);
    }

    fn linears(&self) -> Vec<(String, &Linear<B>)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, b) in self.layers.iter().enumerate() {
            for (suffix, l) in BLOCK_LINEARS.iter().zip(Self::block_linears(b)) {
                out.push((layer_name(i, suffix), l));
            }
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }

    fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        let mut out = Vec::with_capacity(self.layers.len() * 7 + 1);
        for (i, b) in self.layers.iter_mut().enumerate() {
            let (a, m) = (&mut b.self_attn, &mut b.mlp);
            let ls = [
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ];
            for (suffix, l) in BLOCK_LINEARS.iter().zip(ls) {
                out.push((layer_name(i, suffix), l));
            }
        }
        out.push(("lm_head".to_string(), &mut self.lm_head));
        out
    }

    fn other_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<B, 1>)> {
        let e = self.embed_tokens.val();
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            e.dims().to_vec(),
            e.flatten(0, 1),
        )];
        let norm = |name: String, n: &RmsNorm<B>| (name, n.weight.dims().to_vec(), n.weight.val());
        for (i, b) in self.layers.iter().enumerate() {
            out.push(norm(
                layer_name(i, "input_layernorm.weight"),
                &b.input_layernorm,
            ));
            out.push(norm(
                layer_name(i, "post_attention_layernorm.weight"),
                &b.post_attention_layernorm,
            ));
        }
        out.push(norm("model.norm.weight".into(), &self.norm));
        out
    }

    fn eos_token_id(&self) -> Option<u32> {
        self.config.eos_id()
    }

    fn hf_config(&self) -> serde_json::Value {
        let arch = match self.config.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let mut v = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("architectures".into(), serde_json::json!([arch]));
        }
        v
    }

    fn tied_head(&self) -> bool {
        self.config.tie_word_embeddings
    }
}
