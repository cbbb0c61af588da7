//! LoRA over dense or quantized linears, with PEFT's names and initialization.
mod config;
mod linear;
pub mod merge;
pub mod peft;

pub use config::{LoraConfig, LoraConfigError, TargetModules, TargetRegex};
pub use linear::{Linear, LinearBase, LoraAdapter, Pass};

#[cfg(test)]
mod linear_tests;
