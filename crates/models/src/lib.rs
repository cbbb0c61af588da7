//! One type for every model family qtune trains: [`AnyLm`] is GPT-J or a Llama-family model,
//! chosen by [`load`] from a folder's `config.json` (`model_type`) or a GGUF file's
//! architecture; it implements [`CausalLm`], so training, evaluation, generation, perplexity and
//! merging are written once. [`tokenizer`] and [`chat_template`] read what the same path holds.

use std::path::Path;

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use qtune_gguf::GgufFile;
use qtune_gptj::Gptj;
use qtune_kernels::QBackend;
use qtune_llama::{gguf_path, Llama};
use qtune_lm::{CausalLm, DecoderBlock, LmError, LoadOptions, Positions};
use qtune_lora::Linear;

pub use qtune_gptj::GptjConfig;
pub use qtune_llama::LlamaConfig;

/// A causal LM of any supported family.
// One value per process and a few hundred bytes apart: boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum AnyLm<B: Backend> {
    Gptj(Gptj<B>),
    Llama(Llama<B>),
}

/// The family a checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Gptj,
    /// `llama`, `mistral`, `qwen2` (HF folders) and GGUF files.
    Llama,
}

impl Family {
    /// The family of HF `model_type` `t`; `None` for one qtune does not implement.
    pub fn of_model_type(t: &str) -> Option<Self> {
        match t {
            "gptj" => Some(Self::Gptj),
            "llama" | "mistral" | "qwen2" => Some(Self::Llama),
            _ => None,
        }
    }
}

/// The family of a checkpoint folder or GGUF file, read from `config.json`'s `model_type` (a
/// `.gguf` is always the Llama family; its architecture is checked on load).
pub fn detect(path: &Path) -> Result<Family, LmError> {
    if gguf_path(path)?.is_some() {
        return Ok(Family::Llama);
    }
    let cfg = path.join("config.json");
    let v = read_json(&cfg)?;
    let t = v.get("model_type").and_then(|t| t.as_str()).unwrap_or("");
    Family::of_model_type(t).ok_or_else(|| LmError::InvalidConfig {
        path: cfg,
        reason: format!(
            "model_type {t:?} is not supported (gptj, llama, mistral, qwen2 are; GGUF files of architecture llama or qwen2)"
        ),
    })
}

/// Loads a checkpoint folder or GGUF file as its family's model.
pub fn load<B: QBackend>(
    path: &Path,
    opts: &LoadOptions,
    device: &B::Device,
) -> Result<AnyLm<B>, LmError> {
    Ok(match detect(path)? {
        Family::Gptj => AnyLm::Gptj(Gptj::load(path, opts, device)?),
        Family::Llama => AnyLm::Llama(Llama::load(path, opts, device)?),
    })
}

/// The tokenizer stored with a checkpoint: a GGUF file's `tokenizer.ggml.*` metadata (as HF
/// builds it), else the folder's `tokenizer.json` / `vocab.json` + `merges.txt`.
pub fn tokenizer(path: &Path) -> Result<tokenizers::Tokenizer, LmError> {
    if let Some(g) = gguf_path(path)? {
        let f = GgufFile::open(&g).map_err(|e| gguf_err(&g, e))?;
        return f.tokenizer().map_err(|e| gguf_err(&g, e));
    }
    qtune_lm::tokenizer::from_model_dir(path)
}

/// The chat template stored with a checkpoint: GGUF `tokenizer.chat_template`, else
/// `tokenizer_config.json`'s `chat_template` (a string, or HF's list of named templates: the
/// one named `default`).
pub fn chat_template(path: &Path) -> Result<Option<String>, LmError> {
    if let Some(g) = gguf_path(path)? {
        let f = GgufFile::open(&g).map_err(|e| gguf_err(&g, e))?;
        return Ok(f.chat_template().map(str::to_string));
    }
    let p = path.join("tokenizer_config.json");
    if !p.is_file() {
        return Ok(None);
    }
    let v = read_json(&p)?;
    Ok(match v.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Array(list)) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
        _ => None,
    })
}

/// The end-of-sequence id stored with a checkpoint: GGUF `tokenizer.ggml.eos_token_id`, else
/// `config.json`'s `eos_token_id` (the first where HF lists several).
pub fn eos_token_id(path: &Path) -> Result<Option<u32>, LmError> {
    if let Some(g) = gguf_path(path)? {
        let f = GgufFile::open(&g).map_err(|e| gguf_err(&g, e))?;
        return f
            .get_u32_opt("tokenizer.ggml.eos_token_id")
            .map_err(|e| gguf_err(&g, e));
    }
    let v = read_json(&path.join("config.json"))?;
    Ok(match v.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32),
        Some(serde_json::Value::Array(a)) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    })
}

/// A JSON file (`config.json`, `tokenizer_config.json`), errors naming it.
fn read_json(path: &Path) -> Result<serde_json::Value, LmError> {
    let text = std::fs::read_to_string(path).map_err(|source| LmError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| LmError::Config {
        path: path.to_path_buf(),
        source,
    })
}

fn gguf_err(path: &Path, e: impl std::fmt::Display) -> LmError {
    LmError::Gguf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// `match self { AnyLm::Gptj(m) => body, AnyLm::Llama(m) => body }`.
macro_rules! each {
    ($self:expr, $m:ident => $body:expr) => {
        match $self {
            AnyLm::Gptj($m) => $body,
            AnyLm::Llama($m) => $body,
        }
    };
}

impl<B: QBackend> CausalLm<B> for AnyLm<B> {
    fn model_type(&self) -> &str {
        each!(self, m => m.model_type())
    }
    fn vocab_size(&self) -> usize {
        each!(self, m => m.vocab_size())
    }
    fn max_positions(&self) -> usize {
        each!(self, m => m.max_positions())
    }
    fn num_layers(&self) -> usize {
        each!(self, m => m.num_layers())
    }
    fn positions(&self) -> Positions {
        each!(self, m => m.positions())
    }
    fn embedding(&self) -> &Param<Tensor<B, 2>> {
        each!(self, m => m.embedding())
    }
    fn base_params(&self) -> u64 {
        each!(self, m => m.base_params())
    }
    fn layer(&self, i: usize) -> &dyn DecoderBlock<B> {
        each!(self, m => m.layer(i))
    }
    fn final_norm<const D: usize>(&self, h_last: Tensor<B, D>) -> Tensor<B, D> {
        each!(self, m => m.final_norm(h_last))
    }
    fn lm_head(&self) -> &Linear<B> {
        each!(self, m => m.lm_head())
    }
    fn visit_block<V: burn::module::ModuleVisitor<B>>(&self, i: usize, visitor: &mut V) {
        each!(self, m => m.visit_block(i, visitor))
    }
    fn linears(&self) -> Vec<(String, &Linear<B>)> {
        each!(self, m => CausalLm::linears(m))
    }
    fn linears_mut(&mut self) -> Vec<(String, &mut Linear<B>)> {
        each!(self, m => CausalLm::linears_mut(m))
    }
    fn other_tensors(&self) -> Vec<(String, Vec<usize>, Tensor<B, 1>)> {
        each!(self, m => m.other_tensors())
    }
    fn hf_config(&self) -> serde_json::Value {
        each!(self, m => m.hf_config())
    }
    fn tied_head(&self) -> bool {
        each!(self, m => m.tied_head())
    }
    fn eos_token_id(&self) -> Option<u32> {
        each!(self, m => m.eos_token_id())
    }
}
