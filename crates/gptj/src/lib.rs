//! GPT-J as Hugging Face's `GPTJForCausalLM`: config, model, weight loading (safetensors,
//! sharded, Hub), tokenizer glue, generation with a KV cache, and sliding-window perplexity.
mod beam;
mod build;
mod config;
mod error;
mod fixed;
mod generate;
pub mod hub;
mod layers;
mod load;
mod lora;
mod model;
pub mod names;
mod perplexity;
pub mod tokenizer;

pub use config::{Activation, GptjConfig};
pub use error::GptjError;
pub use fixed::{graph_steps, set_graph_steps};
pub use generate::{EarlyStopping, GenerationConfig};
pub use layers::{Attention, Block, BlockContext, FixedKv, KvSlot, LayerKv, LayerNorm, Mlp};
pub use load::{LoadOptions, WeightFiles};
pub use lora::{LoraParam, ParamCounts};
pub use model::{Gptj, KvCache, IGNORE_INDEX, LOSS_CHUNK_ELEMS};
pub use perplexity::Perplexity;
pub use qtune_quant::QuantSpec;
