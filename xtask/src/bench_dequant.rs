//! `cargo xtask bench dequant [--check] [--decode | --prefill] [--iters N] [--tokens N]` (CUDA builds only):
//! dequant bandwidth per format for a 16384×4096 weight (bytes as bitsandbytes' peer counts
//! them), the bf16 copy bandwidth of the same GPU, the GPU quantizer's speed, and quantized
//! linear forward+backward time vs a dense bf16 cuBLAS GEMM at 4096 tokens, and the batch-1
//! (decode) products inside a CUDA graph (`--decode`: only those); `--prefill`: only the pieces
//! of a GPT-J-6B NF4 prefill block at 512 rows (`bench_kernels::prefill`). `--check` first runs
//! the GPU self-test (kernels vs CPU reference, bit for bit). Prints JSON lines, then a table.

/// Arguments of `bench dequant`.
#[derive(Debug, clap::Args)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub struct Args {
    /// First run the GPU self-test (kernels vs the CPU reference); fail if a check fails.
    #[arg(long)]
    check: bool,
    /// Only the batch-1 (decode) products.
    #[arg(long)]
    decode: bool,
    /// Only the pieces of one GPT-J-6B NF4 prefill block (dequantization, GEMM, quantized
    /// linear per shape; q/k/v batched; attention, LayerNorm, LM head) at `--tokens` rows
    /// (default 512).
    #[arg(long, conflicts_with = "decode")]
    prefill: bool,
    /// Timed iterations for dequant/copy (default: the kernels bench's, 50).
    #[arg(long)]
    iters: Option<usize>,
    /// Tokens (rows of x) for the linear timings (default: the kernels bench's, 4096).
    #[arg(long)]
    tokens: Option<usize>,
}

/// Entry point called by xtask's `bench dequant` subcommand.
///
/// # Errors
/// Without the `cuda` feature; if `--check` finds a failing check.
pub fn run(args: &Args) -> anyhow::Result<()> {
    run_impl(args)
}

#[cfg(not(feature = "cuda"))]
fn run_impl(_args: &Args) -> anyhow::Result<()> {
    Err(crate::needs_cuda("dequant"))
}

#[cfg(feature = "cuda")]
fn run_impl(args: &Args) -> anyhow::Result<()> {
    use crate::bench_kernels as bench;
    use crate::gpu_check::selftest;

    let mut cfg = bench::BenchConfig {
        decode_only: args.decode,
        prefill_only: args.prefill,
        ..bench::BenchConfig::default()
    };
    if args.prefill {
        cfg.tokens = 512;
    }
    if let Some(n) = args.iters {
        cfg.iters = n.max(1);
    }
    if let Some(n) = args.tokens {
        cfg.tokens = n.max(1);
    }
    if args.check {
        let failed = selftest::run_all().iter().filter(|c| !c.ok).count();
        anyhow::ensure!(failed == 0, "{failed} GPU self-test checks failed");
    }
    bench::run(&cfg);
    Ok(())
}
