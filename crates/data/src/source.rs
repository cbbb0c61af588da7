//! Where data files come from: `$QTUNE_DATA_DIR` (the layout of the project's shared data mirror,
//! listed in `datasets/manifest.json`), else the Hugging Face Hub, else a clear error.
//!
//! Checksum policy: a file found through [`DataSource::locate`] (data dir or Hub) must have the
//! manifest's sha256, since the split counts, sampled rows and reported metrics are only
//! comparable on that exact file. A file a user passes by explicit path to a `load_*` function is
//! not checked: pointing at a different file is then a deliberate choice.
//!
//! Hub copies: the hate-speech CSV has a byte-level copy on the Hub (same size; its sha256 is
//! checked like a local file). SQuAD v2 and WikiText-2 exist on the Hub only as parquet (HF's
//! conversion); they are downloaded as such and read by [`crate::parquet_hub`] (the `load_*`
//! functions dispatch on the `.parquet` extension). No official digest of those parquet files is
//! known, so they are not checksum-checked (hf-hub's cache is keyed by the repo's commit).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

const MANIFEST: &str = include_str!("../../../datasets/manifest.json");

/// The files qtune knows, keyed as in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetId {
    SquadV2,
    HateSpeech,
    WikiText2RawTest,
    Gpt2Encoder,
    Gpt2Merges,
}

impl DatasetId {
    /// The manifest key.
    pub fn key(self) -> &'static str {
        match self {
            DatasetId::SquadV2 => "squad_v2",
            DatasetId::HateSpeech => "hate_speech",
            DatasetId::WikiText2RawTest => "wikitext2_raw_test",
            DatasetId::Gpt2Encoder => "gpt2_encoder",
            DatasetId::Gpt2Merges => "gpt2_merges",
        }
    }
}

/// A manifest entry (see `datasets/manifest.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct ManifestEntry {
    /// Path relative to the data directory.
    pub file: String,
    pub description: String,
    pub source: String,
    pub url: String,
    pub license: String,
    pub sha256: String,
    /// Other accepted digests (SQuAD: the official dev-v2.0.json as well as the mirror's rebuild).
    #[serde(default)]
    pub also_sha256: Vec<String>,
    /// How to obtain the file when `url` is not a plain download.
    pub get: Option<String>,
    pub hub: Option<HubFile>,
}

impl ManifestEntry {
    /// Where the file comes from, for error messages: the `get` instructions, else `url`.
    pub fn how_to_get(&self) -> String {
        match &self.get {
            Some(get) => format!("{} ({get})", self.url),
            None => self.url.clone(),
        }
    }
}

/// The same data on the Hugging Face Hub.
#[derive(Debug, Clone, Deserialize)]
pub struct HubFile {
    /// Dataset repository, e.g. `rajpurkar/squad_v2`.
    pub repo: String,
    pub file: String,
    /// `csv`, `json` or `parquet` are read; anything else is reported, not downloaded.
    pub format: String,
}

#[derive(Deserialize)]
struct Manifest {
    datasets: std::collections::BTreeMap<String, ManifestEntry>,
}

/// The manifest entry for `id`.
pub fn manifest_entry(id: DatasetId) -> Result<ManifestEntry> {
    let m: Manifest =
        serde_json::from_str(MANIFEST).map_err(|e| DataError::Manifest(e.to_string()))?;
    m.datasets
        .get(id.key())
        .cloned()
        .ok_or_else(|| DataError::Manifest(format!("no entry `{}`", id.key())))
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks `path` against the manifest's sha256 (or one of its `also_sha256`) for `id`.
pub fn verify_sha256(path: &Path, id: DatasetId) -> Result<()> {
    let entry = manifest_entry(id)?;
    let got = sha256_file(path)?;
    if got != entry.sha256 && !entry.also_sha256.contains(&got) {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            dataset: id.key().to_string(),
            expected: entry.sha256,
            got,
        });
    }
    Ok(())
}

/// Where to look for data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSource {
    /// A folder with the manifest's layout.
    pub data_dir: Option<PathBuf>,
    /// Download from the Hugging Face Hub (into hf-hub's cache) when the data dir lacks a file.
    pub allow_hub: bool,
}

/// The data directory for a test or example that needs the real data: `$QTUNE_DATA_DIR` when it
/// is a directory (absolute, or relative to `root`, the repository root, as CI sets it). Without
/// one it reports the skip ([`report_skip`]) and returns `None`, so the caller returns early and
/// the skip is visible, never a silent pass.
pub fn data_dir_or_skip(what: &str, root: &Path) -> Option<PathBuf> {
    match std::env::var_os("QTUNE_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
    {
        Some(d) if d.is_dir() => Some(d),
        Some(d) if d.is_relative() && root.join(&d).is_dir() => Some(root.join(d)),
        Some(d) => {
            report_skip(
                what,
                &format!("QTUNE_DATA_DIR={} is not a directory", d.display()),
            );
            None
        }
        None => {
            report_skip(what, "QTUNE_DATA_DIR is not set (the shared data mirror)");
            None
        }
    }
}

/// [`data_dir_or_skip`], then `rel` inside it: `None` (skip reported) when the file is missing.
pub fn data_file_or_skip(what: &str, root: &Path, rel: &str) -> Option<PathBuf> {
    let dir = data_dir_or_skip(what, root)?;
    let path = dir.join(rel);
    if path.exists() {
        Some(path)
    } else {
        report_skip(
            what,
            &format!("{} is missing from the data mirror", path.display()),
        );
        None
    }
}

/// Whether the data mirror is present: `$QTUNE_DATA_DIR` names a directory (absolute, or
/// relative to `root`).
pub fn mirror_present(root: &Path) -> bool {
    std::env::var_os("QTUNE_DATA_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .is_some_and(|d| d.is_dir() || (d.is_relative() && root.join(d).is_dir()))
}

/// Reports that test `what` is skipped: `SKIPPED <what>: <why>` written straight to the
/// process's stderr, so `cargo test` shows it even for a passing test (its output capture only
/// takes `print!`/`eprint!`). Under `CI=true` (1/on/yes/true) with the data mirror present
/// (`QTUNE_DATA_DIR` a directory) no data test may skip: this panics, failing the test.
pub fn report_skip(what: &str, why: &str) {
    use std::io::Write;
    // A relative QTUNE_DATA_DIR is relative to the repository root; tests run in a crate
    // folder below it.
    let cwd = std::env::current_dir().unwrap_or_default();
    let mirror = cwd.ancestors().any(mirror_present);
    if let Err(msg) = skip_allowed(what, why, std::env::var("CI").ok().as_deref(), mirror) {
        panic!("{msg}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {what}: {why}");
}

/// The rule of [`report_skip`]: a skip is an error under `CI` true with the mirror present.
fn skip_allowed(what: &str, why: &str, ci: Option<&str>, mirror: bool) -> Result<(), String> {
    if ci.is_some_and(qtune_hub::is_true) && mirror {
        return Err(format!(
            "{what} would be skipped ({why}), but CI=true and the data mirror QTUNE_DATA_DIR is \
             present: under CI no data test may skip"
        ));
    }
    Ok(())
}

impl DataSource {
    /// `QTUNE_DATA_DIR` if set and non-empty; the Hub unless `HF_HUB_OFFLINE` is true as
    /// huggingface_hub reads it (`qtune_hub::offline`, which model loading reads too).
    pub fn from_env() -> Self {
        let data_dir = std::env::var_os("QTUNE_DATA_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        let offline = qtune_hub::offline();
        DataSource {
            data_dir,
            allow_hub: !offline,
        }
    }

    /// A data directory only, no network.
    pub fn local(dir: impl Into<PathBuf>) -> Self {
        DataSource {
            data_dir: Some(dir.into()),
            allow_hub: false,
        }
    }

    /// The verified local path of `id`'s file (see the module doc for the order and the checks).
    pub fn locate(&self, id: DatasetId) -> Result<PathBuf> {
        let entry = manifest_entry(id)?;
        if let Some(dir) = &self.data_dir {
            let path = dir.join(&entry.file);
            if path.is_file() {
                verify_sha256(&path, id)?;
                return Ok(path);
            }
        }
        let where_looked = match &self.data_dir {
            Some(d) => format!(" ({} has no such file)", d.display()),
            None => " (QTUNE_DATA_DIR is not set)".to_string(),
        };
        let Some(hub) = entry.hub.clone().filter(|_| self.allow_hub) else {
            let hub_state = if entry.hub.is_some() {
                "the Hub is off (HF_HUB_OFFLINE=1 or a local-only source)"
            } else {
                "no Hub copy is listed"
            };
            let hint = format!(
                "{where_looked}; {hub_state}; get it from {}",
                entry.how_to_get()
            );
            return Err(DataError::NotFound {
                dataset: id.key().to_string(),
                file: entry.file,
                hint,
            });
        };
        if !matches!(hub.format.as_str(), "csv" | "json" | "parquet") {
            return Err(DataError::HubFormatUnsupported {
                dataset: id.key().to_string(),
                hub: format!("{} `{}` ({})", hub.repo, hub.file, hub.format),
                url: entry.how_to_get(),
                file: entry.file,
            });
        }
        let hub_err = |source: Box<dyn std::error::Error + Send + Sync>| DataError::Hub {
            dataset: id.key().to_string(),
            repo: hub.repo.clone(),
            file: hub.file.clone(),
            source,
        };
        let api = hf_hub::api::sync::ApiBuilder::from_env()
            .build()
            .map_err(|e| hub_err(Box::new(e)))?;
        tracing::info!(repo = %hub.repo, file = %hub.file, "downloading from the Hugging Face Hub");
        let path = api
            .dataset(hub.repo.clone())
            .get(&hub.file)
            .map_err(|e| hub_err(Box::new(e)))?;
        if hub.format != "parquet" {
            verify_sha256(&path, id)?;
        }
        Ok(path)
    }
}

#[cfg(test)]
mod env_tests {
    #[test]
    fn under_ci_with_the_mirror_no_test_may_skip() {
        use super::skip_allowed;
        assert!(skip_allowed("t", "why", None, true).is_ok());
        assert!(skip_allowed("t", "why", Some("false"), true).is_ok());
        assert!(skip_allowed("t", "why", Some("true"), false).is_ok());
        let err = skip_allowed("my_test", "file missing", Some("true"), true).unwrap_err();
        assert!(
            err.contains("my_test") && err.contains("file missing"),
            "{err}"
        );
    }
}
