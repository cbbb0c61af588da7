//! The persistent PTX cache is keyed by a hash of the kernel sources (`cuda/jit_cache.rs`,
//! `KERNEL_SOURCES`). A file with `#[cube]` code missing from that list would let a process load
//! the PTX of a kernel's old body after the body changed: every such file under `src/cuda` must
//! be listed.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_cube_source_is_in_the_kernel_cache_fingerprint() {
    let cuda = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/cuda");
    let cache = std::fs::read_to_string(cuda.join("jit_cache.rs")).expect("jit_cache.rs");
    let mut files = Vec::new();
    rust_files(&cuda, &mut files);
    let mut cube_files = 0;
    for f in &files {
        let name = f
            .strip_prefix(&cuda)
            .expect("under src/cuda")
            .to_string_lossy()
            .replace('\\', "/");
        if name == "jit_cache.rs" {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("a source file");
        if text.contains("#[cube") {
            cube_files += 1;
            assert!(
                cache.contains(&format!("include_str!(\"{name}\")")),
                "src/cuda/{name} holds #[cube] code but is not in jit_cache.rs' KERNEL_SOURCES"
            );
        }
    }
    assert!(
        cube_files >= 16,
        "found only {cube_files} files with #[cube] code"
    );
}
