//! SQuAD v2 exact match and F1, as the official `evaluate-v2.0.py` computes them (no no-answer
//! probability threshold): `normalize_answer` lowercases, drops ASCII punctuation
//! (`string.punctuation`), replaces the words a/an/the with a space and collapses whitespace; a
//! question's score is the max over its gold answers that normalize to something non-empty, and
//! a question with none of those is scored against the empty answer. An empty prediction is the
//! no-answer prediction; [`answer_from_generation`] turns "answers not in context" into one.
//!
//! Unicode: Python's `\b`/`\w` and `str.lower` are approximated by `char::is_alphanumeric` (plus
//! `_`) and `char::to_lowercase`; they agree on SQuAD's text (checked against the official script
//! on tests/fixtures/squad_eval).

use std::collections::HashMap;

use serde::Serialize;

use crate::error::{DataError, Result};
use crate::prompt::SQUAD_NO_ANSWER;

/// `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// The official `normalize_answer`.
pub fn normalize_answer(s: &str) -> String {
    let lowered = s.to_lowercase();
    let no_punc: String = lowered
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    // re.sub(r'\b(a|an|the)\b', ' ', text): whole runs of word characters equal to an article.
    let mut no_articles = String::with_capacity(no_punc.len());
    let mut word = String::new();
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in no_punc.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut no_articles);
            no_articles.push(c);
        }
    }
    flush(&mut word, &mut no_articles);
    py_split(&no_articles).collect::<Vec<_>>().join(" ")
}

/// Python's `str.split()`: Unicode whitespace plus the separators U+001C..U+001F, which
/// `str.isspace` counts and `char::is_whitespace` does not.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .filter(|t| !t.is_empty())
}

fn tokens(s: &str) -> Vec<String> {
    py_split(&normalize_answer(s)).map(str::to_string).collect()
}

/// The official `compute_exact`.
pub fn compute_exact(gold: &str, pred: &str) -> f64 {
    f64::from(u8::from(normalize_answer(gold) == normalize_answer(pred)))
}

/// The official `compute_f1`: token-overlap F1; 1 if both are empty, 0 if only one is.
pub fn compute_f1(gold: &str, pred: &str) -> f64 {
    let g = tokens(gold);
    let p = tokens(pred);
    if g.is_empty() || p.is_empty() {
        return f64::from(u8::from(g == p));
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0i64;
    for t in &p {
        if let Some(c) = counts.get_mut(t.as_str()) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let precision = same as f64 / p.len() as f64;
    let recall = same as f64 / g.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// The answer in a generated continuation of a SQuAD prompt: up to the first newline or
/// `<|endoftext|>`, trimmed; "answers not in context" (after normalization) becomes "" (no answer).
pub fn answer_from_generation(generated: &str) -> String {
    let end = [generated.find('\n'), generated.find("<|endoftext|>")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(generated.len());
    let answer = generated[..end].trim();
    if normalize_answer(answer) == normalize_answer(SQUAD_NO_ANSWER) {
        String::new()
    } else {
        answer.to_string()
    }
}

/// One question's `(exact, f1)`, each in [0, 1]: the max over the gold answers that normalize to
/// something non-empty, or against "" when there are none (the official `get_raw_scores`).
/// One deliberate addition: a prediction that normalizes to "answers not in context" is scored as
/// the empty (no-answer) prediction, so raw generations can be passed in directly.
pub fn question_scores(answers: &[String], pred: &str) -> (f64, f64) {
    let pred = if normalize_answer(pred) == normalize_answer(SQUAD_NO_ANSWER) {
        ""
    } else {
        pred
    };
    let mut golds: Vec<&str> = answers
        .iter()
        .map(String::as_str)
        .filter(|a| !normalize_answer(a).is_empty())
        .collect();
    if golds.is_empty() {
        golds.push("");
    }
    let exact = golds
        .iter()
        .map(|g| compute_exact(g, pred))
        .fold(0.0, f64::max);
    let f1 = golds
        .iter()
        .map(|g| compute_f1(g, pred))
        .fold(0.0, f64::max);
    (exact, f1)
}

/// The official script's output dict: overall and per HasAns/NoAns, in percent. The HasAns/NoAns
/// fields are absent (as in the script) when the subset is empty.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SquadScores {
    pub exact: f64,
    pub f1: f64,
    pub total: usize,
    #[serde(rename = "HasAns_exact", skip_serializing_if = "Option::is_none")]
    pub has_ans_exact: Option<f64>,
    #[serde(rename = "HasAns_f1", skip_serializing_if = "Option::is_none")]
    pub has_ans_f1: Option<f64>,
    #[serde(rename = "HasAns_total", skip_serializing_if = "Option::is_none")]
    pub has_ans_total: Option<usize>,
    #[serde(rename = "NoAns_exact", skip_serializing_if = "Option::is_none")]
    pub no_ans_exact: Option<f64>,
    #[serde(rename = "NoAns_f1", skip_serializing_if = "Option::is_none")]
    pub no_ans_f1: Option<f64>,
    #[serde(rename = "NoAns_total", skip_serializing_if = "Option::is_none")]
    pub no_ans_total: Option<usize>,
}

/// Scores `predictions` (question id → answer text; "" or "answers not in context" = no answer) against `gold` (question id,
/// gold answer texts; empty = impossible). Every gold id needs a prediction (the official script
/// would fail on a missing HasAns/NoAns id); predictions for other ids are ignored, as there.
pub fn squad_v2_eval(
    gold: &[(String, Vec<String>)],
    predictions: &HashMap<String, String>,
) -> Result<SquadScores> {
    if gold.is_empty() {
        return Err(DataError::Empty {
            what: "SQuAD evaluation set".into(),
        });
    }
    let mut sums = [(0.0f64, 0.0f64, 0usize); 2]; // [HasAns, NoAns]: (exact, f1, count)
    for (id, answers) in gold {
        let pred = predictions
            .get(id)
            .ok_or_else(|| DataError::Predictions(format!("no prediction for question {id}")))?;
        let (exact, f1) = question_scores(answers, pred);
        let s = &mut sums[usize::from(answers.is_empty())];
        s.0 += exact;
        s.1 += f1;
        s.2 += 1;
    }
    let pct = |x: f64, n: usize| 100.0 * x / n as f64;
    let total = gold.len();
    let part = |i: usize| {
        let (e, f, n) = sums[i];
        (n > 0).then(|| (pct(e, n), pct(f, n), n))
    };
    let (has, no) = (part(0), part(1));
    Ok(SquadScores {
        exact: pct(sums[0].0 + sums[1].0, total),
        f1: pct(sums[0].1 + sums[1].1, total),
        total,
        has_ans_exact: has.map(|h| h.0),
        has_ans_f1: has.map(|h| h.1),
        has_ans_total: has.map(|h| h.2),
        no_ans_exact: no.map(|h| h.0),
        no_ans_f1: no.map(|h| h.1),
        no_ans_total: no.map(|h| h.2),
    })
}
