//! Shared helpers: a tiny config, synthetic examples, a lock around the backend RNG (with a
//! fresh output folder), a comparison of LoRA gradients, and
//! `train` on the CPU with a fresh model.
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use burn::backend::{Autodiff, NdArray};
use burn::tensor::backend::AutodiffBackend;
use qtune_data::Example;
use qtune_lm::CausalLm;
use qtune_lora::peft::PeftAdapterConfig;
use qtune_models::AnyLm;
use qtune_train::config::{LoraSection, RandomModel, RunConfig, TargetList};
use qtune_train::{build, train, TrainError, TrainOptions, TrainSummary};
use rand::{Rng, SeedableRng};

pub type B = Autodiff<NdArray>;

/// NdArray's RNG is process-global (`B::seed`): model init and LoRA dropout draw from it, so
/// tests that must be reproducible hold this lock while they touch it.
static RNG_LOCK: Mutex<()> = Mutex::new(());

pub fn rng_lock() -> MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The usual preamble of a training test: [`rng_lock`] and a fresh output folder.
pub fn locked_tempdir() -> (MutexGuard<'static, ()>, tempfile::TempDir) {
    let guard = rng_lock();
    (guard, tempfile::tempdir().unwrap())
}

pub const VOCAB: usize = 96;
pub const EOS: u32 = 1;

/// A 3-block GPT-J with 32-dim embeddings and LoRA on every block linear, writing to `out`.
pub fn tiny_config(out: &Path) -> RunConfig {
    let mut c = RunConfig::tiny();
    c.name = "it".into();
    c.model.random = Some(RandomModel {
        seed: 7,
        vocab_size: VOCAB,
        n_positions: 64,
        n_embd: 32,
        n_layer: 3,
        n_head: 4,
        rotary_dim: 4,
        n_inner: None,
    });
    c.lora = all_linear_lora(0.1);
    // Within the 64-position context (the synthetic examples are ≤ 13 tokens anyway).
    c.data.max_length = 64;
    let t = &mut c.training;
    t.output_dir = Some(out.display().to_string());
    t.learning_rate = 1e-2;
    t.per_device_train_batch_size = 4;
    t.per_device_eval_batch_size = 4;
    t.gradient_accumulation_steps = 2;
    t.max_steps = 6;
    t.warmup_steps = 1;
    t.logging_steps = 1;
    t.eval_steps = 2;
    t.save_steps = 2;
    t.save_total_limit = 2;
    t.gradient_checkpointing = qtune_train::config::GradientCheckpointing::On;
    c.validate("tiny_config").unwrap();
    c
}

/// LoRA rank 4, alpha 8, on every linear (`"all-linear"`), with `lora_dropout`.
pub fn all_linear_lora(lora_dropout: f64) -> LoraSection {
    LoraSection {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout,
        target_modules: TargetList::One("all-linear".into()),
    }
}

/// A 1-block random GPT-J with GPT-J's vocabulary (the real tokenizers' ids fit) and
/// `n_positions` positions.
pub fn gptj_vocab_model(n_positions: usize) -> RandomModel {
    RandomModel {
        seed: 0,
        vocab_size: 50400,
        n_positions,
        n_embd: 32,
        n_layer: 1,
        n_head: 4,
        rotary_dim: 4,
        n_inner: None,
    }
}

/// `n` prompt/completion pairs: the completion repeats the prompt's first three tokens, so a
/// model can learn it; lengths vary so batches have padding.
pub fn synthetic(n: usize, seed: u64) -> Vec<Example> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let len = rng.random_range(4..10);
            let prompt: Vec<u32> = (0..len)
                .map(|_| rng.random_range(3..VOCAB as u32))
                .collect();
            let mut completion = prompt[..3].to_vec();
            completion.push(EOS);
            Example::from_prompt_completion(&prompt, &completion)
        })
        .collect()
}

/// Training and validation examples.
pub type Sets = (Vec<Example>, Vec<Example>);

/// The sets of the loop tests that need only a short run: 8 training, 4 validation examples.
pub fn small_data() -> Sets {
    (synthetic(8, 1), synthetic(4, 2))
}

/// `cfg`'s model with its LoRA adapters attached, on the CPU.
pub fn lm(cfg: &RunConfig) -> AnyLm<B> {
    build::model_with_lora::<B>(cfg, &Default::default()).unwrap()
}

/// `train` on the CPU with pad id 0.
pub fn train_model(
    cfg: &RunConfig,
    model: AnyLm<B>,
    (train_set, val_set): &Sets,
    opts: &TrainOptions,
) -> Result<(AnyLm<B>, TrainSummary), TrainError> {
    train(cfg, model, train_set, val_set, 0, &Default::default(), opts)
}

/// A non-zero B everywhere (a fresh B = 0 would make A's grads zero).
pub fn live<M: CausalLm<B>>(m: M, cfg: PeftAdapterConfig) -> M {
    let mut adapter = m.export_adapter(cfg).unwrap();
    for (i, t) in adapter.modules.values_mut().enumerate() {
        for (j, v) in t.b.iter_mut().enumerate() {
            *v = (((i * 31 + j * 17) % 13) as f32 - 6.0) * 0.01;
        }
    }
    m.import_adapter(&adapter).unwrap()
}

/// Each LoRA factor's gradient, keyed by its module path.
pub fn lora_grads<M: CausalLm<B>>(
    m: &M,
    grads: &burn::optim::GradientsParams,
) -> Vec<(String, Vec<f32>)> {
    m.lora_params()
        .into_iter()
        .map(|p| {
            let g = grads
                .get::<<B as AutodiffBackend>::InnerBackend, 2>(p.param.id)
                .unwrap_or_else(|| panic!("no grad for {}", p.key));
            (p.key, g.into_data().to_vec::<f32>().unwrap())
        })
        .collect()
}

/// Worst relative (L2) difference between two sets of gradients, none of them zero.
pub fn worst_rel(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((key, x), (key_b, y)) in a.iter().zip(b) {
        assert_eq!(key, key_b);
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!(norm > 0.0, "{key}: zero gradient, test would be vacuous");
        let diff = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q) * (p - q))
            .sum::<f32>()
            .sqrt();
        worst = worst.max(diff / norm);
    }
    worst
}

/// A Llama-family HF fixture (`tests/fixtures/<fixture>/fp32`, loaded as `opts` say: e.g.
/// quantized as it streams in) with LoRA r 4 on all linears (dropout `lora_dropout`) and a
/// non-zero B.
pub fn llama_fixture(
    fixture: &str,
    opts: &qtune_lm::LoadOptions,
    lora_dropout: f64,
) -> qtune_llama::Llama<B> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(fixture)
        .join("fp32");
    let m = qtune_llama::Llama::<B>::load(&dir, opts, &Default::default()).unwrap();
    let lora = qtune_lora::LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout,
        target_modules: qtune_lora::TargetModules::AllLinear,
    };
    let m = m.with_lora(&lora, 5).unwrap();
    let peft = PeftAdapterConfig::new(
        4,
        8.0,
        lora_dropout,
        qtune_lora::peft::PeftTargets::One("all-linear".into()),
    );
    live(m, peft)
}
