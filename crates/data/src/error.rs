//! One error type for the crate. Every variant names the file, field or column it is about, so a
//! user sees "labeled_data.csv: missing column `tweet`" rather than "missing field".

use std::path::PathBuf;

/// Everything that can go wrong while finding, loading, encoding or batching data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: malformed JSON")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} {location}: malformed JSON")]
    JsonRecord {
        path: PathBuf,
        location: String,
        source: serde_json::Error,
    },
    #[error("{path}: malformed CSV (record {record})")]
    Csv {
        path: PathBuf,
        record: u64,
        source: csv::Error,
    },
    #[error("{path}: missing column `{column}` (header is {header:?})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        header: Vec<String>,
    },
    #[error("{path}: missing or invalid field `{field}` at {location}")]
    MissingField {
        path: PathBuf,
        field: String,
        location: String,
    },
    #[error("{path}: invalid value {value:?} in `{field}` at {location}: {reason}")]
    InvalidValue {
        path: PathBuf,
        field: String,
        location: String,
        value: String,
        reason: String,
    },
    #[error("{what}: dataset is empty")]
    Empty { what: String },
    #[error("{what}: need {needed} examples of class `{class}`, have {available}")]
    NotEnough {
        what: String,
        class: String,
        needed: usize,
        available: usize,
    },
    #[error(
        "{path}: sha256 is {got}, the manifest expects {expected} for `{dataset}` \
         (a different version of the file? point at it explicitly to skip the check)"
    )]
    Checksum {
        path: PathBuf,
        dataset: String,
        expected: String,
        got: String,
    },
    #[error(
        "dataset `{dataset}` not found: set QTUNE_DATA_DIR to a folder holding `{file}` \
         (see datasets/manifest.json), or allow the Hugging Face Hub download{hint}"
    )]
    NotFound {
        dataset: String,
        file: String,
        hint: String,
    },
    #[error(
        "dataset `{dataset}`: the Hub copy ({hub}) is in a format qtune does not read; \
         download `{file}` from {url} and put it at $QTUNE_DATA_DIR/{file}"
    )]
    HubFormatUnsupported {
        dataset: String,
        /// `repo` `file` (format), e.g. "rajpurkar/squad_v2 `…parquet` (parquet)".
        hub: String,
        file: String,
        url: String,
    },
    #[error("{path}: cannot read parquet: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("dataset `{dataset}`: Hugging Face Hub download of {repo} `{file}` failed")]
    Hub {
        dataset: String,
        repo: String,
        file: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("Hub dataset `{id}` (split {split}, revision {revision}): {reason}")]
    HubDataset {
        id: String,
        split: String,
        revision: String,
        reason: String,
    },
    #[error(
        "{name}: no data files (.parquet, .jsonl, .json, .csv) for split `{split}`; files \
         (first 20): {files:?}"
    )]
    NoSplit {
        name: String,
        split: String,
        files: Vec<String>,
    },
    /// A `datasets` config that a dataset repo does not have, or that must be named.
    #[error("{name}: {reason}")]
    DatasetConfig { name: String, reason: String },
    #[error("datasets/manifest.json: {0}")]
    Manifest(String),
    #[error("tokenizer failed on {what}: {message}")]
    Tokenizer { what: String, message: String },
    #[error("tokenizer has no token {token:?}")]
    UnknownToken { token: String },
    #[error("chat template `{template}`: {message}")]
    ChatTemplate { template: String, message: String },
    #[error("chat template `{template}` raised an exception: {message}")]
    TemplateRaised { template: String, message: String },
    #[error(
        "chat template `{template}` is not prefix-stable on {path} {location}: {detail} \
         (qtune finds each assistant turn by rendering the conversation up to it; pass \
         `train_on_all_turns = true` or another `chat_template`)"
    )]
    NotPrefixStable {
        path: PathBuf,
        location: String,
        template: String,
        detail: String,
    },
    #[error("{path} {location}: {source}")]
    InRecord {
        path: PathBuf,
        location: String,
        source: Box<DataError>,
    },
    #[error("{path}: field `{field}` at {location} must be {expected}, found {found}")]
    WrongType {
        path: PathBuf,
        field: String,
        location: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{path}: unsupported file type (expected .jsonl, .json, .csv or .parquet)")]
    UnsupportedFile { path: PathBuf },
    #[error("{0}")]
    NoChatTemplate(String),
    #[error("batch: {0}")]
    Batch(String),
    #[error("predictions: {0}")]
    Predictions(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
    /// For `map_err`: a CSV error at `record` of `path` (0: the header or opening the file).
    pub(crate) fn csv(path: &std::path::Path, record: u64) -> impl FnOnce(csv::Error) -> Self + '_ {
        move |source| DataError::Csv {
            path: path.to_path_buf(),
            record,
            source,
        }
    }
    pub(crate) fn tokenizer(what: impl Into<String>, e: impl std::fmt::Display) -> Self {
        DataError::Tokenizer {
            what: what.into(),
            message: e.to_string(),
        }
    }
}

/// A CSV reader's header row; `path` names the source in errors.
pub(crate) fn csv_header<R: std::io::Read>(
    rdr: &mut csv::Reader<R>,
    path: &std::path::Path,
) -> Result<Vec<String>> {
    Ok(rdr
        .headers()
        .map_err(DataError::csv(path, 0))?
        .iter()
        .map(str::to_string)
        .collect())
}
