//! Readers for the Hugging Face Hub's parquet copies (row API of the `parquet` crate, no arrow).
//!
//! SQuAD v2 (`rajpurkar/squad_v2`): one row per question with columns `id`, `title`, `context`,
//! `question`, `answers {text: list<string>, answer_start: list<int32>}`. Rows are rebuilt into
//! the official JSON layout (articles grouped by title in order of first appearance, paragraphs by
//! consecutive equal context) and parsed by [`crate::squad::parse_squad`], so both paths give the
//! same [`SquadArticle`]s. WikiText-2 (`Salesforce/wikitext`): column `text`, rows joined with
//! `"\n\n"` exactly as HF's perplexity recipe does (empty rows kept, unlike our local file).

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::{Field, Row};
use serde_json::{json, Map, Value};

use crate::error::{DataError, Result};
use crate::squad::{parse_squad, SquadArticle};

pub(crate) fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let err = |e: parquet::errors::ParquetError| DataError::Parquet {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(err)?;
    let rows = reader.get_row_iter(None).map_err(err)?;
    rows.map(|r| r.map_err(err)).collect()
}

/// A parquet field as JSON (strings, integers, lists, groups; nulls as JSON null).
fn to_json(field: &Field) -> Value {
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Int(n) => json!(n),
        Field::Long(n) => json!(n),
        Field::UInt(n) => json!(n),
        Field::ULong(n) => json!(n),
        Field::Short(n) => json!(n),
        Field::Byte(n) => json!(n),
        Field::Str(s) => Value::String(s.clone()),
        Field::Group(row) => row_to_json(row),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(to_json).collect()),
        other => Value::String(other.to_string()),
    }
}

pub(crate) fn row_to_json(row: &Row) -> Value {
    let mut m = Map::new();
    for (name, field) in row.get_column_iter() {
        m.insert(name.clone(), to_json(field));
    }
    Value::Object(m)
}

/// Reads HF's SQuAD v2 parquet into the same articles as [`crate::squad::load_squad`] on the
/// official JSON with the same rows.
pub fn load_squad_parquet(path: &Path) -> Result<Vec<SquadArticle>> {
    let rows = read_rows(path)?;
    let missing = |field: &str, i: usize| DataError::MissingField {
        path: path.to_path_buf(),
        field: field.to_string(),
        location: format!("row {i}"),
    };
    let mut titles: Vec<String> = Vec::new();
    // Per article: list of (context, qas).
    let mut articles: Vec<Vec<(String, Vec<Value>)>> = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let r = row_to_json(row);
        let s = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| missing(k, i))
        };
        let (id, title, context, question) = (s("id")?, s("title")?, s("context")?, s("question")?);
        let ans = r.get("answers").ok_or_else(|| missing("answers", i))?;
        let texts = ans
            .get("text")
            .and_then(Value::as_array)
            .ok_or_else(|| missing("answers.text", i))?;
        let starts = ans
            .get("answer_start")
            .and_then(Value::as_array)
            .ok_or_else(|| missing("answers.answer_start", i))?;
        if texts.len() != starts.len() {
            return Err(missing("answers.answer_start (one per text)", i));
        }
        let answers: Vec<Value> = texts
            .iter()
            .zip(starts)
            .map(|(t, a)| json!({"text": t, "answer_start": a}))
            .collect();
        let qa = json!({"id": id, "question": question, "answers": answers,
                        "is_impossible": answers.is_empty()});
        let a_idx = match titles.iter().position(|t| *t == title) {
            Some(k) => k,
            None => {
                titles.push(title.clone());
                articles.push(Vec::new());
                titles.len() - 1
            }
        };
        let paras = &mut articles[a_idx];
        match paras.last_mut() {
            Some((c, qas)) if *c == context => qas.push(qa),
            _ => paras.push((context, vec![qa])),
        }
    }
    let data: Vec<Value> = titles
        .into_iter()
        .zip(articles)
        .map(|(title, paras)| {
            let paragraphs: Vec<Value> = paras
                .into_iter()
                .map(|(context, qas)| json!({"context": context, "qas": qas}))
                .collect();
            json!({"title": title, "paragraphs": paragraphs})
        })
        .collect();
    let doc = json!({"version": "v2.0", "data": data});
    parse_squad(&doc.to_string(), path)
}

/// HF's WikiText rows (column `text`, empty rows kept), in file order.
pub fn wikitext_parquet_rows(path: &Path) -> Result<Vec<String>> {
    read_rows(path)?
        .iter()
        .enumerate()
        .map(|(i, row)| {
            row_to_json(row)
                .get("text")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| DataError::MissingField {
                    path: path.to_path_buf(),
                    field: "text".into(),
                    location: format!("row {i}"),
                })
        })
        .collect()
}

/// `"\n\n".join(rows)` over HF's WikiText parquet, exactly HF's perplexity recipe.
pub fn load_wikitext_parquet(path: &Path) -> Result<String> {
    let text = wikitext_parquet_rows(path)?.join("\n\n");
    if text.is_empty() {
        return Err(DataError::Empty {
            what: path.display().to_string(),
        });
    }
    Ok(text)
}
