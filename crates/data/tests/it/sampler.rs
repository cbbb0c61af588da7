use qtune_data::sampler::epoch_order;
use qtune_data::{Position, Sampler};

#[test]
fn each_epoch_is_a_permutation_and_epochs_differ() {
    let mut s = Sampler::new(10, 3, 7, false).unwrap();
    assert_eq!(s.batches_per_epoch(), 4);
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.extend(s.next_batch());
    }
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..10).collect::<Vec<_>>());
    assert_eq!(
        s.position(),
        Position {
            epoch: 0,
            index: 10
        }
    );
    let next = s.next_batch();
    assert_eq!(s.position(), Position { epoch: 1, index: 3 });
    assert_eq!(next, epoch_order(7, 1, 10)[..3]);
    assert_ne!(epoch_order(7, 0, 10), epoch_order(7, 1, 10));
    assert_ne!(epoch_order(7, 0, 10), epoch_order(8, 0, 10));
    assert_eq!(epoch_order(7, 0, 10), epoch_order(7, 0, 10));
}

#[test]
fn drop_last_keeps_batches_full() {
    let mut s = Sampler::new(10, 4, 1, true).unwrap();
    assert_eq!(s.batches_per_epoch(), 2);
    for _ in 0..7 {
        assert_eq!(s.next_batch().len(), 4);
    }
    assert_eq!(s.position(), Position { epoch: 3, index: 4 });
    assert!(Sampler::new(3, 4, 1, true).is_err());
    assert!(Sampler::new(0, 4, 1, false).is_err());
}

#[test]
fn resumed_sampler_sees_exactly_the_same_batches() {
    for (len, bs, drop_last) in [(23, 4, false), (23, 4, true), (8, 8, false), (5, 2, false)] {
        let mut uninterrupted = Sampler::new(len, bs, 42, drop_last).unwrap();
        let all: Vec<Vec<usize>> = (0..30).map(|_| uninterrupted.next_batch()).collect();
        for stop in [0, 1, 5, 6, 13, 29] {
            let mut first = Sampler::new(len, bs, 42, drop_last).unwrap();
            for _ in 0..stop {
                first.next_batch();
            }
            // The position goes through a checkpoint as JSON.
            let saved = serde_json::to_string(&first.position()).unwrap();
            let pos: Position = serde_json::from_str(&saved).unwrap();
            let mut resumed = Sampler::resume(len, bs, 42, drop_last, pos).unwrap();
            let rest: Vec<Vec<usize>> = (stop..30).map(|_| resumed.next_batch()).collect();
            assert_eq!(
                rest,
                all[stop..],
                "len {len} bs {bs} drop_last {drop_last} stop {stop}"
            );
        }
    }
}

#[test]
fn resume_rejects_a_position_past_the_epoch() {
    let pos = Position {
        epoch: 0,
        index: 11,
    };
    assert!(Sampler::resume(10, 2, 0, false, pos).is_err());
}

proptest::proptest! {
    /// Stopping anywhere and resuming from the saved position reproduces the uninterrupted run.
    #[test]
    fn resume_anywhere_reproduces_the_run(
        len in 1usize..60,
        bs in 1usize..16,
        drop_last in proptest::bool::ANY,
        seed in proptest::num::u64::ANY,
        stop in 0usize..40,
    ) {
        proptest::prop_assume!(!drop_last || bs <= len);
        let mut whole = Sampler::new(len, bs, seed, drop_last).unwrap();
        let all: Vec<Vec<usize>> = (0..50).map(|_| whole.next_batch()).collect();
        let mut first = Sampler::new(len, bs, seed, drop_last).unwrap();
        for _ in 0..stop {
            first.next_batch();
        }
        let mut resumed = Sampler::resume(len, bs, seed, drop_last, first.position()).unwrap();
        let rest: Vec<Vec<usize>> = (stop..50).map(|_| resumed.next_batch()).collect();
        proptest::prop_assert_eq!(&rest[..], &all[stop..]);
    }
}
