//! Per-block gradient checkpointing gives the gradients of plain autodiff.
use burn::module::AutodiffModule;
use qtune_data::{collate, Example, Padding};
use qtune_lm::CausalLm;
use qtune_models::AnyLm;
use qtune_train::step::{micro_step, Backprop};
use qtune_train::trainer::peft_config;

use crate::common::*;

type Inner = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;

/// Tiny model with LoRA everywhere and a non-zero B.
fn model_with_live_adapter(cfg: &qtune_train::RunConfig) -> AnyLm<B> {
    live(lm(cfg), peft_config(cfg))
}

#[test]
fn checkpointed_gradients_equal_plain_autodiff() {
    let (_g, dir) = locked_tempdir();
    let cfg = tiny_config(dir.path());
    checkpointed_equals_plain(&cfg);
}

/// With an NF4 base the recompute keeps the small weights dense for the backward and skips
/// the block-output linears' products (`q_linear_unread`): the gradients must not change.
#[test]
fn checkpointed_gradients_equal_plain_autodiff_on_a_quantized_base() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path());
    cfg.model.quantization = Some(nf4_dq());
    checkpointed_equals_plain(&cfg);
}

/// LoRA on q and v only: GPT-J's MLP is then frozen and quantized, so the plain forward runs
/// it as one op (`qtune_kernels::mlp_gelu_new`: bias and `gelu_new` on the GEMMs' epilogues on
/// CUDA) while the checkpointed recompute keeps these small weights dense and runs the unfused
/// ops: the two must agree.
#[test]
fn checkpointed_gradients_equal_plain_autodiff_with_the_fused_quantized_mlp() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path());
    cfg.model.quantization = Some(nf4_dq());
    cfg.lora.target_modules =
        qtune_train::config::TargetList::Names(vec!["q_proj".into(), "v_proj".into()]);
    let model = model_with_live_adapter(&cfg);
    assert!(model.linears()[0].1.is_quantized());
    same_grads_both_ways(&model, 3 * 2 * 2, "A and B of q and v in 3 blocks");
}

/// bitsandbytes' NF4 with double-quantized absmax, loaded as the model streams in.
fn nf4_dq() -> qtune_train::config::QuantizationConfig {
    qtune_train::config::QuantizationConfig {
        load_in_4bit: true,
        load_in_8bit: false,
        bnb_4bit_quant_type: "nf4".into(),
        bnb_4bit_use_double_quant: true,
        blocksize: None,
    }
}

fn checkpointed_equals_plain(cfg: &qtune_train::RunConfig) {
    let model = model_with_live_adapter(cfg);
    if cfg.model.quantization.is_some() {
        assert!(model.linears()[0].1.is_quantized());
    }
    same_grads_both_ways(&model, 3 * 6 * 2, "A and B of 6 linears in 3 blocks");
}

/// The tests' batch: 4 synthetic examples, right-padded.
fn batch() -> qtune_data::Batch {
    let examples = synthetic(4, 3);
    let refs: Vec<&Example> = examples.iter().collect();
    collate(&refs, 0, Padding::Right).unwrap()
}

/// Plain and checkpointed micro-steps of `model` give the same loss and LoRA gradients
/// (`factors` of them), with and without dropout, and with the block inputs parked; the
/// no-graph forward gives the same loss.
fn same_grads_both_ways<M>(model: &M, factors: usize, what: &str)
where
    M: CausalLm<B> + AutodiffModule<B>,
    M::InnerModule: CausalLm<Inner>,
{
    let batch = batch();
    // With dropout on (seeded), both modes must also draw the same masks.
    for seed in [None, Some(12345u64)] {
        let plain = micro_step::<B, _>(model, &batch, 7.0, seed, Backprop::Plain).unwrap();
        let ckpt = micro_step::<B, _>(model, &batch, 7.0, seed, Backprop::Checkpointed).unwrap();
        assert_eq!(
            plain.loss_sum.to_bits(),
            ckpt.loss_sum.to_bits(),
            "same forward"
        );
        let (a, b) = (
            lora_grads(model, &plain.grads),
            lora_grads(model, &ckpt.grads),
        );
        assert_eq!(a.len(), factors, "{what}");
        let worst = worst_rel(&a, &b);
        // fp32; the two modes run the same ops in the same order except the seeding of the
        // backward with dL/dh, so only summation-order rounding may differ.
        assert!(
            worst <= 1e-5,
            "seed {seed:?}: worst relative grad difference {worst:e}"
        );
        println!("seed {seed:?}: worst relative LoRA grad difference {worst:e}");
        // Parking the block inputs changes where they wait, not the values (on the CPU they
        // stay put; gpu-check's park_* lines run the CUDA copies): bit for bit the checkpointed
        // step's.
        let parked = micro_step::<B, _>(model, &batch, 7.0, seed, Backprop::Offloaded).unwrap();
        assert_eq!(parked.loss_sum.to_bits(), ckpt.loss_sum.to_bits());
        let c = lora_grads(model, &parked.grads);
        assert_eq!(worst_rel(&b, &c), 0.0, "seed {seed:?}: parked vs kept");
    }
    // The plain forward under `valid()` gives the same loss as the training forward (no dropout).
    let inner = model.valid();
    let eval = qtune_train::step::eval_loss_sum(&inner, &batch).unwrap();
    let plain = micro_step::<B, _>(model, &batch, 1.0, None, Backprop::Plain).unwrap();
    assert!((eval - plain.loss_sum).abs() <= 1e-5 * plain.loss_sum.abs());
}

/// Micro-steps in several threads at once (as data-parallel ranks run them) each get every
/// LoRA gradient, equal to a lone step's: burn-autodiff 0.21's concurrent backward can free
/// another thread's graph (tracel-ai/burn#5573), so `micro_step` serializes its graphs
/// (`replica::compute_lock`). Without that lock it lost a gradient in 5 of 5 runs.
#[test]
fn concurrent_micro_steps_keep_every_gradient() {
    let (_g, dir) = locked_tempdir();
    let cfg = tiny_config(dir.path());
    let model = model_with_live_adapter(&cfg);
    let batch = batch();
    let alone = micro_step::<B, _>(&model, &batch, 1.0, None, Backprop::Checkpointed).unwrap();
    let want = lora_grads(&model, &alone.grads);
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (model, batch, want) = (model.clone(), &batch, &want);
            s.spawn(move || {
                for i in 0..25usize {
                    let backprop = if (t + i) % 2 == 0 {
                        Backprop::Plain
                    } else {
                        Backprop::Checkpointed
                    };
                    let step = micro_step::<B, _>(&model, batch, 1.0, None, backprop).unwrap();
                    // `lora_grads` panics naming a parameter without a gradient.
                    let worst = worst_rel(want, &lora_grads(&model, &step.grads));
                    assert!(worst <= 1e-5, "thread {t} step {i}: {worst:e}");
                }
            });
        }
    });
}

/// The Llama family on an NF4 base (the tiny HF fixture quantized as it loads, LoRA on all
/// linears): its recompute skips `down_proj`'s product, and the gradients stay plain autodiff's.
#[test]
fn checkpointed_gradients_equal_plain_autodiff_llama_nf4() {
    let _g = rng_lock();
    let opts = qtune_lm::LoadOptions {
        quant: Some(qtune_quant::QuantSpec::nf4()),
        ..Default::default()
    };
    let model = llama_fixture("llama_tiny", &opts, 0.1);
    assert!(model.linears()[0].1.is_quantized());
    // PEFT's all-linear: the 7 projections of every block, not lm_head.
    let factors = model.num_layers() * 7 * 2;
    same_grads_both_ways(&model, factors, "A and B of 7 linears per block");
}
