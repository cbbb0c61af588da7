//! qtune's crates from another workspace: load a Llama-family checkpoint (a tiny HF fixture),
//! quantize its block linears to NF4 + double quant as they load, attach a PEFT LoRA adapter,
//! check the logits against PEFT's, and generate greedily. Only qtune-quant, qtune-lora,
//! qtune-lm and qtune-llama are needed (no trainer). Run:
//! `cargo run --manifest-path examples/consumer/Cargo.toml`.
use std::path::Path;

use anyhow::{ensure, Context};
use burn::backend::NdArray;
use burn::tensor::DType;
use qtune_llama::Llama;
use qtune_lm::fixtures::{fixture_logits, fixture_prompts, max_rel_err, reference_tensor};
use qtune_lm::{CausalLm, GenerationConfig, LoadOptions, QuantSpec};
use qtune_lora::peft::PeftAdapter;
use qtune_quant::QuantFormat;

fn main() -> anyhow::Result<()> {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/llama_tiny");
    let device = Default::default();
    let adapter = PeftAdapter::load(&fixture.join("peft_adapter"))
        .context("the PEFT adapter of tests/fixtures/llama_tiny")?;

    // fp32 base + the adapter PEFT made: qtune's logits are PEFT's.
    let dense = Llama::<NdArray>::load(&fixture.join("fp32"), &LoadOptions::default(), &device)?
        .import_adapter(&adapter)?;
    let prompts = fixture_prompts(&fixture)?;
    let err = max_rel_err(
        &fixture_logits(&dense, &prompts),
        &reference_tensor(&fixture, "peft_logits")?,
        &prompts.attention_mask,
        dense.vocab_size(),
    );
    println!("fp32 base + PEFT adapter: logits max rel err vs PEFT {err:.1e}");
    ensure!(err <= 1e-4, "logits differ from PEFT's: {err:e}");

    // The same checkpoint with an NF4 + double-quant base (bitsandbytes' format), same adapter.
    let opts = LoadOptions {
        dtype: DType::F32,
        quant: Some(QuantSpec {
            format: QuantFormat::Nf4,
            blocksize: 64,
            double_quant: true,
        }),
        ..LoadOptions::default()
    };
    let qlora =
        Llama::<NdArray>::load(&fixture.join("fp32"), &opts, &device)?.import_adapter(&adapter)?;
    let counts = qlora.param_counts();
    let prompt: Vec<u32> = vec![1, 17, 42, 99, 7];
    let config = GenerationConfig {
        max_new_tokens: 8,
        eos_token_id: None,
        ..GenerationConfig::default()
    };
    let out = qlora.generate(std::slice::from_ref(&prompt), &config)?;
    println!(
        "NF4 base + adapter ({counts:?}): greedy from {prompt:?} -> {:?}",
        out[0]
    );
    ensure!(out[0].len() == 8, "expected 8 new tokens, got {:?}", out[0]);
    Ok(())
}
