//! Quantized loading and random init.

use burn::tensor::DType;
use qtune_gptj::{Gptj, GptjConfig, LoadOptions, QuantSpec};

use crate::common::*;

/// Loading the fp32 checkpoint with NF4 + double quant (block 64) reproduces bitsandbytes'
/// logits (`nf4_logits`: HF + bnb 0.50.2, compute dtype fp32, H100). Our NF4 codes are
/// bit-identical to bnb's (qtune-quant's tests), so the remaining difference is f32 GEMM order.
#[test]
fn nf4_load_matches_bitsandbytes_logits() {
    let opts = LoadOptions {
        dtype: DType::F32,
        quant: Some(QuantSpec::nf4()),
        ..LoadOptions::default()
    };
    let model = Gptj::<Nd>::load(&fixture_dir().join("fp32"), &opts, &Default::default()).unwrap();
    assert!(model
        .blocks
        .iter()
        .all(|b| b.attn.q_proj.is_quantized() && b.mlp.fc_out.is_quantized()));
    assert!(!model.lm_head.is_quantized());
    let (reference, shape) = reference_tensor("nf4_logits");
    let err = max_rel_err_non_pad(&fixture_logits(&model), &reference, shape[2]);
    println!("nf4 max rel err {err:e}");
    assert!(err <= 1e-4, "nf4 max rel err {err:e}");
    // And it is really quantized: far from the fp32 logits.
    let (fp32, _) = reference_tensor("logits");
    assert!(max_rel_err_non_pad(&fixture_logits(&model), &fp32, shape[2]) > 1e-3);
}

#[test]
fn random_init_is_seeded_and_quantizable() {
    let cfg = GptjConfig::from_file(&fixture_dir().join("fp32/config.json")).unwrap();
    let dev = Default::default();
    let a = Gptj::<Nd>::random(&cfg, 1, None, DType::F32, &dev).unwrap();
    let b = Gptj::<Nd>::random(&cfg, 1, None, DType::F32, &dev).unwrap();
    assert_eq!(fixture_logits(&a), fixture_logits(&b));
    for spec in [QuantSpec::nf4(), QuantSpec::fp4(), QuantSpec::blockwise8()] {
        let q = Gptj::<Nd>::random(&cfg, 1, Some(spec), DType::F32, &dev).unwrap();
        assert!(q.blocks[0].mlp.fc_in.is_quantized());
        let l = fixture_logits(&q);
        assert!(l.iter().all(|x| x.is_finite()));
    }
}

/// The HF + bitsandbytes NF4 serialization (`nf4/`) loads as stored (no re-quantization) and
/// gives bnb's logits.
#[test]
fn prequantized_bnb_checkpoint_matches_bitsandbytes_logits() {
    let model = Gptj::<Nd>::load(
        &fixture_dir().join("nf4"),
        &LoadOptions::default(),
        &Default::default(),
    )
    .unwrap();
    assert!(model
        .blocks
        .iter()
        .all(|b| b.attn.v_proj.is_quantized() && b.mlp.fc_in.is_quantized()));
    let (reference, shape) = reference_tensor("nf4_logits");
    let err = max_rel_err_non_pad(&fixture_logits(&model), &reference, shape[2]);
    println!("nf4 file max rel err {err:e}");
    assert!(err <= 1e-4, "nf4 file max rel err {err:e}");
}
