//! Generated ids equal HF `generate` on the fixture (greedy, repetition penalty, beam search).

use qtune_gptj::CausalLm;
use qtune_gptj::GenerationConfig;

use crate::common::*;

fn hf_config(args: &serde_json::Value) -> GenerationConfig {
    qtune_lm::fixtures::generation_config(args).unwrap()
}

fn check(name: &str) {
    let model = load("fp32");
    let r = reference_json();
    let case = &r["generate"][name];
    let want: Vec<Vec<u32>> = json_2d(&case["output_ids"])
        .iter()
        .map(|row| row.iter().map(|&t| t as u32).collect())
        .collect();
    let got = model
        .generate(&fixture_prompts(), &hf_config(&case["args"]))
        .unwrap();
    // HF pads rows that stopped on EOS; ours stop at EOS. Compare up to and including EOS.
    for (g, w) in got.iter().zip(&want) {
        let cut = w.iter().position(|&t| t == 2).map_or(w.len(), |i| i + 1);
        assert_eq!(g, &w[..cut].to_vec(), "{name}");
    }
}

#[test]
fn greedy_matches_hf() {
    check("greedy");
}

#[test]
fn greedy_with_repetition_penalty_matches_hf() {
    check("greedy_rep");
}

#[test]
fn beam4_matches_hf() {
    check("beam4");
}

#[test]
fn beam4_length_penalty_2_no_early_stop_matches_hf() {
    check("beam4_lp2_noearly");
}

#[test]
fn batched_greedy_equals_each_prompt_alone() {
    let model = load("fp32");
    let prompts = fixture_prompts();
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        eos_token_id: Some(2),
        pad_token_id: Some(0),
        ..Default::default()
    };
    let batched = model.generate(&prompts, &cfg).unwrap();
    for (p, b) in prompts.iter().zip(&batched) {
        assert_eq!(
            &model.generate(std::slice::from_ref(p), &cfg).unwrap()[0],
            b
        );
    }
}

/// The static-shape path for a batch (`greedy_fixed_batch`: left-padded rows writing one cache
/// column each step, on-device argmax per row) gives the stepwise loop's ids row for row, also
/// when rows end at EOS at different steps (EOS = a token the greedy run produces early in one
/// row only).
#[test]
fn batched_fixed_greedy_equals_stepwise() {
    let model = load("fp32");
    let prompts = fixture_prompts();
    let lens: Vec<usize> = prompts.iter().map(Vec::len).collect();
    assert!(
        lens.iter().any(|&l| l != lens[0]),
        "prompts of one length: no padding tested"
    );
    let mut cfg = GenerationConfig {
        max_new_tokens: 12,
        pad_token_id: Some(0),
        ..Default::default()
    };
    let fixed = |cfg: &GenerationConfig| {
        qtune_lm::fixed::greedy_fixed_batch(&model, &prompts, cfg).unwrap()
    };
    let free = model.generate_stepwise(&prompts, &cfg).unwrap();
    assert_eq!(fixed(&cfg), free);
    // An EOS that only the first row produces, at its third new token.
    let eos = free[0][2];
    assert!(
        free[1..].iter().all(|r| !r.contains(&eos)),
        "pick another EOS"
    );
    cfg.eos_token_id = Some(eos);
    let ended = fixed(&cfg);
    assert_eq!(ended, model.generate_stepwise(&prompts, &cfg).unwrap());
    assert_eq!(ended[0].len(), 3);
    assert!(ended[1..].iter().all(|r| r.len() == 12));
}

#[test]
fn sampling_is_seeded_and_top_k_1_is_greedy() {
    let model = load("fp32");
    let prompts = fixture_prompts();
    let base = GenerationConfig {
        max_new_tokens: 8,
        do_sample: true,
        temperature: 0.9,
        top_p: 0.95,
        seed: 7,
        ..Default::default()
    };
    let a = model.generate(&prompts, &base).unwrap();
    assert_eq!(
        a,
        model.generate(&prompts, &base).unwrap(),
        "same seed, same samples"
    );
    let others: Vec<_> = (8..12)
        .map(|s| {
            model
                .generate(
                    &prompts,
                    &GenerationConfig {
                        seed: s,
                        ..base.clone()
                    },
                )
                .unwrap()
        })
        .collect();
    assert!(
        others.iter().any(|o| o != &a),
        "different seeds never changed a sample"
    );
    let k1 = GenerationConfig {
        top_k: Some(1),
        ..base.clone()
    };
    let greedy = GenerationConfig {
        do_sample: false,
        ..base
    };
    assert_eq!(
        model.generate(&prompts, &k1).unwrap(),
        model.generate(&prompts, &greedy).unwrap()
    );
}

#[test]
fn eos_stops_a_row() {
    let model = load("fp32");
    let prompts = fixture_prompts();
    let greedy = model
        .generate(
            &prompts,
            &GenerationConfig {
                max_new_tokens: 5,
                ..Default::default()
            },
        )
        .unwrap();
    // Declare row 0's third generated token the EOS: row 0 stops there, others continue.
    let eos = greedy[0][2];
    let got = model
        .generate(
            &prompts,
            &GenerationConfig {
                max_new_tokens: 5,
                eos_token_id: Some(eos),
                pad_token_id: Some(0),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(got[0], greedy[0][..3].to_vec());
}

#[test]
fn invalid_generation_configs_are_errors() {
    let model = load("fp32");
    let bad = [
        GenerationConfig {
            num_beams: 0,
            ..Default::default()
        },
        GenerationConfig {
            temperature: 0.0,
            ..Default::default()
        },
        GenerationConfig {
            top_p: 0.0,
            ..Default::default()
        },
    ];
    for cfg in bad {
        assert!(model.generate(&[vec![3, 4]], &cfg).is_err(), "{cfg:?}");
    }
    assert!(model
        .generate(&[vec![]], &GenerationConfig::default())
        .is_err());
    assert!(model
        .generate(&[vec![100_000]], &GenerationConfig::default())
        .is_err());
}

#[test]
fn fixed_shape_greedy_equals_stepwise() {
    // The batch-1 greedy fast path (static KV cache, on-device argmax; a CUDA graph on the GPU)
    // against the general loop that reads the logits back every step.
    let model = load("fp32");
    for prompt in fixture_prompts() {
        for max_new_tokens in [1, 2, 3, 12] {
            let cfg = GenerationConfig {
                max_new_tokens,
                ..Default::default()
            };
            let one = std::slice::from_ref(&prompt);
            let stepwise = model.generate_stepwise(one, &cfg).unwrap();
            let fixed = model.greedy_fixed(&prompt, &cfg).unwrap();
            assert_eq!(
                fixed, stepwise[0],
                "prompt {prompt:?}, {max_new_tokens} new"
            );
            assert_eq!(fixed.len(), max_new_tokens);
        }
        // EOS inside the first check window and past it (the state is read every 16 tokens).
        let long = GenerationConfig {
            max_new_tokens: 20,
            ..Default::default()
        };
        let all = model.greedy_fixed(&prompt, &long).unwrap();
        for at in [0, 5, 17] {
            let cfg = GenerationConfig {
                eos_token_id: Some(all[at]),
                ..long.clone()
            };
            let first = all.iter().position(|&t| t == all[at]).unwrap_or(at);
            assert_eq!(
                model.greedy_fixed(&prompt, &cfg).unwrap(),
                all[..=first].to_vec(),
                "EOS at {at}"
            );
        }
    }
    assert!(model
        .greedy_fixed(&[], &GenerationConfig::default())
        .is_err());
    assert!(model
        .greedy_fixed(&[100_000], &GenerationConfig::default())
        .is_err());
}

#[test]
fn decode_step_breakdown_times_every_piece() {
    // The benchmark's per-piece timing (eager on the CPU): every piece runs and gets a time,
    // the whole step last.
    let model = load("fp32");
    let prompt = fixture_prompts().remove(0);
    let pieces = model.decode_step_breakdown(&prompt, 12, 2).unwrap();
    assert_eq!(pieces.len(), 13); // + 3 graph diagnostics where graphs exist
    assert!(
        pieces.iter().all(|(_, s)| s.is_finite() && *s > 0.0),
        "{pieces:?}"
    );
    assert!(pieces.last().unwrap().0.starts_with("step"));
    assert!(model.decode_step_breakdown(&[], 12, 2).is_err());
    assert!(model.decode_step_breakdown(&prompt, 9, 2).is_err());
}
