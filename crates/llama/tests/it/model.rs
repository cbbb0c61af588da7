//! fp32 logits, generation, perplexity and PEFT adapters equal HF's on every tiny fixture.

use qtune_lm::{CausalLm, GenerationConfig};
use qtune_lora::peft::PeftAdapter;

use crate::common::*;

#[test]
fn logits_match_hf_on_left_padded_prompts() {
    for name in FIXTURES {
        let model = load(name);
        let (want, shape) = reference_tensor(name, "logits");
        let got = fixture_logits(name, &model);
        assert_eq!(got.len(), want.len(), "{name}");
        let err = max_rel_err_non_pad(name, &got, &want, shape[2]);
        assert!(err <= 1e-4, "{name}: max rel err {err}");
    }
}

fn check_generate(name: &str, case: &str) {
    let model = load(name);
    let r = reference_json(name);
    let c = &r["generate"][case];
    let want: Vec<Vec<u32>> = json_2d(&c["output_ids"])
        .iter()
        .map(|row| row.iter().map(|&t| t as u32).collect())
        .collect();
    let got = model
        .generate(&fixture_prompts(name), &hf_config(&c["args"]))
        .unwrap();
    // HF pads rows that stopped on EOS; ours stop at EOS. Compare up to and including EOS.
    for (g, w) in got.iter().zip(&want) {
        let cut = w.iter().position(|&t| t == 2).map_or(w.len(), |i| i + 1);
        assert_eq!(g, &w[..cut].to_vec(), "{name} {case}");
    }
}

#[test]
fn greedy_and_repetition_penalty_match_hf() {
    for name in FIXTURES {
        for case in ["greedy", "greedy8", "greedy_rep"] {
            check_generate(name, case);
        }
    }
}

#[test]
fn beam_search_matches_hf() {
    for name in FIXTURES {
        for case in ["beam3", "beam4", "beam4_lp2_noearly"] {
            check_generate(name, case);
        }
    }
}

/// Batch-1 greedy takes the static-shape path (`greedy_fixed`: fixed KV cache, on-device
/// argmax; Mistral's window masked in it too); it must give HF's ids for each prompt alone.
#[test]
fn batch1_greedy_fixed_path_matches_hf() {
    for name in FIXTURES {
        let model = load(name);
        let r = reference_json(name);
        let c = &r["generate"]["greedy_alone"];
        let cfg = GenerationConfig {
            max_new_tokens: c["args"]["max_new_tokens"].as_u64().unwrap() as usize,
            ..GenerationConfig::default()
        };
        let want = json_2d(&c["output_ids"]);
        for (p, w) in fixture_prompts(name).iter().zip(&want) {
            let w: Vec<u32> = w.iter().map(|&t| t as u32).collect();
            assert_eq!(model.greedy_fixed(p, &cfg).unwrap(), w, "{name} fixed");
            let stepwise = model
                .generate_stepwise(std::slice::from_ref(p), &cfg)
                .unwrap();
            assert_eq!(stepwise[0], w, "{name} stepwise");
        }
    }
}

#[test]
fn sliding_window_perplexity_matches_hf() {
    for name in FIXTURES {
        let model = load(name);
        let p = qtune_lm::fixtures::perplexity_case(&reference_json(name)["perplexity"]).unwrap();
        let ids = &p.input_ids;
        let got = model.perplexity(ids, p.max_length, p.stride).unwrap();
        let want = p.ppl;
        assert_eq!(got.tokens as u64, p.tokens, "{name}");
        // Every token after the first is scored exactly once, whatever HF's count says.
        assert_eq!(got.scored_tokens, ids.len() - 1, "{name}");
        let one = model.perplexity(ids, ids.len(), ids.len()).unwrap();
        assert_eq!(
            (one.tokens, one.scored_tokens),
            (ids.len() - 1, ids.len() - 1)
        );
        assert!(
            (one.ppl - one.ppl_scored).abs() < 1e-9 * one.ppl,
            "{name}: one window, one count"
        );
        assert!(
            (got.ppl - want).abs() / want < 1e-4,
            "{name}: ppl {} vs HF {want}",
            got.ppl
        );
    }
}

/// PEFT's all-linear adapter (q,k,v,o,gate,up,down; never lm_head) loads by its HF names and
/// gives PEFT's logits; exported again it holds the same factors.
#[test]
fn peft_all_linear_adapter_gives_pefts_logits() {
    for name in FIXTURES {
        let dir = fixture_dir(name).join("peft_adapter");
        let adapter = PeftAdapter::load(&dir).unwrap();
        assert_eq!(adapter.modules.len(), 3 * 7, "{name}");
        let model = load(name).import_adapter(&adapter).unwrap();
        let (want, shape) = reference_tensor(name, "peft_logits");
        let got = fixture_logits(name, &model);
        let err = max_rel_err_non_pad(name, &got, &want, shape[2]);
        assert!(err <= 1e-4, "{name}: adapter logits max rel err {err}");
        let back = model.export_adapter(adapter.config.clone()).unwrap();
        assert_eq!(back.modules, adapter.modules, "{name}");
    }
}

/// An adapter naming a module the model lacks is refused, naming it.
#[test]
fn adapter_for_other_modules_is_refused() {
    let dir = fixture_dir("llama_tiny").join("peft_adapter");
    let mut adapter = PeftAdapter::load(&dir).unwrap();
    let t = adapter.modules.values().next().unwrap().clone();
    adapter
        .modules
        .insert("model.layers.9.self_attn.q_proj".into(), t);
    let err = load("llama_tiny").import_adapter(&adapter).unwrap_err();
    assert!(
        err.to_string().contains("model.layers.9.self_attn.q_proj"),
        "{err}"
    );
}

/// A single-string `target_modules` is PEFT's regular expression over the whole module path:
/// it selects exactly the linears it matches in full, and one matching nothing is refused with
/// an example of the paths it is matched against.
#[test]
fn regex_target_modules_select_what_peft_selects() {
    let lora = |pattern: &str| qtune_lora::LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: qtune_lora::TargetModules::from_string(pattern).unwrap(),
    };
    let model = load("llama_tiny")
        .with_lora(&lora(r"model\.layers\.[01]\.self_attn\.(q|v)_proj"), 0)
        .unwrap();
    let mut adapted: Vec<String> = model
        .linears()
        .into_iter()
        .filter(|(_, l)| l.lora.is_some())
        .map(|(n, _)| n)
        .collect();
    adapted.sort();
    assert_eq!(
        adapted,
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
    // Part of a path is not a full match: PEFT would adapt nothing, and we refuse.
    let err = load("llama_tiny")
        .with_lora(&lora("q_proj"), 0)
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("\"q_proj\"") && msg.contains("model.layers.0."),
        "{msg}"
    );
}
