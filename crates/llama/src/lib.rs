//! The Llama family as Hugging Face's `LlamaForCausalLM` — Llama 2/3.x, Mistral (sliding window),
//! Qwen2 (q/k/v bias), SmolLM2, TinyLlama: config (incl. `rope_scaling` linear/llama3,
//! grouped-query attention, tied embeddings), layers (RMSNorm, rotate-half RoPE, SwiGLU MLP),
//! loading from HF safetensors folders and GGUF files, and its [`qtune_lm::CausalLm`]
//! implementation, through which it gets the forward, loss, generation, perplexity and adapter
//! I/O of qtune-lm.
mod build;
mod config;
mod layers;
mod load;
mod model;

pub use config::{LlamaConfig, RopeScaling};
pub use layers::{repeat_kv, rotate_half, Attention, Block, Mlp, RmsNorm};
pub use load::{config_from_gguf, gguf_path};
pub use model::{layer_name, Llama, BLOCK_LINEARS};
