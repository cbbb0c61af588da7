//! qtune-quant's one integration-test binary (one binary per crate keeps link time down).

mod fixtures;
mod golden;
mod gptj_nf4;
