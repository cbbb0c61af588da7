//! `cargo xtask bench load --model DIR [--quant nf4|fp4|int8|bf16] [--double-quant]
//! [--repeat 3] [--threads N]`: how long `qtune train` takes to load a checkpoint folder before
//! its first step. It calls the same function (`qtune_train::build::base_model`, the training
//! backend) with the `[model]` section such a run would have, then waits for the device.
//!
//! The page cache is warmed first by one untimed read of every `.safetensors` file (its time is
//! printed as `warm_read`, the disk's, not ours). Then `--repeat` timed loads; the first also
//! pays the GPU kernels' JIT compilation when `QTUNE_KERNEL_CACHE` has none (as a user's first
//! run on a machine does), so the median is over the others when there are any. `--threads`
//! sets `QTUNE_LOAD_THREADS` (0 = the serial read, for comparison). Prints JSON lines:
//! `{"bench":"load","phase":"warm_read",..}`, one per load, and a summary with seconds and GB/s
//! (checkpoint bytes / seconds).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use burn::tensor::backend::Backend;
use qtune_train::backend::Train;
use serde_json::json;

/// `--quant`: what the loaded base weights become.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Quant {
    /// NF4 (block 64), bitsandbytes' `load_in_4bit` default type for QLoRA.
    Nf4,
    /// FP4 (block 64).
    Fp4,
    /// Blockwise 8-bit (block 4096), `load_in_8bit` as qtune stores it.
    Int8,
    /// Dense bf16 (no quantization).
    Bf16,
}

/// Arguments of `bench load`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A checkpoint folder (`config.json` + safetensors), HF's or `qtune quantize`'s.
    #[arg(long)]
    model: PathBuf,
    #[arg(long, value_enum, default_value = "nf4")]
    quant: Quant,
    /// Double-quantize the absmax (4-bit only), as `bnb_4bit_use_double_quant`.
    #[arg(long)]
    double_quant: bool,
    /// Timed loads.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Reader threads (`QTUNE_LOAD_THREADS`; 0 = serial); default: qtune's choice.
    #[arg(long)]
    threads: Option<usize>,
    /// Sample the host during the timed loads after the first and print its top functions
    /// (`--features host-profile`; see xtask/src/host_profile.rs).
    #[arg(long)]
    host_profile: bool,
}

/// The `[model]` section of a `qtune train` config for these arguments.
fn model_config(args: &Args) -> anyhow::Result<qtune_train::config::ModelConfig> {
    let quantization = match args.quant {
        Quant::Bf16 => None,
        Quant::Int8 => Some(json!({"load_in_8bit": true})),
        Quant::Nf4 | Quant::Fp4 => Some(json!({
            "load_in_4bit": true,
            "bnb_4bit_quant_type": if args.quant == Quant::Nf4 { "nf4" } else { "fp4" },
            "bnb_4bit_use_double_quant": args.double_quant,
        })),
    };
    let mut m = json!({
        "name_or_path": args.model.display().to_string(),
        "torch_dtype": "bfloat16",
    });
    if let Some(q) = quantization {
        m["quantization"] = q;
    }
    serde_json::from_value(m).context("bench load: [model] section")
}

/// The checkpoint's `.safetensors` files and their total size.
fn shards(dir: &Path) -> anyhow::Result<(Vec<PathBuf>, u64)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            files.push(path);
        }
    }
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "{}: no .safetensors files",
        dir.display()
    );
    let mut bytes = 0;
    for f in &files {
        bytes += std::fs::metadata(f)?.len();
    }
    Ok((files, bytes))
}

/// Entry point of `bench load`.
///
/// # Errors
/// A folder without safetensors, or a load error.
pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.repeat >= 1, "--repeat must be at least 1");
    anyhow::ensure!(
        !args.double_quant || matches!(args.quant, Quant::Nf4 | Quant::Fp4),
        "--double-quant applies to --quant nf4|fp4 only"
    );
    let m = model_config(args)?;
    if let Some(t) = args.threads {
        std::env::set_var(qtune_lm::prefetch::THREADS_ENV, t.to_string());
    }
    let threads = qtune_lm::prefetch::threads()?;
    let (files, bytes) = shards(&args.model)?;
    let t0 = Instant::now();
    for f in &files {
        // Read, not mapped: every page passes through the page cache once.
        std::io::copy(&mut std::fs::File::open(f)?, &mut std::io::sink())?;
    }
    let warm = t0.elapsed().as_secs_f64();
    let gb = bytes as f64 / 1e9;
    println!(
        "{}",
        json!({"bench": "load", "phase": "warm_read", "files": files.len(), "bytes": bytes,
               "seconds": warm, "gb_per_s": gb / warm})
    );
    qtune_train::backend::init();
    let dev: burn::tensor::Device<Train> = Default::default();
    let mut times = Vec::with_capacity(args.repeat);
    let mut profile = None;
    for i in 0..args.repeat {
        if i == 1 || args.repeat == 1 {
            profile = Some(crate::host_profile::start(args.host_profile)?);
        }
        let t = Instant::now();
        let model = qtune_train::build::base_model::<Train>(&m, &dev)?;
        <Train as Backend>::sync(&dev).map_err(|e| anyhow::anyhow!("device sync: {e:?}"))?;
        let s = t.elapsed().as_secs_f64();
        drop(model);
        println!(
            "{}",
            json!({"bench": "load", "phase": "load", "run": i, "seconds": s, "gb_per_s": gb / s,
                   "includes_jit": i == 0})
        );
        times.push(s);
    }
    if let Some(p) = profile {
        p.finish(60)?;
    }
    let later = if times.len() > 1 {
        &times[1..]
    } else {
        &times[..]
    };
    let mut sorted = later.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    println!(
        "{}",
        json!({"bench": "load", "phase": "summary", "model": args.model.display().to_string(),
               "quant": format!("{:?}", args.quant).to_lowercase(),
               "double_quant": args.double_quant, "threads": threads,
               "backend": qtune_train::backend::TRAIN_BACKEND, "bytes": bytes,
               "first_seconds": times[0], "median_seconds": median, "gb_per_s": gb / median})
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &[&str]) -> Result<Args, clap::Error> {
        crate::parse_args("load", v)
    }

    #[test]
    fn defaults_and_flags_are_the_device_scripts_ones() {
        assert!(parse(&[]).is_err(), "--model is required");
        let a = parse(&["--model", "/tmp/gptj"]).unwrap();
        assert_eq!(
            (
                a.model.as_path(),
                a.quant,
                a.double_quant,
                a.repeat,
                a.threads
            ),
            (Path::new("/tmp/gptj"), Quant::Nf4, false, 3, None)
        );
        // xtask/device/load_bench.sh.
        let a = parse(&[
            "--model",
            "/tmp/g",
            "--quant",
            "nf4",
            "--double-quant",
            "--repeat",
            "2",
            "--threads",
            "0",
        ])
        .unwrap();
        assert_eq!((a.double_quant, a.repeat, a.threads), (true, 2, Some(0)));
        assert_eq!(
            parse(&["--model", "d", "--quant", "bf16"]).unwrap().quant,
            Quant::Bf16
        );
        assert!(parse(&["--model", "d", "--quant", "int3"]).is_err());
    }

    #[test]
    fn the_model_section_is_a_qtune_train_one() {
        let a = parse(&["--model", "/m", "--quant", "fp4", "--double-quant"]).unwrap();
        let m = model_config(&a).unwrap();
        assert_eq!(m.name_or_path.as_deref(), Some("/m"));
        assert_eq!(m.torch_dtype, "bfloat16");
        let q = m.quantization.unwrap();
        assert!(q.load_in_4bit && q.bnb_4bit_use_double_quant);
        assert_eq!(q.bnb_4bit_quant_type, "fp4");
        let a = parse(&["--model", "/m", "--quant", "bf16"]).unwrap();
        assert!(model_config(&a).unwrap().quantization.is_none());
    }
}
