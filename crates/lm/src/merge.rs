//! `qtune merge`: a model with its adapters merged (`W + scaling·B·A`, PEFT's
//! `merge_and_unload`) written as an HF model folder: `config.json` + `model.safetensors` with
//! HF names in the base dtype, plus `qtune_merge.json` saying what was merged and which weights
//! were stored quantized and are now dense (re-quantizing a merged 4-bit weight would round the
//! update away, so the export is dense; the safetensors metadata lists them too).
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, Tensor};
use qtune_kernels::QBackend;
use qtune_lora::merge::{write_safetensors, ExportDType, ExportEntry, MergeError};
use qtune_lora::Linear;
use serde::Serialize;

use crate::context::host_f32 as host;
use crate::error::LmError;
use crate::lm::CausalLm;

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
    Other(Tensor<B, 1>),
    Weight(&'a Linear<B>),
    Bias(&'a Linear<B>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LmError + '_ {
    move |source| LmError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the merged model into `out` (created). `dtype`: the base model's dtype.
pub fn export_merged<B: QBackend, M: CausalLm<B>>(
    model: &M,
    out: &Path,
    dtype: ExportDType,
) -> Result<MergeReport, LmError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut entries: Vec<ExportEntry> = Vec::new();
    let mut sources: Vec<Source<'_, B>> = Vec::new();
    let (mut merged, mut dequantized) = (Vec::new(), Vec::new());
    for (name, shape, t) in model.other_tensors() {
        entries.push(ExportEntry { name, shape });
        sources.push(Source::Other(t));
    }
    for (name, lin) in model.linears() {
        if lin.lora.is_some() {
            merged.push(name.clone());
        }
        // A tied head without its own adapter is the embedding, already written.
        if name == "lm_head" && model.tied_head() && lin.lora.is_none() {
            continue;
        }
        if lin.is_quantized() {
            dequantized.push(format!("{name}.weight"));
        }
        entries.push(ExportEntry {
            name: format!("{name}.weight"),
            shape: lin.shape().to_vec(),
        });
        sources.push(Source::Weight(lin));
        if let Some(b) = lin.bias() {
            entries.push(ExportEntry {
                name: format!("{name}.bias"),
                shape: b.dims().to_vec(),
            });
            sources.push(Source::Bias(lin));
        }
    }
    let path = out.join("model.safetensors");
    write_safetensors(&path, &entries, dtype, &dequantized, |i| {
        match &sources[i] {
            Source::Other(t) => host(t.clone()),
            Source::Weight(l) => host(l.merged_weight()),
            Source::Bias(l) => l.bias().map_or(Ok(Vec::new()), host),
        }
        .map_err(|msg| MergeError::Tensor {
            path: path.clone(),
            name: entries[i].name.clone(),
            msg,
        })
    })?;

    let mut config = model.hf_config();
    if let Some(obj) = config.as_object_mut() {
        obj.insert("torch_dtype".into(), dtype.torch_name().into());
        // A tied head that got its own adapter is stored untied.
        if model.tied_head() && merged.iter().any(|m| m == "lm_head") {
            obj.insert("tie_word_embeddings".into(), false.into());
        }
    }
    let report = MergeReport {
        dir: out.to_path_buf(),
        torch_dtype: dtype.torch_name().into(),
        merged_modules: merged,
        dequantized_weights: dequantized,
    };
    let report_json =
        serde_json::to_value(&report).map_err(|e| LmError::Input(format!("merge report: {e}")))?;
    for (file, value) in [("config.json", config), ("qtune_merge.json", report_json)] {
        let p = out.join(file);
        let text = serde_json::to_string_pretty(&value)
            .map_err(|e| LmError::Input(format!("{file}: {e}")))?
            + "\n";
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    Ok(report)
}
