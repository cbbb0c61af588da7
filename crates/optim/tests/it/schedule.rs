//! LrSchedule values at the boundaries of warm-up and decay, for each kind.

use qtune_optim::{LrSchedule, OptimError, ScheduleKind};

fn sched(
    kind: ScheduleKind,
    warmup_steps: usize,
    total_steps: usize,
    min_lr_ratio: f64,
) -> LrSchedule {
    let s = LrSchedule {
        learning_rate: 2e-4,
        warmup_steps,
        total_steps,
        kind,
        min_lr_ratio,
    };
    s.validate().expect("valid schedule");
    s
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-15 + 1e-12 * b.abs()
}

#[test]
fn warmup_is_linear_from_zero_like_hf() {
    for kind in [
        ScheduleKind::Linear,
        ScheduleKind::Cosine,
        ScheduleKind::Constant,
    ] {
        let s = sched(kind, 10, 100, 0.1);
        assert_eq!(
            s.lr_at(0),
            0.0,
            "{kind:?}: HF's first warm-up step runs at lr 0"
        );
        assert!(close(s.lr_at(1), 2e-5), "{kind:?}");
        assert!(close(s.lr_at(5), 1e-4), "{kind:?}");
        assert!(close(s.lr_at(9), 1.8e-4), "{kind:?}");
        assert_eq!(s.lr_at(10), 2e-4, "{kind:?}: peak at the end of warm-up");
    }
    assert_eq!(
        sched(ScheduleKind::Linear, 0, 100, 0.0).lr_at(0),
        2e-4,
        "no warm-up: peak at once"
    );
}

#[test]
fn linear_decay_reaches_the_floor_and_stays() {
    let s = sched(ScheduleKind::Linear, 10, 110, 0.1);
    assert!(
        close(s.lr_at(60), 2e-4 * (0.1 + 0.9 * 0.5)),
        "halfway: {}",
        s.lr_at(60)
    );
    assert!(
        close(s.lr_at(110), 2e-5),
        "floor at total_steps: {}",
        s.lr_at(110)
    );
    assert!(close(s.lr_at(500), 2e-5), "stays at the floor");
    let lrs: Vec<f64> = (10..=110).map(|t| s.lr_at(t)).collect();
    assert!(
        lrs.windows(2).all(|w| w[1] < w[0]),
        "strictly decreasing during decay"
    );
    // min_lr_ratio 0 is HF's get_linear_schedule_with_warmup: (total - t) / (total - warmup).
    let hf = sched(ScheduleKind::Linear, 10, 110, 0.0);
    for t in [10, 35, 77, 109, 110] {
        assert!(close(hf.lr_at(t), 2e-4 * (110 - t) as f64 / 100.0), "t={t}");
    }
}

#[test]
fn cosine_decay_reaches_the_floor_and_stays() {
    let s = sched(ScheduleKind::Cosine, 10, 110, 0.1);
    assert!(
        close(s.lr_at(60), 2e-4 * (0.1 + 0.9 * 0.5)),
        "halfway: {}",
        s.lr_at(60)
    );
    let quarter = 0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 0.25).cos());
    assert!(
        close(s.lr_at(35), 2e-4 * quarter),
        "quarter: {}",
        s.lr_at(35)
    );
    assert!(
        close(s.lr_at(110), 2e-5),
        "floor at total_steps: {}",
        s.lr_at(110)
    );
    assert!(
        close(s.lr_at(300), 2e-5),
        "no climb past total_steps (HF's cosine would)"
    );
    let lrs: Vec<f64> = (10..=110).map(|t| s.lr_at(t)).collect();
    assert!(
        lrs.windows(2).all(|w| w[1] < w[0]),
        "strictly decreasing during decay"
    );
}

#[test]
fn constant_holds_the_peak() {
    let s = sched(ScheduleKind::Constant, 3, 10, 0.5);
    for t in [3, 4, 10, 1000] {
        assert_eq!(s.lr_at(t), 2e-4, "t={t}");
    }
}

#[test]
fn degenerate_and_invalid_schedules() {
    // warmup == total: the warm-up's peak at the boundary, the floor one step later (steps
    // 0..total-1 are the ones a run takes).
    let s = sched(ScheduleKind::Linear, 5, 5, 0.2);
    assert_eq!(s.lr_at(5), 2e-4);
    assert!(close(s.lr_at(6), 4e-5), "{}", s.lr_at(6));
    let bad = |f: fn(&mut LrSchedule)| {
        let mut s = LrSchedule {
            learning_rate: 1e-3,
            warmup_steps: 1,
            total_steps: 10,
            kind: ScheduleKind::Cosine,
            min_lr_ratio: 0.0,
        };
        f(&mut s);
        s.validate()
    };
    for (case, field) in [
        (bad(|s| s.warmup_steps = 11), "warmup_steps"),
        (bad(|s| s.min_lr_ratio = 1.5), "min_lr_ratio"),
        (bad(|s| s.learning_rate = f64::NAN), "learning_rate"),
        (bad(|s| s.learning_rate = 0.0), "learning_rate"),
    ] {
        match case {
            Err(OptimError::Config { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn schedule_kind_serializes_snake_case() {
    let s = sched(ScheduleKind::Cosine, 1, 2, 0.0);
    let json = serde_json::to_string(&s).expect("serialize");
    assert!(json.contains("\"kind\":\"cosine\""), "{json}");
    assert_eq!(serde_json::from_str::<LrSchedule>(&json).expect("parse"), s);
}
