//! GPT-J's LoRA parameter counts from its config alone (nothing allocated).

use qtune_lm::ParamCounts;
use qtune_lora::LoraConfig;

use crate::config::GptjConfig;

/// `(module path, in, out)` of every linear of a config, HF order, `lm_head` last.
fn linear_shapes(cfg: &GptjConfig) -> Vec<(String, usize, usize, bool)> {
    let (d, f) = (cfg.n_embd, cfg.inner_dim());
    let mut out = Vec::new();
    for i in 0..cfg.n_layer {
        for (s, inp, o) in [
            ("attn.q_proj", d, d),
            ("attn.k_proj", d, d),
            ("attn.v_proj", d, d),
            ("attn.out_proj", d, d),
            ("mlp.fc_in", d, f),
            ("mlp.fc_out", f, d),
        ] {
            out.push((crate::names::block_name(i, s), inp, o, false));
        }
    }
    out.push(("lm_head".to_string(), d, cfg.vocab_size, true));
    out
}

impl GptjConfig {
    /// Parameter counts of this model with `lora` applied, from the shapes alone (nothing is
    /// allocated, so this works for GPT-J-6B on any machine).
    pub fn lora_param_counts(&self, lora: &LoraConfig) -> ParamCounts {
        let trainable: u64 = linear_shapes(self)
            .iter()
            .filter(|(name, _, _, head)| lora.target_modules.matches(name, *head))
            .map(|(_, i, o, _)| (lora.r * (i + o)) as u64)
            .sum();
        ParamCounts {
            trainable,
            all: self.num_params() + trainable,
        }
    }
}
