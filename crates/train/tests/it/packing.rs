//! `[data] packing = true`: a packed batch gives the summed loss and LoRA gradients of the same
//! examples unpacked (GPT-J, Llama, Mistral's sliding window), and a packed run resumes exactly.
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use qtune_data::{collate, collate_packed, Batch, Example, Padding};
use qtune_lm::{CausalLm, LoadOptions};
use qtune_train::step::{micro_step, Backprop, SegmentedLm};
use qtune_train::trainer::peft_config;
use qtune_train::{build, TrainError, TrainOptions};

use crate::common::*;

/// The same 7 examples as one right-padded batch (each example alone in its row) and packed
/// three rows deep; summed loss, target tokens and LoRA grads must agree, in both step modes.
fn packed_equals_unpacked<M>(model: &M, what: &str)
where
    M: CausalLm<B> + AutodiffModule<B>,
    M::InnerModule: CausalLm<<B as AutodiffBackend>::InnerBackend>,
{
    let examples = synthetic(7, 11);
    let refs: Vec<&Example> = examples.iter().collect();
    let unpacked = collate(&refs, 0, Padding::Right).unwrap();
    let e = |i: usize| &examples[i];
    let rows = vec![vec![e(0), e(1), e(2)], vec![e(3), e(4)], vec![e(5), e(6)]];
    let packed = collate_packed(&rows, 0).unwrap();
    assert!(
        packed.seq_len > unpacked.seq_len,
        "rows really hold several"
    );
    assert_eq!(packed.n_target_tokens(), unpacked.n_target_tokens());
    assert_eq!(
        packed.lengths.iter().sum::<usize>(),
        unpacked.lengths.iter().sum::<usize>()
    );
    let step = |backprop, b: &Batch| micro_step::<B, M>(model, b, 1.0, None, backprop).unwrap();
    for backprop in [Backprop::Plain, Backprop::Checkpointed] {
        let (u, p) = (step(backprop, &unpacked), step(backprop, &packed));
        let rel = (u.loss_sum - p.loss_sum).abs() / u.loss_sum.abs();
        assert!(
            rel <= 1e-5,
            "{what} {backprop:?}: loss sums {} unpacked vs {} packed",
            u.loss_sum,
            p.loss_sum
        );
        let worst = worst_rel(&lora_grads(model, &u.grads), &lora_grads(model, &p.grads));
        assert!(
            worst <= 1e-5,
            "{what} {backprop:?}: worst relative LoRA grad difference {worst:e}"
        );
        println!("{what} {backprop:?}: loss rel diff {rel:e}, worst LoRA grad rel diff {worst:e}");
    }
    // The segments are what keeps the examples apart: without them (one causal mask over the
    // whole row) the loss is another.
    let mut leaky = packed.clone();
    leaky.segment_ids = Some(
        packed
            .segment_ids
            .as_ref()
            .unwrap()
            .iter()
            .map(|&s| i64::from(s != 0))
            .collect(),
    );
    let l = micro_step::<B, M>(model, &leaky, 1.0, None, Backprop::Plain).unwrap();
    let u = micro_step::<B, M>(model, &unpacked, 1.0, None, Backprop::Plain).unwrap();
    assert!(
        (l.loss_sum - u.loss_sum).abs() > 1e-4 * u.loss_sum.abs(),
        "{what}: cross-example attention must change the loss"
    );
}

#[test]
fn packed_loss_and_grads_equal_unpacked_gptj() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path());
    cfg.lora.lora_dropout = 0.0;
    let m = build::model_with_lora::<B>(&cfg, &Default::default()).unwrap();
    let m = live(m, peft_config(&cfg));
    packed_equals_unpacked(&m, "gptj");
}

fn llama_family(fixture: &str) -> qtune_llama::Llama<B> {
    llama_fixture(fixture, &LoadOptions::default(), 0.0)
}

#[test]
fn packed_loss_and_grads_equal_unpacked_llama() {
    let m = llama_family("llama_tiny");
    assert_eq!(m.positions().sliding_window, None);
    packed_equals_unpacked(&m, "llama");
}

#[test]
fn packed_loss_and_grads_equal_unpacked_mistral_sliding_window() {
    // Window 4, examples of 8..=13 tokens: the window cuts inside every example.
    let m = llama_family("mistral_tiny");
    assert_eq!(m.positions().sliding_window, Some(4));
    packed_equals_unpacked(&m, "mistral");
}

fn packed_config(dir: &std::path::Path) -> qtune_train::RunConfig {
    let mut c = tiny_config(dir);
    c.data.packing = true;
    c.data.max_length = 32;
    c.validate("packed_config").unwrap();
    c
}

#[test]
fn packed_run_resumes_bit_for_bit() {
    let _g = rng_lock();
    let data = (synthetic(48, 1), synthetic(8, 2));

    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = packed_config(dir_a.path());
    let model = lm(&cfg_a);
    let opts = TrainOptions::default();
    let (_, full) = train_model(&cfg_a, model, &data, &opts).unwrap();
    assert!(full.finished);
    assert_eq!(full.losses.len(), 6);

    // The same run unpacked sees other batches: packing is really on.
    let dir_u = tempfile::tempdir().unwrap();
    let cfg_u = tiny_config(dir_u.path());
    let model = lm(&cfg_u);
    let (_, unpacked) = train_model(&cfg_u, model, &data, &opts).unwrap();
    assert_ne!(unpacked.losses, full.losses);
    // Rows of ~3 examples: a packed step sees about 3× the target tokens of an unpacked one.
    assert!(
        full.tokens_seen > 2 * unpacked.tokens_seen,
        "{} vs {}",
        full.tokens_seen,
        unpacked.tokens_seen
    );

    // Stop after step 3 (last checkpoint: step 2), resume: steps 3..=6 as uninterrupted.
    let dir_b = tempfile::tempdir().unwrap();
    let cfg_b = packed_config(dir_b.path());
    let model = lm(&cfg_b);
    let stop = TrainOptions {
        stop_at_step: Some(3),
        ..Default::default()
    };
    let (_, first) = train_model(&cfg_b, model, &data, &stop).unwrap();
    assert_eq!(first.losses, full.losses[..3]);

    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    // A checkpoint of a packed run does not resume unpacked (the position indexes rows).
    let mut cfg_off = cfg_b.clone();
    cfg_off.data.packing = false;
    let model = lm(&cfg_off);
    let err = train_model(&cfg_off, model, &data, &resume)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("data.packing"), "{err}");

    let model = lm(&cfg_b);
    let (_, rest) = train_model(&cfg_b, model, &data, &resume).unwrap();
    assert!(rest.finished);
    let bits = |v: &[(usize, f64)]| v.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&rest.losses), bits(&full.losses[2..]), "steps 3..=6");
    assert_eq!(
        rest.best_eval_loss.map(f64::to_bits),
        full.best_eval_loss.map(f64::to_bits)
    );
}

#[test]
fn packing_refuses_too_few_rows_and_too_long_examples() {
    let (_g, dir) = locked_tempdir();
    let cfg = packed_config(dir.path());
    // 6 examples of ≤ 13 tokens fill ≤ 3 rows of 32: fewer than a batch of 4 rows.
    let model = lm(&cfg);
    let opts = TrainOptions::default();
    let err = train_model(&cfg, model, &(synthetic(6, 1), synthetic(4, 2)), &opts)
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, TrainError::Packing { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("packing") && msg.contains("per_device_train_batch_size"),
        "{msg}"
    );
    // An example longer than max_length cannot be packed.
    let mut cfg = cfg;
    cfg.data.max_length = 10;
    let model = lm(&cfg);
    let opts = TrainOptions {
        overwrite: true,
        ..Default::default()
    };
    let err = train_model(&cfg, model, &(synthetic(48, 1), synthetic(4, 2)), &opts)
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("packing") && err.contains("max_length"),
        "{err}"
    );
}

/// The loop's context honours the segment ids (model.rs), also on the inner backend.
#[test]
fn segmented_context_masks_across_examples() {
    let (_g, dir) = locked_tempdir();
    let cfg = tiny_config(dir.path());
    let m = build::model_with_lora::<B>(&cfg, &Default::default()).unwrap();
    let a = Example::from_prompt_completion(&[5, 6], &[7]);
    let packed = collate_packed(&[vec![&a, &a]], 0).unwrap();
    let ctx = SegmentedLm::context(
        &m.valid(),
        &packed,
        None,
        qtune_kernels::LinearBackward::Quantized,
    );
    let bits = ctx.mask.unwrap().into_data().to_vec::<bool>().unwrap();
    // Query 3 (first token of the second example) sees only key 3.
    assert_eq!(&bits[3 * 6..4 * 6], &[true, true, true, false, true, true]);
}

/// A checkpoint written before `packing_strategy` existed (no field in its state or config) was
/// packed by first fit: it resumes with first fit, bit for bit, though new runs default to
/// best fit decreasing.
#[test]
fn a_checkpoint_from_before_packing_strategy_resumes_first_fit() {
    let _g = rng_lock();
    let data = (synthetic(48, 1), synthetic(8, 2));
    let ff = |dir: &std::path::Path| {
        let mut c = packed_config(dir);
        c.data.packing_strategy = Some(qtune_data::PackStrategy::FirstFit);
        c
    };
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = ff(dir_a.path());
    let (_, full) = train_model(&cfg_a, lm(&cfg_a), &data, &TrainOptions::default()).unwrap();
    // Best fit decreasing makes other rows: other losses.
    let dir_d = tempfile::tempdir().unwrap();
    let cfg_d = packed_config(dir_d.path());
    let (_, bfd) = train_model(&cfg_d, lm(&cfg_d), &data, &TrainOptions::default()).unwrap();
    assert_ne!(bfd.losses, full.losses);

    let dir_b = tempfile::tempdir().unwrap();
    let cfg_b = ff(dir_b.path());
    let stop = TrainOptions {
        stop_at_step: Some(3),
        ..Default::default()
    };
    train_model(&cfg_b, lm(&cfg_b), &data, &stop).unwrap();
    // Make the step-2 checkpoint an old one: neither its state nor its config names a strategy.
    let state = dir_b
        .path()
        .join("checkpoints/checkpoint-000002")
        .join(qtune_train::checkpoint::STATE_FILE);
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(v["packing_strategy"], "first_fit");
    v.as_object_mut().unwrap().remove("packing_strategy");
    v["config"]["data"]
        .as_object_mut()
        .unwrap()
        .remove("packing_strategy")
        .unwrap();
    std::fs::write(&state, serde_json::to_string(&v).unwrap()).unwrap();

    let cfg_old = packed_config(dir_b.path()); // strategy unset, as configs were then
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let (_, rest) = train_model(&cfg_old, lm(&cfg_old), &data, &resume).unwrap();
    let bits = |v: &[(usize, f64)]| v.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&rest.losses), bits(&full.losses[2..]), "steps 3..=6");
}
