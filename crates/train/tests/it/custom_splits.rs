//! Custom data beyond one file: a held-out test split (`test_split` / `test_file`) evaluated
//! once after training, the generation metric at `eval_steps` choosing the best adapter
//! (`metric_for_best_model`), and `[data] path` as a folder / Hub dataset id (offline). The
//! end-to-end runs use a very small random GPT-J on CPU and GPT-J's tokenizer (needs
//! `QTUNE_DATA_DIR`).
use std::path::{Path, PathBuf};

use qtune_data::{DataError, DataSource};
use qtune_train::config::RunConfig;
use qtune_train::metrics::{read_events, Event, METRICS_FILE};
use qtune_train::{build, run, task, TrainOptions};

use crate::common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `n` distinct completion records as JSONL.
fn records(n: usize, from: usize) -> String {
    (from..from + n)
        .map(|i| {
            format!(
                "{{\"prompt\": \"Question {i}: what is {i} plus one?\\nAnswer:\", \"completion\": \" {}\"}}\n",
                i + 1
            )
        })
        .collect()
}

fn write(path: &Path, text: &str) -> String {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

/// configs/custom-completion.toml on `path`, with a model of a few thousand parameters.
fn config(path: &str, out: &Path) -> RunConfig {
    let mut c = RunConfig::from_file(&repo().join("configs/custom-completion.toml")).unwrap();
    c.data.path = Some(path.to_string());
    c.data.max_length = 64;
    c.model.random = Some(gptj_vocab_model(64));
    let t = &mut c.training;
    t.output_dir = Some(out.display().to_string());
    (t.max_steps, t.eval_steps, t.save_steps, t.warmup_steps) = (2, 1, 2, 0);
    t.per_device_train_batch_size = 4;
    t.gradient_checkpointing = qtune_train::config::GradientCheckpointing::Off;
    c.eval.generation_samples = 3;
    c.eval.max_new_tokens = 3;
    c
}

fn prepare(c: &RunConfig, dir: &Path) -> Result<task::TaskData, DataError> {
    c.validate("test").unwrap();
    let tok = build::tokenizer(&c.model, Some(dir)).unwrap();
    task::prepare(c, &tok, task::GPTJ_EOS, &DataSource::local(dir))
}

#[test]
fn test_split_and_generation_metric_pick_and_report_the_best_adapter() {
    let what = "test_split_and_generation_metric_pick_and_report_the_best_adapter";
    let Some(dir) = qtune_data::data_dir_or_skip(what, &repo()) else {
        return;
    };
    let _g = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let path = write(&tmp.path().join("d.jsonl"), &records(40, 0));
    let mut c = config(&path, &tmp.path().join("run"));
    c.data.test_split = Some(0.25);
    c.data.validation_split = Some(0.2);
    c.training.eval_generate_samples = 2;
    c.training.metric_for_best_model = Some("exact_match".into());
    // 10 of 40 held out for test, then 20 % of the other 30 for validation.
    let data = prepare(&c, &dir).unwrap();
    assert_eq!(
        (data.test.len(), data.validation.len(), data.train.len()),
        (10, 6, 24)
    );
    assert_eq!((data.eval_items.len(), data.test_items.len()), (3, 3));
    // The test prompts are none of the validation prompts.
    for t in &data.test_items {
        assert!(data.eval_items.iter().all(|v| v.prompt_ids != t.prompt_ids));
    }
    let r = run::train_job::<B>(
        &c,
        &TrainOptions::default(),
        &DataSource::local(&dir),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(r.metric_for_best_model, "eval_exact_match");
    let (best_step, best) = (r.best_step.unwrap(), r.best_metric.unwrap());
    assert!((0.0..=100.0).contains(&best), "{best}");
    let test = r.test.as_ref().expect("test metrics");
    assert_eq!(test.test_examples, 10);
    assert!(test.test_loss.is_finite() && test.test_tokens > 0);
    let g = test.generation.as_ref().expect("test generation metric");
    assert_eq!(g.metrics["total"], 3, "{}", g.metrics);
    // Every evaluation logged the generation metric; the best one is the first with the
    // highest exact match (HF: a tie does not replace the best).
    let events = read_events(&r.output_dir.join(METRICS_FILE)).unwrap();
    let evals: Vec<(usize, f64, bool)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Eval {
                step,
                best,
                generation: Some(m),
                ..
            } => Some((*step, m["exact_match"].as_f64().unwrap(), *best)),
            _ => None,
        })
        .collect();
    assert_eq!(evals.len(), 2, "{events:?}");
    let top = evals.iter().map(|e| e.1).fold(f64::MIN, f64::max);
    let first_top = evals.iter().find(|e| e.1 == top).unwrap();
    assert_eq!((best_step, best), (first_top.0, top));
    assert!(evals[0].2, "the first evaluation is always the best so far");
    let report = std::fs::read_to_string(r.output_dir.join(run::REPORT_FILE)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(v["test"]["test_examples"], 10, "{v}");
    assert_eq!(v["best_step"], best_step, "{v}");
}

#[test]
fn test_splits_that_are_empty_or_overlap_are_refused() {
    let what = "test_splits_that_are_empty_or_overlap_are_refused";
    let Some(dir) = qtune_data::data_dir_or_skip(what, &repo()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let path = write(&tmp.path().join("d.jsonl"), &records(20, 0));
    let mut c = config(&path, tmp.path());
    c.data.test_split = Some(0.01);
    let e = prepare(&c, &dir).unwrap_err().to_string();
    assert!(
        e.contains("test_split") && e.contains("empty") && e.contains("20 records"),
        "{e}"
    );
    // A test file sharing a record with the training file.
    let mut test = records(3, 100);
    test.push_str(&records(1, 7));
    let t = write(&tmp.path().join("t.jsonl"), &test);
    c.data.test_split = None;
    c.data.test_file = Some(t);
    let e = prepare(&c, &dir).unwrap_err().to_string();
    assert!(
        e.contains("t.jsonl")
            && e.contains("line 4")
            && e.contains("overlaps")
            && e.contains("d.jsonl line 8"),
        "{e}"
    );
    // Disjoint: accepted.
    let t = write(&tmp.path().join("t2.jsonl"), &records(3, 100));
    c.data.test_file = Some(t);
    assert_eq!(prepare(&c, &dir).unwrap().test.len(), 3);
}

#[test]
fn a_folder_is_read_by_split_and_an_uncached_hub_id_offline_is_an_error() {
    let what = "a_folder_is_read_by_split_and_an_uncached_hub_id_offline_is_an_error";
    let Some(dir) = qtune_data::data_dir_or_skip(what, &repo()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // A dataset repo's layout: two train shards, a test file, a README.
    let root = tmp.path().join("my-dataset");
    write(
        &root.join("data/train-00000-of-00002.jsonl"),
        &records(10, 0),
    );
    write(
        &root.join("data/train-00001-of-00002.jsonl"),
        &records(10, 10),
    );
    write(
        &root.join("data/test-00000-of-00001.jsonl"),
        &records(4, 50),
    );
    write(&root.join("README.md"), "# my dataset\n");
    let folder = root.display().to_string();
    let mut c = config(&folder, tmp.path());
    c.data.test_file = Some(folder.clone());
    let data = prepare(&c, &dir).unwrap();
    assert_eq!(
        (data.train.len() + data.validation.len(), data.test.len()),
        (20, 4)
    );
    // A split the folder lacks: named, with the files it has.
    c.data.split = Some("validation".into());
    let e = prepare(&c, &dir).unwrap_err().to_string();
    assert!(
        e.contains("validation") && e.contains("data/train-00000-of-00002.jsonl"),
        "{e}"
    );
    // A Hub id (no such local path) with the Hub off: an error naming it, no substitution.
    let mut c = config("qtune-tests/no-such-dataset", tmp.path());
    c.data.revision = Some("v0".into());
    let e = prepare(&c, &dir).unwrap_err();
    assert!(matches!(e, DataError::HubDataset { .. }), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("qtune-tests/no-such-dataset") && e.contains("v0") && e.contains("train"),
        "{e}"
    );
}
