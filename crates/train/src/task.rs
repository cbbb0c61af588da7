//! From a run config to tokenized train/validation examples and held-back evaluation prompts.
//!
//! - SQuAD v2: the local copy is the official dev set only, so it is split by article
//!   (`validation_articles` articles held back, seeded); training examples are a seeded shuffle
//!   of the train articles' questions, cut to `max_train_samples`. The eval loss uses
//!   `max_eval_samples` validation questions; EM/F1 uses `generation_samples` further ones.
//! - Hate speech: qtune-data's balanced sample (1,000 train / 200 validation); EM is replaced by
//!   accuracy over greedy generations of the validation tweets.
//! - Custom (`dataset = "custom"`, qtune_data::formats): the records of `path`, shuffled with
//!   `seed`; `validation_split` (default 0.05) of them held back, or `validation_file`'s records;
//!   training records cut to `max_train_samples`, validation ones to `max_eval_samples`. The
//!   generation metric (exact match of the completion / last assistant turn, `Gold::Text`)
//!   decodes the first `generation_samples` validation records; `text` data has none.
//!   `messages` data is rendered with `[data] chat_template` / `chat_template_file`, else the
//!   model's own template, with the tokenizer's special tokens (`bos_token`, `eos_token`, …) in
//!   its context, as HF's `apply_chat_template`.
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokenizers::Tokenizer;

use qtune_data::{
    balanced_split, encode_hate_speech_train, encode_squad_dataset, encode_squad_prompt,
    hate_speech_prompt, load_hate_speech, load_records, load_squad, split_by_article,
    split_validation, ChatTemplate, CustomEncoder, DataError, DataSource, DatasetFormat, DatasetId,
    EncodeConfig, EncodeStats, Encoded, Example,
};

use crate::config::{RunConfig, Task};

/// SQuAD articles held back for validation + generation eval (of the 35 in the dev file).
pub const SQUAD_VALIDATION_ARTICLES: usize = 5;
/// Balanced hate-speech sample sizes (issue: 1,000 train, 200 validation).
pub const HATE_SPEECH_TRAIN: usize = 1000;
pub const HATE_SPEECH_VALIDATION: usize = 200;
/// GPT-J's `<|endoftext|>`: eos and pad of the random tiny model (pads are masked, their value
/// never matters; a checkpoint brings its own eos).
pub const GPTJ_EOS: u32 = 50256;

/// One held-back prompt for the end-of-run generation metric.
#[derive(Debug, Clone)]
pub struct EvalItem {
    /// SQuAD question id, or the tweet's CSV row.
    pub id: String,
    pub prompt_ids: Vec<u32>,
    pub gold: Gold,
}

#[derive(Debug, Clone)]
pub enum Gold {
    /// Gold answer texts; empty = impossible question.
    Answers(Vec<String>),
    /// Class index (0 hate speech, 1 offensive language, 2 neither).
    Class(usize),
    /// Custom data: the completion (or last assistant turn), scored by exact match.
    Text(String),
}

/// Everything the loop and the final evaluation read.
#[derive(Debug, Clone)]
pub struct TaskData {
    pub task: Task,
    pub train: Vec<Example>,
    pub validation: Vec<Example>,
    pub eval_items: Vec<EvalItem>,
    pub train_stats: EncodeStats,
    pub eos_id: u32,
    pub pad_id: u32,
}

fn take_shuffled<T: Clone>(xs: &[T], n: Option<usize>, seed: u64) -> Vec<T> {
    let mut v = xs.to_vec();
    v.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    if let Some(n) = n {
        v.truncate(n);
    }
    v
}

fn encoded(e: Encoded) -> Option<Example> {
    match e {
        Encoded::Fits(x) | Encoded::Truncated(x) => Some(x),
        Encoded::Dropped(_) => None,
    }
}

/// Loads, splits and tokenizes the configured dataset. Data errors (missing file, missing
/// column, malformed JSON, empty set) come back as qtune-data's typed errors.
pub fn prepare(
    cfg: &RunConfig,
    tokenizer: &Tokenizer,
    eos_id: u32,
    source: &DataSource,
) -> Result<TaskData, DataError> {
    let id = match cfg.data.dataset {
        Task::SquadV2 => DatasetId::SquadV2,
        Task::HateSpeech => DatasetId::HateSpeech,
        Task::Custom => {
            let path = cfg
                .data
                .path
                .as_deref()
                .ok_or_else(|| DataError::MissingField {
                    path: "[data]".into(),
                    field: "path".into(),
                    location: "the run config".into(),
                })?;
            return prepare_custom(cfg, tokenizer, eos_id, Path::new(path));
        }
    };
    prepare_from_file(cfg, tokenizer, eos_id, &source.locate(id)?)
}

/// [`prepare`] from an explicit file (SQuAD JSON, the Davidson CSV, or a custom data file).
pub fn prepare_from_file(
    cfg: &RunConfig,
    tokenizer: &Tokenizer,
    eos_id: u32,
    path: &std::path::Path,
) -> Result<TaskData, DataError> {
    let d = &cfg.data;
    // Which setting leaves a split empty, named before the encoder would blame max_length.
    let empty = |split: &str, cause: String| DataError::Empty {
        what: format!("{:?} {split} examples ({cause})", d.dataset),
    };
    let no_train = |n: usize| {
        if d.max_train_samples == Some(0) {
            empty("training", "data.max_train_samples = 0 selects none".into())
        } else {
            empty("training", format!("the training split has {n} examples"))
        }
    };
    let no_val = |n: usize| {
        if d.max_eval_samples == Some(0) {
            empty(
                "validation",
                "data.max_eval_samples = 0 selects none".into(),
            )
        } else {
            empty(
                "validation",
                format!(
                    "the validation split has {n} examples; half are kept for the eval loss, \
                     the rest for eval.generation_samples"
                ),
            )
        }
    };
    let enc = EncodeConfig {
        max_length: d.max_length,
        eos_token_id: eos_id,
    };
    // Generation prompts leave room for the answer.
    let max_prompt = d.max_length.saturating_sub(cfg.eval.max_new_tokens).max(1);
    let (train, validation, eval_items, train_stats) = match d.dataset {
        Task::Custom => return prepare_custom(cfg, tokenizer, eos_id, path),
        Task::SquadV2 => {
            let articles = load_squad(path)?;
            let split = split_by_article(&articles, SQUAD_VALIDATION_ARTICLES, d.seed)?;
            let train_q = take_shuffled(&split.train, d.max_train_samples, d.seed);
            if train_q.is_empty() {
                return Err(no_train(split.train.len()));
            }
            let (train, _, stats) = encode_squad_dataset(tokenizer, &train_q, enc)?;
            let val_q = take_shuffled(&split.validation, None, d.seed ^ 1);
            let n_val = d.max_eval_samples.unwrap_or(200).min(val_q.len() / 2);
            if n_val == 0 {
                return Err(no_val(val_q.len()));
            }
            let (validation, _, _) = encode_squad_dataset(tokenizer, &val_q[..n_val], enc)?;
            let mut items = Vec::new();
            for ex in &val_q[n_val..] {
                if items.len() >= cfg.eval.generation_samples {
                    break;
                }
                if let Some((prompt_ids, _cut)) = encode_squad_prompt(tokenizer, ex, max_prompt)? {
                    items.push(EvalItem {
                        id: ex.id.clone(),
                        prompt_ids,
                        gold: Gold::Answers(ex.answers.clone()),
                    });
                }
            }
            (train, validation, items, stats)
        }
        Task::HateSpeech => {
            let tweets = load_hate_speech(path)?;
            let split = balanced_split(&tweets, HATE_SPEECH_TRAIN, HATE_SPEECH_VALIDATION, d.seed)?;
            let train_t = take_shuffled(&split.train, d.max_train_samples, d.seed);
            if train_t.is_empty() {
                return Err(no_train(split.train.len()));
            }
            let mut stats = EncodeStats {
                total: train_t.len(),
                ..Default::default()
            };
            let mut train = Vec::new();
            for t in &train_t {
                match encoded(encode_hate_speech_train(tokenizer, &t.text, t.class, enc)?) {
                    Some(x) => train.push(x),
                    None => stats.dropped += 1,
                }
            }
            let n_val = d
                .max_eval_samples
                .unwrap_or(100)
                .min(split.validation.len() / 2);
            if n_val == 0 {
                return Err(no_val(split.validation.len()));
            }
            let mut validation = Vec::new();
            for t in &split.validation[..n_val] {
                validation.extend(encoded(encode_hate_speech_train(
                    tokenizer, &t.text, t.class, enc,
                )?));
            }
            let mut items = Vec::new();
            for t in split.validation[n_val..]
                .iter()
                .take(cfg.eval.generation_samples)
            {
                let ids = qtune_data::encode_text(tokenizer, &hate_speech_prompt(&t.text))?;
                if ids.len() <= max_prompt {
                    items.push(EvalItem {
                        id: format!("row-{}", t.row),
                        prompt_ids: ids,
                        gold: Gold::Class(t.class),
                    });
                }
            }
            (train, validation, items, stats)
        }
    };
    let too_long = |split| {
        empty(
            split,
            format!(
                "every example is longer than data.max_length = {}",
                d.max_length
            ),
        )
    };
    if train.is_empty() {
        return Err(too_long("training"));
    }
    if validation.is_empty() {
        return Err(too_long("validation"));
    }
    Ok(TaskData {
        task: d.dataset,
        train,
        validation,
        eval_items,
        train_stats,
        eos_id,
        pad_id: eos_id,
    })
}

/// [`prepare`] for `dataset = "custom"` (see the module doc).
fn prepare_custom(
    cfg: &RunConfig,
    tokenizer: &Tokenizer,
    eos_id: u32,
    path: &Path,
) -> Result<TaskData, DataError> {
    let d = &cfg.data;
    let format = d.dataset_format.ok_or_else(|| DataError::MissingField {
        path: "[data]".into(),
        field: "dataset_format".into(),
        location: "the run config".into(),
    })?;
    let fields = cfg.field_names();
    let records = load_records(path, format, &fields)?;
    let (val_path, (train_recs, val_recs)) = match &d.validation_file {
        Some(v) => {
            let v = PathBuf::from(v);
            let val = load_records(&v, format, &fields)?;
            (v, (take_shuffled(&records, None, d.seed), val))
        }
        None => (
            path.to_path_buf(),
            split_validation(records, d.validation_split.unwrap_or(0.05), d.seed)?,
        ),
    };
    let train_recs = take_shuffled(&train_recs, d.max_train_samples, d.seed);
    let n_val = d
        .max_eval_samples
        .unwrap_or(val_recs.len())
        .min(val_recs.len());
    let template = match format {
        DatasetFormat::Messages => Some(chat_template(cfg, tokenizer, eos_id)?),
        _ => None,
    };
    let enc = CustomEncoder {
        tokenizer,
        template: template.as_ref(),
        cfg: EncodeConfig {
            max_length: d.max_length,
            eos_token_id: eos_id,
        },
        train_on_all_turns: d.train_on_all_turns,
        path,
    };
    let (train, _, train_stats) = enc.encode_all(&train_recs)?;
    let val_enc = CustomEncoder {
        path: &val_path,
        ..enc
    };
    let (validation, _, _) = val_enc.encode_all(&val_recs[..n_val])?;
    let max_prompt = d.max_length.saturating_sub(cfg.eval.max_new_tokens).max(1);
    let mut eval_items = Vec::new();
    for rec in &val_recs {
        if eval_items.len() >= cfg.eval.generation_samples {
            break;
        }
        if let Some((prompt_ids, gold)) = val_enc.eval_prompt(rec, max_prompt)? {
            eval_items.push(EvalItem {
                id: format!("{} {}", val_path.display(), rec.location),
                prompt_ids,
                gold: Gold::Text(gold),
            });
        }
    }
    let what = |split: &str| {
        format!(
            "{} ({format:?}) {split} examples after encoding to max_length {}",
            path.display(),
            d.max_length
        )
    };
    if train.is_empty() {
        return Err(DataError::Empty {
            what: what("training"),
        });
    }
    if validation.is_empty() {
        return Err(DataError::Empty {
            what: what("validation"),
        });
    }
    Ok(TaskData {
        task: d.dataset,
        train,
        validation,
        eval_items,
        train_stats,
        eos_id,
        pad_id: eos_id,
    })
}

/// The chat template of a `messages` run: `[data] chat_template`, `chat_template_file`, else
/// the model's (GGUF `tokenizer.chat_template` / `tokenizer_config.json`), with the special
/// tokens HF puts in the template's context.
pub fn chat_template(
    cfg: &RunConfig,
    tokenizer: &Tokenizer,
    eos_id: u32,
) -> Result<ChatTemplate, DataError> {
    let d = &cfg.data;
    let model_dir = crate::build::model_dir(&cfg.model).map_err(|e| DataError::ChatTemplate {
        template: "the model's".into(),
        message: e.to_string(),
    })?;
    let (name, source) = if let Some(t) = &d.chat_template {
        ("[data] chat_template".to_string(), t.clone())
    } else if let Some(f) = &d.chat_template_file {
        let text = std::fs::read_to_string(f).map_err(|e| DataError::Io {
            path: f.into(),
            source: e,
        })?;
        (f.clone(), text)
    } else {
        let Some(dir) = &model_dir else {
            return Err(DataError::NoChatTemplate(
                "`dataset_format = \"messages\"` needs a chat template and the random model \
                 has none: set [data] chat_template (Jinja text) or chat_template_file"
                    .into(),
            ));
        };
        let t = qtune_models::chat_template(dir).map_err(|e| DataError::ChatTemplate {
            template: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let Some(t) = t else {
            return Err(DataError::NoChatTemplate(format!(
                "`dataset_format = \"messages\"` needs a chat template and {} has none \
                 (no GGUF tokenizer.chat_template / tokenizer_config.json chat_template): set \
                 [data] chat_template (Jinja text) or chat_template_file",
                dir.display()
            )));
        };
        (dir.display().to_string(), t)
    };
    let mut template = ChatTemplate::new(name, &source)?;
    for (var, token) in special_tokens(model_dir.as_deref(), tokenizer, eos_id) {
        template = template.with_var(var, &token);
    }
    Ok(template)
}

/// HF's `special_tokens_map` strings: `eos_token` from the run's eos id; `bos_token`,
/// `unk_token`, `pad_token` from the GGUF metadata ids or `tokenizer_config.json`.
fn special_tokens(
    model_dir: Option<&Path>,
    tokenizer: &Tokenizer,
    eos_id: u32,
) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(dir) = model_dir {
        if let Ok(Some(g)) = qtune_llama::gguf_path(dir) {
            if let Ok(f) = qtune_gguf::GgufFile::open(&g) {
                for (var, key) in [
                    ("bos_token", "tokenizer.ggml.bos_token_id"),
                    ("unk_token", "tokenizer.ggml.unknown_token_id"),
                    ("pad_token", "tokenizer.ggml.padding_token_id"),
                ] {
                    if let Some(tok) = f
                        .get_u32_opt(key)
                        .ok()
                        .flatten()
                        .and_then(|id| tokenizer.id_to_token(id))
                    {
                        out.push((var, tok));
                    }
                }
            }
        } else if let Ok(text) = std::fs::read_to_string(dir.join("tokenizer_config.json")) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                for var in ["bos_token", "unk_token", "pad_token"] {
                    let tok = match v.get(var) {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(serde_json::Value::Object(o)) => o
                            .get("content")
                            .and_then(|c| c.as_str())
                            .map(str::to_string),
                        _ => None,
                    };
                    out.extend(tok.map(|t| (var, t)));
                }
            }
        }
    }
    if let Some(eos) = tokenizer.id_to_token(eos_id) {
        out.push(("eos_token", eos));
    }
    out
}
