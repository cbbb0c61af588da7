use qtune_data::{collate, collate_prompts, Example, Padding, IGNORE_INDEX};

fn ex(prompt: &[u32], completion: &[u32]) -> Example {
    Example::from_prompt_completion(prompt, completion)
}

#[test]
fn right_padding_masks_pads_and_prompt() {
    let a = ex(&[10, 11], &[12]);
    let b = ex(&[20, 21, 22], &[23, 24]);
    let batch = collate(&[&a, &b], 99, Padding::Right).unwrap();
    assert_eq!(batch.shape(), [2, 5]);
    assert_eq!(batch.input_ids, [10, 11, 12, 99, 99, 20, 21, 22, 23, 24]);
    assert_eq!(batch.attention_mask, [1, 1, 1, 0, 0, 1, 1, 1, 1, 1]);
    let m = IGNORE_INDEX;
    assert_eq!(batch.labels, [m, m, 12, m, m, m, m, m, 23, 24]);
    assert_eq!(batch.position_ids, [0, 1, 2, 1, 1, 0, 1, 2, 3, 4]);
    assert_eq!(batch.lengths, [3, 5]);
    assert_eq!(batch.n_target_tokens(), 3);
    assert_eq!(a.n_target_tokens() + b.n_target_tokens(), 3);
}

#[test]
fn left_padding_gives_each_row_its_unpadded_positions() {
    let a = ex(&[1, 2], &[3]);
    let b = ex(&[4, 5, 6, 7], &[8]);
    let batch = collate(&[&a, &b], 0, Padding::Left).unwrap();
    assert_eq!(batch.shape(), [2, 5]);
    assert_eq!(batch.input_ids, [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(batch.attention_mask, [0, 0, 1, 1, 1, 1, 1, 1, 1, 1]);
    // Real tokens count positions from 0 as if alone; pads get HF's filler 1.
    assert_eq!(batch.position_ids, [1, 1, 0, 1, 2, 0, 1, 2, 3, 4]);
    let m = IGNORE_INDEX;
    assert_eq!(batch.labels, [m, m, m, m, 3, m, m, m, m, 8]);
    // The last column holds every row's last real token, where generation appends.
    assert_eq!(batch.input_ids[4], 3);
    assert_eq!(batch.input_ids[9], 8);
}

#[test]
fn prompts_for_generation_are_left_padded_without_labels() {
    let p1: &[u32] = &[5, 6, 7];
    let p2: &[u32] = &[8];
    let batch = collate_prompts(&[p1, p2], 50256).unwrap();
    assert_eq!(batch.input_ids, [5, 6, 7, 50256, 50256, 8]);
    assert_eq!(batch.attention_mask, [1, 1, 1, 0, 0, 1]);
    assert!(batch.labels.iter().all(|&l| l == IGNORE_INDEX));
    assert_eq!(batch.n_target_tokens(), 0);
}

#[test]
fn bad_batches_are_errors() {
    assert!(collate(&[], 0, Padding::Right).is_err());
    let bad = Example {
        input_ids: vec![1, 2],
        labels: vec![1],
    };
    let msg = collate(&[&bad], 0, Padding::Right).unwrap_err().to_string();
    assert!(msg.contains("2 input ids but 1 labels"), "{msg}");
    assert!(collate_prompts(&[&[]], 0).is_err());
}
