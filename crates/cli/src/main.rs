//! `qtune`: fine-tune a causal LM (GPT-J, the Llama family: HF folders or GGUF files) with a
//! quantized frozen base + LoRA, evaluate, generate, measure perplexity, merge, quantize. CPU (NdArray) by default; `--features cuda` trains on an NVIDIA GPU.
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use qtune_data::DataSource;
use qtune_lm::{CausalLm, EarlyStopping, ExportDType, GenerationConfig};
use qtune_lora::peft::PeftAdapter;
use qtune_models::AnyLm;
use qtune_train::backend::{Train, TRAIN_BACKEND};
use qtune_train::config::{ModelConfig, QuantizationConfig, RunConfig};
use qtune_train::parallel::devices_from_indices;
use qtune_train::{build, run, TrainOptions};

mod prompts;
mod quantize;

type Infer = <Train as burn::tensor::backend::AutodiffBackend>::InnerBackend;
type TrainDevice = <Train as burn::tensor::backend::BackendTypes>::Device;

#[derive(Parser)]
#[command(
    name = "qtune",
    version,
    about = "Fine-tune LLMs (GPT-J, Llama family; HF folders or GGUF) with quantized base weights + LoRA"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a LoRA adapter (default config: the embedded tiny CPU run).
    Train(TrainArgs),
    /// Evaluate an adapter (or the base model) on the config's validation data.
    Eval(EvalArgs),
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Sliding-window perplexity on wikitext-2 raw test.
    Perplexity(PerplexityArgs),
    /// Merge an adapter into the base weights and write an HF model folder.
    Merge(MergeArgs),
    /// Quantize a model to 4 bits and write it as HF transformers + bitsandbytes save it.
    Quantize(quantize::QuantizeArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Run config (TOML); default: configs/tiny.toml as embedded in the binary.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue from the run's latest checkpoint.
    #[arg(long)]
    resume: bool,
    /// Replace a previous run in the same output folder.
    #[arg(long)]
    overwrite: bool,
    /// Override `training.max_steps`.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Override `training.output_dir`.
    #[arg(long)]
    output_dir: Option<PathBuf>,
    /// Data-parallel training over these devices, e.g. `--devices 0,1`: CUDA device indices in
    /// a `--features cuda` build; in a CPU build each index is one more CPU rank (a test/debug
    /// mode: same results as one rank with the combined batch, not faster). Each device trains
    /// on `per_device_train_batch_size` examples of every global batch. Default: one device.
    #[arg(long, value_delimiter = ',')]
    devices: Vec<usize>,
}

#[derive(Args)]
struct EvalArgs {
    /// Run config (TOML) naming the model and data; default: configs/tiny.toml as embedded.
    #[arg(long)]
    config: Option<PathBuf>,
    /// PEFT adapter folder; without it the base model is evaluated.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Write the full report (metrics and every prediction) to this JSON file; stdout gets the
    /// summary only.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// HF `torch_dtype` names.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "lower")]
enum DTypeArg {
    Float32,
    Bfloat16,
    Float16,
}

impl DTypeArg {
    fn hf_name(self) -> &'static str {
        match self {
            Self::Float32 => "float32",
            Self::Bfloat16 => "bfloat16",
            Self::Float16 => "float16",
        }
    }

    /// The dtype of written weights (`merge --save-dtype`, `quantize --dtype`).
    fn export(self) -> ExportDType {
        match self {
            Self::Float32 => ExportDType::F32,
            Self::Bfloat16 => ExportDType::BF16,
            Self::Float16 => ExportDType::F16,
        }
    }
}

/// bitsandbytes' 4-bit data types.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
#[value(rename_all = "lower")]
enum QuantTypeArg {
    Nf4,
    Fp4,
}

impl QuantTypeArg {
    /// HF's `bnb_4bit_quant_type`.
    fn hf_name(self) -> &'static str {
        match self {
            Self::Nf4 => "nf4",
            Self::Fp4 => "fp4",
        }
    }
}

/// The bitsandbytes quantization flags, shared by the loading commands and `quantize`.
#[derive(Args, Clone)]
struct QuantArgs {
    /// Quantize the block linears (every linear but lm_head) to 4 bits: bitsandbytes NF4/FP4,
    /// block 64.
    #[arg(long)]
    load_in_4bit: bool,
    /// Quantize the block linears to blockwise 8-bit as they load (not for `quantize`: its
    /// export would not be bitsandbytes-loadable).
    #[arg(long)]
    load_in_8bit: bool,
    /// 4-bit data type (with --load-in-4bit).
    #[arg(long, value_enum, default_value = "nf4")]
    quant_type: QuantTypeArg,
    /// Quantize the 4-bit block scales too (bitsandbytes' double quantization).
    #[arg(long)]
    double_quant: bool,
}

impl QuantArgs {
    /// The quantization these flags ask for (`None`: neither --load-in-4bit nor
    /// --load-in-8bit); an error if both are given.
    fn config(&self) -> anyhow::Result<Option<QuantizationConfig>> {
        if self.load_in_4bit && self.load_in_8bit {
            bail!("--load-in-4bit and --load-in-8bit are exclusive");
        }
        Ok(
            (self.load_in_4bit || self.load_in_8bit).then(|| QuantizationConfig {
                load_in_4bit: self.load_in_4bit,
                load_in_8bit: self.load_in_8bit,
                bnb_4bit_quant_type: self.quant_type.hf_name().into(),
                bnb_4bit_use_double_quant: self.double_quant,
                blocksize: None,
            }),
        )
    }
}

/// Which model to load.
#[derive(Args, Clone)]
struct ModelArgs {
    /// A local HF model folder (GPT-J, Llama, Mistral, Qwen2), a `.gguf` file (or a folder with
    /// one), a Hugging Face Hub id, or `tiny` (the embedded random GPT-J of the default run).
    #[arg(long)]
    model: String,
    /// Hub revision (branch, tag or commit) of a Hub id.
    #[arg(long)]
    revision: Option<String>,
    /// Dtype of dense weights and activations (CPU builds compute in float32).
    #[arg(long, value_enum, default_value = "float32")]
    dtype: DTypeArg,
    #[command(flatten)]
    quant: QuantArgs,
    /// Tokenizer folder (default: the model's own — folder or GGUF metadata — else
    /// $QTUNE_DATA_DIR/gpt2-tokenizer).
    #[arg(long)]
    tokenizer: Option<String>,
    /// PEFT adapter folder to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A prompt to continue (repeat the flag for several; they are decoded as one batch, or in
    /// batches of --batch). Printed followed by its continuation.
    #[arg(long)]
    prompt: Vec<String>,
    /// A file of prompts instead: JSON lines with a string field "prompt" each (`.jsonl`), or
    /// one prompt per line (any other extension; empty lines are skipped). The continuations
    /// come out as JSON lines `{"index", "prompt", "completion"}` in the file's order.
    #[arg(long, conflicts_with = "prompt")]
    prompts_file: Option<PathBuf>,
    /// Prompts decoded together, longest first so rows pad little (default: all at once).
    #[arg(long)]
    batch: Option<usize>,
    /// Write the JSON lines here instead of standard output (an existing file is refused).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Tokens to generate after each prompt (fewer if the model emits its EOS token).
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sample (temperature / top-k / top-p) instead of greedy decoding.
    #[arg(long)]
    do_sample: bool,
    /// Sampling temperature (with --do-sample).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Keep the k most likely tokens when sampling (with --do-sample).
    #[arg(long, default_value_t = 50)]
    top_k: usize,
    /// Nucleus sampling: keep the smallest set of tokens with this total probability.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Beam search with this many beams (1 = no beam search).
    #[arg(long, default_value_t = 1)]
    num_beams: usize,
    /// Beam search: exponent of the length normalization of a beam's score.
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f64,
    /// Beam search: stop as soon as `num_beams` finished candidates exist.
    #[arg(long)]
    early_stopping: bool,
    /// HF's repetition penalty (> 1 discourages tokens already in the text).
    #[arg(long, default_value_t = 1.0)]
    repetition_penalty: f64,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Window length in tokens (default: the model's context window; longer is refused).
    #[arg(long)]
    max_length: Option<usize>,
    /// Tokens the window advances by (default: half the window); the overlap is context
    /// only, not scored again.
    #[arg(long)]
    stride: Option<usize>,
    /// Score only the first N tokens of the text (default: all).
    #[arg(long)]
    max_tokens: Option<usize>,
}

#[derive(Args)]
struct MergeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Folder to write the merged HF model into (config.json, model.safetensors, tokenizer).
    #[arg(long)]
    out: PathBuf,
    /// dtype of the written weights (default: --dtype).
    #[arg(long, value_enum)]
    save_dtype: Option<DTypeArg>,
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<RunConfig> {
    Ok(match path {
        Some(p) => RunConfig::from_file(p)?,
        None => RunConfig::tiny(),
    })
}

fn model_config(a: &ModelArgs) -> anyhow::Result<ModelConfig> {
    let quantization = a.quant.config()?;
    if a.model == "tiny" {
        let mut m = RunConfig::tiny().model;
        m.quantization = quantization;
        m.tokenizer = a.tokenizer.clone();
        return Ok(m);
    }
    Ok(ModelConfig {
        name_or_path: Some(a.model.clone()),
        revision: a.revision.clone(),
        random: None,
        torch_dtype: a.dtype.hf_name().into(),
        quantization,
        tokenizer: a.tokenizer.clone(),
    })
}

fn load_tokenizer(a: &ModelArgs) -> anyhow::Result<tokenizers::Tokenizer> {
    let m = model_config(a)?;
    let data_dir = DataSource::from_env().data_dir;
    build::tokenizer(&m, data_dir.as_deref()).context("loading the tokenizer")
}

fn load_model(a: &ModelArgs) -> anyhow::Result<AnyLm<Infer>> {
    let m = model_config(a)?;
    let device = Default::default();
    let mut model = build::base_model::<Infer>(&m, &device)
        .with_context(|| format!("loading model `{}`", a.model))?;
    if let Some(dir) = &a.adapter {
        let adapter = PeftAdapter::load(dir)?;
        model = model
            .import_adapter(&adapter)
            .with_context(|| format!("applying adapter {}", dir.display()))?;
    }
    Ok(model)
}

fn main() -> std::process::ExitCode {
    qtune_train::run_main(|| run_cli(Cli::parse()))
}

fn run_cli(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Train(a) => {
            let mut cfg = load_config(a.config.as_ref())?;
            if let Some(n) = a.max_steps {
                cfg.training.max_steps = n;
            }
            if let Some(d) = &a.output_dir {
                cfg.training.output_dir = Some(d.display().to_string());
            }
            cfg.validate("command line")?;
            tracing::info!(backend = TRAIN_BACKEND, run = %cfg.name, "training");
            let opts = TrainOptions {
                resume: a.resume,
                overwrite: a.overwrite,
                progress: true,
                ..TrainOptions::default()
            };
            let devices: Vec<TrainDevice> = if a.devices.is_empty() {
                vec![Default::default()]
            } else {
                devices_from_indices(&a.devices)?
            };
            let report = run::train_job_on::<Train>(&cfg, &opts, &DataSource::from_env(), &devices)
                .with_context(|| format!("training run `{}`", cfg.name))?;
            // The full report (every prediction) is in the run folder; a summary here.
            println!("{}", report.summary());
        }
        Cmd::Eval(a) => {
            let cfg = load_config(a.config.as_ref())?;
            let report = run::eval_job::<Infer>(
                &cfg,
                a.adapter.as_deref(),
                &DataSource::from_env(),
                &Default::default(),
            )
            .context("evaluation")?;
            if let Some(path) = &a.report {
                run::write_json(path, &report)?;
            }
            println!("{}", report.summary());
            if let Some(path) = &a.report {
                println!("full report: {}", path.display());
            }
        }
        Cmd::Generate(a) => {
            let texts = match &a.prompts_file {
                Some(f) => prompts::read(f)?,
                None => a.prompt.clone(),
            };
            if texts.is_empty() {
                bail!("give at least one --prompt, or a --prompts-file with prompts");
            }
            if a.batch == Some(0) {
                bail!("--batch must be at least 1");
            }
            if let Some(out) = &a.output {
                if out.exists() {
                    bail!("--output {} exists: choose a new file", out.display());
                }
            }
            let model = load_model(&a.model)?;
            let tok = load_tokenizer(&a.model)?;
            let eos = model.eos_token_id();
            let gen = GenerationConfig {
                max_new_tokens: a.max_new_tokens,
                do_sample: a.do_sample,
                temperature: a.temperature,
                top_k: Some(a.top_k),
                top_p: a.top_p,
                num_beams: a.num_beams,
                length_penalty: a.length_penalty,
                early_stopping: if a.early_stopping {
                    EarlyStopping::True
                } else {
                    EarlyStopping::False
                },
                repetition_penalty: a.repetition_penalty,
                eos_token_id: eos,
                pad_token_id: eos,
                seed: a.seed,
                device_graphs: qtune_lm::device_graphs_from_env()?,
                ..GenerationConfig::default()
            };
            let prompts = texts
                .iter()
                .map(|p| {
                    tok.encode(p.as_str(), false)
                        .map(|e| e.get_ids().to_vec())
                        .map_err(|e| anyhow::anyhow!("tokenizing {p:?}: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let vocab = model.vocab_size() as u32;
            if let Some(bad) = prompts.iter().flatten().find(|&&t| t >= vocab) {
                bail!("the tokenizer produced id {bad}, outside the model's vocab_size {vocab}: wrong --tokenizer?");
            }
            let batch = a.batch.unwrap_or(prompts.len());
            let outs = qtune_lm::generate_batched(&model, &prompts, batch, &gen)?;
            let mut completions = Vec::with_capacity(outs.len());
            for out in outs {
                let ids: Vec<u32> = out.into_iter().filter(|&t| Some(t) != eos).collect();
                completions.push(
                    tok.decode(&ids, true)
                        .map_err(|e| anyhow::anyhow!("decoding: {e}"))?,
                );
            }
            if a.prompts_file.is_none() && a.output.is_none() {
                for (p, text) in texts.iter().zip(&completions) {
                    println!("{p}{text}");
                }
            } else {
                prompts::write(a.output.as_deref(), &texts, &completions)?;
            }
        }
        Cmd::Perplexity(a) => {
            let model = load_model(&a.model)?;
            let tok = load_tokenizer(&a.model)?;
            let r = run::perplexity_job(
                &model,
                &tok,
                &DataSource::from_env(),
                a.max_length,
                a.stride,
                a.max_tokens,
            )
            .context("perplexity")?;
            println!(
                "ppl {:.4} (HF's recipe, {} tokens) | {:.4} over the {} labels scored | {} tokens in the text | max_length {} stride {}",
                r.ppl, r.tokens_evaluated, r.ppl_scored, r.scored_tokens, r.text_tokens, r.max_length, r.stride
            );
        }
        Cmd::Merge(a) => {
            if a.model.adapter.is_none() {
                bail!("merge needs --adapter");
            }
            let model = load_model(&a.model)?;
            let dtype = a.save_dtype.unwrap_or(a.model.dtype).export();
            let r = model.export_merged(&a.out, dtype)?;
            if !r.dequantized_weights.is_empty() {
                eprintln!(
                    "note: {} weights were quantized and are exported dense (merged in f32, \
                     saved as {}); see {}/qtune_merge.json",
                    r.dequantized_weights.len(),
                    r.torch_dtype,
                    a.out.display()
                );
            }
            println!("{}", serde_json::to_string_pretty(&r)?);
        }
        Cmd::Quantize(a) => quantize::run(a)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_has_a_help_text() {
        let cli = Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no about", sub.get_name());
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{} --{id}", sub.get_name()));
                }
            }
        }
        assert!(missing.is_empty(), "flags without help: {missing:?}");
    }

    #[test]
    fn bad_values_are_refused_with_the_accepted_list() {
        let err = Cli::try_parse_from([
            "qtune",
            "generate",
            "--model",
            "tiny",
            "--quant-type",
            "int3",
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(
            err.contains("int3") && err.contains("nf4") && err.contains("fp4"),
            "{err}"
        );
        let err =
            Cli::try_parse_from(["qtune", "generate", "--model", "tiny", "--dtype", "float64"])
                .err()
                .unwrap()
                .to_string();
        assert!(err.contains("float64") && err.contains("bfloat16"), "{err}");
    }
}
