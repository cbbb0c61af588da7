//! The generation metric's batching: items are generated longest first (batches pad to nearly
//! one length) and come back in item order, with the tokens each item gets alone.
use qtune_gptj::GenerationConfig;
use qtune_lm::CausalLm;
use qtune_train::evaluate::{generate_items, generation_order};
use qtune_train::task::{EvalItem, Gold};

use crate::common::{lm, locked_tempdir, tiny_config, EOS, VOCAB};

fn item(n: usize, seed: u32) -> EvalItem {
    EvalItem {
        id: format!("q{seed}"),
        prompt_ids: (0..n as u32)
            .map(|i| 3 + (i * 7 + seed * 13) % (VOCAB as u32 - 3))
            .collect(),
        gold: Gold::Text(String::new()),
    }
}

#[test]
fn generation_order_is_longest_first_and_stable() {
    let items: Vec<EvalItem> = [3, 9, 5, 9, 2, 5]
        .iter()
        .enumerate()
        .map(|(i, &n)| item(n, i as u32))
        .collect();
    assert_eq!(generation_order(&items), vec![1, 3, 2, 5, 0, 4]);
}

#[test]
fn batched_items_come_back_in_item_order_with_their_own_tokens() {
    let (_g, dir) = locked_tempdir();
    let model = lm(&tiny_config(dir.path()));
    let items: Vec<EvalItem> = [3, 9, 5, 7, 2]
        .iter()
        .zip(0..)
        .map(|(&n, s)| item(n, s))
        .collect();
    let gen = GenerationConfig {
        max_new_tokens: 5,
        eos_token_id: Some(EOS),
        pad_token_id: Some(EOS),
        ..GenerationConfig::default()
    };
    let batched = generate_items(&model, &items, 2, &gen).unwrap();
    assert_eq!(batched.len(), items.len());
    for (it, got) in items.iter().zip(&batched) {
        let alone = model
            .generate(std::slice::from_ref(&it.prompt_ids), &gen)
            .unwrap();
        assert_eq!(
            got,
            &alone[0],
            "{} ({} prompt tokens)",
            it.id,
            it.prompt_ids.len()
        );
        assert!(!got.is_empty());
    }
}
