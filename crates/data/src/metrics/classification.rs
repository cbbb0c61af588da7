//! Classification from generated label text: accuracy, per-class precision/recall/F1 (0 where a
//! denominator is 0, as scikit-learn's `zero_division=0`), macro F1 and the confusion matrix.
//! Generated text that names no label counts as wrong, in an extra "unknown" column.

use serde::Serialize;

use crate::error::{DataError, Result};

/// The class whose label the generated text starts with, after lowercasing, trimming leading
/// whitespace and collapsing inner whitespace; the label must end at a non-alphanumeric character
/// or the end ("neither." matches, "neitherx" does not). `None`: unknown.
pub fn label_from_generation(generated: &str, labels: &[&str]) -> Option<usize> {
    let norm = generated
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    labels.iter().position(|label| {
        let label = label.to_lowercase();
        norm.strip_prefix(label.as_str())
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_alphanumeric()))
    })
}

/// Scores of one class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassScores {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Gold examples of this class.
    pub support: usize,
}

/// Everything [`classification_eval`] computes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassificationReport {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassScores>,
    /// `confusion[gold][predicted]`; the last column (index `labels.len()`) counts unknown
    /// predictions.
    pub confusion: Vec<Vec<usize>>,
    pub unknown: usize,
    pub total: usize,
}

/// Scores predicted classes (`None` = unknown) against gold classes.
pub fn classification_eval(
    gold: &[usize],
    predicted: &[Option<usize>],
    labels: &[&str],
) -> Result<ClassificationReport> {
    let k = labels.len();
    if gold.is_empty() {
        return Err(DataError::Empty {
            what: "classification evaluation set".into(),
        });
    }
    if gold.len() != predicted.len() {
        return Err(DataError::Predictions(format!(
            "{} gold labels but {} predictions",
            gold.len(),
            predicted.len()
        )));
    }
    let mut confusion = vec![vec![0usize; k + 1]; k];
    for (i, (&g, &p)) in gold.iter().zip(predicted).enumerate() {
        if g >= k || p.is_some_and(|p| p >= k) {
            return Err(DataError::Predictions(format!(
                "example {i}: class out of range (gold {g}, predicted {p:?}, {k} classes)"
            )));
        }
        confusion[g][p.unwrap_or(k)] += 1;
    }
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassScores> = (0..k)
        .map(|c| {
            let tp = confusion[c][c];
            let predicted_c: usize = (0..k).map(|g| confusion[g][c]).sum();
            let support: usize = confusion[c].iter().sum();
            let precision = ratio(tp, predicted_c);
            let recall = ratio(tp, support);
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassScores {
                label: labels[c].to_string(),
                precision,
                recall,
                f1,
                support,
            }
        })
        .collect();
    let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
    Ok(ClassificationReport {
        accuracy: ratio(correct, gold.len()),
        macro_f1: per_class.iter().map(|c| c.f1).sum::<f64>() / k as f64,
        unknown: confusion.iter().map(|row| row[k]).sum(),
        per_class,
        confusion,
        total: gold.len(),
    })
}
