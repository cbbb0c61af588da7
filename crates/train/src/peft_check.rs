//! Fixture parity for PEFT files: our adapter + our logits on the prompts of
//! tests/fixtures/gptj_tiny, in the layout `make.py check-adapter DIR LOGITS` reads, so PEFT
//! itself can confirm that an adapter we wrote loads and computes what we compute.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qtune_gptj::{Gptj, LoadOptions};
use qtune_kernels::QBackend;
use qtune_lm::CausalLm;
use qtune_lora::peft::{AdapterDType, PeftAdapterConfig, PeftTargets};
use qtune_lora::{LoraConfig, TargetModules};
use rand::{Rng, SeedableRng};

use crate::TrainError;

pub use qtune_lm::fixtures::{
    fixture_logits, fixture_prompts, max_rel_err, reference_tensor, FixturePrompts,
};

fn bad(path: &Path, msg: impl Into<String>) -> TrainError {
    TrainError::AdapterMismatch {
        msg: format!("{}: {}", path.display(), msg.into()),
    }
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
