//! Untrusted input never panics; un-permute inverts llama.cpp's permute.

use std::path::Path;

use proptest::collection::vec;
use proptest::prelude::*;
use qtune_gguf::{unpermute_qk, GgufFile};

use crate::common::tiny_path;

/// Opens `bytes` and, if that works, reads everything a caller might read.
fn exercise(bytes: Vec<u8>) {
    let Ok(f) = GgufFile::from_bytes(Path::new("fuzz.gguf"), bytes) else {
        return;
    };
    for t in f.tensors().to_vec() {
        let _ = f.hf_shape(&t.name);
        let _ = f.tensor_data(&t.name);
        let _ = f.read_f32(&t.name);
        let _ = f.read_qk_f32(&t.name, 2);
    }
    for key in f.metadata().keys().cloned().collect::<Vec<_>>() {
        let _ = (
            f.get_u32(&key),
            f.get_u64(&key),
            f.get_f32(&key),
            f.get_str(&key),
            f.get_bool(&key),
        );
    }
    let _ = (f.architecture(), f.chat_template(), f.tokenizer());
}

fn tiny() -> Vec<u8> {
    std::fs::read(tiny_path()).expect("read tiny.gguf")
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let b = tiny();
    for n in 0..b.len() {
        assert!(
            GgufFile::from_bytes(Path::new("cut.gguf"), b[..n].to_vec()).is_err(),
            "cut at {n}"
        );
    }
    exercise(b);
}

/// llama.cpp `convert_hf_to_gguf.py` `LlamaModel.permute`, written out as the forward map.
fn permute(w: &[f32], n_head: usize, rows: usize, cols: usize) -> Vec<f32> {
    let (hd, half) = (rows / n_head, rows / n_head / 2);
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let hf_row = h * hd + j * half + i;
                let gguf_row = h * hd + 2 * i + j;
                out[gguf_row * cols..(gguf_row + 1) * cols]
                    .copy_from_slice(&w[hf_row * cols..(hf_row + 1) * cols]);
            }
        }
    }
    out
}

proptest! {
    #[test]
    fn random_bytes_never_panic(mut b in vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        if magic && b.len() >= 8 {
            b[..4].copy_from_slice(b"GGUF");
            b[4..8].copy_from_slice(&3u32.to_le_bytes());
        }
        exercise(b);
    }

    #[test]
    fn mutated_tiny_never_panics(edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6), cut in any::<prop::sample::Index>(), truncate in any::<bool>()) {
        let mut b = tiny();
        for (at, byte) in edits {
            let i = at.index(b.len());
            b[i] = byte;
        }
        if truncate {
            let n = cut.index(b.len());
            b.truncate(n);
        }
        exercise(b);
    }

    #[test]
    fn unpermute_inverts_permute(n_head in 1usize..5, half in 1usize..5, cols in 1usize..4, seed in any::<u32>()) {
        let rows = n_head * 2 * half;
        let w: Vec<f32> = (0..rows * cols).map(|i| (i as u32 ^ seed) as f32).collect();
        let back = unpermute_qk(&permute(&w, n_head, rows, cols), n_head, rows, cols).expect("valid shape");
        prop_assert_eq!(back, w);
    }
}

#[test]
fn unpermute_rejects_bad_shapes() {
    assert!(unpermute_qk(&[0.0; 6], 2, 3, 2).is_err()); // 3 rows, 2 heads
    assert!(unpermute_qk(&[0.0; 8], 0, 4, 2).is_err());
    assert!(unpermute_qk(&[0.0; 7], 1, 4, 2).is_err());
    assert!(unpermute_qk(&[0.0; 8], 1, 4, 2).is_ok());
}
