//! Reading the committed reference fixtures (tests/fixtures at the repo root).

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn read(rel: &str) -> Vec<u8> {
    let path = fixtures_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (fixtures are committed; re-run tests/fixtures/make_all.sh)",
            path.display()
        )
    })
}

/// A tensor widened to f32 (exact for f32/f16/bf16).
pub fn f32s(st: &SafeTensors<'_>, name: &str) -> Vec<f32> {
    qtune_quant::golden::tensor_f32(st, name).unwrap_or_else(|e| panic!("fixture {e}"))
}

/// Raw bit patterns widened to u32 (f32 bits, or the 16 bits of f16/bf16).
pub fn bits(st: &SafeTensors<'_>, name: &str) -> Vec<u32> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor `{name}`: {e}"));
    let d = t.data();
    match t.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 | Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        other => panic!("fixture tensor `{name}`: unexpected dtype {other:?}"),
    }
}

pub fn u8s(st: &SafeTensors<'_>, name: &str) -> Vec<u8> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor `{name}`: {e}"));
    assert_eq!(t.dtype(), Dtype::U8, "fixture tensor `{name}`");
    t.data().to_vec()
}

pub fn f32_bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Distance in units in the last place between two finite f32 of the same sign.
pub fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}
