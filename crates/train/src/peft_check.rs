//! Fixture parity for PEFT files: our adapter + our logits on the prompts of an HF fixture
//! (tests/fixtures/gptj_tiny, llama_tiny, llama_tied, qwen2_tiny, mistral_tiny), in the layout
//! `make.py check-adapter … DIR LOGITS` reads, so PEFT itself can confirm that an adapter we
//! wrote loads and computes what we compute.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qtune_kernels::QBackend;
use qtune_lm::CausalLm;
use qtune_lm::LoadOptions;
use qtune_lora::peft::{AdapterDType, PeftAdapterConfig, PeftTargets};
use qtune_lora::{LoraConfig, TargetModules};
use qtune_models::AnyLm;
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

/// Writes `out/adapter/` (a fresh PEFT-initialised LoRA, r 4, alpha 8, with a seeded non-zero B:
/// on q_proj/v_proj for GPT-J, on `"all-linear"` for the Llama family) and
/// `out/logits.safetensors` (`logits`, our forward with it) for the fixture model in
/// `fixture/fp32`. Returns the adapter folder and the logits file; then run the fixture's
/// `make.py check-adapter` (the command [`check_command`] prints).
pub fn write_check_folder<B: QBackend>(
    fixture: &Path,
    out: &Path,
    device: &B::Device,
) -> Result<(PathBuf, PathBuf), TrainError> {
    let base = qtune_models::load::<B>(&fixture.join("fp32"), &LoadOptions::default(), device)?;
    let (targets, peft_targets) = match base {
        AnyLm::Gptj(_) => {
            let qv = vec!["q_proj".to_string(), "v_proj".to_string()];
            (TargetModules::Names(qv.clone()), PeftTargets::List(qv))
        }
        AnyLm::Llama(_) => (
            TargetModules::AllLinear,
            PeftTargets::One("all-linear".into()),
        ),
    };
    let lora = LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.0,
        target_modules: targets,
    };
    let model = base.with_lora(&lora, 11)?;
    let config = PeftAdapterConfig::new(4, 8.0, 0.0, peft_targets);
    let mut adapter = model.export_adapter(config)?;
    // A fresh B is zero (the adapter would be a no-op); give it seeded values.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
    for t in adapter.modules.values_mut() {
        t.b.iter_mut()
            .for_each(|v| *v = rng.random_range(-0.2f32..0.2));
    }
    let model = model.import_adapter(&adapter)?;
    let dir = out.join(crate::files::ADAPTER_DIR);
    adapter.save(&dir, AdapterDType::F32)?;
    let prompts = fixture_prompts(fixture)?;
    let logits = fixture_logits(&model, &prompts);
    let vocab = model.vocab_size();
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

/// The command that has PEFT check the folder [`write_check_folder`] wrote for `fixture`.
pub fn check_command(fixture: &Path, adapter: &Path, logits: &Path) -> String {
    let name = fixture
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    if name == "gptj_tiny" {
        format!(
            "python3 tests/fixtures/gptj_tiny/make.py check-adapter {} {}",
            adapter.display(),
            logits.display()
        )
    } else {
        format!(
            "python3 tests/fixtures/llama_tiny/make.py check-adapter {name} {} {}",
            adapter.display(),
            logits.display()
        )
    }
}
