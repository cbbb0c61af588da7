//! `dataset = "custom"`: your own records (qtune_data::formats) from a file, a folder or a Hub
//! dataset id (qtune_data::hub_dataset), split into train / validation / test and tokenized.
//!
//! - `path` (split `[data] split`, default `train`): the records, shuffled with `seed`.
//! - Test (optional): `test_file` (a folder or Hub id: its `test` split), or `test_split`: that
//!   fraction of all records (`round(f × n)`, seeded shuffle), held out first; refused when it
//!   selects none, leaves no training record, or when a test record's content equals a
//!   training or validation record's (duplicates would leak the test set into training).
//! - Validation: `validation_file` (a folder or Hub id: its `validation` split), else
//!   `validation_split` (default 0.05) of the records left after the test split.
//! - Training records cut to `max_train_samples`, validation ones to `max_eval_samples`.
//! - Generation prompts (exact match of the completion / last assistant turn, `Gold::Text`):
//!   the first `max(eval.generation_samples, training.eval_generate_samples)` validation
//!   records, and the first `eval.generation_samples` test records; `text` data has none.
//! - `messages` data is rendered with `[data] chat_template` / `chat_template_file`, else the
//!   model's own template, with the tokenizer's special tokens (`bos_token`, `eos_token`, …)
//!   in its context, as HF's `apply_chat_template`.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokenizers::Tokenizer;

use qtune_data::{
    load_split_records, resolve_data_files, split_validation, ChatTemplate, CustomEncoder,
    CustomRecord, DataError, DataFiles, DatasetFormat, EncodeConfig, HubOptions,
};

use crate::config::data::DEFAULT_VALIDATION_SPLIT;
use crate::config::RunConfig;
use crate::task::{take_shuffled, EvalItem, Gold, TaskData};

/// Mixed into `[data] seed` for the test split's shuffle (the validation split keeps `seed`'s,
/// so adding a test split changes nothing else about how a file is shuffled).
const TEST_SEED_SALT: u64 = 0x7e57;

/// [`crate::task::prepare`] for `dataset = "custom"` (see the module doc); `path` is
/// `[data] path` or an explicit file.
pub(crate) fn prepare_custom(
    cfg: &RunConfig,
    tokenizer: &Tokenizer,
    eos_id: u32,
    path: &str,
    hub: &HubOptions,
) -> Result<TaskData, DataError> {
    let d = &cfg.data;
    let format = d.dataset_format.ok_or_else(|| DataError::MissingField {
        path: "[data]".into(),
        field: "dataset_format".into(),
        location: "the run config".into(),
    })?;
    let fields = cfg.field_names();
    let rev = d.revision.as_deref();
    let config = d.config_name.as_deref();
    let split = d.split.as_deref().unwrap_or("train");
    let files = resolve_data_files(path, split, rev, config, hub)?;
    let records = load_split_records(&files, format, &fields)?;
    let other = |p: &str, split: &str| -> Result<(DataFiles, Vec<CustomRecord>), DataError> {
        // The same repo's other split reads the same config; another path has its own layout.
        let f = resolve_data_files(p, split, rev, config.filter(|_| p == path), hub)?;
        let recs = load_split_records(&f, format, &fields)?;
        Ok((f, recs))
    };
    // The test split first, so the validation split is taken from what is left.
    let (test_files, records, test_recs) = match (&d.test_file, d.test_split) {
        (Some(t), _) => {
            let (f, recs) = other(t, "test")?;
            if let Some(same) = f.files.iter().find(|p| files.files.contains(p)) {
                return Err(DataError::InvalidValue {
                    path: same.clone(),
                    field: "test_file".into(),
                    location: "[data]".into(),
                    value: t.clone(),
                    reason: format!("is also a file of the training data {}", files.name),
                });
            }
            (Some(f), records, recs)
        }
        (None, Some(fraction)) => {
            let (rest, test) = split_test(records, fraction, d.seed, &files.name)?;
            (Some(files.clone()), rest, test)
        }
        (None, None) => (None, records, Vec::new()),
    };
    let (val_files, (train_recs, val_recs)) = match &d.validation_file {
        Some(v) => {
            let (f, val) = other(v, "validation")?;
            (f, (take_shuffled(&records, None, d.seed), val))
        }
        None => (
            files.clone(),
            split_validation(
                records,
                d.validation_split.unwrap_or(DEFAULT_VALIDATION_SPLIT),
                d.seed,
            )?,
        ),
    };
    if let Some(tf) = &test_files {
        check_disjoint(
            &test_recs,
            tf,
            &[(&train_recs, &files), (&val_recs, &val_files)],
        )?;
    }
    let train_recs = take_shuffled(&train_recs, d.max_train_samples, d.seed);
    let n_val = d
        .max_eval_samples
        .unwrap_or(val_recs.len())
        .min(val_recs.len());
    let template = match format {
        DatasetFormat::Messages => Some(chat_template(cfg, tokenizer, eos_id)?),
        _ => None,
    };
    let train_path = PathBuf::from(&files.name);
    let enc = CustomEncoder {
        tokenizer,
        template: template.as_ref(),
        cfg: EncodeConfig {
            max_length: d.max_length,
            eos_token_id: eos_id,
        },
        train_on_all_turns: d.train_on_all_turns,
        path: &train_path,
    };
    let (train, _, train_stats) = enc.encode_all(&train_recs)?;
    let val_path = PathBuf::from(&val_files.name);
    let val_enc = CustomEncoder {
        path: &val_path,
        ..enc
    };
    let (validation, _, _) = val_enc.encode_all(&val_recs[..n_val])?;
    let max_prompt = d.max_length.saturating_sub(cfg.eval.max_new_tokens).max(1);
    let n_items = cfg
        .eval
        .generation_samples
        .max(cfg.training.eval_generate_samples);
    let eval_items = prompts(&val_enc, &val_recs, n_items, max_prompt)?;
    let what = |name: &str, split: &str| {
        format!(
            "{name} ({format:?}) {split} examples after encoding to max_length {}",
            d.max_length
        )
    };
    let (test, test_items) = match &test_files {
        Some(tf) => {
            let test_path = PathBuf::from(&tf.name);
            let test_enc = CustomEncoder {
                path: &test_path,
                ..enc
            };
            let (test, _, _) = test_enc.encode_all(&test_recs)?;
            if test.is_empty() {
                return Err(DataError::Empty {
                    what: what(&tf.name, "test"),
                });
            }
            let items = prompts(
                &test_enc,
                &test_recs,
                cfg.eval.generation_samples,
                max_prompt,
            )?;
            (test, items)
        }
        None => (Vec::new(), Vec::new()),
    };
    if train.is_empty() {
        return Err(DataError::Empty {
            what: what(&files.name, "training"),
        });
    }
    if validation.is_empty() {
        return Err(DataError::Empty {
            what: what(&val_files.name, "validation"),
        });
    }
    Ok(TaskData {
        task: d.dataset,
        train,
        validation,
        eval_items,
        test,
        test_items,
        train_stats,
        eos_id,
        pad_id: eos_id,
    })
}

/// The generation prompts of the first `n` records that have one.
fn prompts(
    enc: &CustomEncoder,
    recs: &[CustomRecord],
    n: usize,
    max_prompt: usize,
) -> Result<Vec<EvalItem>, DataError> {
    let mut items = Vec::new();
    for rec in recs {
        if items.len() >= n {
            break;
        }
        if let Some((prompt_ids, gold)) = enc.eval_prompt(rec, max_prompt)? {
            items.push(EvalItem {
                id: format!("{} {}", enc.path.display(), rec.location),
                prompt_ids,
                gold: Gold::Text(gold),
            });
        }
    }
    Ok(items)
}

/// `[data] test_split`: a seeded shuffle of `records` split into (rest, test), test taking
/// `round(fraction × n)`; refused when that is none or all of them.
pub fn split_test<T>(
    mut records: Vec<T>,
    fraction: f64,
    seed: u64,
    name: &str,
) -> Result<(Vec<T>, Vec<T>), DataError> {
    let n = records.len();
    let n_test = (n as f64 * fraction).round() as usize;
    if n_test == 0 || n_test >= n {
        return Err(DataError::InvalidValue {
            path: name.into(),
            field: "test_split".into(),
            location: "[data]".into(),
            value: fraction.to_string(),
            reason: format!(
                "of {n} records selects {n_test} for the test split: it would be {} (change                  test_split, or give a test_file)",
                if n_test == 0 { "empty" } else { "everything, leaving no training data" }
            ),
        });
    }
    records.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(
        seed ^ TEST_SEED_SALT,
    ));
    let rest = records.split_off(n_test);
    Ok((rest, records))
}

/// Refuses test records whose content equals a training or validation record's, naming the
/// first pair and the count.
fn check_disjoint(
    test: &[CustomRecord],
    test_files: &DataFiles,
    others: &[(&[CustomRecord], &DataFiles)],
) -> Result<(), DataError> {
    let mut seen: HashMap<String, (&str, &str)> = HashMap::new();
    for (recs, files) in others {
        for r in recs.iter() {
            seen.entry(format!("{:?}", r.content))
                .or_insert((files.name.as_str(), r.location.as_str()));
        }
    }
    let dups: Vec<(&CustomRecord, &(&str, &str))> = test
        .iter()
        .filter_map(|r| seen.get(&format!("{:?}", r.content)).map(|o| (r, o)))
        .collect();
    if let Some((r, (name, loc))) = dups.first() {
        return Err(DataError::InvalidValue {
            path: PathBuf::from(&test_files.name),
            field: "test".into(),
            location: r.location.clone(),
            value: format!("{} overlapping record(s)", dups.len()),
            reason: format!(
                "the test split overlaps the training/validation data: this record equals                  {name} {loc}; the test data must be held out (deduplicate the data)"
            ),
        });
    }
    Ok(())
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
