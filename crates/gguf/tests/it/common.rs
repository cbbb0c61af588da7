//! Fixture paths, the optional real SmolLM2 file, and a minimal GGUF writer for hand-made files.

use std::path::{Path, PathBuf};

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/gguf")
}

pub fn tiny_path() -> PathBuf {
    fixtures_dir().join("tiny.gguf")
}

pub fn json(name: &str) -> serde_json::Value {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `QTUNE_SMOLLM2_GGUF`, else `$HOME/.cache/qtune/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`;
/// `None` (after printing `SKIPPED <test>: <reason>`) when neither exists.
pub fn smollm2(test: &str) -> Option<PathBuf> {
    let path = match std::env::var_os("QTUNE_SMOLLM2_GGUF") {
        Some(p) => PathBuf::from(p),
        None => match std::env::var_os("HOME") {
            Some(home) => {
                Path::new(&home).join(".cache/qtune/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            }
            None => {
                eprintln!("SKIPPED {test}: neither QTUNE_SMOLLM2_GGUF nor HOME is set");
                return None;
            }
        },
    };
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "SKIPPED {test}: {} not found (set QTUNE_SMOLLM2_GGUF)",
            path.display()
        );
        None
    }
}

/// Bit patterns as the fixtures store them.
pub fn bits(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("u32") as u32)
        .collect()
}

pub fn to_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A metadata value as GGUF encodes it: (type id, payload bytes).
pub enum Val<'a> {
    U32(u32),
    Bool(bool),
    Str(&'a str),
    Strs(&'a [&'a str]),
    I32s(&'a [i32]),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// GGUF v3 bytes with these key/values and tensors `(name, dims, type id, data)`, alignment 32.
pub fn gguf_bytes(kv: &[(&str, Val)], tensors: &[(&str, &[u64], u32, &[u8])]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kv.len() as u64).to_le_bytes());
    for (key, v) in kv {
        put_str(&mut out, key);
        match v {
            Val::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Val::Bool(b) => {
                out.extend(7u32.to_le_bytes());
                out.push(u8::from(*b));
            }
            Val::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            Val::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for s in *items {
                    put_str(&mut out, s);
                }
            }
            Val::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for x in *items {
                    out.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in tensors {
        put_str(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            out.extend(d.to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    for (_, _, _, data) in tensors {
        out.resize(out.len().div_ceil(32) * 32, 0);
        out.extend(*data);
    }
    out
}
