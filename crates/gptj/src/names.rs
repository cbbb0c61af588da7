//! HF tensor/module names of GPT-J and the model's linears by those names.

use burn::tensor::backend::Backend;
use qtune_lora::Linear;

use crate::model::Gptj;

/// The projections of a block, in HF's module order, with their path inside `transformer.h.{i}`.
pub const BLOCK_LINEARS: [&str; 6] = [
    "attn.q_proj",
    "attn.k_proj",
    "attn.v_proj",
    "attn.out_proj",
    "mlp.fc_in",
    "mlp.fc_out",
];

/// `transformer.h.{i}.{suffix}`.
pub fn block_name(i: usize, suffix: &str) -> String {
    format!("transformer.h.{i}.{suffix}")
}

impl<B: Backend> Gptj<B> {
    /// Every linear with its HF module path (`transformer.h.0.attn.q_proj`, …, `lm_head`).
    pub fn linears(&self) -> Vec<(String, &Linear<B>)> {
        let mut out = Vec::with_capacity(self.blocks.len() * 6 + 1);
        for (i, b) in self.blocks.iter().enumerate() {
            let ls = [
                &b.attn.q_proj,
                &b.attn.k_proj,
                &b.attn.v_proj,
                &b.attn.out_proj,
                &b.mlp.fc_in,
                &b.mlp.fc_out,
            ];
            for (suffix, l) in BLOCK_LINEARS.iter().zip(ls) {
                out.push((block_name(i, suffix), l));
            }
        }
        out.push(("lm_head".to_string(), &self.lm_head));
        out
    }

    /// As [`Gptj::linears`], mutably (e.g. to set adapters read from a PEFT file).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        let mut out = Vec::with_capacity(self.blocks.len() * 6 + 1);
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let ls = [
                &mut b.attn.q_proj,
                &mut b.attn.k_proj,
                &mut b.attn.v_proj,
                &mut b.attn.out_proj,
                &mut b.mlp.fc_in,
                &mut b.mlp.fc_out,
            ];
            for (suffix, l) in BLOCK_LINEARS.iter().zip(ls) {
                out.push((block_name(i, suffix), l));
            }
        }
        out.push(("lm_head".to_string(), &mut self.lm_head));
        out
    }
}
