//! Fixture parity for PEFT files: our adapter + our logits on the prompts of
//! tests/fixtures/gptj_tiny, in the layout `make.py check-adapter DIR LOGITS` reads, so PEFT
//! itself can confirm that an adapter we wrote loads and computes what we compute.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};
use qtune_gptj::{Gptj, LoadOptions};
use qtune_kernels::QBackend;
use qtune_lm::CausalLm;
use qtune_lora::peft::{AdapterDType, PeftAdapterConfig, PeftTargets};
use qtune_lora::{LoraConfig, TargetModules};
use rand::{Rng, SeedableRng};

use crate::TrainError;

/// `input_ids`, `attention_mask`, `position_ids` of reference.json (`[3, 12]`).
pub struct FixturePrompts {
    pub shape: [usize; 2],
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
    pub position_ids: Vec<i64>,
}

fn bad(path: &Path, msg: impl Into<String>) -> TrainError {
    TrainError::AdapterMismatch {
        msg: format!("{}: {}", path.display(), msg.into()),
    }
}

pub fn fixture_prompts(fixture: &Path) -> Result<FixturePrompts, TrainError> {
    let path = fixture.join("reference.json");
    let text = std::fs::read_to_string(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(&path, e.to_string()))?;
    let grid = |key: &str| -> Result<(Vec<i64>, [usize; 2]), TrainError> {
        let rows = v[key]
            .as_array()
            .ok_or_else(|| bad(&path, format!("`{key}` missing")))?;
        let cols = rows.first().and_then(|r| r.as_array()).map_or(0, Vec::len);
        let flat: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.as_array().cloned().unwrap_or_default())
            .filter_map(|x| x.as_i64())
            .collect();
        if flat.len() != rows.len() * cols {
            return Err(bad(&path, format!("`{key}` is not a rectangular int grid")));
        }
        Ok((flat, [rows.len(), cols]))
    };
    let (input_ids, shape) = grid("input_ids")?;
    let (attention_mask, _) = grid("attention_mask")?;
    let (position_ids, _) = grid("position_ids")?;
    Ok(FixturePrompts {
        shape,
        input_ids,
        attention_mask,
        position_ids,
    })
}

/// Logits `[B, T, V]` of `model` on the fixture prompts, flattened.
pub fn fixture_logits<B: QBackend, M: CausalLm<B>>(model: &M, p: &FixturePrompts) -> Vec<f32> {
    let dev = model.device();
    let t = |v: &[i64]| Tensor::<B, 2, Int>::from_data(TensorData::new(v.to_vec(), p.shape), &dev);
    let logits = model.forward(
        t(&p.input_ids),
        Some(t(&p.attention_mask)),
        Some(t(&p.position_ids)),
        None,
    );
    logits
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// `make.py`'s metric: max |ours − ref| over non-pad positions / max |ref| there.
pub fn max_rel_err(ours: &[f32], reference: &[f32], mask: &[i64], vocab: usize) -> f64 {
    let (mut err, mut scale) = (0f64, 0f64);
    for (pos, m) in mask.iter().enumerate() {
        if *m == 0 {
            continue;
        }
        for v in pos * vocab..(pos + 1) * vocab {
            err = err.max((ours[v] - reference[v]).abs() as f64);
            scale = scale.max(reference[v].abs() as f64);
        }
    }
    err / scale.max(f64::MIN_POSITIVE)
}

/// Writes `out/adapter/` (a fresh PEFT-initialised LoRA on q_proj/v_proj, r 4, alpha 8, with a
/// seeded non-zero B) and `out/logits.safetensors` (`logits`, our forward with it) for the
/// fixture model in `fixture/fp32`. Returns the adapter folder and the logits file; then run
/// `python3 tests/fixtures/gptj_tiny/make.py check-adapter OUT/adapter OUT/logits.safetensors`.
pub fn write_check_folder<B: QBackend>(
    fixture: &Path,
    out: &Path,
    device: &B::Device,
) -> Result<(PathBuf, PathBuf), TrainError> {
    let base = Gptj::<B>::load(&fixture.join("fp32"), &LoadOptions::default(), device)?;
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    };
    let model = base.with_lora(&lora, 11)?;
    let config = PeftAdapterConfig::new(
        4,
        8.0,
        0.0,
        PeftTargets::List(vec!["q_proj".into(), "v_proj".into()]),
    );
    let mut adapter = model.export_adapter(config)?;
    // A fresh B is zero (the adapter would be a no-op); give it seeded values.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    for t in adapter.modules.values_mut() {
        t.b.iter_mut()
            .for_each(|v| *v = rng.random_range(-0.2f32..0.2));
    }
    let model = model.import_adapter(&adapter)?;
    let dir = out.join("adapter");
    adapter.save(&dir, AdapterDType::F32)?;
    let prompts = fixture_prompts(fixture)?;
    let logits = fixture_logits(&model, &prompts);
    let vocab = model.config.vocab_size;
    let shape = vec![prompts.shape[0], prompts.shape[1], vocab];
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let file = out.join("logits.safetensors");
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes)
        .map_err(|e| bad(&file, e.to_string()))?;
    safetensors::serialize_to_file(
        [("logits", view)],
        Some(HashMap::from([("format".to_string(), "pt".to_string())])),
        &file,
    )
    .map_err(|e| bad(&file, e.to_string()))?;
    Ok((dir, file))
}

/// Reads a float tensor of reference.safetensors as f32.
pub fn reference_tensor(fixture: &Path, key: &str) -> Result<Vec<f32>, TrainError> {
    let path = fixture.join("reference.safetensors");
    let bytes = std::fs::read(&path).map_err(|source| TrainError::Io {
        path: path.clone(),
        source,
    })?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(&path, e.to_string()))?;
    let view = st
        .tensor(key)
        .map_err(|e| bad(&path, format!("`{key}`: {e}")))?;
    Ok(qtune_lora::peft::decode_f32(&path, key, &view)?)
}
