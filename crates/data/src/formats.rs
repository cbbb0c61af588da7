//! Your own data: records of a local file in one of four formats → [`Example`]s.
//!
//! Files, by extension: `.jsonl` (one JSON object a line; blank lines skipped), `.json` (an array
//! of objects), `.csv` (a header row; every cell is a string, a `messages` cell holds the JSON
//! array), `.parquet` (rows as JSON; nested lists and groups kept). Errors name the file, the
//! record (`line N` of a JSONL or CSV file, `record N` of a JSON array, `row N` of a parquet file,
//! all 1-based) and the field.
//!
//! Formats ([`DatasetFormat`]); the loss is on the target tokens only:
//! - `text`: `{text}` + eos, loss on every token (plain language modelling).
//! - `completion`: `{prompt}` and `{completion}`: `prompt ++ completion ++ eos`, the two texts
//!   encoded separately and concatenated as given (no separator is added); loss on
//!   `completion ++ eos`.
//! - `alpaca`: `instruction`, `input` (optional; empty = none), `output`: the Stanford Alpaca
//!   prompt ([`alpaca_prompt`]) as the prompt and `output` as the completion.
//! - `messages`: OpenAI `[{"role", "content"}]` or ShareGPT `[{"from", "value"}]` turns
//!   (`human` → `user`, `gpt` → `assistant`, `system` → `system`), rendered with the model's chat
//!   template; loss on the assistant turns only, or on every token with `train_on_all_turns`.
//!   Assistant turn i is the text between `render(messages[..i], add_generation_prompt=True)`
//!   and `render(messages[..=i])` (so it includes what the template closes a turn with, e.g.
//!   ChatML's `<|im_end|>\n`); both must be prefixes of the whole conversation, as text and as
//!   token ids, else [`DataError::NotPrefixStable`]. No eos is appended: the template ends turns.
//!
//! `max_length` (tokens, eos included), the stated rule:
//! - `completion` / `alpaca`: a record that is too long keeps its whole target and loses prompt
//!   tokens **from the left** (the end of the prompt, next to the answer, stays) → truncated; if
//!   the target alone leaves no room for one prompt token, the record is dropped.
//! - `text`: the first `max_length` tokens are kept → truncated (the eos is then cut).
//! - `messages`: a conversation that is too long is dropped (cutting turns would teach the model
//!   to stop mid-answer).
//!
//! The counts come back in [`EncodeStats`](crate::encode::EncodeStats).
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chat::ChatMessage;
use crate::error::{DataError, Result};

mod encoder;
mod files;

pub use encoder::CustomEncoder;
pub use files::read_records;

/// `[data] dataset_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    Text,
    Completion,
    Alpaca,
    Messages,
}

/// Which field of a record holds what (`[data] text_field` etc.). Alpaca's are fixed:
/// `instruction`, `input`, `output`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldNames {
    pub text: String,
    pub prompt: String,
    pub completion: String,
    pub messages: String,
}

impl Default for FieldNames {
    fn default() -> Self {
        FieldNames {
            text: "text".into(),
            prompt: "prompt".into(),
            completion: "completion".into(),
            messages: "messages".into(),
        }
    }
}

/// Stanford Alpaca's prompt with an input (tatsu-lab/stanford_alpaca `train.py`,
/// `PROMPT_DICT["prompt_input"]`); the output follows `### Response:` directly, then eos.
pub const ALPACA_PROMPT_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
/// Stanford Alpaca's prompt without an input (`PROMPT_DICT["prompt_no_input"]`), used when
/// `input` is missing, null or empty (as `train.py`: `example.get("input", "") != ""`).
pub const ALPACA_PROMPT_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";

/// The Alpaca prompt of a record.
pub fn alpaca_prompt(instruction: &str, input: Option<&str>) -> String {
    match input.filter(|s| !s.is_empty()) {
        Some(input) => ALPACA_PROMPT_INPUT
            .replace("{instruction}", instruction)
            .replace("{input}", input),
        None => ALPACA_PROMPT_NO_INPUT.replace("{instruction}", instruction),
    }
}

/// A record as read from a file: where it is and its JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRecord {
    /// `line 3`, `record 3` or `row 3`.
    pub location: String,
    pub value: Value,
}

/// What one record says, in the terms of its format (alpaca already turned into a completion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordContent {
    Text(String),
    Completion { prompt: String, completion: String },
    Messages(Vec<ChatMessage>),
}

/// A parsed record and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomRecord {
    pub location: String,
    pub content: RecordContent,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Field access that names file, record and field in its errors.
struct At<'a> {
    path: &'a Path,
    location: &'a str,
}

impl At<'_> {
    fn wrong(&self, field: &str, expected: &'static str, found: &Value) -> DataError {
        DataError::WrongType {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            location: self.location.to_string(),
            expected,
            found: json_type(found),
        }
    }

    fn invalid(&self, field: &str, value: &str, reason: &str) -> DataError {
        DataError::InvalidValue {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            location: self.location.to_string(),
            value: value.chars().take(60).collect(),
            reason: reason.to_string(),
        }
    }

    fn object<'v>(&self, v: &'v Value) -> Result<&'v serde_json::Map<String, Value>> {
        v.as_object()
            .ok_or_else(|| self.wrong("(record)", "an object", v))
    }

    /// A required string field (null counts as missing).
    fn string(&self, obj: &serde_json::Map<String, Value>, field: &str) -> Result<String> {
        match obj.get(field) {
            None | Some(Value::Null) => Err(DataError::MissingField {
                path: self.path.to_path_buf(),
                field: field.to_string(),
                location: format!(
                    "{} (fields: {:?})",
                    self.location,
                    obj.keys().collect::<Vec<_>>()
                ),
            }),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(self.wrong(field, "a string", other)),
        }
    }

    /// An optional string field: missing or null → `None`.
    fn opt_string(
        &self,
        obj: &serde_json::Map<String, Value>,
        field: &str,
    ) -> Result<Option<String>> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong(field, "a string", other)),
        }
    }
}

/// Roles a `messages` record may use, and ShareGPT's `from` values mapped onto them.
fn role_of(name: &str) -> Option<&'static str> {
    Some(match name {
        "system" => "system",
        "user" | "human" => "user",
        "assistant" | "gpt" => "assistant",
        _ => return None,
    })
}

fn parse_messages(at: &At, field: &str, v: &Value) -> Result<Vec<ChatMessage>> {
    // CSV / parquet cells hold the array as JSON text.
    let parsed;
    let v = match v {
        Value::String(s) if s.trim_start().starts_with('[') => {
            parsed = serde_json::from_str::<Value>(s)
                .map_err(|_| at.invalid(field, s, "a string that is not a JSON array of turns"))?;
            &parsed
        }
        v => v,
    };
    let turns = v
        .as_array()
        .ok_or_else(|| at.wrong(field, "an array of turns", v))?;
    let mut out = Vec::with_capacity(turns.len());
    for (i, t) in turns.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let obj = t
            .as_object()
            .ok_or_else(|| at.wrong(&f, "an object {role, content} or {from, value}", t))?;
        let (role_key, content_key) = if obj.contains_key("role") {
            ("role", "content")
        } else if obj.contains_key("from") {
            ("from", "value")
        } else {
            return Err(DataError::MissingField {
                path: at.path.to_path_buf(),
                field: format!("{f}.role"),
                location: format!(
                    "{} (a turn needs `role` + `content` or `from` + `value`)",
                    at.location
                ),
            });
        };
        let role_name = match &obj[role_key] {
            Value::String(s) => s.as_str(),
            other => return Err(at.wrong(&format!("{f}.{role_key}"), "a string", other)),
        };
        let role = role_of(role_name).ok_or_else(|| {
            at.invalid(
                &format!("{f}.{role_key}"),
                role_name,
                "unknown role; accepted: system, user, assistant (ShareGPT `from`: system, human, gpt)",
            )
        })?;
        let content = match obj.get(content_key) {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => {
                return Err(DataError::MissingField {
                    path: at.path.to_path_buf(),
                    field: format!("{f}.{content_key}"),
                    location: at.location.to_string(),
                })
            }
            Some(other) => return Err(at.wrong(&format!("{f}.{content_key}"), "a string", other)),
        };
        if role == "assistant" && content.trim().is_empty() {
            return Err(at.invalid(
                &format!("{f}.{content_key}"),
                &content,
                "empty assistant turn",
            ));
        }
        out.push(ChatMessage::new(role, content));
    }
    if !out.iter().any(|m| m.role == "assistant") {
        return Err(at.invalid(
            field,
            &format!("{} turns", out.len()),
            "no assistant turn: nothing to learn from this conversation",
        ));
    }
    Ok(out)
}

/// Parses raw records in `format`; the first bad record is an error naming it.
pub fn parse_records(
    path: &Path,
    raw: &[RawRecord],
    format: DatasetFormat,
    fields: &FieldNames,
) -> Result<Vec<CustomRecord>> {
    raw.iter()
        .map(|r| {
            let at = At {
                path,
                location: &r.location,
            };
            let obj = at.object(&r.value)?;
            let content = match format {
                DatasetFormat::Text => RecordContent::Text(at.string(obj, &fields.text)?),
                DatasetFormat::Completion => RecordContent::Completion {
                    prompt: at.string(obj, &fields.prompt)?,
                    completion: at.string(obj, &fields.completion)?,
                },
                DatasetFormat::Alpaca => {
                    let instruction = at.string(obj, "instruction")?;
                    let input = at.opt_string(obj, "input")?;
                    RecordContent::Completion {
                        prompt: alpaca_prompt(&instruction, input.as_deref()),
                        completion: at.string(obj, "output")?,
                    }
                }
                DatasetFormat::Messages => {
                    let v = obj
                        .get(&fields.messages)
                        .ok_or_else(|| DataError::MissingField {
                            path: path.to_path_buf(),
                            field: fields.messages.clone(),
                            location: format!(
                                "{} (fields: {:?})",
                                r.location,
                                obj.keys().collect::<Vec<_>>()
                            ),
                        })?;
                    RecordContent::Messages(parse_messages(&at, &fields.messages, v)?)
                }
            };
            Ok(CustomRecord {
                location: r.location.clone(),
                content,
            })
        })
        .collect()
}

/// [`read_records`] + [`parse_records`]; an empty file is [`DataError::Empty`].
pub fn load_records(
    path: &Path,
    format: DatasetFormat,
    fields: &FieldNames,
) -> Result<Vec<CustomRecord>> {
    let raw = read_records(path)?;
    if raw.is_empty() {
        return Err(DataError::Empty {
            what: path.display().to_string(),
        });
    }
    parse_records(path, &raw, format, fields)
}

/// A seeded shuffle of `records` split into (train, validation), validation taking
/// `round(fraction × n)` of them (at least 1, and at least 1 left for training).
pub fn split_validation<T>(
    mut records: Vec<T>,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<T>, Vec<T>)> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(DataError::InvalidValue {
            path: PathBuf::from("[data]"),
            field: "validation_split".into(),
            location: "the run config".into(),
            value: fraction.to_string(),
            reason: "must be in (0, 1)".into(),
        });
    }
    if records.len() < 2 {
        return Err(DataError::NotEnough {
            what: "train/validation split".into(),
            class: "any".into(),
            needed: 2,
            available: records.len(),
        });
    }
    records.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let n = records.len();
    let n_val = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let train = records.split_off(n_val);
    Ok((train, records))
}
