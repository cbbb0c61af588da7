//! GPT-J's tokenizer as a `tokenizers::Tokenizer`: from `tokenizer.json`, or built from GPT-2's
//! `vocab.json` + `merges.txt` (byte-level BPE, no prefix space) plus `<|endoftext|>` (50256,
//! special) and GPT-J's 143 `<|extratoken_N|>` added tokens (50257–50399, vocab 50400), exactly
//! as HF's `GPT2TokenizerFast` + `add_tokens` builds it.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::LmError;

/// GPT-J's end-of-text token.
pub const ENDOFTEXT: &str = "<|endoftext|>";
/// Number of GPT-J's `<|extratoken_N|>` padding tokens.
pub const N_EXTRA_TOKENS: usize = 143;

fn tok_err(path: &Path, e: impl std::fmt::Display) -> LmError {
    LmError::Tokenizer {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// `tokenizer.json` as saved by HF.
pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer, LmError> {
    Tokenizer::from_file(path).map_err(|e| tok_err(path, e))
}

/// GPT-2 BPE files (`vocab.json`/`encoder.json`, `merges.txt`/`vocab.bpe`) + GPT-J's added tokens.
pub fn from_gpt2_files(vocab: &Path, merges: &Path) -> Result<Tokenizer, LmError> {
    let (v, m) = (vocab.to_string_lossy(), merges.to_string_lossy());
    let bpe = BPE::from_file(&v, &m)
        .build()
        .map_err(|e| tok_err(vocab, e))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.with_post_processor(Some(ByteLevelProcessor::default().trim_offsets(false)));
    tok.add_special_tokens(&[AddedToken::from(ENDOFTEXT, true)]);
    let extra: Vec<AddedToken> = (1..=N_EXTRA_TOKENS)
        .map(|i| AddedToken::from(format!("<|extratoken_{i}|>"), false))
        .collect();
    tok.add_tokens(&extra);
    let n = tok.get_vocab_size(true);
    if n != 50400 {
        return Err(tok_err(
            vocab,
            format!("expected 50400 tokens with GPT-J's added tokens, got {n}"),
        ));
    }
    Ok(tok)
}

/// The tokenizer of a model folder: `tokenizer.json` if present, else `vocab.json` + `merges.txt`.
pub fn from_model_dir(dir: &Path) -> Result<Tokenizer, LmError> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return from_tokenizer_json(&json);
    }
    from_gpt2_files(&dir.join("vocab.json"), &dir.join("merges.txt"))
}

/// `text` → ids (no special tokens added: GPT-J adds none).
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, LmError> {
    tok.encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| LmError::Tokenizer {
            path: Default::default(),
            reason: e.to_string(),
        })
}
