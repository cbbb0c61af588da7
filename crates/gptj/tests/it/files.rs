//! Bad checkpoint files give errors naming the file and tensor.

use std::collections::HashMap;
use std::path::Path;

use qtune_gptj::{Gptj, GptjError, LoadOptions};
use safetensors::{Dtype, SafeTensors};

use crate::common::*;

/// Copies the fp32 fixture into a temp dir, letting `edit` change the tensor map
/// (name → (dtype, shape, bytes)) before writing model.safetensors.
fn variant(
    edit: impl FnOnce(&mut HashMap<String, (Dtype, Vec<usize>, Vec<u8>)>),
) -> tempfile::TempDir {
    let src = fixture_dir().join("fp32");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut map: HashMap<String, (Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    edit(&mut map);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = map
        .iter()
        .map(|(n, (d, s, b))| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.path().join("model.safetensors")).unwrap();
    dir
}

fn load_err(dir: &Path) -> GptjError {
    Gptj::<Nd>::load(dir, &LoadOptions::default(), &Default::default()).unwrap_err()
}

const T: &str = "transformer.h.1.attn.q_proj.weight";

#[test]
fn missing_tensor_is_named() {
    let dir = variant(|m| {
        m.remove(T);
    });
    let msg = load_err(dir.path()).to_string();
    assert!(
        msg.contains(T) && msg.contains("not found") && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_is_named() {
    let dir = variant(|m| {
        let e = m.get_mut(T).unwrap();
        e.1 = vec![32, 128];
    });
    let msg = load_err(dir.path()).to_string();
    assert!(
        msg.contains(T) && msg.contains("[32, 128]") && msg.contains("[64, 64]"),
        "{msg}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let dir = variant(|m| {
        let e = m.get_mut(T).unwrap();
        e.0 = Dtype::I32;
    });
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains(T) && msg.contains("I32"), "{msg}");
}

#[test]
fn truncated_file_is_named() {
    let dir = variant(|_| {});
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 100).unwrap();
    let msg = load_err(dir.path()).to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("truncated"),
        "{msg}"
    );
}

#[test]
fn pickle_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir().join("fp32/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not read").unwrap();
    let err = load_err(dir.path());
    assert!(matches!(err, GptjError::PickleRefused { .. }), "{err}");
    assert!(err.to_string().contains("safetensors"));
}

#[test]
fn missing_shard_of_an_index_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture_dir().join("sharded");
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let msg = load_err(dir.path()).to_string();
    assert!(msg.contains("model-00003-of-00003.safetensors"), "{msg}");
}

#[test]
fn local_folder_resolves_without_network() {
    let dir = fixture_dir().join("fp32");
    assert_eq!(
        qtune_gptj::hub::resolve(dir.to_str().unwrap(), None).unwrap(),
        dir
    );
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    for (name, bad) in [
        (T, f32::NAN),
        ("transformer.ln_f.bias", f32::INFINITY),
        ("transformer.wte.weight", f32::NEG_INFINITY),
    ] {
        let dir = variant(|m| {
            let e = m.get_mut(name).unwrap();
            assert_eq!(e.0, Dtype::F32);
            e.2[20..24].copy_from_slice(&bad.to_le_bytes());
        });
        let msg = load_err(dir.path()).to_string();
        assert!(
            msg.contains(name)
                && msg.contains("model.safetensors")
                && msg.contains("non-finite")
                && msg.contains("index 5"),
            "{msg}"
        );
    }
}
