//! Metrics: official SQuAD v2 EM/F1 and classification accuracy/F1/confusion.

pub mod classification;
pub mod squad;
