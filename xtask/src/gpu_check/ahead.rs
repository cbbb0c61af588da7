//! The dequantization ahead (`qtune_kernels::prefetch`: the next block's weights on a second
//! CUDA stream) against none: the tiny GPT-J and Llama fixtures quantized to NF4 in bf16, the
//! fixture prompts' logits bit for bit with it on (twice) and off, and the count of dense copies
//! the linears took (the path ran, or the comparison would prove nothing).

use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::DType;
use qtune_kernels::cuda::{prefetch_taken, set_prefetch};
use qtune_lm::fixtures::{fixture_logits, fixture_prompts};
use qtune_lm::LoadOptions;
use qtune_quant::QuantSpec;
use qtune_train::backend::Train;
use serde_json::json;

use super::Failures;

type Inner = <Train as AutodiffBackend>::InnerBackend;

pub(super) fn check(dev: &burn::tensor::Device<Train>, fails: &mut Failures) -> anyhow::Result<()> {
    for name in ["gptj_tiny", "llama_tiny"] {
        let fx = Path::new("tests/fixtures").join(name);
        let prompts = fixture_prompts(&fx)?;
        let opts = LoadOptions {
            dtype: DType::BF16,
            quant: Some(QuantSpec::nf4()),
            ..LoadOptions::default()
        };
        let m = qtune_models::load::<Inner>(&fx.join("fp32"), &opts, dev)?;
        let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
        set_prefetch(Some(false));
        let off = bits(fixture_logits(&m, &prompts));
        set_prefetch(Some(true));
        let before = prefetch_taken();
        let on = bits(fixture_logits(&m, &prompts));
        let again = bits(fixture_logits(&m, &prompts));
        let taken = prefetch_taken() - before;
        set_prefetch(None);
        let differ = on.iter().zip(&off).filter(|(a, b)| a != b).count();
        println!(
            "{}",
            json!({"check": "prefetch", "fixture": name, "logits": off.len(),
                   "differ_on_vs_off": differ, "on_twice_equal": on == again,
                   "dense_copies_taken": taken})
        );
        fails.require(
            &format!("prefetch {name}: logits on = off bit for bit"),
            on == off,
        );
        fails.require(
            &format!("prefetch {name}: logits on twice equal"),
            on == again,
        );
        fails.require(
            &format!("prefetch {name}: the linears took dense copies"),
            taken > 0,
        );
    }
    Ok(())
}
