//! qtune-quant's one integration-test binary (one binary per crate keeps link time down).

mod errors;
mod fixtures;
mod golden;
mod gptj_nf4;
mod gpu_rcp;
mod parallel;
mod props;
mod resident;
mod roundtrip_io;
