//! `qtune quantize`: write a model as a bitsandbytes-serialized HF folder (what
//! `from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True, …))` followed
//! by `save_pretrained` writes), so later runs load the 4-bit weights instead of quantizing.
//! The folder is written next to `--out` under a temporary name and renamed into place only
//! when complete: an existing `--out` is replaced (with `--overwrite`) only by a finished one.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use qtune_lm::bnb_export::{self, BnbExportOptions, BnbExportReport};
use qtune_lm::CausalLm;
use qtune_models::AnyLm;
use qtune_train::build;
use qtune_train::config::{ModelConfig, RunConfig};
use serde::Serialize;

use crate::{DTypeArg, Infer, QuantArgs};

#[derive(Args)]
pub struct QuantizeArgs {
    /// A local HF model folder (GPT-J, Llama, Mistral, Qwen2), a `.gguf` file (or a folder with
    /// one), a Hugging Face Hub id, or `tiny` (the embedded random GPT-J).
    #[arg(long)]
    model: String,
    /// Hub revision (branch, tag or commit) of a Hub id.
    #[arg(long)]
    revision: Option<String>,
    // --load-in-4bit is required: --load-in-8bit is not supported for export (qtune's 8-bit
    // format is bitsandbytes' blockwise 8-bit, not the LLM.int8 (int8 + SCB) checkpoints
    // transformers loads, so it would not be bnb-loadable).
    #[command(flatten)]
    quant: QuantArgs,
    /// Dtype of the unquantized tensors (embeddings, norms, biases, lm_head), of the weights as
    /// they are quantized, and `bnb_4bit_compute_dtype`.
    #[arg(long, value_enum, default_value = "bfloat16")]
    dtype: DTypeArg,
    /// Folder to write (config.json, model.safetensors or shards + index, tokenizer files).
    #[arg(long)]
    out: PathBuf,
    /// Replace an existing non-empty --out (never the input model's folder).
    #[arg(long)]
    overwrite: bool,
    /// Shard the weights above this size (HF's spelling: 5GB, 500MB, 2GiB, or bytes).
    #[arg(long, default_value = "50GB")]
    max_shard_size: String,
}

/// Printed as JSON when done.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    export: BnbExportReport,
    /// Tokenizer and generation files copied or written.
    tokenizer_files: Vec<String>,
    /// What could not be written, and why.
    notes: Vec<String>,
}

/// Files `save_pretrained` and tokenizers keep beside the weights, copied when present.
const TOKENIZER_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
];

pub fn run(a: QuantizeArgs) -> anyhow::Result<()> {
    let quantization = match a.quant.config()? {
        None => bail!("give --load-in-4bit (the only bitsandbytes-loadable export)"),
        Some(q) if q.load_in_8bit => bail!(
            "--load-in-8bit export is not bitsandbytes-loadable: qtune's 8-bit weights are bnb's \
             blockwise dynamic 8-bit (quantize_blockwise), while transformers loads 8-bit bnb \
             checkpoints as LLM.int8 (Linear8bitLt: row-wise int8 + SCB); use --load-in-4bit, \
             or quantize to 8-bit on load (--load-in-8bit of train/generate)"
        ),
        Some(q) => q,
    };
    let max_shard_size = bnb_export::parse_size(&a.max_shard_size)
        .map_err(|e| anyhow::anyhow!("--max-shard-size {e}"))?;
    let m = if a.model == "tiny" {
        let mut m = RunConfig::tiny().model;
        m.quantization = None;
        m
    } else {
        ModelConfig {
            name_or_path: Some(a.model.clone()),
            revision: a.revision.clone(),
            random: None,
            // Loaded dense in f32 (exact for bf16/f16 checkpoints), rounded to --dtype when
            // written, as transformers casts before bitsandbytes quantizes.
            torch_dtype: "float32".into(),
            quantization: None,
            tokenizer: None,
        }
    };
    let dir = build::model_dir(&m)?;
    check_out(&a.out, dir.as_deref(), a.overwrite)?;

    // The same mapping as quantize-on-load (`--load-in-4bit` of train/generate): block 64.
    let spec = build::quant_spec(&quantization);
    let opts = BnbExportOptions {
        spec,
        dtype: a.dtype.export(),
        max_shard_size,
        threads: 0,
    };
    // A checkpoint is read with its block linears quantized on the host one at a time (never
    // the whole dense model in memory); the tiny random default is built dense.
    let model = match (&dir, &m.random) {
        (Some(d), None) => {
            let load = qtune_lm::LoadOptions {
                dtype: burn::tensor::DType::F32,
                quant: None,
                host_quantize: Some(bnb_export::host_quant(&opts)),
            };
            qtune_models::load::<Infer>(d, &load, &Default::default()).map_err(anyhow::Error::from)
        }
        _ => build::base_model::<Infer>(&m, &Default::default()).map_err(anyhow::Error::from),
    }
    .with_context(|| format!("loading model `{}`", a.model))?;

    let tmp = sibling(&a.out, "tmp")?;
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = write_folder(&model, dir.as_deref(), &tmp, &opts);
    let report = match written {
        Ok(r) => r,
        Err(e) => {
            // Best effort: the error that matters is `e`.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    commit(&tmp, &a.out)?;
    let mut report = report;
    report.export.dir = a.out.clone();
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Refuses an `out` that is a file, a non-empty folder without `overwrite`, or the input model
/// (or a folder holding it), whatever `overwrite` says.
fn check_out(out: &Path, model: Option<&Path>, overwrite: bool) -> anyhow::Result<()> {
    if out.is_file() {
        bail!("--out {} is a file, not a folder", out.display());
    }
    if !out.exists() {
        return Ok(());
    }
    if let (Some(model), Ok(out_abs)) = (model, out.canonicalize()) {
        if let Ok(model_abs) = model.canonicalize() {
            if model_abs.starts_with(&out_abs) {
                bail!(
                    "--out {} holds the input model {}: write somewhere else",
                    out.display(),
                    model.display()
                );
            }
        }
    }
    let non_empty = std::fs::read_dir(out)
        .with_context(|| format!("reading {}", out.display()))?
        .next()
        .is_some();
    if non_empty && !overwrite {
        bail!(
            "--out {} exists and is not empty: pass --overwrite to replace it",
            out.display()
        );
    }
    Ok(())
}

/// `.{name}.{what}-{pid}` next to `out`.
fn sibling(out: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: no folder name", out.display()))?
        .to_string_lossy();
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Ok(parent.join(format!(".{name}.{what}-{}", std::process::id())))
}

/// Moves the finished `tmp` to `out`, replacing what was there only after it is complete.
fn commit(tmp: &Path, out: &Path) -> anyhow::Result<()> {
    let ctx = || format!("moving {} to {}", tmp.display(), out.display());
    if !out.exists() {
        return std::fs::rename(tmp, out).with_context(ctx);
    }
    let old = sibling(out, "old")?;
    std::fs::rename(out, &old).with_context(ctx)?;
    if let Err(e) = std::fs::rename(tmp, out) {
        // Put the previous folder back rather than leave nothing at `out`.
        let _ = std::fs::rename(&old, out);
        return Err(e).with_context(ctx);
    }
    std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))
}

fn write_folder(
    model: &AnyLm<Infer>,
    dir: Option<&Path>,
    out: &Path,
    opts: &BnbExportOptions,
) -> anyhow::Result<Report> {
    let hf_folder = dir.filter(|d| d.is_dir() && d.join("config.json").is_file());
    // An HF folder's own config.json keeps every field; else (GGUF, tiny) the model's.
    let config = match hf_folder {
        Some(d) => {
            let p = d.join("config.json");
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
        None => model.hf_config(),
    };
    let export = bnb_export::export_bnb(model, &config, out, opts)?;
    let (mut tokenizer_files, mut notes) = (Vec::new(), Vec::new());
    match (hf_folder, dir) {
        (Some(d), _) => {
            for f in TOKENIZER_FILES {
                let src = d.join(f);
                if src.is_file() {
                    std::fs::copy(&src, out.join(f))
                        .with_context(|| format!("copying {}", src.display()))?;
                    tokenizer_files.push(f.to_string());
                }
            }
            if !tokenizer_files.iter().any(|f| f.starts_with("tokenizer")) {
                notes.push(format!("{} has no tokenizer files to copy", d.display()));
            }
        }
        (None, Some(d)) => {
            // A GGUF checkpoint: its tokenizer as HF builds it from the metadata.
            let tok = qtune_models::tokenizer(d)?;
            let p = out.join("tokenizer.json");
            tok.save(&p, false)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
            tokenizer_files.push("tokenizer.json".into());
            let mut cfg = serde_json::json!({ "tokenizer_class": "PreTrainedTokenizerFast" });
            if let Some(t) = qtune_models::chat_template(d)? {
                cfg["chat_template"] = t.into();
            }
            if let Some(eos) = qtune_models::eos_token_id(d)?.and_then(|i| tok.id_to_token(i)) {
                cfg["eos_token"] = eos.into();
            }
            let p = out.join("tokenizer_config.json");
            std::fs::write(&p, serde_json::to_string_pretty(&cfg)? + "\n")
                .with_context(|| format!("writing {}", p.display()))?;
            tokenizer_files.push("tokenizer_config.json".into());
            notes.push(
                "GGUF input: tokenizer.json is the byte-level BPE tokenizer built from the GGUF \
                 metadata; tokenizer_config.json has only the class, eos token and chat template"
                    .into(),
            );
        }
        (None, None) => notes.push("the random tiny model has no tokenizer files".into()),
    }
    Ok(Report {
        export,
        tokenizer_files,
        notes,
    })
}
