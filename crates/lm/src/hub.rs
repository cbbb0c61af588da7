//! Model folders from a local path or the Hugging Face Hub (`hf-hub`), honoring `HF_HOME`
//! (cache location), `HF_ENDPOINT` and `HF_HUB_OFFLINE=1` (cache only, no network).

use std::path::{Path, PathBuf};

use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};

use crate::error::LmError;

/// Fetches one file of the repo into the cache, returning its local path.
type Fetch<'a> = dyn Fn(&str) -> Result<PathBuf, LmError> + 'a;

fn fetcher<'a>(source: &'a str, revision: Option<&str>) -> Result<Box<Fetch<'a>>, LmError> {
    let repo = match revision {
        Some(r) => Repo::with_revision(source.to_string(), RepoType::Model, r.to_string()),
        None => Repo::new(source.to_string(), RepoType::Model),
    };
    let hub = move |file: &str, reason: String| LmError::Hub {
        repo: source.to_string(),
        file: file.to_string(),
        reason,
    };
    Ok(if qtune_hub::offline() {
        let cache = Cache::from_env().repo(repo);
        Box::new(move |f: &str| {
            cache
                .get(f)
                .ok_or_else(|| hub(f, "not in the local cache and HF_HUB_OFFLINE is set".into()))
        })
    } else {
        // HF_ENDPOINT by the same rule as the datasets' downloads (qtune_hub::endpoint).
        let api = ApiBuilder::from_env()
            .with_endpoint(qtune_hub::endpoint())
            .build()
            .map_err(|e| hub("-", e.to_string()))?
            .repo(repo);
        Box::new(move |f: &str| api.get(f).map_err(|e| hub(f, e.to_string())))
    })
}

/// The tokenizer files (`vocab.json` + `merges.txt`, GPT-2's BPE) of a Hub model repo, fetched
/// into the HF cache without its weights; returns the folder for `tokenizer::from_model_dir`.
/// Used when no local tokenizer folder is configured (for example `EleutherAI/gpt-j-6b`).
pub fn resolve_tokenizer(source: &str, revision: Option<&str>) -> Result<PathBuf, LmError> {
    let get = fetcher(source, revision)?;
    get("merges.txt")?;
    let vocab = get("vocab.json")?;
    Ok(vocab.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// A local folder (or `.gguf` file) as is; otherwise a Hub model id (`EleutherAI/gpt-j-6b`) whose `config.json`,
/// tokenizer files and safetensors weights (single or sharded) are fetched into the HF cache.
/// Returns the folder holding them (the cache snapshot).
pub fn resolve(source: &str, revision: Option<&str>) -> Result<PathBuf, LmError> {
    let local = Path::new(source);
    if local.is_dir() || (local.is_file() && local.extension().is_some_and(|e| e == "gguf")) {
        return Ok(local.to_path_buf());
    }
    let get = fetcher(source, revision)?;
    let hub = |file: &str, reason: String| LmError::Hub {
        repo: source.to_string(),
        file: file.to_string(),
        reason,
    };
    let config = get("config.json")?;
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    match get("model.safetensors.index.json") {
        Ok(index) => {
            let text = std::fs::read_to_string(&index).map_err(|source| LmError::Io {
                path: index.clone(),
                source,
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| LmError::Index {
                    path: index.clone(),
                    source,
                })?;
            let mut shards: Vec<String> = v["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in shards {
                get(&s)?;
            }
        }
        Err(_) => {
            get("model.safetensors").map_err(|e| {
                hub(
                    "model.safetensors",
                    format!("{e} (qtune reads safetensors only; a repo or revision with just pytorch_model.bin is refused because unpickling executes code)"),
                )
            })?;
        }
    }
    for optional in [
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "generation_config.json",
    ] {
        let _ = get(optional);
    }
    Ok(dir)
}
