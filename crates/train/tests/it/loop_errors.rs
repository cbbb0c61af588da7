//! The loop refuses bad inputs with clear errors and stops on a non-finite loss.
use qtune_train::{checkpoint, TrainError, TrainOptions};

use crate::common::*;

#[test]
fn non_finite_loss_stops_and_keeps_last_good_checkpoint() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path());
    // An absurd rate: step 1 moves the LoRA weights to ~1e30, step 2's forward overflows.
    cfg.training.learning_rate = 1e30;
    cfg.training.warmup_steps = 0;
    cfg.training.save_steps = 1;
    cfg.training.eval_steps = 100;
    cfg.training.max_steps = 5;
    let model = lm(&cfg);
    let err = train_model(
        &cfg,
        model,
        &(synthetic(16, 1), synthetic(4, 2)),
        &TrainOptions::default(),
    )
    .expect_err("a non-finite loss must stop the run");
    let msg = err.to_string();
    match err {
        TrainError::NonFinite {
            step,
            last_checkpoint,
            ..
        } => {
            let last = last_checkpoint.expect("checkpoint of the last good step");
            assert!(last.ends_with(checkpoint::step_dir_name(step - 1)), "{msg}");
            assert!(
                msg.contains("non-finite") && msg.contains(&last.display().to_string()),
                "{msg}"
            );
            let ck = checkpoint::load_latest(&dir.path().join("checkpoints"))
                .unwrap()
                .unwrap();
            assert_eq!(ck.state.step, step - 1);
        }
        other => panic!("expected NonFinite, got {other}"),
    }
}

#[test]
fn empty_dataset_and_existing_run_are_errors() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path());
    cfg.training.max_steps = 2;
    let model = lm(&cfg);
    let err = train_model(
        &cfg,
        model.clone(),
        &(vec![], synthetic(4, 2)),
        &TrainOptions::default(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, TrainError::EmptyDataset { .. }), "{err}");
    assert!(err.to_string().contains("no training examples"));

    train_model(&cfg, model.clone(), &small_data(), &TrainOptions::default()).unwrap();
    let err = train_model(&cfg, model.clone(), &small_data(), &TrainOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, TrainError::ExistingRun { .. }), "{err}");
    let overwrite = TrainOptions {
        overwrite: true,
        ..Default::default()
    };
    train_model(&cfg, model, &small_data(), &overwrite).unwrap();
}

#[test]
fn resuming_with_an_incompatible_config_is_an_error() {
    let (_g, dir) = locked_tempdir();
    let mut cfg = tiny_config(dir.path());
    cfg.training.max_steps = 2;
    let model = lm(&cfg);
    train_model(&cfg, model, &small_data(), &TrainOptions::default()).unwrap();

    let resume = TrainOptions {
        resume: true,
        ..Default::default()
    };
    let mut changed = cfg.clone();
    changed.lora.r = 8;
    let model = lm(&changed);
    let err = train_model(&changed, model, &small_data(), &resume)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("cannot resume") && msg.contains("lora.r"),
        "{msg}"
    );

    let mut changed = cfg.clone();
    changed.training.learning_rate *= 2.0;
    let model = lm(&changed);
    let msg = train_model(&changed, model, &small_data(), &resume)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("training.learning_rate"), "{msg}");
}

#[test]
fn missing_column_is_a_data_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("labeled_data.csv");
    std::fs::write(
        &csv,
        ",count,hate_speech,offensive_language,neither,tweet\n0,3,0,0,3,hello\n",
    )
    .unwrap();
    let mut cfg = tiny_config(dir.path());
    cfg.data.dataset = qtune_train::Task::HateSpeech;
    let tok = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    let err = qtune_train::task::prepare_from_file(&cfg, &tok, qtune_train::task::GPTJ_EOS, &csv)
        .err()
        .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("class") && msg.contains("labeled_data.csv"),
        "{msg}"
    );
}
