//! qtune-gptj integration tests (one binary): HF parity on tests/fixtures/gptj_tiny.
mod common;
mod config;
mod files;
mod generation;
mod lora;
mod model;
mod quant;
mod tokenizer;
