//! GPU checks (feature `cuda`, ignored by default: they need the device machine).
//! Run: `cargo test -p qtune-kernels --features cuda --release -- --ignored`.
#![cfg(feature = "cuda")]

use qtune_kernels::cuda::selftest;

fn assert_all(checks: Vec<selftest::Check>) {
    let failed: Vec<_> = checks.iter().filter(|c| !c.ok).map(|c| c.json()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed:\n{}",
        failed.len(),
        checks.len(),
        failed.join("\n")
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn dequant_kernels_equal_the_cpu_reference_bit_for_bit() {
    assert_all(selftest::dequant_checks_all_variants(&Default::default()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_quantize_equals_the_cpu_quantizer() {
    assert_all(selftest::quantize_checks(&Default::default()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn q_linear_forward_and_backward_within_tolerance() {
    assert_all(selftest::linear_checks(&Default::default()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn llama_fused_ops_match_the_cpu_reference() {
    assert_all(selftest::llama_op_checks(&Default::default()));
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn grouped_query_attention_matches_the_cpu_reference() {
    assert_all(selftest::gqa_checks(&Default::default()));
}
