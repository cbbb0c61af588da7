//! GPT-J as Hugging Face's `GPTJForCausalLM`: config, layers, weight loading (safetensors,
//! sharded, Hub) and its [`qtune_lm::CausalLm`] implementation, through which it gets the
//! forward, loss, generation, perplexity and adapter I/O of qtune-lm.
mod breakdown;
mod build;
mod config;
mod layers;
mod load;
mod lora;
mod model;
pub mod names;

pub use config::{Activation, GptjConfig};
pub use layers::{apply_rotary, Attention, Block, LayerNorm, Mlp};
pub use model::Gptj;
pub use qtune_lm::{
    hub, tokenizer, BlockContext, CausalLm, EarlyStopping, FixedKv, GenerationConfig, KvCache,
    KvSlot, LayerKv, LmError as GptjError, LoadOptions, LoraParam, ParamCounts, Perplexity,
    QuantSpec, WeightFiles, IGNORE_INDEX, LOSS_CHUNK_ELEMS,
};
