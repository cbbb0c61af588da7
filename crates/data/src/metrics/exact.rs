//! Exact match of generated completions (custom `completion` / `alpaca` / `messages` data): a
//! prediction counts when it equals the gold text after trimming surrounding whitespace on both
//! (a completion written as " Paris" and a generation "Paris\n" match); nothing else is
//! normalized.

use serde::Serialize;

use crate::error::{DataError, Result};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExactMatchReport {
    /// Percent of exact matches, 0..=100 (as SQuAD's `exact`).
    pub exact_match: f64,
    pub correct: usize,
    pub total: usize,
}

/// Scores `predictions[i]` against `gold[i]`.
pub fn exact_match_eval(gold: &[String], predictions: &[String]) -> Result<ExactMatchReport> {
    if gold.len() != predictions.len() {
        return Err(DataError::Predictions(format!(
            "{} gold texts but {} predictions",
            gold.len(),
            predictions.len()
        )));
    }
    if gold.is_empty() {
        return Err(DataError::Predictions("nothing to score".into()));
    }
    let correct = gold
        .iter()
        .zip(predictions)
        .filter(|(g, p)| g.trim() == p.trim())
        .count();
    Ok(ExactMatchReport {
        exact_match: 100.0 * correct as f64 / gold.len() as f64,
        correct,
        total: gold.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_then_compares_exactly() {
        let g = vec![" Paris".to_string(), "42".into(), "a b".into()];
        let p = vec!["Paris\n".to_string(), "42.".into(), "a  b".into()];
        let r = exact_match_eval(&g, &p).unwrap();
        assert_eq!((r.correct, r.total), (1, 3));
        assert!((r.exact_match - 100.0 / 3.0).abs() < 1e-9);
        assert!(exact_match_eval(&g, &p[..1]).is_err());
    }
}
