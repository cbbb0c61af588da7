//! End to end on the real data (skipped without `QTUNE_DATA_DIR`): SQuAD v2 and hate speech go
//! through tokenization, a few training steps of a very small GPT-J, and the final
//! generation metric; the run folder has every promised file.
use std::path::PathBuf;

use qtune_data::DataSource;
use qtune_train::config::{RunConfig, Task};
use qtune_train::{run, TrainOptions};

use crate::common::*;

/// `$QTUNE_DATA_DIR` (absolute, or relative to the repository root as CI sets it).
/// Both task files must be in it, else the skip is reported (a failure under `CI=true`).
fn data_dir(test: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in [
        "squad-v2/dev-v2.0.json",
        "hate-speech-davidson2017/labeled_data.csv",
    ] {
        qtune_data::data_file_or_skip(test, &root, file)?;
    }
    qtune_data::data_dir_or_skip(test, &root)
}

fn small(task: Task, out: &std::path::Path) -> RunConfig {
    let mut c = RunConfig::tiny();
    c.model.random = Some(gptj_vocab_model(256));
    c.data.dataset = task;
    c.data.max_length = 160;
    c.data.max_train_samples = Some(24);
    c.data.max_eval_samples = Some(8);
    let t = &mut c.training;
    t.output_dir = Some(out.display().to_string());
    t.max_steps = 3;
    t.eval_steps = 3;
    t.save_steps = 3;
    t.per_device_train_batch_size = 4;
    c.eval.generation_samples = 4;
    c.eval.max_new_tokens = 4;
    c
}

#[test]
fn squad_and_hate_speech_runs_write_their_outputs() {
    let Some(dir) = data_dir("squad_and_hate_speech_runs_write_their_outputs") else {
        return;
    };
    let _g = rng_lock();
    let source = DataSource::local(dir);
    for (task, keys) in [
        (Task::SquadV2, ["exact", "f1", "total"]),
        (Task::HateSpeech, ["accuracy", "macro_f1", "confusion"]),
    ] {
        let out = tempfile::tempdir().unwrap();
        let cfg = small(task, out.path());
        let r = run::train_job::<B>(&cfg, &TrainOptions::default(), &source, &Default::default())
            .unwrap();
        assert_eq!(r.steps, 3);
        assert_eq!(r.train_examples, 24);
        let eval = r.final_eval.expect("final generation metric");
        for k in keys {
            assert!(
                eval.metrics.get(k).is_some(),
                "{task:?}: `{k}` missing in {}",
                eval.metrics
            );
        }
        for f in [
            "metrics.jsonl",
            "loss.png",
            "eval_results.json",
            "report.json",
            "predictions.jsonl",
            "adapter/adapter_model.safetensors",
        ] {
            assert!(out.path().join(f).is_file(), "{task:?}: {f} missing");
        }
        assert!(!out.path().join(".qtune.lock").exists(), "lock released");
        let preds = std::fs::read_to_string(out.path().join("predictions.jsonl")).unwrap();
        assert_eq!(preds.lines().count(), eval.predictions.len());
        let last = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
        assert!(last.lines().last().unwrap().contains("\"final\""));
    }
}
