//! qtune-train integration tests on a tiny random GPT-J (CPU, f32, NdArray). No data needed:
//! examples are synthetic token sequences.
mod accumulation;
mod common;
mod custom_data;
mod custom_splits;
mod data_job;
mod eval_generation;
mod grad_checkpoint;
mod hygiene;
mod loop_errors;
mod loss_scaling;
mod packing;
mod parallel;
mod peft_fixture;
mod resume;
