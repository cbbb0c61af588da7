//! The block context's mask: causal, padding, sliding window and packed segments.
use burn::backend::NdArray;

use super::*;

type Nd = NdArray<f32>;

/// The `[B, 1, T, L]` mask as rows of `'x'` (masked) and `'.'` (visible), one string per query.
fn mask_rows(ctx: &BlockContext<Nd>) -> Vec<String> {
    let m = ctx.mask.clone().expect("a mask");
    let [b, _, t, l] = m.dims();
    let bits = m.into_data().to_vec::<bool>().unwrap();
    (0..b * t)
        .map(|r| {
            bits[r * l..(r + 1) * l]
                .iter()
                .map(|&x| if x { 'x' } else { '.' })
                .collect()
        })
        .collect()
}

fn ctx(
    window: Option<usize>,
    batch: usize,
    seq_len: usize,
    inputs: TokenInputs<'_>,
) -> BlockContext<Nd> {
    let mut p = Positions::rope(4, 10_000.0);
    p.sliding_window = window;
    BlockContext::from_inputs(&p, batch, seq_len, 0, inputs, None, &Default::default())
}

fn segments(s: &[i64]) -> TokenInputs<'_> {
    TokenInputs {
        segment_ids: Some(s),
        ..Default::default()
    }
}

#[test]
fn segments_give_a_block_diagonal_causal_mask() {
    // Two examples of 3 and 2 tokens in one row.
    let c = ctx(None, 1, 5, segments(&[1, 1, 1, 2, 2]));
    assert_eq!(mask_rows(&c), [".xxxx", "..xxx", "...xx", "xxx.x", "xxx.."]);
}

#[test]
fn one_segment_per_row_is_the_causal_mask() {
    let seg = ctx(None, 2, 3, segments(&[1, 1, 1, 7, 7, 7]));
    let plain = ctx(None, 2, 3, TokenInputs::default());
    assert_eq!(mask_rows(&seg), mask_rows(&plain));
    assert_eq!(mask_rows(&seg)[..3], [".xx", "..x", "..."]);
    // A single token with one segment needs no mask at all.
    assert!(ctx(None, 1, 1, segments(&[1])).mask.is_none());
}

#[test]
fn segments_with_padding() {
    // Row 0: examples of 2 and 1 tokens, then a pad (segment 0); row 1: one example of 4.
    let seg = [1, 1, 2, 0, 1, 1, 1, 1];
    let c = ctx(None, 2, 4, segments(&seg));
    assert_eq!(
        mask_rows(&c),
        [
            ".xxx", "..xx", "xx.x", "xxx.", // pads see pads only
            ".xxx", "..xx", "...x", "....",
        ]
    );
    // With the attention mask too, pad keys are hidden from everyone: the pad query's row is
    // fully masked (its output is never read); the real tokens' rows are unchanged.
    let am = [1, 1, 1, 0, 1, 1, 1, 1];
    let both = TokenInputs {
        attention_mask: Some(&am),
        segment_ids: Some(&seg),
        ..Default::default()
    };
    let rows = mask_rows(&ctx(None, 2, 4, both));
    assert_eq!(rows[3], "xxxx");
    let mut expected = mask_rows(&c);
    expected[3] = "xxxx".into();
    assert_eq!(rows, expected);
}

#[test]
fn segments_with_a_sliding_window() {
    // Window 2: a query sees itself and the token before it, within its own example.
    let c = ctx(Some(2), 1, 6, segments(&[1, 1, 1, 1, 2, 2]));
    assert_eq!(
        mask_rows(&c),
        [
            ".xxxxx", "..xxxx", "x..xxx", "xx..xx", // example 1: window
            "xxxx.x", "xxxx..", // example 2: its own tokens only
        ]
    );
}

#[test]
fn packed_rows_take_their_own_positions() {
    // Positions restart at 0 for each example: its rotary angles are those of the example alone.
    let (seg, pos) = ([1, 1, 1, 2, 2], [0, 1, 2, 0, 1]);
    let inputs = TokenInputs {
        position_ids: Some(&pos),
        segment_ids: Some(&seg),
        ..Default::default()
    };
    let packed = ctx(None, 1, 5, inputs);
    let alone = ctx(None, 1, 2, TokenInputs::default());
    let cos = packed.cos.into_data().to_vec::<f32>().unwrap();
    let cos_alone = alone.cos.into_data().to_vec::<f32>().unwrap();
    assert_eq!(
        cos[3 * 2..],
        cos_alone[..],
        "rotary_dim 4: 2 angles per token"
    );
}

#[test]
#[should_panic(expected = "segment_ids must be [batch, seq_len]")]
fn segment_ids_of_the_wrong_length_panic() {
    ctx(None, 1, 3, segments(&[1, 1]));
}

/// The rule of `BlockContext::from_inputs`, element by element: the spec `mask_bits` is fast at.
fn mask_rule(
    [batch, seq_len, past_len]: [usize; 3],
    attention_mask: Option<&[i64]>,
    segment_ids: Option<&[i64]>,
    window: Option<usize>,
) -> Vec<bool> {
    let total = past_len + seq_len;
    let mut bits = Vec::new();
    for b in 0..batch {
        for i in 0..seq_len {
            let q = past_len + i;
            for j in 0..total {
                let pad = attention_mask.is_some_and(|m| m[b * total + j] == 0);
                let outside = window.is_some_and(|w| q >= j + w);
                let other =
                    segment_ids.is_some_and(|s| j > q || s[b * seq_len + j] != s[b * seq_len + i]);
                bits.push(j > q || pad || outside || other);
            }
        }
    }
    bits
}

#[test]
fn mask_bits_follow_the_rule_on_random_inputs() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for case in 0..300 {
        let (batch, seq_len) = (rng.random_range(1..4), rng.random_range(1..9));
        let segmented = case % 3 == 0;
        let past_len = if segmented { 0 } else { rng.random_range(0..4) };
        let total = past_len + seq_len;
        let mask: Vec<i64> = (0..batch * total).map(|_| rng.random_range(0..2)).collect();
        let seg: Vec<i64> = (0..batch * seq_len)
            .map(|_| rng.random_range(0..3))
            .collect();
        let window = (case % 2 == 0).then(|| rng.random_range(1..6));
        let am = (case % 4 < 2).then_some(&mask[..]);
        let sg = segmented.then_some(&seg[..]);
        let dims = [batch, seq_len, past_len];
        assert_eq!(
            mask_bits(dims, am, sg, window),
            mask_rule(dims, am, sg, window),
            "case {case}: {dims:?} mask {am:?} segments {sg:?} window {window:?}"
        );
    }
}
