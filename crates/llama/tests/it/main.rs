//! Llama-family parity with HF transformers on tiny random fixtures (tests/fixtures/llama_tiny,
//! llama_tied, qwen2_tiny, mistral_tiny; made by tests/fixtures/llama_tiny/make.py) and the
//! real SmolLM2-135M-Instruct GGUF (tests/fixtures/smollm2; skipped when the file is absent).
mod common;
mod config;
mod model;
mod smollm2;
