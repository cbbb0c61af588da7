//! `bench train|load --host-profile`: where the host's time goes, sampled in-process (SIGPROF at
//! 4 kHz through `pprof`), because the device machine has no perf, gdb or nsys. Prints the
//! functions with the most samples, self and inclusive, as JSON lines. Needs
//! `--features host-profile`, and Rust symbols: build with `CARGO_PROFILE_RELEASE_STRIP=false`
//! (release strips them; C libraries such as cuBLAS keep their dynamic symbols either way).
//! First use (session 9): a third of SmolLM2's host-bound step was inside
//! `cublasGemmStridedBatchedEx`, which led to the cached cuBLASLt plans.

/// Sampling guard; a no-op when profiling is off.
pub struct HostProfile(#[cfg(feature = "host-profile")] Option<pprof::ProfilerGuard<'static>>);

/// Starts sampling when `on`.
///
/// # Errors
/// `on` in a build without the `host-profile` feature, or when the profiler cannot start.
pub fn start(on: bool) -> anyhow::Result<HostProfile> {
    #[cfg(feature = "host-profile")]
    {
        if !on {
            return Ok(HostProfile(None));
        }
        let guard = pprof::ProfilerGuardBuilder::default()
            .frequency(4000)
            .build()
            .map_err(|e| anyhow::anyhow!("host profiler: {e}"))?;
        Ok(HostProfile(Some(guard)))
    }
    #[cfg(not(feature = "host-profile"))]
    {
        anyhow::ensure!(
            !on,
            "--host-profile needs an xtask built with `--features host-profile` \
             (and CARGO_PROFILE_RELEASE_STRIP=false for Rust symbols)"
        );
        Ok(HostProfile())
    }
}

impl HostProfile {
    /// Stops sampling and prints the top `rows` functions, self and inclusive.
    ///
    /// # Errors
    /// When the profiler's report cannot be built.
    pub fn finish(self, rows: usize) -> anyhow::Result<()> {
        #[cfg(feature = "host-profile")]
        if let Some(guard) = self.0 {
            let report = guard
                .report()
                .build()
                .map_err(|e| anyhow::anyhow!("host profiler report: {e}"))?;
            let stacks = report.data.iter().map(|(frames, &n)| {
                let names = frames
                    .frames
                    .iter()
                    .flat_map(|f| f.iter().map(|s| short_name(&s.name())))
                    .collect::<Vec<_>>();
                (names, n)
            });
            print_top(stacks, rows);
        }
        let _ = rows;
        Ok(())
    }
}

/// Sums samples per function: `self` counts the innermost frame, `inclusive` every function on
/// the stack once. Prints `rows` of each, most first, as JSON lines.
#[cfg_attr(not(feature = "host-profile"), allow(dead_code))]
fn print_top(stacks: impl Iterator<Item = (Vec<String>, isize)>, rows: usize) {
    use std::collections::{HashMap, HashSet};
    let (mut own, mut incl, mut total) = (HashMap::new(), HashMap::new(), 0isize);
    for (names, n) in stacks {
        total += n;
        if let Some(leaf) = names.first() {
            *own.entry(leaf.clone()).or_insert(0) += n;
        }
        let mut seen = HashSet::new();
        for name in names {
            if seen.insert(name.clone()) {
                *incl.entry(name).or_insert(0) += n;
            }
        }
    }
    for (kind, map) in [("self", own), ("inclusive", incl)] {
        let mut v: Vec<(String, isize)> = map.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (name, n) in v.into_iter().take(rows) {
            let pct = 100.0 * n as f64 / total.max(1) as f64;
            println!(
                "{}",
                serde_json::json!({"host_profile": kind, "samples": n, "percent": pct, "function": name})
            );
        }
    }
}

/// A demangled name without its hash suffix and generic arguments, so that instances group.
#[cfg_attr(not(feature = "host-profile"), allow(dead_code))]
fn short_name(name: &str) -> String {
    let name = name.split("::h").next().unwrap_or(name);
    let (mut out, mut depth) = (String::new(), 0usize);
    for c in name.chars() {
        match c {
            '<' => {
                if depth == 0 {
                    out.push_str("<>");
                }
                depth += 1;
            }
            '>' => depth = depth.saturating_sub(1),
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_group_without_hash_and_generics() {
        assert_eq!(
            short_name("burn_autodiff::ops::Foo<B, T>::bar::h0123abcd"),
            "burn_autodiff::ops::Foo<>::bar"
        );
        assert_eq!(short_name("cublasLtMatmul"), "cublasLtMatmul");
    }

    #[test]
    fn off_is_a_no_op_and_on_needs_the_feature() {
        start(false).unwrap().finish(5).unwrap();
        if !cfg!(feature = "host-profile") {
            assert!(start(true).is_err());
        }
    }
}
