//! GPU self-test and benchmark of qtune-kernels, for the device machine (needs `--features cuda`).
//! Usage: `qtune-kernels-gpu [selftest|bench|all]` (default `all`); exits non-zero if a check fails.

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let mut failed = 0;
    if mode == "selftest" || mode == "all" {
        failed = qtune_kernels::cuda::selftest::run_all()
            .iter()
            .filter(|c| !c.ok)
            .count();
    }
    if mode == "bench" || mode == "all" {
        qtune_kernels::cuda::bench::run(&qtune_kernels::cuda::bench::BenchConfig::default());
    }
    if !matches!(mode.as_str(), "selftest" | "bench" | "all") {
        eprintln!("usage: qtune-kernels-gpu [selftest|bench|all]");
        std::process::exit(2);
    }
    if failed > 0 {
        eprintln!("{failed} GPU checks failed");
        std::process::exit(1);
    }
}
