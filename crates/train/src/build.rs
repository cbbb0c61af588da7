//! From `[model]` + `[lora]` to a GPT-J with adapters, and the tokenizer.
use std::path::{Path, PathBuf};

use burn::tensor::DType;
use qtune_gptj::{Gptj, GptjConfig, LoadOptions, QuantSpec};
use qtune_kernels::QBackend;
use qtune_lm::CausalLm;
use qtune_lora::{LoraConfig, TargetModules};
use qtune_models::AnyLm;
use qtune_quant::QuantFormat;

use crate::config::{ModelConfig, QuantizationConfig, RandomModel, RunConfig, TargetList};
use crate::TrainError;

/// PEFT `LoraConfig` of the run.
pub fn lora_config(cfg: &RunConfig) -> Result<LoraConfig, TrainError> {
    let target_modules = match &cfg.lora.target_modules {
        TargetList::Names(v) => TargetModules::Names(v.clone()),
        // PEFT: "all-linear", else a regular expression over the whole module path.
        TargetList::One(s) => TargetModules::from_string(s).map_err(|e| {
            TrainError::from(crate::config::ConfigError::Invalid {
                origin: cfg.name.clone(),
                field: "lora.target_modules",
                msg: e.to_string(),
            })
        })?,
    };
    Ok(LoraConfig {
        r: cfg.lora.r,
        lora_alpha: cfg.lora.lora_alpha,
        lora_dropout: cfg.lora.lora_dropout,
        target_modules,
    })
}

/// bitsandbytes' defaults: NF4/FP4 block 64, 8-bit block 4096 (`Linear8bitLt` weights are
/// row-wise int8 in bnb; we use its blockwise dynamic 8-bit format instead, documented in
/// qtune-quant).
pub fn quant_spec(q: &QuantizationConfig) -> QuantSpec {
    if q.load_in_8bit {
        QuantSpec {
            format: QuantFormat::Blockwise8,
            blocksize: q.blocksize.unwrap_or(4096),
            double_quant: false,
        }
    } else {
        QuantSpec {
            format: if q.bnb_4bit_quant_type == "fp4" {
                QuantFormat::Fp4
            } else {
                QuantFormat::Nf4
            },
            blocksize: q.blocksize.unwrap_or(64),
            double_quant: q.bnb_4bit_use_double_quant,
        }
    }
}

pub fn dtype(m: &ModelConfig) -> DType {
    match m.torch_dtype.as_str() {
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        _ => DType::F32,
    }
}

/// HF `GPTJConfig` of a random model (GPT-J's fixed fields as in EleutherAI/gpt-j-6b).
pub fn random_config(r: &RandomModel) -> Result<GptjConfig, TrainError> {
    let v = serde_json::json!({
        "vocab_size": r.vocab_size, "n_positions": r.n_positions, "n_embd": r.n_embd,
        "n_layer": r.n_layer, "n_head": r.n_head, "rotary_dim": r.rotary_dim,
        "n_inner": r.n_inner, "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5,
        "bos_token_id": 50256, "eos_token_id": 50256, "tie_word_embeddings": false,
    });
    serde_json::from_value(v).map_err(|e| {
        TrainError::from(crate::config::ConfigError::Invalid {
            origin: "[model.random]".into(),
            field: "model.random",
            msg: e.to_string(),
        })
    })
}

/// The local folder of `name_or_path` (downloaded from the Hub when it is a Hub id). A leading
/// `~/` is the home folder (`$HOME`), as in configs/custom-chat.toml.
pub fn model_dir(m: &ModelConfig) -> Result<Option<PathBuf>, TrainError> {
    match &m.name_or_path {
        Some(p) => {
            let p = match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
                (Some(rest), Some(home)) => PathBuf::from(home).join(rest).display().to_string(),
                _ => p.clone(),
            };
            Ok(Some(qtune_gptj::hub::resolve(&p, m.revision.as_deref())?))
        }
        None => Ok(None),
    }
}

/// The base model (no adapters) as configured.
pub fn base_model<B: QBackend>(
    m: &ModelConfig,
    device: &B::Device,
) -> Result<AnyLm<B>, TrainError> {
    let quant = m.quantization.as_ref().map(quant_spec);
    let mut dtype = dtype(m);
    // An older GPU is refused here, before any work (compute capability, bfloat16).
    B::q_check_device(device, dtype)?;
    // NdArray has no bf16/f16 (it would panic on the first tensor): compute in f32 there.
    if !B::supports_dtype(device, dtype) {
        tracing::warn!(requested = ?dtype, "backend lacks this dtype; using float32");
        dtype = DType::F32;
    }
    if let Some(r) = &m.random {
        let cfg = random_config(r)?;
        return Ok(AnyLm::Gptj(Gptj::random(
            &cfg, r.seed, quant, dtype, device,
        )?));
    }
    let dir = model_dir(m)?.ok_or_else(|| {
        TrainError::from(crate::config::ConfigError::Invalid {
            origin: "[model]".into(),
            field: "model.name_or_path",
            msg: "missing".into(),
        })
    })?;
    Ok(qtune_models::load(
        &dir,
        &LoadOptions {
            dtype,
            quant,
            host_quantize: None,
        },
        device,
    )?)
}

/// Base model + fresh adapters (PEFT init, A from `training.seed`).
pub fn model_with_lora<B: QBackend>(
    cfg: &RunConfig,
    device: &B::Device,
) -> Result<AnyLm<B>, TrainError> {
    let model = base_model::<B>(&cfg.model, device)?;
    Ok(model.with_lora(&lora_config(cfg)?, cfg.training.seed)?)
}

/// Hub repo whose tokenizer files are fetched when no local tokenizer folder exists.
pub const HUB_TOKENIZER: &str = "EleutherAI/gpt-j-6b";

/// The tokenizer: `[model].tokenizer`, else the model folder, else
/// `{data_dir}/gpt2-tokenizer` (`$QTUNE_DATA_DIR` in the binaries; GPT-2 BPE + GPT-J's 143 extra
/// tokens), else the tokenizer files of [`HUB_TOKENIZER`] from the Hub. A Hub model id brings its
/// tokenizer files with it (see `qtune_gptj::hub::resolve`).
pub fn tokenizer(
    m: &ModelConfig,
    data_dir: Option<&Path>,
) -> Result<tokenizers::Tokenizer, TrainError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(t) = &m.tokenizer {
        candidates.push(PathBuf::from(t));
    } else {
        if let Some(dir) = model_dir(m)? {
            // A GGUF file (or a folder holding one) carries its tokenizer in its metadata.
            if qtune_llama_gguf(&dir)? {
                return Ok(qtune_models::tokenizer(&dir)?);
            }
            candidates.push(dir);
        }
        if let Some(d) = data_dir {
            candidates.push(d.join("gpt2-tokenizer"));
        }
    }
    for dir in &candidates {
        // The data mirror keeps GPT-2's original file names (encoder.json = HF vocab.json,
        // vocab.bpe = HF merges.txt).
        let (enc, bpe) = (dir.join("encoder.json"), dir.join("vocab.bpe"));
        if enc.is_file() && bpe.is_file() {
            return Ok(qtune_gptj::tokenizer::from_gpt2_files(&enc, &bpe)?);
        }
        if dir.join("tokenizer.json").is_file() || dir.join("vocab.json").is_file() {
            return Ok(qtune_gptj::tokenizer::from_model_dir(dir)?);
        }
    }
    // Last resort: GPT-J's own tokenizer files from the Hub (GPT-2 BPE + the 143 extra tokens).
    let dir = qtune_gptj::hub::resolve_tokenizer(HUB_TOKENIZER, None).map_err(|e| TrainError::Tokenizer {
        msg: format!(
            "no tokenizer folder among {candidates:?} and {HUB_TOKENIZER} from the Hub failed ({e}): \
             set QTUNE_DATA_DIR (with gpt2-tokenizer/) or [model].tokenizer to a folder with \
             tokenizer.json or vocab.json + merges.txt"
        ),
    })?;
    Ok(qtune_gptj::tokenizer::from_model_dir(&dir)?)
}

/// Whether `path` is (or holds) a GGUF file.
fn qtune_llama_gguf(path: &Path) -> Result<bool, TrainError> {
    Ok(qtune_llama::gguf_path(path)?.is_some())
}

/// The end-of-sequence id appended to every target and that ends generation: the model's own
/// (`config.json` / GGUF metadata), GPT-J's `<|endoftext|>` for the random tiny model.
pub fn eos_id(m: &ModelConfig) -> Result<u32, TrainError> {
    let Some(dir) = model_dir(m)? else {
        return Ok(crate::task::GPTJ_EOS);
    };
    qtune_models::eos_token_id(&dir)?.ok_or_else(|| {
        TrainError::from(crate::config::ConfigError::Invalid {
            origin: dir.display().to_string(),
            field: "eos_token_id",
            msg: "the model names no end-of-sequence token (config.json eos_token_id / GGUF tokenizer.ggml.eos_token_id)".into(),
        })
    })
}
