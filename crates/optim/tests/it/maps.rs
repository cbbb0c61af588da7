//! The optimizer's code books against bitsandbytes' own.

use qtune_optim::dynamic_map::create_dynamic_map;
use std::path::PathBuf;

/// The signed map equals `F.create_dynamic_map(signed=True)` as stored by
/// tests/fixtures/bnb/make.py, bit for bit. (No fixture holds the unsigned map; it is built by
/// the same code, and the AdamW8bit trace test shows all 8192 final `state2` codes equal bnb's.)
#[test]
fn signed_map_equals_bitsandbytes() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/bnb/golden.safetensors");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
    let v = st.tensor("dynamic_map").expect("dynamic_map");
    assert_eq!(
        (v.dtype(), v.shape()),
        (safetensors::Dtype::F32, &[256usize][..])
    );
    let bnb: Vec<u32> = v
        .data()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let ours: Vec<u32> = create_dynamic_map(true)
        .iter()
        .map(|x| x.to_bits())
        .collect();
    assert_eq!(ours, bnb);
}
