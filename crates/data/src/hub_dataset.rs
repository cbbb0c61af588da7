//! `[data] path` as a Hugging Face Hub dataset id (`org/name`) with a `split` and a `revision`,
//! or a local folder laid out like one: which files hold the split, and their local paths.
//!
//! Order: a local path that exists always wins (a file is read as is; a folder is listed and
//! its files matched to the split); otherwise a path shaped like a Hub id is fetched with
//! `hf-hub` into the HF cache (`HF_HOME`, `HF_ENDPOINT`); with `HF_HUB_OFFLINE=1` only the
//! cache's snapshot of the revision is listed. Anything else is an error naming the id, the
//! split and the revision; never another dataset or split in its place.
//!
//! Files of a split ([`split_files`]), as `datasets` lays them out
//! (`datasets.data_files`, `DEFAULT_PATTERNS_SPLIT_IN_FILENAME` / `_IN_DIR_NAME`): data files
//! (`.parquet`, `.jsonl`, `.json`, `.csv`) whose name or one of whose folders is the split's
//! keyword or starts/ends with it next to a separator (`-`, `_`, `.`, space or a digit):
//! `data/train-00000-of-00001.parquet`, `train.jsonl`, `my_data_test.csv`,
//! `default/validation/0000.parquet`. Keywords as `datasets`' `SPLIT_KEYWORDS`: `train` also
//! matches `training`; `validation`: `valid`, `val`, `dev`; `test`: `testing`, `eval`,
//! `evaluation`; any other split name only itself. A repo whose files name no split at all is
//! one `train` split. When a split has files of several formats, parquet is read, else jsonl,
//! json, csv (the Hub's parquet conversion sits beside the original files).
use std::path::{Path, PathBuf};

use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};

use crate::error::{DataError, Result};
use crate::formats::{load_records, CustomRecord, DatasetFormat, FieldNames};
use crate::hub_configs;

/// Data file extensions, in order of preference within one split.
const EXTENSIONS: [&str; 4] = ["parquet", "jsonl", "json", "csv"];

/// `datasets`' `SPLIT_KEYWORDS`: the names a split's files may carry.
fn keywords(split: &str) -> Vec<&str> {
    match split {
        "train" => vec!["train", "training"],
        "validation" => vec!["validation", "valid", "dev", "val"],
        "test" => vec!["test", "testing", "eval", "evaluation"],
        other => vec![other],
    }
}

/// `datasets`' `NON_WORDS_CHARS`: what may stand next to a keyword in a name.
fn is_sep(c: char) -> bool {
    matches!(c, '-' | '_' | '.' | ' ') || c.is_ascii_digit()
}

/// Whether one path component names `kw`: equal to it, or `kw` at its start or end (or inside)
/// with a separator on each side that is not the component's edge.
fn names(component: &str, kw: &str) -> bool {
    let (c, kw) = (component.to_ascii_lowercase(), kw.to_ascii_lowercase());
    c.match_indices(&kw).any(|(i, _)| {
        let before = c[..i].chars().next_back();
        let after = c[i + kw.len()..].chars().next();
        before.is_none_or(is_sep) && after.is_none_or(is_sep)
    })
}

/// Whether `path` names a data file by its extension (`.parquet`, `.jsonl`, `.json`, `.csv`).
pub fn is_data_file(path: &str) -> bool {
    extension(path).is_some()
}

fn extension(file: &str) -> Option<&'static str> {
    let ext = Path::new(file).extension()?.to_str()?.to_ascii_lowercase();
    EXTENSIONS.iter().copied().find(|e| *e == ext)
}

/// Whether `file` (a repo-relative path with `/`) belongs to `split`: its folders, or its name
/// without the extension, name one of the split's keywords.
fn in_split(file: &str, split: &str) -> bool {
    let mut parts: Vec<&str> = file.split('/').collect();
    let name = parts.pop().unwrap_or_default();
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    keywords(split)
        .iter()
        .any(|kw| names(stem, kw) || parts.iter().any(|p| names(p, kw)))
}

/// The files of `split` among a repo's file list (repo-relative, `/`-separated), sorted; see
/// the module doc. Empty when the split has none.
pub fn split_files(files: &[String], split: &str) -> Vec<String> {
    let data: Vec<&String> = files
        .iter()
        .filter(|f| extension(f).is_some())
        // Hidden files and folders (`.git/…`, `.cache/…`) are never data.
        .filter(|f| !f.split('/').any(|p| p.starts_with('.')))
        .collect();
    let mut chosen: Vec<&String> = data
        .iter()
        .copied()
        .filter(|f| in_split(f, split))
        .collect();
    let any_split = ["train", "validation", "test"]
        .iter()
        .any(|s| data.iter().any(|f| in_split(f, s)));
    if chosen.is_empty() && split == "train" && !any_split {
        chosen = data;
    }
    prefer_format(chosen)
}

/// The files of the most preferred format among `files` (parquet, jsonl, json, csv), sorted.
fn prefer_format(files: Vec<&String>) -> Vec<String> {
    let Some(ext) = EXTENSIONS
        .iter()
        .find(|e| files.iter().any(|f| extension(f) == Some(**e)))
    else {
        return Vec::new();
    };
    let mut out: Vec<String> = files
        .into_iter()
        .filter(|f| extension(f) == Some(*ext))
        .cloned()
        .collect();
    out.sort();
    out
}

/// Refuses a split whose files sit in several folders (`en/train-*.parquet` and
/// `de/train-*.parquet`: `datasets` configs), which qtune would otherwise mix.
fn one_folder(name: &str, split: &str, files: &[String]) -> Result<()> {
    let parent = |f: &String| {
        f.rsplit_once('/')
            .map_or(String::new(), |(d, _)| d.to_string())
    };
    let mut dirs: Vec<String> = files.iter().map(parent).collect();
    dirs.dedup();
    if dirs.len() > 1 {
        return Err(DataError::NoSplit {
            name: format!(
                "{name}: split `{split}` has files in several folders {dirs:?} (one per \
                 `datasets` config?); qtune reads one folder: name one with [data] config_name"
            ),
            split: split.to_string(),
            files: files.iter().take(20).cloned().collect(),
        });
    }
    Ok(())
}

/// Whether `path` reads as a Hub dataset id: `name` or `org/name` of letters, digits, `-`, `_`,
/// `.`, not starting with `.` or `/`, and not ending in a data file extension.
pub fn looks_like_hub_id(path: &str) -> bool {
    let parts: Vec<&str> = path.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        && extension(path).is_none()
}

/// Where `[data] path` points: the files of the split, and a name for errors and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFiles {
    /// The path as configured, plus split (and revision) for a folder or Hub id.
    pub name: String,
    pub files: Vec<PathBuf>,
}

/// Options of [`resolve_data_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The Hub's cache (`Cache::from_env()`: `HF_HOME`, `~/.cache/huggingface/hub`).
    pub cache: PathBuf,
    /// `HF_HUB_OFFLINE` unset/false: list and download from the Hub; else the cache only.
    pub offline: bool,
    /// The Hub's address (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
}

impl HubOptions {
    pub fn from_env() -> Self {
        HubOptions {
            cache: Cache::from_env().path().clone(),
            offline: qtune_hub::offline(),
            endpoint: qtune_hub::endpoint(),
        }
    }
}

/// Every file under `dir`, as `/`-separated paths relative to it.
fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))? {
            let p = entry.map_err(|e| DataError::io(&d, e))?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The files of `split` for `[data] path` (see the module doc). `revision` is for Hub ids only
/// (default `main`); `config_name` picks a `datasets` config of a folder or Hub id
/// (crate::hub_configs).
pub fn resolve_data_files(
    path: &str,
    split: &str,
    revision: Option<&str>,
    config_name: Option<&str>,
    hub: &HubOptions,
) -> Result<DataFiles> {
    let local = Path::new(path);
    if local.is_file() {
        return Ok(DataFiles {
            name: path.to_string(),
            files: vec![local.to_path_buf()],
        });
    }
    if local.is_dir() {
        let listing = list_dir(local)?;
        let name = format!("{path} (split {split})");
        let card = read_card(&local.join("README.md"))?;
        let files = pick_files(&name, &listing, card.as_deref(), config_name, split)?;
        return Ok(DataFiles {
            name,
            files: files.iter().map(|f| local.join(f)).collect(),
        });
    }
    if !looks_like_hub_id(path) {
        return Err(DataError::io(
            local,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    let rev = revision.unwrap_or("main");
    let name = format!("Hub dataset `{path}` (split {split}, revision {rev})");
    let hub_err = |reason: String| DataError::HubDataset {
        id: path.to_string(),
        split: split.to_string(),
        revision: rev.to_string(),
        reason,
    };
    let repo = Repo::with_revision(path.to_string(), RepoType::Dataset, rev.to_string());
    let files = if hub.offline {
        let snapshot = cached_snapshot(&hub.cache, &repo).ok_or_else(|| {
            hub_err(format!(
                "not a local file or folder, and not in the local Hugging Face cache ({}) while \
                 HF_HUB_OFFLINE is set: download it once with the network on",
                hub.cache.display()
            ))
        })?;
        let listing = list_dir(&snapshot)?;
        let card = read_card(&snapshot.join("README.md"))?;
        let cached = format!("{name}, cached at {}", snapshot.display());
        let files = pick_files(&cached, &listing, card.as_deref(), config_name, split)?;
        files.iter().map(|f| snapshot.join(f)).collect()
    } else {
        let api = ApiBuilder::from_cache(Cache::new(hub.cache.clone()))
            .with_endpoint(hub.endpoint.clone())
            .with_progress(false)
            .build()
            .map_err(|e| hub_err(e.to_string()))?
            .repo(repo);
        let info = api.info().map_err(|e| {
            hub_err(format!(
                "not a local file or folder, and the Hub lookup failed: {e} (a private or \
                 gated dataset needs HF_TOKEN; offline, set HF_HUB_OFFLINE=1 to use the cache)"
            ))
        })?;
        let listing: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let card = if listing.iter().any(|f| f == "README.md") {
            let p = api
                .get("README.md")
                .map_err(|e| hub_err(format!("download of `README.md`: {e}")))?;
            read_card(&p)?
        } else {
            None
        };
        let files = pick_files(&name, &listing, card.as_deref(), config_name, split)?;
        tracing::info!(dataset = %path, split, revision = rev, files = files.len(), "downloading from the Hugging Face Hub");
        files
            .iter()
            .map(|f| {
                api.get(f)
                    .map_err(|e| hub_err(format!("download of `{f}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?
    };
    Ok(DataFiles { name, files })
}

/// A repo card's text, if the file exists.
fn read_card(path: &Path) -> Result<Option<String>> {
    if !path.is_file() {
        return Ok(None);
    }
    std::fs::read_to_string(path)
        .map(Some)
        .map_err(|e| DataError::io(path, e))
}

/// The files of `split` in a repo listing: the chosen config's patterns when the card declares
/// configs; else, with `config_name`, the split's files inside that top-level folder; else the
/// split's files by `datasets`' naming rules, from one folder (crate::hub_configs).
fn pick_files(
    name: &str,
    listing: &[String],
    card: Option<&str>,
    config_name: Option<&str>,
    split: &str,
) -> Result<Vec<String>> {
    let no_split = |files: &[String]| DataError::NoSplit {
        name: name.to_string(),
        split: split.to_string(),
        files: files.iter().take(20).cloned().collect(),
    };
    let configs = match card {
        Some(text) => hub_configs::parse_card(name, text)?,
        None => None,
    };
    if let Some(configs) = configs.filter(|c| !c.is_empty()) {
        let config = hub_configs::choose(name, &configs, config_name)?;
        let matched = hub_configs::config_files(name, config, split, listing)?;
        let files = prefer_format(matched.iter().filter(|f| is_data_file(f)).collect());
        if files.is_empty() {
            return Err(no_split(&matched));
        }
        return Ok(files);
    }
    let files = match config_name {
        Some(c) => {
            let prefix = format!("{c}/");
            let inside: Vec<String> = listing
                .iter()
                .filter_map(|f| f.strip_prefix(&prefix).map(str::to_string))
                .collect();
            if inside.is_empty() {
                return Err(DataError::DatasetConfig {
                    name: name.to_string(),
                    reason: format!(
                        "no config `{c}`: its README.md declares no configs and there is no                          folder `{c}`; folders with data files: {:?}",
                        hub_configs::config_folders(listing)
                    ),
                });
            }
            let files = split_files(&inside, split);
            if files.is_empty() {
                return Err(no_split(&inside));
            }
            one_folder(name, split, &files)?;
            files.iter().map(|f| format!("{prefix}{f}")).collect()
        }
        None => {
            let files = split_files(listing, split);
            if files.is_empty() {
                return Err(no_split(listing));
            }
            one_folder(name, split, &files)?;
            files
        }
    };
    Ok(files)
}

/// The records of every file of `files`, in order ([`crate::load_records`] each; an empty file
/// is an error). With several files a record's location starts with its file's name
/// (`train-00001-of-00002.parquet row 7`).
pub fn load_split_records(
    files: &DataFiles,
    format: DatasetFormat,
    fields: &FieldNames,
) -> Result<Vec<CustomRecord>> {
    let mut out = Vec::new();
    for f in &files.files {
        let mut recs = load_records(f, format, fields)?;
        if files.files.len() > 1 {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
            for r in &mut recs {
                r.location = format!("{} {}", name.as_deref().unwrap_or_default(), r.location);
            }
        }
        out.extend(recs);
    }
    Ok(out)
}

/// The cache's snapshot folder of `repo`'s revision: `refs/{revision}` names the commit, or the
/// revision is a commit whose snapshot is present.
fn cached_snapshot(cache: &Path, repo: &Repo) -> Option<PathBuf> {
    let root = cache.join(repo.folder_name());
    let commit = std::fs::read_to_string(root.join("refs").join(repo.revision()))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| repo.revision().to_string());
    let dir = root.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_need_a_separator_or_an_edge() {
        assert!(names("train", "train"));
        assert!(names("train-00000-of-00002", "train"));
        assert!(names("my_data_test", "test"));
        assert!(names("dev2", "dev"));
        assert!(!names("interval", "val"));
        assert!(!names("contest", "test"));
        assert!(!names("trainer", "train"));
    }

    #[test]
    fn hub_ids_and_local_paths() {
        for id in ["org/name", "squad", "rajpurkar/squad_v2", "a.b/c-d_e"] {
            assert!(looks_like_hub_id(id), "{id}");
        }
        for p in [
            "./x",
            "/abs/x",
            "a/b/c",
            "data.jsonl",
            "org/x.parquet",
            "",
            "org/",
        ] {
            assert!(!looks_like_hub_id(p), "{p}");
        }
    }
}
