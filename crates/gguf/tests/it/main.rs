//! qtune-gguf integration tests (one binary; see STYLE.md §6).

mod common;
mod malformed;
mod props;
mod smollm2;
mod tiny;
