//! Activation memory grows with blocks × block input under checkpointing, and much faster
//! without. Its own test binary: the counting allocator sees every allocation of the process,
//! so nothing may run beside the single test.

use burn::backend::{Autodiff, NdArray};
use qtune_data::{collate, Example, Padding};
use qtune_train::config::{RandomModel, RunConfig};

/// The `it` binary's helpers (this test keeps a binary of its own, see above; it uses one).
#[allow(dead_code)]
#[path = "it/common.rs"]
mod common;

#[global_allocator]
static A: qtune_train::memory::CountingAlloc = qtune_train::memory::CountingAlloc;

type B = Autodiff<NdArray>;

#[test]
fn checkpointing_keeps_only_block_inputs() {
    let dev = Default::default();
    let (batch_size, seq, d) = (4usize, 32usize, 64usize);
    let examples: Vec<Example> = (0..batch_size)
        .map(|i| {
            let ids: Vec<u32> = (0..seq as u32)
                .map(|t| (t * 7 + i as u32) % 90 + 3)
                .collect();
            Example::from_prompt_completion(&ids[..seq / 2], &ids[seq / 2..])
        })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = collate(&refs, 0, Padding::Right).unwrap();
    let mut rows = Vec::new();
    for n_layer in [1usize, 2, 4] {
        let mut cfg = RunConfig::tiny();
        cfg.model.random = Some(RandomModel {
            seed: 1,
            vocab_size: 96,
            n_positions: 64,
            n_embd: d,
            n_layer,
            n_head: 4,
            rotary_dim: 8,
            n_inner: None,
        });
        cfg.lora = common::all_linear_lora(0.0);
        let model = qtune_train::build::model_with_lora::<B>(&cfg, &dev).unwrap();
        let m = qtune_train::memory::measure::<B, _>(
            &model,
            &batch,
            d,
            &qtune_train::memory::live_bytes,
        )
        .unwrap();
        println!("{}", serde_json::to_string(&m).unwrap());
        rows.push(m);
    }
    let unit = rows[0].block_input_bytes;
    assert_eq!(unit, batch_size * seq * d * 4);
    for m in &rows {
        // h_0 … h_L: (L + 1) block inputs, plus small bookkeeping (mask, rotary tables).
        let expected = (m.n_blocks + 1) * unit;
        assert!(
            m.checkpointed_bytes >= expected && m.checkpointed_bytes <= expected + unit,
            "{m:?}: expected ≈ {expected}"
        );
        assert!(m.plain_bytes > 3 * m.checkpointed_bytes, "{m:?}");
    }
    // Per added block: checkpointing adds one block input, plain adds a block's activations.
    let per_block =
        |f: fn(&qtune_train::memory::ActivationBytes) -> usize| (f(&rows[2]) - f(&rows[0])) / 3;
    let (ck, plain) = (
        per_block(|m| m.checkpointed_bytes),
        per_block(|m| m.plain_bytes),
    );
    println!("per block: checkpointed {ck} B (block input {unit} B), plain {plain} B");
    assert!(
        ck.abs_diff(unit) <= unit / 8,
        "checkpointed grows {ck} B per block, block input is {unit} B"
    );
    assert!(plain > 8 * unit, "plain grows {plain} B per block");
}
