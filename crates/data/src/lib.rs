//! qtune-data: the three datasets of the project, their exact prompts, truncation, batching with
//! loss masks, resumable shuffling, and the metrics; and a user's own files ([`formats`]: text,
//! completion, Alpaca, chat `messages` rendered with the model's [`chat`] template).
//!
//! Flow: [`DataSource::locate`] → `load_*` → split ([`split_by_article`], [`balanced_split`]) →
//! `encode_*` (prompt + completion → [`Example`] with labels on the completion only) →
//! [`Sampler`] picks indices → [`collate`] pads to a [`Batch`] (with packing, [`Packing`] groups
//! the examples into rows once and [`collate_packed`] lays out the sampled rows) → the model;
//! generated text → [`squad_v2_eval`] / [`classification_eval`].
//!
//! A `tokenizers::Tokenizer` is passed in; building GPT-J's lives in qtune-gptj.

pub mod batch;
pub mod chat;
pub mod encode;
pub mod error;
pub mod formats;
pub mod hate_speech;
pub mod hub_configs;
pub mod hub_dataset;
pub mod metrics;
pub mod pack;
pub mod parquet_hub;
pub mod prompt;
pub mod sampler;
pub mod source;
pub mod squad;
pub mod wikitext;

pub use batch::{collate, collate_prompts, Batch, Example, Padding, IGNORE_INDEX};
pub use chat::{ChatMessage, ChatTemplate};
pub use encode::{
    encode_hate_speech_train, encode_prompt_completion, encode_squad_dataset, encode_squad_prompt,
    encode_squad_train, encode_text, token_id, DropReason, EncodeConfig, EncodeStats, Encoded,
};
pub use error::{DataError, Result};
pub use formats::{
    alpaca_prompt, load_records, parse_records, read_records, split_validation, CustomEncoder,
    CustomRecord, DatasetFormat, FieldNames, RawRecord, RecordContent,
};
pub use hate_speech::{balanced_split, load_hate_speech, HateSpeechSplit, Tweet};
pub use hub_dataset::{load_split_records, resolve_data_files, split_files, DataFiles, HubOptions};
pub use metrics::classification::{
    classification_eval, label_from_generation, ClassificationReport,
};
pub use metrics::exact::{exact_match_eval, ExactMatchReport};
pub use metrics::squad::{answer_from_generation, squad_v2_eval, SquadScores};
pub use pack::{collate_packed, PackStrategy, Packing};
pub use prompt::{
    hate_speech_completion, hate_speech_prompt, squad_completion, squad_prompt, squad_text,
    HATE_SPEECH_LABELS, SQUAD_NO_ANSWER,
};
pub use sampler::{Position, Sampler};
pub use source::{
    data_dir_or_skip, data_file_or_skip, mirror_present, report_skip, DataSource, DatasetId,
};
pub use squad::{load_squad, split_by_article, SquadArticle, SquadExample, SquadSplit};
pub use wikitext::load_wikitext_raw;
