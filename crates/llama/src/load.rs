//! Loading the Llama family from an HF checkpoint folder (`config.json` + safetensors, single or
//! sharded) or from a GGUF file (llama.cpp's format: metadata → config, tensors dequantized on
//! load, q/k rows put back in HF's order, then quantized to the configured base).

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData};
use qtune_gguf::GgufFile;
use qtune_kernels::QBackend;
use qtune_lm::source::{load_folder, TensorSource};
use qtune_lm::{LmError, LoadOptions};
use serde_json::json;

use crate::build::build;
use crate::config::LlamaConfig;
use crate::model::Llama;

impl<B: QBackend> Llama<B> {
    /// Loads `path`: a `.gguf` file, a folder holding `config.json` + safetensors, or a folder
    /// holding exactly one `.gguf` file.
    pub fn load(path: &Path, opts: &LoadOptions, device: &B::Device) -> Result<Self, LmError> {
        if let Some(gguf) = gguf_path(path)? {
            return Self::load_gguf(&gguf, opts, device);
        }
        let cfg = LlamaConfig::from_file(&path.join("config.json"))?;
        let model = load_folder::<B, _>(path, opts, device, |src, quant| {
            build(&cfg, src, quant, opts.dtype, device)
        })?;
        tracing::info!(dir = %path.display(), model_type = %cfg.model_type, quant = ?opts.quant, dtype = ?opts.dtype, "loaded");
        Ok(model)
    }

    /// Loads a GGUF file of architecture `llama` (also Mistral/SmolLM2/TinyLlama exports) or
    /// `qwen2`.
    pub fn load_gguf(path: &Path, opts: &LoadOptions, device: &B::Device) -> Result<Self, LmError> {
        let file = GgufFile::open(path).map_err(|e| gguf_err(path, e))?;
        let cfg = config_from_gguf(&file, path)?;
        let mut src = GgufSource::<B> {
            file: &file,
            path,
            cfg: &cfg,
            dtype: opts.dtype,
            device,
        };
        let quant = opts.load_quant();
        let model = build(&cfg, &mut opts.source(&mut src), quant, opts.dtype, device)?;
        tracing::info!(file = %path.display(), model_type = %cfg.model_type, quant = ?opts.quant, dtype = ?opts.dtype, "loaded GGUF");
        Ok(model)
    }
}

pub(crate) fn gguf_err(path: &Path, e: impl std::fmt::Display) -> LmError {
    LmError::Gguf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// The GGUF file `path` names: itself if it ends in `.gguf`, else the only `.gguf` file of a
/// folder without `config.json`; `None` for an HF folder.
pub fn gguf_path(path: &Path) -> Result<Option<PathBuf>, LmError> {
    if path.extension().is_some_and(|e| e == "gguf") {
        return Ok(Some(path.to_path_buf()));
    }
    if !path.is_dir() || path.join("config.json").is_file() {
        return Ok(None);
    }
    let io = |source| LmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(LmError::Input(format!(
            "{}: several .gguf files ({found:?}); name the one to load",
            path.display()
        ))),
    }
}

/// HF's `LlamaConfig` of a GGUF file, from its `{arch}.*` metadata as transformers' GGUF loader
/// maps it (a missing output tensor means tied embeddings).
pub fn config_from_gguf(f: &GgufFile, path: &Path) -> Result<LlamaConfig, LmError> {
    let e = |err| gguf_err(path, err);
    let arch = f.architecture().map_err(e)?.to_string();
    let model_type = match arch.as_str() {
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        other => {
            return Err(gguf_err(
                path,
                format!("architecture {other:?}: the Llama family reads llama, mistral, qwen2"),
            ))
        }
    };
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| f.get_u32(&key(k)).map_err(e);
    let heads = u("attention.head_count")? as usize;
    let vocab = match f.get_u32(&key("vocab_size")) {
        Ok(v) => v as usize,
        Err(_) => f
            .tensor("token_embd.weight")
            .and_then(|t| t.dims.get(1).copied())
            .ok_or_else(|| gguf_err(path, "no vocab_size and no token_embd.weight"))?
            as usize,
    };
    if f.tensor("rope_freqs.weight").is_some() {
        return Err(gguf_err(
            path,
            "rope_freqs.weight (llama3 RoPE scaling stored as a tensor) is not supported yet; load the HF folder instead",
        ));
    }
    let rope_scaling = match f.get_str(&key("rope.scaling.type")) {
        Ok("none") | Err(_) => None,
        Ok("linear") => Some(
            json!({"rope_type": "linear", "factor": f.get_f32(&key("rope.scaling.factor")).map_err(e)?}),
        ),
        Ok(other) => {
            return Err(gguf_err(
                path,
                format!("rope.scaling.type {other:?} is not implemented (linear is)"),
            ))
        }
    };
    let opt_id = |k: &str| f.get_u32(k).ok();
    let v = json!({
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": u("embedding_length")?,
        "intermediate_size": u("feed_forward_length")?,
        "num_hidden_layers": u("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": f.get_u32(&key("attention.head_count_kv")).map_or(heads as u32, |x| x),
        "max_position_embeddings": u("context_length")?,
        "rms_norm_eps": f.get_f32(&key("attention.layer_norm_rms_epsilon")).map_err(e)? as f64,
        "rope_theta": f.get_f32(&key("rope.freq_base")).map_or(10_000.0, |x| x as f64),
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": f.tensor("output.weight").is_none(),
        "bos_token_id": opt_id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": opt_id("tokenizer.ggml.eos_token_id"),
        "pad_token_id": opt_id("tokenizer.ggml.padding_token_id"),
    });
    let cfg: LlamaConfig = serde_json::from_value(v).map_err(|err| gguf_err(path, err))?;
    cfg.validate().map_err(|err| gguf_err(path, err))?;
    Ok(cfg)
}

/// llama.cpp's name of an HF tensor (`None`: not stored in GGUF).
fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (i, suffix) = rest.split_once('.')?;
    let (module, kind) = suffix.rsplit_once('.')?;
    let g = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{i}.{g}.{kind}"))
}

struct GgufSource<'a, B: QBackend> {
    file: &'a GgufFile,
    path: &'a Path,
    cfg: &'a LlamaConfig,
    dtype: DType,
    device: &'a B::Device,
}

impl<B: QBackend> GgufSource<'_, B> {
    /// Dequantized values of HF tensor `name` with `shape`, q/k rows un-permuted (llama arch).
    fn values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LmError> {
        let g = gguf_name(name).ok_or_else(|| LmError::MissingTensor {
            path: self.path.to_path_buf(),
            name: name.to_string(),
        })?;
        if self.file.tensor(&g).is_none() {
            return Err(LmError::MissingTensor {
                path: self.path.to_path_buf(),
                name: format!("{g} (HF {name})"),
            });
        }
        let got = self.file.hf_shape(&g).map_err(|e| gguf_err(self.path, e))?;
        if got != shape {
            return Err(LmError::Shape {
                path: self.path.to_path_buf(),
                name: g,
                expected: shape.to_vec(),
                got,
            });
        }
        let mut v = self.file.read_f32(&g).map_err(|e| gguf_err(self.path, e))?;
        qtune_lm::source::check_finite(self.path, &g, &v)?;
        // llama.cpp's converter permutes q/k rows of `llama` models for its RoPE layout.
        if self.cfg.model_type == "llama" {
            let heads = if name.ends_with("self_attn.q_proj.weight")
                || name.ends_with("self_attn.q_proj.bias")
            {
                Some(self.cfg.num_attention_heads)
            } else if name.ends_with("self_attn.k_proj.weight")
                || name.ends_with("self_attn.k_proj.bias")
            {
                Some(self.cfg.kv_heads())
            } else {
                None
            };
            if let Some(h) = heads {
                let cols = if shape.len() == 2 { shape[1] } else { 1 };
                v = qtune_gguf::unpermute_qk(&v, h, shape[0], cols)
                    .map_err(|e| gguf_err(self.path, format!("{name}: {e}")))?;
            }
        }
        Ok(v)
    }

    fn upload<const D: usize>(
        &self,
        name: &str,
        shape: [usize; D],
    ) -> Result<Tensor<B, D>, LmError> {
        let data = TensorData::new(self.values(name, &shape)?, shape.to_vec());
        let data = if self.dtype == DType::F32 {
            data
        } else {
            data.convert_dtype(self.dtype)
        };
        Ok(Tensor::from_data(data, (self.device, self.dtype)))
    }
}

impl<B: QBackend> TensorSource<B> for GgufSource<'_, B> {
    fn tensor1(&mut self, name: &str, shape: [usize; 1]) -> Result<Tensor<B, 1>, LmError> {
        self.upload(name, shape)
    }

    fn tensor2(&mut self, name: &str, shape: [usize; 2]) -> Result<Tensor<B, 2>, LmError> {
        self.upload(name, shape)
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.tensor(&g).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::gguf_name;

    #[test]
    fn hf_names_map_to_llama_cpp_names() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.weight").as_deref(),
            Some("blk.3.attn_q.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight").as_deref(),
            Some("blk.0.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.layers.12.post_attention_layernorm.weight").as_deref(),
            Some("blk.12.ffn_norm.weight")
        );
        assert_eq!(
            gguf_name("model.layers.1.self_attn.k_proj.bias").as_deref(),
            Some("blk.1.attn_k.bias")
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(
            gguf_name("lm_head.weight").as_deref(),
            Some("output.weight")
        );
        assert_eq!(
            gguf_name("model.layers.1.self_attn.rotary_emb.inv_freq"),
            None
        );
    }
}
