//! Your own data end to end: the shipped examples (datasets/examples) with their configs
//! (configs/custom-*.toml): the completion one trains 2 steps of a very small random GPT-J on CPU
//! (needs `QTUNE_DATA_DIR` for GPT-J's tokenizer), the chat one is prepared with SmolLM2's
//! tokenizer and chat template (needs the GGUF of `cargo xtask fetch smollm2`).
use std::path::{Path, PathBuf};

use qtune_data::{DataError, DataSource, IGNORE_INDEX};
use qtune_train::config::{RunConfig, Task};
use qtune_train::task::Gold;
use qtune_train::{build, run, task, TrainOptions};

use crate::common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A shipped config with its data path made absolute (the configs are relative to the root).
fn shipped(name: &str) -> RunConfig {
    let mut c = RunConfig::from_file(&repo().join("configs").join(name)).unwrap();
    let p = c.data.path.take().unwrap();
    c.data.path = Some(repo().join(p).display().to_string());
    c
}

#[test]
fn custom_completion_example_trains_two_steps_on_cpu() {
    let Some(dir) =
        qtune_data::data_dir_or_skip("custom_completion_example_trains_two_steps_on_cpu", &repo())
    else {
        return;
    };
    let _g = rng_lock();
    let out = tempfile::tempdir().unwrap();
    let mut c = shipped("custom-completion.toml");
    assert_eq!(c.data.dataset, Task::Custom);
    c.model.random = Some(gptj_vocab_model(256));
    c.data.max_train_samples = Some(16);
    c.data.max_eval_samples = Some(4);
    let t = &mut c.training;
    t.output_dir = Some(out.path().display().to_string());
    (t.max_steps, t.eval_steps, t.save_steps, t.warmup_steps) = (2, 2, 2, 0);
    t.per_device_train_batch_size = 4;
    c.eval.generation_samples = 3;
    c.eval.max_new_tokens = 4;
    let r = run::train_job::<B>(
        &c,
        &TrainOptions::default(),
        &DataSource::local(dir),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        (r.steps, r.train_examples, r.validation_examples),
        (2, 16, 4)
    );
    assert!(r.last_loss.unwrap().is_finite());
    let eval = r.final_eval.expect("exact match of the completions");
    assert_eq!(eval.metrics["total"], 3, "{}", eval.metrics);
    assert!(
        eval.metrics.get("exact_match").is_some(),
        "{}",
        eval.metrics
    );
    assert!(out
        .path()
        .join("adapter/adapter_model.safetensors")
        .is_file());
}

#[test]
fn custom_chat_example_prepares_with_smollm2_template() {
    let gguf = std::env::var_os("QTUNE_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".cache/qtune/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
        })
        .filter(|p| p.is_file());
    let Some(gguf) = gguf else {
        println!("SKIPPED custom_chat_example_prepares_with_smollm2_template: no SmolLM2 GGUF (cargo xtask fetch smollm2)");
        return;
    };
    let mut c = shipped("custom-chat.toml");
    // The config's `~/…` path resolves to the same file here.
    let home_path = build::model_dir(&c.model).unwrap().unwrap();
    assert!(home_path.is_file(), "{}", home_path.display());
    c.model.name_or_path = Some(gguf.display().to_string());
    let tok = build::tokenizer(&c.model, None).unwrap();
    let eos = build::eos_id(&c.model).unwrap();
    assert_eq!(tok.id_to_token(eos).as_deref(), Some("<|im_end|>"));
    let data = task::prepare(&c, &tok, eos, &DataSource::local(repo())).unwrap();
    // 200 conversations, 5 % held back; conversations over max_length are dropped, never cut.
    assert_eq!(data.train_stats.total, 190);
    assert_eq!(data.train.len() + data.train_stats.dropped, 190);
    assert_eq!(data.train_stats.truncated, 0);
    assert!(data.train_stats.dropped < 5, "{:?}", data.train_stats);
    assert!(!data.validation.is_empty() && data.validation.len() <= 10);
    for ex in &data.train {
        // The targets are the assistant turns: text then `<|im_end|>\n`, each preceded by the
        // generation prompt `<|im_start|>assistant\n`.
        let text = tok.decode(&ex.input_ids, false).unwrap();
        assert!(
            text.starts_with("<|im_start|>system\nAnswer the question"),
            "{text}"
        );
        let mut spans = Vec::new();
        let mut cur: Vec<u32> = Vec::new();
        for (i, &l) in ex.labels.iter().enumerate() {
            if l == IGNORE_INDEX {
                if !cur.is_empty() {
                    spans.push((i, std::mem::take(&mut cur)));
                }
            } else {
                assert_eq!(l, i64::from(ex.input_ids[i]));
                cur.push(ex.input_ids[i]);
            }
        }
        if !cur.is_empty() {
            spans.push((ex.input_ids.len(), cur));
        }
        let n_assistant = text.matches("<|im_start|>assistant\n").count();
        assert_eq!(spans.len(), n_assistant, "{text}");
        for (end, span) in &spans {
            let s = tok.decode(span, false).unwrap();
            assert!(
                s.ends_with("<|im_end|>\n") && !s.contains("<|im_start|>"),
                "{s:?}"
            );
            let before = tok
                .decode(&ex.input_ids[..end - span.len()], false)
                .unwrap();
            assert!(before.ends_with("<|im_start|>assistant\n"), "{before:?}");
        }
    }
    // Generation prompts end with the assistant header; gold is the last assistant turn.
    assert!(!data.eval_items.is_empty() && data.eval_items.len() <= 10);
    let it = &data.eval_items[0];
    let prompt = tok.decode(&it.prompt_ids, false).unwrap();
    assert!(
        prompt.ends_with("<|im_end|>\n<|im_start|>assistant\n"),
        "{prompt}"
    );
    assert!(matches!(&it.gold, Gold::Text(g) if !g.is_empty()));
}

#[test]
fn messages_data_without_a_chat_template_is_a_clear_error() {
    let mut c = shipped("custom-chat.toml");
    // The random tiny GPT-J has no chat template.
    c.model.name_or_path = None;
    c.model.quantization = None;
    c.model.random = RunConfig::tiny().model.random;
    c.validate("t").unwrap();
    let tok = tokenizers::Tokenizer::new(tokenizers::models::bpe::BPE::default());
    let err = task::prepare(&c, &tok, 0, &DataSource::local(repo())).unwrap_err();
    assert!(matches!(err, DataError::NoChatTemplate(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("chat_template") && msg.contains("random model"),
        "{msg}"
    );
}
