//! Padding-free packing: best-fit-decreasing and first-fit rows, the packed batch layout, labels
//! that never cross an example boundary.
use proptest::prelude::*;
use qtune_data::{collate_packed, Example, PackStrategy, Packing, IGNORE_INDEX};

const BFD: PackStrategy = PackStrategy::BestFitDecreasing;
const FF: PackStrategy = PackStrategy::FirstFit;

fn ex(prompt: &[u32], completion: &[u32]) -> Example {
    Example::from_prompt_completion(prompt, completion)
}

#[test]
fn packed_batch_layout() {
    let a = ex(&[10, 11], &[12]); // 3 tokens
    let b = ex(&[20], &[21, 22]); // 3 tokens
    let c = ex(&[30, 31], &[32, 33]); // 4 tokens
    let batch = collate_packed(&[vec![&a, &b], vec![&c]], 99).unwrap();
    assert_eq!(batch.shape(), [2, 6]);
    let m = IGNORE_INDEX;
    assert_eq!(
        batch.input_ids,
        [10, 11, 12, 20, 21, 22, 30, 31, 32, 33, 99, 99]
    );
    assert_eq!(batch.attention_mask, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
    assert_eq!(batch.position_ids, [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 0]);
    assert_eq!(
        batch.segment_ids.as_deref(),
        Some(&[1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 0, 0][..])
    );
    // b's first token is a target when b is alone at position 0 (never counted there), and
    // must be -100 here so that a's last token predicts nothing.
    assert_eq!(batch.labels, [m, m, 12, m, 21, 22, m, m, 32, 33, m, m]);
    assert_eq!(batch.lengths, [6, 4]);
    assert_eq!(
        batch.n_target_tokens(),
        a.n_target_tokens() + b.n_target_tokens() + c.n_target_tokens()
    );
}

#[test]
fn a_label_on_an_examples_first_token_is_dropped() {
    // Text data: every token is a label, the first included.
    let text = Example {
        input_ids: vec![5, 6, 7],
        labels: vec![5, 6, 7],
    };
    let batch = collate_packed(&[vec![&text, &text]], 0).unwrap();
    let m = IGNORE_INDEX;
    assert_eq!(batch.labels, [m, 6, 7, m, 6, 7]);
    assert_eq!(batch.n_target_tokens(), 2 * text.n_target_tokens());
}

#[test]
fn packing_keeps_every_example_once_and_reports_its_fill() {
    let lengths = [6, 5, 4, 3, 7, 2, 1];
    for strategy in [BFD, FF] {
        check_packing(&lengths, strategy);
    }
    // Best fit decreasing: 7+3, 6+4, 5+2+1 (the tightest row each time).
    let p = Packing::new(&lengths, 10, 3, BFD).unwrap();
    assert_eq!(p.rows, [vec![4, 3], vec![0, 2], vec![1, 5, 6]]);
    assert_eq!(p.row_tokens, [10, 10, 8]);
}

fn check_packing(lengths: &[usize], strategy: PackStrategy) {
    let p = Packing::new(lengths, 10, 3, strategy).unwrap();
    let mut seen = p.rows.concat();
    seen.sort_unstable();
    assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
    assert_eq!(p.n_examples(), lengths.len());
    for (r, row) in p.rows.iter().enumerate() {
        let tokens: usize = row.iter().map(|&i| lengths[i]).sum();
        assert_eq!(tokens, p.row_tokens[r]);
        assert!(tokens <= 10);
    }
    assert_eq!(p.n_tokens(), 28);
    // 6, 5 and 7 need a row each; the rest fits around them or in one more.
    assert!((3..=4).contains(&p.n_rows()), "{:?}", p.rows);
    assert!((p.fill_ratio() - 28.0 / (10 * p.n_rows()) as f64).abs() < 1e-12);
    // Deterministic in the seed.
    assert_eq!(p, Packing::new(lengths, 10, 3, strategy).unwrap());
    let examples: Vec<Example> = lengths.iter().map(|&l| ex(&vec![3; l - 1], &[4])).collect();
    assert_eq!(Packing::of_examples(&examples, 10, 3, strategy).unwrap(), p);
    assert_eq!(p.row(0, &examples).len(), p.rows[0].len());
}

#[test]
fn packing_refuses_what_does_not_fit() {
    for strategy in [BFD, FF] {
        let err = Packing::new(&[3, 11, 2], 10, 0, strategy)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("example 1") && err.contains("11 tokens"),
            "{err}"
        );
        assert!(Packing::new(&[3, 0], 10, 0, strategy).is_err());
        assert!(Packing::new(&[], 10, 0, strategy).is_err());
    }
    assert!(collate_packed(&[], 0).is_err());
    assert!(collate_packed(&[vec![]], 0).is_err());
}

/// The placement order before the strategy: the shuffle of stream PACK_STREAM.
fn seeded_order(n: usize, seed: u64) -> Vec<usize> {
    use rand::seq::SliceRandom;
    use rand::SeedableRng;
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(qtune_data::pack::PACK_STREAM);
    order.shuffle(&mut rng);
    order
}

/// Best fit decreasing, written the slow way: longest first (stable over `order`), each into
/// the row with the least room that fits (lowest row on ties).
fn bfd_reference(lengths: &[usize], order: &[usize], cap: usize) -> Vec<Vec<usize>> {
    let mut order = order.to_vec();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let best = rows
            .iter()
            .enumerate()
            .filter(|(_, (used, _))| used + lengths[i] <= cap)
            .min_by_key(|(r, (used, _))| (cap - used, *r))
            .map(|(r, _)| r);
        match best {
            Some(r) => {
                rows[r].0 += lengths[i];
                rows[r].1.push(i);
            }
            None => rows.push((lengths[i], vec![i])),
        }
    }
    rows.into_iter().map(|(_, r)| r).collect()
}

/// First fit, written the slow way.
fn first_fit_reference(lengths: &[usize], order: &[usize], cap: usize) -> Vec<Vec<usize>> {
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for &i in order {
        match rows.iter_mut().find(|(used, _)| used + lengths[i] <= cap) {
            Some((used, row)) => {
                *used += lengths[i];
                row.push(i);
            }
            None => rows.push((lengths[i], vec![i])),
        }
    }
    rows.into_iter().map(|(_, r)| r).collect()
}

proptest! {
    #[test]
    fn packing_is_first_fit_over_the_seeded_order(
        lengths in prop::collection::vec(1usize..=16, 1..80),
        seed in any::<u64>(),
    ) {
        let p = Packing::new(&lengths, 16, seed, FF).unwrap();
        let order = seeded_order(lengths.len(), seed);
        prop_assert_eq!(&p.rows, &first_fit_reference(&lengths, &order, 16));
        // No two rows could be merged into one: first fit leaves at most one row half empty.
        let half_empty = p.row_tokens.iter().filter(|&&t| 2 * t <= 16).count();
        prop_assert!(half_empty <= 1, "{:?}", p.row_tokens);
    }

    #[test]
    fn packing_is_best_fit_decreasing_over_the_seeded_order(
        lengths in prop::collection::vec(1usize..=16, 1..80),
        seed in any::<u64>(),
    ) {
        let p = Packing::new(&lengths, 16, seed, BFD).unwrap();
        let order = seeded_order(lengths.len(), seed);
        prop_assert_eq!(&p.rows, &bfd_reference(&lengths, &order, 16));
        let half_empty = p.row_tokens.iter().filter(|&&t| 2 * t <= 16).count();
        prop_assert!(half_empty <= 1, "{:?}", p.row_tokens);
    }
}
