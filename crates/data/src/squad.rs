//! SQuAD v2 in the official JSON layout (`{"version", "data": [{"title", "paragraphs": [{"context",
//! "qas": [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}`), and
//! the split of one file into train/validation **by article**, so no paragraph (and no question
//! about it) is on both sides.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::error::{DataError, Result};

/// One question with its paragraph, flattened out of the nested JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquadExample {
    /// The official question id (what predictions are keyed by).
    pub id: String,
    /// Article title.
    pub title: String,
    pub context: String,
    pub question: String,
    /// Gold answer texts in file order, duplicates kept (the official script takes the max over
    /// them). Empty for impossible questions.
    pub answers: Vec<String>,
    /// Byte range of the first gold answer in `context`, when it can be located: from
    /// `answer_start` (a character offset, as Python counts), else by searching the text.
    pub answer_span: Option<(usize, usize)>,
    pub is_impossible: bool,
}

impl SquadExample {
    /// The first gold answer, the training target; `None` for impossible questions.
    pub fn first_answer(&self) -> Option<&str> {
        self.answers.first().map(String::as_str)
    }
}

/// One article (all paragraphs of one Wikipedia page), the unit of the train/validation split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquadArticle {
    pub title: String,
    pub examples: Vec<SquadExample>,
}

/// Reads an official SQuAD v2 JSON file, or HF's parquet copy when `path` ends in `.parquet`
/// (see [`crate::parquet_hub`]).
pub fn load_squad(path: &Path) -> Result<Vec<SquadArticle>> {
    if is_parquet(path) {
        return crate::parquet_hub::load_squad_parquet(path);
    }
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_squad(&text, path)
}

/// Parses SQuAD v2 JSON text; `path` only names the source in errors.
pub fn parse_squad(text: &str, path: &Path) -> Result<Vec<SquadArticle>> {
    let root: Value = serde_json::from_str(text).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let missing = |field: &str, location: String| DataError::MissingField {
        path: path.to_path_buf(),
        field: field.to_string(),
        location,
    };
    let data = root
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| missing("data", "top level".into()))?;
    let mut articles = Vec::with_capacity(data.len());
    for (a_idx, article) in data.iter().enumerate() {
        let at = format!("data[{a_idx}]");
        let title = str_field(article, "title").ok_or_else(|| missing("title", at.clone()))?;
        let paragraphs = article
            .get("paragraphs")
            .and_then(Value::as_array)
            .ok_or_else(|| missing("paragraphs", at.clone()))?;
        let mut examples = Vec::new();
        for (p_idx, para) in paragraphs.iter().enumerate() {
            let at = format!("{at}.paragraphs[{p_idx}]");
            let context =
                str_field(para, "context").ok_or_else(|| missing("context", at.clone()))?;
            let qas = para
                .get("qas")
                .and_then(Value::as_array)
                .ok_or_else(|| missing("qas", at.clone()))?;
            for (q_idx, qa) in qas.iter().enumerate() {
                let at = format!("{at}.qas[{q_idx}]");
                examples.push(parse_question(qa, title, context, &at, path)?);
            }
        }
        articles.push(SquadArticle {
            title: title.to_string(),
            examples,
        });
    }
    if articles.iter().all(|a| a.examples.is_empty()) {
        return Err(DataError::Empty {
            what: path.display().to_string(),
        });
    }
    Ok(articles)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn parse_question(
    qa: &Value,
    title: &str,
    context: &str,
    at: &str,
    path: &Path,
) -> Result<SquadExample> {
    let missing = |field: &str| DataError::MissingField {
        path: path.to_path_buf(),
        field: field.to_string(),
        location: at.to_string(),
    };
    let id = str_field(qa, "id").ok_or_else(|| missing("id"))?;
    let question = str_field(qa, "question").ok_or_else(|| missing("question"))?;
    let answers_json = qa
        .get("answers")
        .and_then(Value::as_array)
        .ok_or_else(|| missing("answers"))?;
    let mut answers = Vec::with_capacity(answers_json.len());
    let mut starts = Vec::with_capacity(answers_json.len());
    for (i, a) in answers_json.iter().enumerate() {
        let text = str_field(a, "text").ok_or_else(|| missing(&format!("answers[{i}].text")))?;
        answers.push(text.to_string());
        starts.push(a.get("answer_start").and_then(Value::as_u64));
    }
    // The official script decides "has answer" by `bool(qa['answers'])`; `is_impossible` must agree.
    let is_impossible = match qa.get("is_impossible") {
        Some(Value::Bool(b)) => *b,
        None => answers.is_empty(),
        Some(_) => return Err(missing("is_impossible")),
    };
    if is_impossible != answers.is_empty() {
        return Err(DataError::InvalidValue {
            path: path.to_path_buf(),
            field: "is_impossible".into(),
            location: at.to_string(),
            value: is_impossible.to_string(),
            reason: format!("but the question has {} answers", answers.len()),
        });
    }
    let answer_span = answers
        .first()
        .and_then(|text| locate_answer(context, text, starts[0]));
    Ok(SquadExample {
        id: id.to_string(),
        title: title.to_string(),
        context: context.to_string(),
        question: question.to_string(),
        answers,
        answer_span,
        is_impossible,
    })
}

/// Byte span of `answer` in `context`: at the character offset `char_start` when the text is there,
/// else its first occurrence (our dev copy recovered offsets that way), else `None`.
pub fn locate_answer(
    context: &str,
    answer: &str,
    char_start: Option<u64>,
) -> Option<(usize, usize)> {
    if answer.is_empty() {
        return None;
    }
    if let Some(start) = char_start.and_then(|c| usize::try_from(c).ok()) {
        let byte = if start == context.chars().count() {
            Some(context.len())
        } else {
            context.char_indices().nth(start).map(|(b, _)| b)
        };
        if let Some(b) = byte {
            if context[b..].starts_with(answer) {
                return Some((b, b + answer.len()));
            }
        }
    }
    context.find(answer).map(|b| (b, b + answer.len()))
}

/// Train and validation examples from a by-article split.
#[derive(Debug, Clone)]
pub struct SquadSplit {
    pub train: Vec<SquadExample>,
    pub validation: Vec<SquadExample>,
    pub train_titles: Vec<String>,
    pub validation_titles: Vec<String>,
}

/// Shuffles the articles with `seed` (ChaCha8) and puts the first `n_validation_articles` in
/// validation, the rest in train; examples keep file order inside each side. On the shared dev
/// file (35 articles, 11,873 questions) with 5 validation articles and seed 42 (qtune's configs):
/// train 30 articles, 9,820 questions (4,997 impossible); validation Oxygen, Ctenophora,
/// Immune_system, Rhine, Scottish_Parliament, 2,053 questions (948 impossible)
/// (`split_by_article_is_disjoint_and_reproducible` prints them).
pub fn split_by_article(
    articles: &[SquadArticle],
    n_validation_articles: usize,
    seed: u64,
) -> Result<SquadSplit> {
    if n_validation_articles == 0 || n_validation_articles >= articles.len() {
        return Err(DataError::NotEnough {
            what: "SQuAD split by article".into(),
            class: "article".into(),
            needed: n_validation_articles + 1,
            available: articles.len(),
        });
    }
    let mut order: Vec<usize> = (0..articles.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let (val_idx, train_idx) = order.split_at(n_validation_articles);
    let mut val_idx = val_idx.to_vec();
    let mut train_idx = train_idx.to_vec();
    val_idx.sort_unstable();
    train_idx.sort_unstable();
    let take = |idx: &[usize]| -> (Vec<SquadExample>, Vec<String>) {
        let examples = idx
            .iter()
            .flat_map(|&i| articles[i].examples.iter().cloned())
            .collect();
        let titles = idx.iter().map(|&i| articles[i].title.clone()).collect();
        (examples, titles)
    };
    let (train, train_titles) = take(&train_idx);
    let (validation, validation_titles) = take(&val_idx);
    Ok(SquadSplit {
        train,
        validation,
        train_titles,
        validation_titles,
    })
}

/// Whether `path` names a parquet file (HF Hub copies), by extension.
pub(crate) fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "parquet")
}
