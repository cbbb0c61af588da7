//! Test helpers: the data directory, GPT-J's tokenizer built from the GPT-2 files, and a byte-level
//! tokenizer that needs no files.

use std::path::PathBuf;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// `$QTUNE_DATA_DIR` when set and present; otherwise prints why `test` is skipped.
pub fn data_dir(test: &str) -> Option<PathBuf> {
    qtune_data::data_dir_or_skip(
        test,
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    )
}

/// The repository's tests/fixtures folder.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub const EOS: u32 = 50256;

/// GPT-J's tokenizer as HF builds it: GPT-2 byte-level BPE (no prefix space), `<|endoftext|>`
/// special, plus 143 `<|extratoken_i|>` added tokens (ids 50257..50399).
pub fn gptj_tokenizer(data: &std::path::Path) -> Tokenizer {
    let dir = data.join("gpt2-tokenizer");
    let vocab = dir.join("encoder.json");
    let merges = dir.join("vocab.bpe");
    let bpe = BPE::from_file(vocab.to_str().unwrap(), merges.to_str().unwrap())
        .build()
        .expect("GPT-2 BPE files");
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.add_special_tokens(&[AddedToken::from("<|endoftext|>", true)]);
    let extra: Vec<AddedToken> = (1..=143)
        .map(|i| AddedToken::from(format!("<|extratoken_{i}|>"), false))
        .collect();
    tok.add_tokens(&extra);
    assert_eq!(tok.get_vocab_size(true), 50400);
    tok
}

/// One token per byte (the 256 byte-level symbols, no merges) plus `<|endoftext|>` = 256: a real
/// tokenizer for tests that must run without data files.
pub fn byte_tokenizer() -> Tokenizer {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: std::collections::BTreeMap<String, u32> = alphabet
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    // BpeBuilder wants an AHashMap; going through files keeps ahash out of our dependencies.
    let dir = tempfile::tempdir().unwrap();
    let (v, m) = (dir.path().join("vocab.json"), dir.path().join("merges.txt"));
    std::fs::write(&v, serde_json::to_string(&vocab).unwrap()).unwrap();
    std::fs::write(&m, "#version: 0.2\n").unwrap();
    let bpe = BPE::from_file(v.to_str().unwrap(), m.to_str().unwrap())
        .build()
        .expect("byte BPE");
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.add_special_tokens(&[AddedToken::from("<|endoftext|>", true)]);
    tok
}

pub const BYTE_EOS: u32 = 256;
