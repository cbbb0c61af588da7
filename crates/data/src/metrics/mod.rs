//! Metrics: official SQuAD v2 EM/F1, classification accuracy/F1/confusion, exact match of
//! completions.

pub mod classification;
pub mod exact;
pub mod squad;
