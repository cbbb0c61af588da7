//! From a run config to tokenized train/validation examples and held-back evaluation prompts.
//!
//! - SQuAD v2: the local copy is the official dev set only, so it is split by article
//!   (`validation_articles` articles held back, seeded); training examples are a seeded shuffle
//!   of the train articles' questions, cut to `max_train_samples`. The eval loss uses
//!   `max_eval_samples` validation questions; EM/F1 uses `generation_samples` further ones.
//! - Hate speech: qtune-data's balanced sample (1,000 train / 200 validation); EM is replaced by
//!   accuracy over greedy generations of the validation tweets.
//! - Custom (`dataset = "custom"`): see [`crate::custom`] (train / validation / test splits of
//!   your own records, from a file, a folder or a Hub dataset id).
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tokenizers::Tokenizer;

use qtune_data::{
    balanced_split, encode_hate_speech_train, encode_squad_dataset, encode_squad_prompt,
    hate_speech_prompt, load_hate_speech, load_squad, split_by_article, DataError, DataSource,
    DatasetId, EncodeConfig, EncodeStats, Encoded, Example, HubOptions,
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
    /// Held-back prompts for the generation metric (validation records).
    pub eval_items: Vec<EvalItem>,
    /// `[data] test_split` / `test_file` (custom data): evaluated once after training.
    pub test: Vec<Example>,
    /// Generation prompts of the test records.
    pub test_items: Vec<EvalItem>,
    pub train_stats: EncodeStats,
    pub eos_id: u32,
    pub pad_id: u32,
}

pub(crate) fn take_shuffled<T: Clone>(xs: &[T], n: Option<usize>, seed: u64) -> Vec<T> {
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
            let hub = HubOptions {
                offline: !source.allow_hub,
                ..HubOptions::from_env()
            };
            return crate::custom::prepare_custom(cfg, tokenizer, eos_id, path, &hub);
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
        Task::Custom => {
            let path = path.to_string_lossy();
            let hub = HubOptions::from_env();
            return crate::custom::prepare_custom(cfg, tokenizer, eos_id, &path, &hub);
        }
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
        test: Vec::new(),
        test_items: Vec::new(),
        train_stats,
        eos_id,
        pad_id: eos_id,
    })
}
