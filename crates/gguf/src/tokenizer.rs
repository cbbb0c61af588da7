//! The tokenizer HF transformers 5 builds when it loads a GGUF
//! (`AutoTokenizer.from_pretrained(dir, gguf_file=…)`: `transformers/integrations/gguf/
//! gguf_tokenizer_mapping.py` `get_gguf_tokenizer` + `convert_gguf_tokenizer`, then
//! `TokenizersBackend.__init__`), for `tokenizer.ggml.model = "gpt2"` (byte-level BPE):
//!
//! - model: BPE, vocab = `tokenizer.ggml.tokens` (index = id; a token with a character outside
//!   GPT-2's byte alphabet is re-spelled as the alphabet characters of its UTF-8 bytes; a
//!   repeated token keeps its last id), merges = `tokenizer.ggml.merges` split at the space, no
//!   unk token, no dropout, no fuse_unk, empty subword prefix/suffix (`GPT2Tokenizer`).
//! - normalizer: none. pre-tokenizer: `ByteLevel(add_prefix_space=false, trim_offsets=true,
//!   use_regex=true)` (GPT-2's split regex), unless `tokenizer.ggml.pre` names one of
//!   `GGUF_PRE_TOKENIZER_SPLITS` (llama3, qwen2, gpt-4o, …): then `Sequence[Split(regex,
//!   isolated), ByteLevel(add_prefix_space=false, use_regex=false)]`. ("smollm" is not listed.)
//! - decoder: `ByteLevel` (defaults).
//! - added tokens, in this order: tokens of type 3 (CONTROL) whose characters are all in the byte
//!   alphabet, as special (`normalized=false`); tokens of type 4 (USER_DEFINED) present in the
//!   vocab, as non-special; then bos/eos/unk/pad (`tokenizer.ggml.{bos,eos,unknown,padding}
//!   _token_id`) that are not added yet, as special.
//! - post-processor: `TemplateProcessing`, single `[bos:0] $A:0 [eos:0]`, pair
//!   `… [bos:1] $B:1 [eos:1]`, with bos iff `tokenizer.ggml.add_bos_token` (default false for
//!   gpt2) and eos iff `add_eos_token`, each only when that token id is given.
//!
//! `"llama"` (SentencePiece) and other models are refused with `GgufError::Tokenizer`.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::{GgufError, GgufFile, MetaValue};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN35_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const GPT4O_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// transformers 5.25 `GGUF_PRE_TOKENIZER_SPLITS`: `tokenizer.ggml.pre` → split regex.
fn pre_split(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3_SPLIT,
        "tekken" => TEKKEN_SPLIT,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2_SPLIT,
        "qwen35" => QWEN35_SPLIT,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O_SPLIT,
        _ => return None,
    })
}

/// GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the other 68 to U+0100….
fn byte_alphabet() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\0');
    }
    out
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, GgufError> {
    file.get_array(key)?
        .iter()
        .map(|v| match v {
            MetaValue::Str(s) => Ok(s.as_str()),
            v => Err(GgufError::WrongType {
                path: file.path().to_path_buf(),
                key: key.to_string(),
                expected: "array of strings",
                found: format!("array of {}", v.type_name()),
            }),
        })
        .collect()
}

pub(crate) fn build(file: &GgufFile) -> Result<Tokenizer, GgufError> {
    let fail = |reason: String| GgufError::Tokenizer {
        path: file.path().to_path_buf(),
        reason,
    };
    let model = file.get_str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(fail(format!(
            "tokenizer.ggml.model = {model:?} is not supported (only \"gpt2\", byte-level BPE)"
        )));
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = match file.get_array_opt("tokenizer.ggml.merges")? {
        Some(_) => strings(file, "tokenizer.ggml.merges")?,
        None => {
            return Err(fail(
                "tokenizer.ggml.merges is missing (deriving merges is not supported)".into(),
            ))
        }
    };
    let token_types: Vec<Option<i128>> = match file.get_array_opt("tokenizer.ggml.token_type")? {
        Some(a) => a.iter().map(MetaValue::as_int).collect(),
        None => Vec::new(),
    };

    let alphabet = byte_alphabet();
    let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, &t)| {
            let spelled = if in_alphabet(t) {
                t.to_string()
            } else {
                t.bytes().map(|b| alphabet[usize::from(b)]).collect()
            };
            (spelled, id as u32)
        })
        .collect();
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !b.contains(' ') => Ok((a.to_string(), b.to_string())),
            _ => Err(fail(format!(
                "merge #{i} {m:?} is not two tokens separated by one space"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| fail(format!("BPE: {e}")))?;

    let mut tok = Tokenizer::new(bpe);
    let pre = file.get_str_opt("tokenizer.ggml.pre")?;
    let pre_tokenizer: PreTokenizerWrapper = match pre.and_then(pre_split) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| fail(format!("split regex for pre {pre:?}: {e}")))?;
            Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into()
        }
        None => ByteLevel::new(false, true, true).into(),
    };
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    tok.with_decoder(Some(ByteLevelDecoder::default()));

    let of_type = |want: i128| {
        tokens
            .iter()
            .zip(&token_types)
            .filter(move |(_, ty)| **ty == Some(want))
            .map(|(t, _)| *t)
    };
    let control: Vec<AddedToken> = of_type(3)
        .filter(|t| in_alphabet(t))
        .map(|t| AddedToken::from(t, true).normalized(false))
        .collect();
    tok.add_special_tokens(&control);
    let user: Vec<AddedToken> = of_type(4)
        .filter(|t| tok.token_to_id(t).is_some())
        .map(|t| AddedToken::from(t, false).normalized(false))
        .collect();
    tok.add_tokens(&user);

    let special = |key: &str| -> Result<Option<(String, u32)>, GgufError> {
        let Some(id) = file.get_u32_opt(key)? else {
            return Ok(None);
        };
        match tokens.get(id as usize) {
            Some(t) => Ok(Some((t.to_string(), id))),
            None => Err(fail(format!(
                "{key} = {id} is past the {} tokens",
                tokens.len()
            ))),
        }
    };
    let bos = special("tokenizer.ggml.bos_token_id")?;
    let eos = special("tokenizer.ggml.eos_token_id")?;
    let unk = special("tokenizer.ggml.unknown_token_id")?;
    let pad = special("tokenizer.ggml.padding_token_id")?;
    let added: Vec<String> = tok
        .get_added_tokens_decoder()
        .values()
        .map(|t| t.content.clone())
        .collect();
    let named: Vec<AddedToken> = [&bos, &eos, &unk, &pad]
        .into_iter()
        .flatten()
        .filter(|(t, _)| !added.contains(t))
        .map(|(t, _)| AddedToken::from(t.as_str(), true))
        .collect();
    tok.add_special_tokens(&named);

    let add_bos = file
        .get_bool_opt("tokenizer.ggml.add_bos_token")?
        .unwrap_or(false);
    let add_eos = file
        .get_bool_opt("tokenizer.ggml.add_eos_token")?
        .unwrap_or(false);
    // HF resolves each token string back to its id (`bos_token_id`), which for a repeated token
    // is the added token's id; `token_to_id` gives the same.
    let resolve = |t: &Option<(String, u32)>| {
        t.as_ref()
            .map(|(s, id)| (s.clone(), tok.token_to_id(s).unwrap_or(*id)))
    };
    let bos = resolve(&bos).filter(|_| add_bos);
    let eos = resolve(&eos).filter(|_| add_eos);
    let piece = |t: &Option<(String, u32)>, seq: u32| t.as_ref().map(|(s, _)| format!("{s}:{seq}"));
    let join =
        |parts: Vec<Option<String>>| parts.into_iter().flatten().collect::<Vec<_>>().join(" ");
    let single = join(vec![piece(&bos, 0), Some("$A:0".into()), piece(&eos, 0)]);
    let pair = join(vec![
        Some(single.clone()),
        piece(&bos, 1),
        Some("$B:1".into()),
        piece(&eos, 1),
    ]);
    let specials: Vec<(String, u32)> = bos.iter().chain(eos.iter()).cloned().collect();
    let post = TemplateProcessing::builder()
        .try_single(single.as_str())
        .and_then(|b| b.try_pair(pair.as_str()))
        .map_err(|e| fail(format!("post-processor template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| fail(format!("post-processor: {e}")))?;
    tok.with_post_processor(Some(post));
    Ok(tok)
}
