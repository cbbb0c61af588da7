//! qtune-data integration tests (one binary, see STYLE.md §6). Tests that need the real data read
//! `QTUNE_DATA_DIR` and print why they skip without it.

mod batch;
mod chat;
mod common;
mod encode;
mod formats;
mod formats_parquet;
mod hate_speech;
mod hub_dataset;
mod hub_download;
mod hub_parquet;
mod metrics;
mod pack;
mod sampler;
mod source;
mod squad;
mod truncation;
mod wikitext;
