//! `cargo xtask bench dequant [--check] [--decode] [--iters N] [--tokens N]` (CUDA builds only):
//! dequant bandwidth per format for a 16384×4096 weight (bytes as bitsandbytes' peer counts
//! them), the bf16 copy bandwidth of the same GPU, the GPU quantizer's speed, and quantized
//! linear forward+backward time vs a dense bf16 cuBLAS GEMM at 4096 tokens, and the batch-1
//! (decode) products inside a CUDA graph (`--decode`: only those). `--check` first runs
//! the GPU self-test (kernels vs CPU reference, bit for bit). Prints JSON lines, then a table.

/// Entry point called by xtask's `bench dequant` subcommand with the remaining arguments.
///
/// # Errors
/// Without the `cuda` feature; on a bad argument; if `--check` finds a failing check.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    run_impl(args)
}

#[cfg(not(feature = "cuda"))]
fn run_impl(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("`bench dequant` needs a CUDA build: cargo xtask bench dequant --features cuda (run it on a GPU machine)")
}

#[cfg(feature = "cuda")]
fn run_impl(args: &[String]) -> anyhow::Result<()> {
    use anyhow::Context;
    use qtune_kernels::cuda::{bench, selftest};

    let mut cfg = bench::BenchConfig::default();
    let mut check = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> anyhow::Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} needs a positive integer"))
        };
        match arg.as_str() {
            "--check" => check = true,
            "--decode" => cfg.decode_only = true,
            "--iters" => cfg.iters = value("--iters")?.max(1),
            "--tokens" => cfg.tokens = value("--tokens")?.max(1),
            other => anyhow::bail!(
                "bench dequant: unknown argument `{other}` (use --check, --decode, --iters N, --tokens N)"
            ),
        }
    }
    if check {
        let failed = selftest::run_all().iter().filter(|c| !c.ok).count();
        anyhow::ensure!(failed == 0, "{failed} GPU self-test checks failed");
    }
    bench::run(&cfg);
    Ok(())
}
