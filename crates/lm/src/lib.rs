//! The model-agnostic layer between the LoRA linears and the model families: the
//! [`CausalLm`] seam, block context (mask, rotary angles, dropout seed) and KV caches, the
//! chunked loss, generation (greedy, sampling, beam, penalties; batch-1 greedy as a replayed
//! device graph), sliding-window perplexity, LoRA attachment and PEFT adapter I/O, checkpoint
//! tensor sources, tokenizers and Hub folders, and the bitsandbytes-serialized export of a
//! quantized base (`bnb_export`). GPT-J (`qtune-gptj`) and the Llama family
//! (`qtune-llama`) implement [`CausalLm`]; training, the CLI and xtask work through it.
mod beam;
pub mod bnb_export;
mod context;
mod error;
pub mod fixed;
pub mod fixtures;
mod generate;
pub mod hub;
mod lm;
mod lora;
pub mod merge;
mod perplexity;
pub mod prefetch;
pub mod source;
pub mod tokenizer;

pub use context::{
    cache_kv, frozen, host_i64, mix_seed, rope_cache_kv, to_dtype, BlockContext, FixedKv, KvCache,
    KvSlot, LayerKv, Positions, TokenInputs,
};
pub use error::LmError;
pub use generate::{
    device_graphs_from_env, device_graphs_setting, generate_batched, length_order, EarlyStopping,
    GenerationConfig, DEFAULT_GRAPH_STEPS, DEVICE_GRAPHS_ENV,
};
pub use lm::{
    loss_chunk_elems, set_loss_chunk_elems, CausalLm, DecoderBlock, IGNORE_INDEX, LOSS_CHUNK_ELEMS,
};
pub use lora::{peft_key, LoraParam, ParamCounts};
pub use merge::MergeReport;
pub use perplexity::Perplexity;
pub use qtune_lora::merge::ExportDType;
pub use qtune_quant::QuantSpec;
pub use source::{LoadOptions, WeightFiles};
