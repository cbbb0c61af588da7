//! float16 dynamic loss scaling through the real trainer, on the CPU in f32 (the scaler is on
//! for any dtype when `[training.loss_scaling]` is given): a power-of-two scale that does not
//! overflow trains bit for bit as no scaling; a scale that overflows skips steps (counted in
//! metrics.jsonl, the scale halved each time) and training goes on; a resume restores the
//! scaler's state exactly.
use qtune_train::metrics::{read_events, Event, METRICS_FILE};
use qtune_train::scaler::LossScaling;
use qtune_train::TrainOptions;

use crate::common::*;

fn with_scaling(cfg: &mut qtune_train::RunConfig, init_scale: f64) {
    cfg.training.loss_scaling = Some(LossScaling {
        init_scale,
        growth_interval: 2,
    });
    cfg.validate("loss_scaling test").unwrap();
}

fn bits(v: &[(usize, f64)]) -> Vec<(usize, u64)> {
    v.iter().map(|(s, l)| (*s, l.to_bits())).collect()
}

/// (loss scale, skipped steps) of every train line.
fn scale_log(dir: &std::path::Path) -> Vec<(Option<f64>, Option<u64>)> {
    read_events(&dir.join(METRICS_FILE))
        .unwrap()
        .into_iter()
        .filter_map(|e| match e {
            Event::Train {
                loss_scale,
                skipped_steps,
                ..
            } => Some((loss_scale, skipped_steps)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_scale_that_never_overflows_trains_bit_for_bit_as_no_scaling() {
    let _g = rng_lock();
    let data = (synthetic(24, 1), synthetic(8, 2));
    let dir_a = tempfile::tempdir().unwrap();
    let cfg_a = tiny_config(dir_a.path());
    let (_, plain) = train_model(&cfg_a, lm(&cfg_a), &data, &TrainOptions::default()).unwrap();

    let dir_b = tempfile::tempdir().unwrap();
    let mut cfg_b = tiny_config(dir_b.path());
    with_scaling(&mut cfg_b, 1024.0);
    let (_, scaled) = train_model(&cfg_b, lm(&cfg_b), &data, &TrainOptions::default()).unwrap();
    assert_eq!(bits(&scaled.losses), bits(&plain.losses));
    assert_eq!(
        scaled.best_eval_loss.map(f64::to_bits),
        plain.best_eval_loss.map(f64::to_bits)
    );
    // No overflow: the scale doubles every growth_interval = 2 steps, nothing skipped.
    let log = scale_log(dir_b.path());
    assert_eq!(log.len(), 6);
    assert_eq!(log[5], (Some(1024.0 * 8.0), Some(0)));
    assert!(scale_log(dir_a.path()).iter().all(|l| *l == (None, None)));
}

#[test]
fn overflowing_steps_are_skipped_counted_and_resumed_exactly() {
    let _g = rng_lock();
    let data = (synthetic(24, 1), synthetic(8, 2));
    // 2¹³⁶ over the seed divisor (4 × 2 × 64 = 2⁹) seeds the backward with 2¹²⁷, which
    // overflows f32 in its products; a halving or two later it fits.
    let init = 2f64.powi(136);
    let dir_a = tempfile::tempdir().unwrap();
    let mut cfg_a = tiny_config(dir_a.path());
    with_scaling(&mut cfg_a, init);
    let (_, full) = train_model(&cfg_a, lm(&cfg_a), &data, &TrainOptions::default()).unwrap();
    assert!(full.finished);
    assert!(full.losses.iter().all(|(_, l)| l.is_finite()));
    let log = scale_log(dir_a.path());
    eprintln!("(loss scale, skipped) per step: {log:?}");
    let (scale, skipped) = log[5];
    let skipped = skipped.unwrap();
    assert!(skipped >= 1, "2^136 must overflow at least once: {log:?}");
    assert!(
        skipped < 6,
        "training must go on once the scale fits: {log:?}"
    );
    // Each skip halves the scale; each 2 good steps in a row double it.
    let mut expect = init;
    let mut good = 0;
    for (i, (s, k)) in log.iter().enumerate() {
        let prev = if i == 0 { 0 } else { log[i - 1].1.unwrap() };
        if k.unwrap() > prev {
            expect /= 2.0;
            good = 0;
        } else {
            good += 1;
            if good == 2 {
                expect *= 2.0;
                good = 0;
            }
        }
        assert_eq!(s.unwrap(), expect, "step {}", i + 1);
    }
    assert_eq!(scale.unwrap(), expect);

    // Interrupted after step 3, resumed from the step-2 checkpoint: the same losses and scales.
    let dir_b = tempfile::tempdir().unwrap();
    let mut cfg_b = tiny_config(dir_b.path());
    with_scaling(&mut cfg_b, init);
    let stop = TrainOptions {
        stop_at_step: Some(3),
        ..Default::default()
    };
    train_model(&cfg_b, lm(&cfg_b), &data, &stop).unwrap();
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let (_, rest) = train_model(&cfg_b, lm(&cfg_b), &data, &resume).unwrap();
    assert_eq!(bits(&rest.losses), bits(&full.losses[2..]));
    assert_eq!(scale_log(dir_b.path()), log);
}
