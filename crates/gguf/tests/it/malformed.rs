//! Malformed files give the right error, naming the file and the tensor/key.

use std::path::Path;

use qtune_gguf::{GgmlType, GgufError, GgufFile};

use crate::common::{gguf_bytes, tiny_path, Val};

fn tiny_bytes() -> Vec<u8> {
    std::fs::read(tiny_path()).expect("read tiny.gguf")
}

/// Writes `bytes` to a temp file and opens it, so the error carries a real path.
fn open_bytes(bytes: &[u8]) -> (tempfile::TempDir, Result<GgufFile, GgufError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.gguf");
    std::fs::write(&path, bytes).expect("write");
    let r = GgufFile::open(&path);
    (dir, r)
}

fn assert_names(e: &GgufError, parts: &[&str]) {
    let msg = e.to_string();
    for p in parts {
        assert!(msg.contains(p), "`{msg}` should mention `{p}`");
    }
}

/// Byte position of tensor `name`'s type id in tiny.gguf's header (2-D tensors).
fn type_pos(bytes: &[u8], name: &str) -> usize {
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend(name.as_bytes());
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .expect("tensor name");
    at + key.len() + 4 + 2 * 8
}

#[test]
fn missing_file_is_io_error() {
    let e = GgufFile::open(Path::new("/nonexistent/x.gguf")).expect_err("missing");
    assert!(matches!(e, GgufError::Io { .. }), "{e:?}");
    assert_names(&e, &["/nonexistent/x.gguf"]);
}

#[test]
fn bad_magic() {
    let mut b = tiny_bytes();
    b[..4].copy_from_slice(b"GGML");
    let (_d, r) = open_bytes(&b);
    let e = r.expect_err("bad magic");
    assert!(
        matches!(&e, GgufError::BadMagic { found, .. } if found == b"GGML"),
        "{e:?}"
    );
    assert_names(&e, &["broken.gguf"]);
    let (_d, r) = open_bytes(b"GG");
    assert!(matches!(r, Err(GgufError::BadMagic { .. })));
    let (_d, r) = open_bytes(b"");
    assert!(matches!(r, Err(GgufError::BadMagic { .. })));
}

#[test]
fn unsupported_version() {
    let mut b = tiny_bytes();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    let (_d, r) = open_bytes(&b);
    let e = r.expect_err("v1");
    assert!(
        matches!(e, GgufError::UnsupportedVersion { version: 1, .. }),
        "{e:?}"
    );
}

#[test]
fn truncated_header() {
    let b = tiny_bytes();
    for cut in [6, 20, 40, 300, 900] {
        let (_d, r) = open_bytes(&b[..cut]);
        let e = r.expect_err("truncated");
        assert!(matches!(e, GgufError::Truncated { .. }), "cut {cut}: {e:?}");
        assert_names(&e, &["broken.gguf"]);
    }
    // A huge count must not allocate: it is refused against the bytes left.
    let mut b = tiny_bytes();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // n_kv
    let (_d, r) = open_bytes(&b);
    let e = r.expect_err("huge n_kv");
    assert!(matches!(e, GgufError::Truncated { .. }), "{e:?}");
    assert_names(&e, &["metadata count"]);
}

#[test]
fn truncated_tensor_data_names_the_tensor() {
    let b = tiny_bytes();
    let (_d, r) = open_bytes(&b[..b.len() - 10]);
    let e = r.expect_err("truncated data");
    assert!(
        matches!(&e, GgufError::BadTensor { tensor, .. } if tensor == "q4_1"),
        "{e:?}"
    );
    assert_names(&e, &["broken.gguf", "q4_1", "past the end"]);
}

#[test]
fn unknown_type_id_names_the_tensor() {
    let mut b = tiny_bytes();
    let pos = type_pos(&b, "q8_0");
    assert_eq!(
        b[pos..pos + 4],
        8u32.to_le_bytes(),
        "found the Q8_0 type field"
    );
    b[pos..pos + 4].copy_from_slice(&4u32.to_le_bytes()); // removed Q4_2
    let (_d, r) = open_bytes(&b);
    let e = r.expect_err("unknown type");
    assert!(
        matches!(&e, GgufError::UnknownType { tensor, type_id: 4, .. } if tensor == "q8_0"),
        "{e:?}"
    );
    assert_names(&e, &["broken.gguf", "q8_0", "4"]);
}

#[test]
fn rows_must_be_whole_blocks() {
    // 64 values per row are not a whole number of Q4_K's 256-value blocks.
    let mut b = tiny_bytes();
    let pos = type_pos(&b, "q8_0");
    b[pos..pos + 4].copy_from_slice(&12u32.to_le_bytes());
    let (_d, r) = open_bytes(&b);
    let e = r.expect_err("partial block");
    assert!(
        matches!(&e, GgufError::BadTensor { tensor, .. } if tensor == "q8_0"),
        "{e:?}"
    );
    assert_names(&e, &["q8_0", "256"]);

    let b = gguf_bytes(&[], &[("w", &[16, 2], 8, &[0u8; 34])]);
    let e = GgufFile::from_bytes(Path::new("mem.gguf"), b).expect_err("16-wide Q8_0");
    assert_names(&e, &["mem.gguf", "`w`", "32"]);
}

#[test]
fn known_but_unsupported_type() {
    // One Q4_K block (256 values, 144 bytes): readable as bytes, not dequantizable.
    let b = gguf_bytes(&[], &[("k", &[256], 12, &[0u8; 144])]);
    let f = GgufFile::from_bytes(Path::new("mem.gguf"), b).expect("opens");
    assert_eq!(f.tensor("k").expect("k").ggml_type, GgmlType::Other(12));
    assert_eq!(f.tensor_data("k").expect("bytes").len(), 144);
    let e = f.read_f32("k").expect_err("unsupported");
    assert!(
        matches!(
            e,
            GgufError::UnsupportedType {
                ggml_type: GgmlType::Other(12),
                ..
            }
        ),
        "{e:?}"
    );
    assert_names(&e, &["mem.gguf", "`k`", "Q4_K"]);
}

#[test]
fn other_structural_errors() {
    let p = Path::new("mem.gguf");
    // Too many dims.
    let b = gguf_bytes(&[], &[("t", &[1, 1, 1, 1, 1], 0, &[0u8; 4])]);
    let e = GgufFile::from_bytes(p, b).expect_err("5 dims");
    assert_names(&e, &["`t`", "dimensions"]);
    // Duplicate key.
    let b = gguf_bytes(&[("a", Val::U32(1)), ("a", Val::U32(2))], &[]);
    let e = GgufFile::from_bytes(p, b).expect_err("dup key");
    assert_names(&e, &["`a`", "duplicate"]);
    // Bad alignment value.
    let b = gguf_bytes(&[("general.alignment", Val::U32(3))], &[]);
    let e = GgufFile::from_bytes(p, b).expect_err("alignment 3");
    assert_names(&e, &["general.alignment"]);
    // An empty file with only a header is fine.
    let f = GgufFile::from_bytes(p, gguf_bytes(&[], &[])).expect("empty");
    assert!(f.tensors().is_empty() && f.metadata().is_empty());
}

#[test]
fn sentencepiece_tokenizer_is_refused_by_name() {
    let b = gguf_bytes(
        &[
            ("tokenizer.ggml.model", Val::Str("llama")),
            ("tokenizer.ggml.tokens", Val::Strs(&["<unk>", "a"])),
        ],
        &[],
    );
    let f = GgufFile::from_bytes(Path::new("sp.gguf"), b).expect("open");
    let e = f.tokenizer().expect_err("llama");
    assert!(matches!(e, GgufError::Tokenizer { .. }), "{e:?}");
    assert_names(&e, &["sp.gguf", "\"llama\""]);
}

#[test]
fn gpt2_tokenizer_specials_and_add_bos() {
    // A toy byte-level vocabulary: "a", "b", "ab" with merge "a b", plus two control tokens.
    let tokens = ["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġab"];
    let types = [3, 3, 1, 1, 1, 1, 1];
    let kv = |add_bos: bool| {
        gguf_bytes(
            &[
                ("tokenizer.ggml.model", Val::Str("gpt2")),
                ("tokenizer.ggml.pre", Val::Str("default")),
                ("tokenizer.ggml.tokens", Val::Strs(&tokens)),
                ("tokenizer.ggml.token_type", Val::I32s(&types)),
                ("tokenizer.ggml.merges", Val::Strs(&["a b", "Ġ ab"])),
                ("tokenizer.ggml.bos_token_id", Val::U32(0)),
                ("tokenizer.ggml.eos_token_id", Val::U32(1)),
                ("tokenizer.ggml.add_bos_token", Val::Bool(add_bos)),
            ],
            &[],
        )
    };
    let f = GgufFile::from_bytes(Path::new("toy.gguf"), kv(false)).expect("open");
    let tok = f.tokenizer().expect("tokenizer");
    let enc = tok.encode("ab ab</s>", true).expect("encode");
    assert_eq!(enc.get_ids(), &[4, 6, 1]);
    assert_eq!(
        tok.decode(enc.get_ids(), false).expect("decode"),
        "ab ab</s>"
    );
    assert_eq!(tok.decode(enc.get_ids(), true).expect("decode"), "ab ab");

    let f = GgufFile::from_bytes(Path::new("toy.gguf"), kv(true)).expect("open");
    let tok = f.tokenizer().expect("tokenizer");
    assert_eq!(tok.encode("ab", true).expect("encode").get_ids(), &[0, 4]);
    assert_eq!(tok.encode("ab", false).expect("encode").get_ids(), &[4]);
}
