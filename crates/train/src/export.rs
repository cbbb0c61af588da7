//! `qtune merge`: a GPT-J with its adapters merged (`W + scaling·B·A`, PEFT's
//! `merge_and_unload`) written as an HF model folder: `config.json` + `model.safetensors` with
//! HF names in the base dtype, plus `qtune_merge.json` saying what was merged and which weights
//! were stored quantized and are now dense (re-quantizing a merged 4-bit weight would round the
//! update away, so the export is dense; the safetensors metadata lists them too).
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType, Tensor};
use qtune_gptj::{Gptj, LayerNorm};
use qtune_kernels::QBackend;
use qtune_lora::merge::{write_safetensors, ExportDType, ExportEntry, MergeError};
use qtune_lora::Linear;
use serde::Serialize;

use crate::TrainError;

#[derive(Debug, Clone, Serialize)]
pub struct MergeReport {
    pub dir: PathBuf,
    pub torch_dtype: String,
    /// Modules whose adapter was merged.
    pub merged_modules: Vec<String>,
    /// Weights that were quantized in memory and are exported dense.
    pub dequantized_weights: Vec<String>,
}

enum Source<'a, B: Backend> {
    Wte(&'a Gptj<B>),
    LnWeight(&'a LayerNorm<B>),
    LnBias(&'a LayerNorm<B>),
    Weight(&'a Linear<B>),
    Bias(&'a Linear<B>),
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default()
}

/// Writes the merged model into `out` (created). `dtype`: the base model's dtype.
pub fn export_merged<B: QBackend>(
    model: &Gptj<B>,
    out: &Path,
    dtype: ExportDType,
) -> Result<MergeReport, TrainError> {
    std::fs::create_dir_all(out).map_err(|source| TrainError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let mut entries: Vec<ExportEntry> = Vec::new();
    let mut sources: Vec<Source<'_, B>> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, s| {
        entries.push(ExportEntry { name, shape });
        sources.push(s);
    };
    let (mut merged, mut dequantized) = (Vec::new(), Vec::new());
    push(
        "transformer.wte.weight".into(),
        model.wte.dims().to_vec(),
        Source::Wte(model),
    );
    let linears = model.linears();
    let mut li = linears.iter();
    for (i, block) in model.blocks.iter().enumerate() {
        let ln = &block.ln_1;
        let p = format!("transformer.h.{i}.ln_1");
        push(
            format!("{p}.weight"),
            ln.weight.dims().to_vec(),
            Source::LnWeight(ln),
        );
        push(
            format!("{p}.bias"),
            ln.bias.dims().to_vec(),
            Source::LnBias(ln),
        );
        for _ in 0..qtune_gptj::names::BLOCK_LINEARS.len() {
            let Some((name, lin)) = li.next() else { break };
            push(
                format!("{name}.weight"),
                lin.shape().to_vec(),
                Source::Weight(lin),
            );
            if let Some(b) = lin.bias() {
                push(format!("{name}.bias"), b.dims().to_vec(), Source::Bias(lin));
            }
            if lin.lora.is_some() {
                merged.push(name.clone());
            }
            if lin.is_quantized() {
                dequantized.push(format!("{name}.weight"));
            }
        }
    }
    let ln = &model.ln_f;
    push(
        "transformer.ln_f.weight".into(),
        ln.weight.dims().to_vec(),
        Source::LnWeight(ln),
    );
    push(
        "transformer.ln_f.bias".into(),
        ln.bias.dims().to_vec(),
        Source::LnBias(ln),
    );
    let head = &model.lm_head;
    push(
        "lm_head.weight".into(),
        head.shape().to_vec(),
        Source::Weight(head),
    );
    if let Some(b) = head.bias() {
        push("lm_head.bias".into(), b.dims().to_vec(), Source::Bias(head));
    }
    if head.lora.is_some() {
        merged.push("lm_head".into());
    }
    let path = out.join("model.safetensors");
    write_safetensors(&path, &entries, dtype, &dequantized, |i| {
        Ok::<_, MergeError>(match &sources[i] {
            Source::Wte(m) => host(m.wte.val()),
            Source::LnWeight(l) => host(l.weight.val()),
            Source::LnBias(l) => host(l.bias.val()),
            Source::Weight(l) => host(l.merged_weight()),
            Source::Bias(l) => l.bias().map(host).unwrap_or_default(),
        })
    })?;

    let mut config = serde_json::to_value(&model.config).unwrap_or_default();
    if let Some(obj) = config.as_object_mut() {
        obj.insert(
            "architectures".into(),
            serde_json::json!(["GPTJForCausalLM"]),
        );
        obj.insert("model_type".into(), "gptj".into());
        obj.insert("torch_dtype".into(), dtype.torch_name().into());
    }
    let report = MergeReport {
        dir: out.to_path_buf(),
        torch_dtype: dtype.torch_name().into(),
        merged_modules: merged,
        dequantized_weights: dequantized,
    };
    for (file, value) in [
        ("config.json", config),
        (
            "qtune_merge.json",
            serde_json::to_value(&report).unwrap_or_default(),
        ),
    ] {
        let p = out.join(file);
        let text = serde_json::to_string_pretty(&value).unwrap_or_default() + "\n";
        std::fs::write(&p, text).map_err(|source| TrainError::Io { path: p, source })?;
    }
    Ok(report)
}
