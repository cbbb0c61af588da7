//! Data-parallel training on the CPU backend (2 ranks = 2 threads, burn-collective all-reduce):
//! 2 ranks with batch b train the very LoRA weights of 1 rank with batch 2b (same global batches);
//! only rank 0 writes; resume refuses another world size; a failing rank stops the others.
use std::sync::atomic::{AtomicUsize, Ordering};

use qtune_gptj::CausalLm;
use qtune_lora::peft::PeftAdapter;
use qtune_train::trainer::peft_config;
use qtune_train::{build, train_parallel, RunConfig, TrainError, TrainOptions};

use crate::common::*;

type Dev = <B as burn::tensor::backend::BackendTypes>::Device;

/// fp32 tolerance of the equality: the two runs differ only in summation order (one padded
/// batch of 4 vs two batches of 2 summed by the all-reduce), amplified a little by AdamW over
/// the steps. Measured on this test: see the printed line.
const ABS_TOL: f32 = 1e-5;

fn config(out: &std::path::Path, per_device: usize) -> RunConfig {
    let mut c = tiny_config(out);
    c.lora.lora_dropout = 0.0; // masks depend on the batch's shape; the proof compares sums
    c.training.per_device_train_batch_size = per_device;
    c.training.max_steps = 4;
    c.training.save_steps = 2;
    c.training.eval_steps = 2;
    c
}

fn two_ranks(
    cfg: &RunConfig,
    opts: &TrainOptions,
) -> Result<(qtune_models::AnyLm<B>, qtune_train::TrainSummary), TrainError> {
    let (train_set, val_set) = (synthetic(24, 1), synthetic(8, 2));
    let devices: Vec<Dev> = vec![Default::default(), Default::default()];
    train_parallel(
        cfg,
        &devices,
        |d| build::model_with_lora::<B>(cfg, d),
        &train_set,
        &val_set,
        0,
        opts,
    )
}

/// (max |a − b|, max |a − b| / max(|b|, 1e-3)) over all LoRA factors.
fn diff(a: &PeftAdapter, b: &PeftAdapter) -> (f32, f32) {
    let (mut abs, mut rel) = (0f32, 0f32);
    assert_eq!(
        a.modules.keys().collect::<Vec<_>>(),
        b.modules.keys().collect::<Vec<_>>()
    );
    for (name, x) in &a.modules {
        let y = &b.modules[name];
        for (u, v) in x.a.iter().chain(&x.b).zip(y.a.iter().chain(&y.b)) {
            let d = (u - v).abs();
            abs = abs.max(d);
            rel = rel.max(d / v.abs().max(1e-3));
        }
    }
    (abs, rel)
}

#[test]
fn two_ranks_train_the_weights_of_one_rank_with_the_combined_batch() {
    let _g = rng_lock();
    let data = (synthetic(24, 1), synthetic(8, 2));

    let dir_one = tempfile::tempdir().unwrap();
    let cfg_one = config(dir_one.path(), 4);
    let model = lm(&cfg_one);
    let init = model.export_adapter(peft_config(&cfg_one)).unwrap();
    let (one, s_one) = train_model(&cfg_one, model, &data, &TrainOptions::default()).unwrap();

    let dir_two = tempfile::tempdir().unwrap();
    let cfg_two = config(dir_two.path(), 2);
    let (two, s_two) = two_ranks(&cfg_two, &TrainOptions::default()).unwrap();
    assert!(s_one.finished && s_two.finished);
    assert_eq!(s_two.losses.len(), 4);
    // Same target tokens: the same global batches were trained on.
    assert_eq!(s_one.tokens_seen, s_two.tokens_seen);
    assert_eq!(s_one.input_tokens, s_two.input_tokens);

    let (a_one, a_two) = (
        one.export_adapter(peft_config(&cfg_one)).unwrap(),
        two.export_adapter(peft_config(&cfg_two)).unwrap(),
    );
    let (abs, rel) = diff(&a_two, &a_one);
    let (moved, _) = diff(&a_one, &init);
    let loss_rel = s_one
        .losses
        .iter()
        .zip(&s_two.losses)
        .map(|((_, x), (_, y))| ((x - y) / x).abs())
        .fold(0.0, f64::max);
    println!(
        "2 ranks × batch 2 vs 1 rank × batch 4, 4 steps: LoRA max abs diff {abs:.3e}, max rel \
         diff {rel:.3e} (weights moved by up to {moved:.3e} from init); loss max rel diff \
         {loss_rel:.3e}"
    );
    assert!(moved > 1e-3, "training must move the weights ({moved})");
    assert!(abs <= ABS_TOL, "max abs diff {abs} > {ABS_TOL}");
    assert!(loss_rel <= 1e-5, "loss rel diff {loss_rel}");
}

#[test]
fn only_rank_zero_writes_and_resume_needs_the_same_world_size() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = config(dir.path(), 2);
    cfg.lora.lora_dropout = 0.1; // per-rank seeds; resume must reproduce them
    let stop = TrainOptions {
        stop_at_step: Some(3),
        ..Default::default()
    };
    let (_, first) = two_ranks(&cfg, &stop).unwrap();
    assert_eq!(first.steps_done, 3);

    // One writer: one train line per step, one eval line per eval, one checkpoint per save.
    let events = qtune_train::metrics::read_events(&dir.path().join("metrics.jsonl")).unwrap();
    let count = |kind: &str| {
        events
            .iter()
            .filter(|e| serde_json::to_string(e).unwrap().contains(kind))
            .count()
    };
    assert_eq!(count("eval_loss"), 1, "{events:?}");
    assert_eq!(events.len(), 3 + 1, "{events:?}");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("checkpoints/checkpoint-000002/trainer_state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["world_size"], 2);
    assert!(dir
        .path()
        .join("adapter/adapter_model.safetensors")
        .is_file());

    // Resuming on 1 rank is refused, naming both sizes.
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let model = lm(&cfg);
    let data = (synthetic(24, 1), synthetic(8, 2));
    let err = train_model(&cfg, model, &data, &resume)
        .expect_err("resume with another world size must fail")
        .to_string();
    assert!(
        err.contains("over 2 rank(s)") && err.contains("this run has 1"),
        "{err}"
    );

    // On 2 ranks it resumes (from step 2) and equals an uninterrupted 2-rank run bit for bit.
    let (_, rest) = two_ranks(&cfg, &resume).unwrap();
    assert!(rest.finished);
    let full_dir = tempfile::tempdir().unwrap();
    let mut full_cfg = cfg.clone();
    full_cfg.training.output_dir = Some(full_dir.path().display().to_string());
    let (_, full) = two_ranks(&full_cfg, &TrainOptions::default()).unwrap();
    let bits = |v: &[(usize, f64)]| v.iter().map(|(s, l)| (*s, l.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&first.losses), bits(&full.losses[..3]));
    assert_eq!(bits(&rest.losses), bits(&full.losses[2..]));
}

#[test]
fn a_failing_rank_stops_the_others() {
    let (_g, dir) = locked_tempdir();
    let cfg = config(dir.path(), 2);
    let (train_set, val_set) = (synthetic(24, 1), synthetic(8, 2));
    let devices: Vec<Dev> = vec![Default::default(), Default::default()];
    let calls = AtomicUsize::new(0);
    let err = train_parallel(
        &cfg,
        &devices,
        |d| {
            if calls.fetch_add(1, Ordering::SeqCst) == 1 {
                return Err(TrainError::Tokenizer {
                    msg: "injected build failure".into(),
                });
            }
            build::model_with_lora::<B>(&cfg, d)
        },
        &train_set,
        &val_set,
        0,
        &TrainOptions::default(),
    )
    .expect_err("one rank failed")
    .to_string();
    assert!(err.contains("injected build failure"), "{err}");

    // A panicking rank (here while building its replica) is reported, its peer released.
    let calls = AtomicUsize::new(0);
    let err = train_parallel(
        &cfg,
        &devices,
        |d| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("injected build panic");
            }
            build::model_with_lora::<B>(&cfg, d)
        },
        &train_set,
        &val_set,
        0,
        &TrainOptions::default(),
    )
    .expect_err("one rank panicked")
    .to_string();
    assert!(err.contains("panicked: injected build panic"), "{err}");

    // Rank 0 fails mid-run (its best-adapter write at the step-2 eval hits a file where its
    // temp folder goes); rank 1 is then waiting in step 3's all-reduce and must stop too.
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), 2);
    std::fs::write(dir.path().join(".tmp-adapter"), b"in the way").unwrap();
    let err = two_ranks(&cfg, &TrainOptions::default())
        .expect_err("rank 0 cannot write its adapter")
        .to_string();
    assert!(err.contains(".tmp-adapter"), "{err}");
    let events = qtune_train::metrics::read_events(&dir.path().join("metrics.jsonl")).unwrap();
    assert_eq!(
        events.len(),
        2,
        "steps 1 and 2 logged, then stopped: {events:?}"
    );

    // Right after the failed sessions, a world of 3 (global batch 6) trains: the collective
    // session was closed cleanly.
    let devices: Vec<Dev> = vec![Default::default(); 3];
    let dir3 = tempfile::tempdir().unwrap();
    let mut cfg3 = config(dir3.path(), 2);
    cfg3.training.max_steps = 2;
    let (_, s) = train_parallel(
        &cfg3,
        &devices,
        |d| build::model_with_lora::<B>(&cfg3, d),
        &train_set,
        &val_set,
        0,
        &TrainOptions::default(),
    )
    .unwrap();
    assert!(s.finished);
}
