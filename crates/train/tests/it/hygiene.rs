//! Runs can't clobber each other (run-folder lock, no silent overwrite) and a resume leaves a
//! clean folder (metrics cut back to the checkpoint, stale temporaries removed, a corrupt latest
//! checkpoint skipped for the previous valid one); bad values are refused naming the setting.
use qtune_train::lock::{host_name, LockOwner, LOCK_FILE};
use qtune_train::metrics::{read_events, Event, METRICS_FILE};
use qtune_train::{checkpoint, TrainError, TrainOptions};

use crate::common::*;

fn write_lock(dir: &std::path::Path, pid: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let owner = LockOwner {
        pid,
        host: host_name(),
        started_unix_s: 1_700_000_000,
        token: 1,
    };
    std::fs::write(dir.join(LOCK_FILE), serde_json::to_string(&owner).unwrap()).unwrap();
}

#[test]
fn second_training_on_a_locked_folder_is_refused_and_a_stale_lock_taken_over() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path());
    cfg.training.max_steps = 2;
    // A first training holds the folder: its lock file names a live pid of this host (ours
    // stands in for the other process).
    write_lock(dir.path(), std::process::id());
    let model = lm(&cfg);
    let data = (synthetic(8, 1), synthetic(4, 2));
    let err = train_model(&cfg, model.clone(), &data, &TrainOptions::default())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(matches!(err, TrainError::Locked { .. }), "{msg}");
    assert!(
        msg.contains(&dir.path().display().to_string())
            && msg.contains(&format!("pid {}", std::process::id()))
            && msg.contains(&host_name()),
        "{msg}"
    );
    // Nothing was written by the refused run.
    assert!(!dir.path().join(METRICS_FILE).exists());
    assert!(!dir.path().join("checkpoints").exists());

    // The holder died without removing its lock: taken over, and released at the end.
    write_lock(dir.path(), 4_194_304 + 99);
    let (_, s) = train_model(&cfg, model.clone(), &data, &TrainOptions::default()).unwrap();
    assert!(s.finished);
    assert!(!dir.path().join(LOCK_FILE).exists(), "lock released");

    // A lock is released on an error path too.
    let err = train_model(&cfg, model, &data, &TrainOptions::default())
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        matches!(err, TrainError::ExistingRun { .. })
            && msg.contains("--overwrite")
            && msg.contains("--resume"),
        "{msg}"
    );
    assert!(
        !dir.path().join(LOCK_FILE).exists(),
        "lock released on error"
    );
}

#[test]
fn resume_truncates_metrics_cleans_temporaries_and_skips_a_corrupt_latest() {
    let _g = rng_lock();
    let data = (synthetic(24, 1), synthetic(8, 2));
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(dir.path());
    cfg.training.save_total_limit = 3;
    let out = dir.path();
    // Crash after step 5: checkpoints at 2 and 4, metrics up to step 5.
    let stop = TrainOptions {
        stop_at_step: Some(5),
        ..Default::default()
    };
    let model = lm(&cfg);
    let (_, first) = train_model(&cfg, model, &data, &stop).unwrap();
    assert_eq!(first.steps_done, 5);
    let steps_in = |events: &[Event]| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Train { .. }))
            .map(|e| e.step())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        steps_in(&read_events(&out.join(METRICS_FILE)).unwrap()),
        [1, 2, 3, 4, 5]
    );
    // Leftovers of interrupted saves, and a corrupt latest (step 4) checkpoint.
    let ckpts = out.join("checkpoints");
    for p in [
        ckpts.join(".tmp-checkpoint-000099/adapter"),
        out.join(".tmp-adapter"),
        out.join(".old-adapter"),
    ] {
        std::fs::create_dir_all(&p).unwrap();
    }
    let corrupt = ckpts
        .join(checkpoint::step_dir_name(4))
        .join(checkpoint::OPTIMIZER_FILE);
    std::fs::write(&corrupt, b"not an optimizer state").unwrap();

    let model = lm(&cfg);
    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let (_, rest) = train_model(&cfg, model, &data, &resume).unwrap();
    assert!(rest.finished);
    // Resumed from step 2 (the valid one before the corrupt step 4).
    assert_eq!(rest.losses.first().unwrap().0, 3);
    assert_eq!(
        steps_in(&read_events(&out.join(METRICS_FILE)).unwrap()),
        [1, 2, 3, 4, 5, 6],
        "each step once"
    );
    for p in [
        ckpts.join(".tmp-checkpoint-000099"),
        out.join(".tmp-adapter"),
        out.join(".old-adapter"),
    ] {
        assert!(!p.exists(), "{} not cleaned", p.display());
    }

    // No valid checkpoint at all: the error names the corrupt file.
    for step in [2, 4, 6] {
        let d = ckpts.join(checkpoint::step_dir_name(step));
        if d.is_dir() {
            std::fs::write(d.join(checkpoint::OPTIMIZER_FILE), b"garbage").unwrap();
        }
    }
    let model = lm(&cfg);
    let msg = train_model(&cfg, model, &data, &resume)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("no earlier checkpoint") && msg.contains(checkpoint::OPTIMIZER_FILE),
        "{msg}"
    );
}

#[test]
fn max_length_beyond_the_context_window_is_refused() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path()); // n_positions 64
    cfg.data.max_length = 100;
    let err = cfg.validate("t.toml").unwrap_err().to_string();
    assert!(err.contains("100") && err.contains("64"), "{err}");
    // Also when the model is built (not only from the config's random section).
    let model = lm(&cfg);
    let msg = train_model(&cfg, model, &small_data(), &TrainOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("data.max_length") && msg.contains("100") && msg.contains("64"),
        "{msg}"
    );
}

#[test]
fn an_emptied_split_names_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev.json");
    let articles: Vec<serde_json::Value> = (0..8)
        .map(|i| {
            serde_json::json!({
                "title": format!("A{i}"),
                "paragraphs": [{
                    "context": "The cat sat on the mat.",
                    "qas": [{
                        "id": format!("q{i}"),
                        "question": "Where did the cat sit?",
                        "answers": [{"text": "on the mat", "answer_start": 12}],
                        "is_impossible": false
                    }]
                }]
            })
        })
        .collect();
    std::fs::write(
        &path,
        serde_json::json!({"version": "v2.0", "data": articles}).to_string(),
    )
    .unwrap();
    let tok = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    let mut cfg = tiny_config(dir.path());
    cfg.data.max_train_samples = Some(0);
    let msg = qtune_train::task::prepare_from_file(&cfg, &tok, 0, &path)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("data.max_train_samples"), "{msg}");
    cfg.data.max_train_samples = None;
    cfg.data.max_eval_samples = Some(0);
    let msg = qtune_train::task::prepare_from_file(&cfg, &tok, 0, &path)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("data.max_eval_samples"), "{msg}");
}
