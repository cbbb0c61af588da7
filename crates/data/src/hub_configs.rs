//! `datasets` configs of a dataset repo (`load_dataset(path, name)`; `[data] config_name`).
//!
//! A repo declares its configs in the YAML front matter of its `README.md`, as the `datasets`
//! library reads it (`datasets.utils.metadata.MetadataConfigs`):
//! ```yaml
//! configs:
//! - config_name: en
//!   data_files:
//!   - split: train
//!     path: en/train-*
//!   - split: test
//!     path: [en/test-0.parquet, en/test-1.parquet]
//!   default: true
//! - config_name: de
//!   data_files: de/*.parquet        # one pattern (or a list): all of it is `train`
//! ```
//! `data_files` may also be a map `{split: pattern(s)}`. Patterns are repo-relative globs: `*` and
//! `?` stay inside one path component, `**` crosses them. Without a name, the config marked
//! `default: true` is read, else one named `default`, else the only one; several configs and no
//! name is an error listing them, never a mix. A repo without `configs` in its card but with one
//! folder per config (`en/train-*.parquet`, the Hub's parquet conversion `en/train/0000.parquet`)
//! takes the name as that top-level folder.
use serde::Deserialize;

use crate::error::{DataError, Result};

/// One config of a repo card: its name, whether it is the default, and each split's patterns.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigSpec {
    pub name: String,
    pub default: bool,
    /// (split, glob patterns), in the card's order.
    pub data_files: Vec<(String, Vec<String>)>,
}

#[derive(Deserialize)]
struct Card {
    #[serde(default)]
    configs: Option<Vec<RawConfig>>,
}

#[derive(Deserialize)]
struct RawConfig {
    config_name: String,
    #[serde(default)]
    default: bool,
    #[serde(default)]
    data_files: Option<RawFiles>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Patterns {
    One(String),
    Many(Vec<String>),
}

impl Patterns {
    fn into_vec(self) -> Vec<String> {
        match self {
            Patterns::One(p) => vec![p],
            Patterns::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
struct SplitFiles {
    split: String,
    path: Patterns,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawFiles {
    One(String),
    Splits(Vec<SplitFiles>),
    Many(Vec<String>),
    Map(std::collections::BTreeMap<String, Patterns>),
}

/// The configs a `README.md` declares (`None`: no front matter, or no `configs` in it).
///
/// # Errors
/// Front matter that is not valid YAML or whose `configs` have the wrong shape, naming `name`.
pub fn parse_card(name: &str, readme: &str) -> Result<Option<Vec<ConfigSpec>>> {
    let text = readme.trim_start_matches('\u{feff}');
    let Some(rest) = text.strip_prefix("---") else {
        return Ok(None);
    };
    let Some(end) = rest.find("\n---") else {
        return Ok(None);
    };
    let card: Card =
        serde_yaml_ng::from_str(&rest[..end]).map_err(|e| DataError::DatasetConfig {
            name: format!("{name} README.md"),
            reason: format!("front matter: {e}"),
        })?;
    let Some(configs) = card.configs else {
        return Ok(None);
    };
    Ok(Some(
        configs
            .into_iter()
            .map(|c| ConfigSpec {
                data_files: match c.data_files {
                    None => Vec::new(),
                    Some(RawFiles::One(p)) => vec![("train".into(), vec![p])],
                    Some(RawFiles::Many(v)) => vec![("train".into(), v)],
                    Some(RawFiles::Splits(v)) => v
                        .into_iter()
                        .map(|s| (s.split, s.path.into_vec()))
                        .collect(),
                    Some(RawFiles::Map(m)) => {
                        m.into_iter().map(|(k, p)| (k, p.into_vec())).collect()
                    }
                },
                name: c.config_name,
                default: c.default,
            })
            .collect(),
    ))
}

/// Whether the repo-relative `path` matches the glob `pattern` (`*`, `?` within one component,
/// `**` across components; a leading `./` is ignored).
pub fn glob_match(pattern: &str, path: &str) -> bool {
    fn go(p: &[u8], s: &[u8]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                // `**/` also matches no folder at all.
                let rest = &p[2..];
                let rest_no_slash = rest.strip_prefix(b"/").unwrap_or(rest);
                (0..=s.len()).any(|i| go(rest, &s[i..]) || go(rest_no_slash, &s[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                for i in 0..=s.len() {
                    if go(rest, &s[i..]) {
                        return true;
                    }
                    if s.get(i) == Some(&b'/') {
                        break;
                    }
                }
                false
            }
            Some(b'?') => s.first().is_some_and(|&c| c != b'/') && go(&p[1..], &s[1..]),
            Some(&c) => s.first() == Some(&c) && go(&p[1..], &s[1..]),
        }
    }
    let pattern = pattern.strip_prefix("./").unwrap_or(pattern);
    go(pattern.as_bytes(), path.as_bytes())
}

/// The config to read: `wanted` by name, else the card's default (see the module doc).
///
/// # Errors
/// An unknown name, or several configs and none named nor marked default; both list the names.
pub fn choose<'a>(
    name: &str,
    configs: &'a [ConfigSpec],
    wanted: Option<&str>,
) -> Result<&'a ConfigSpec> {
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    let err = |reason: String| DataError::DatasetConfig {
        name: name.to_string(),
        reason,
    };
    match wanted {
        Some(w) => configs.iter().find(|c| c.name == w).ok_or_else(|| {
            err(format!(
                "no config `{w}` in its README.md; configs: {names:?} ([data] config_name)"
            ))
        }),
        None => configs
            .iter()
            .find(|c| c.default)
            .or_else(|| configs.iter().find(|c| c.name == "default"))
            .or_else(|| (configs.len() == 1).then(|| &configs[0]))
            .ok_or_else(|| {
                err(format!(
                    "has several configs and none is the default: set [data] config_name to \
                     one of {names:?}"
                ))
            }),
    }
}

/// The listing's files matched by `config`'s patterns for `split` (sorted, deduplicated).
///
/// # Errors
/// A split the config does not declare, naming the ones it does.
pub fn config_files(
    name: &str,
    config: &ConfigSpec,
    split: &str,
    listing: &[String],
) -> Result<Vec<String>> {
    let Some((_, patterns)) = config.data_files.iter().find(|(s, _)| s == split) else {
        let splits: Vec<&str> = config.data_files.iter().map(|(s, _)| s.as_str()).collect();
        return Err(DataError::DatasetConfig {
            name: name.to_string(),
            reason: format!(
                "config `{}` has no split `{split}`; its splits: {splits:?}",
                config.name
            ),
        });
    };
    let mut out: Vec<String> = listing
        .iter()
        .filter(|f| patterns.iter().any(|p| glob_match(p, f)))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// The top-level folders of `listing` that hold data files: the configs of a card-less repo.
pub fn config_folders(listing: &[String]) -> Vec<String> {
    let mut out: Vec<String> = listing
        .iter()
        .filter(|f| crate::hub_dataset::is_data_file(f) && !f.starts_with('.'))
        .filter_map(|f| f.split_once('/').map(|(d, _)| d.to_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: &str = "---\nlicense: mit\nconfigs:\n- config_name: en\n  data_files:\n  - split: train\n    path: en/train-*\n  - split: test\n    path: [en/test-0.parquet, en/test-1.parquet]\n  default: true\n- config_name: de\n  data_files: de/*.parquet\n- config_name: fr\n  data_files:\n    train: fr/**/*.jsonl\n---\n# Card\n";

    #[test]
    fn the_three_data_files_shapes_parse() {
        let c = parse_card("org/x", CARD).unwrap().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].name, "en");
        assert!(c[0].default);
        assert_eq!(
            c[0].data_files,
            vec![
                ("train".into(), vec!["en/train-*".into()]),
                (
                    "test".into(),
                    vec!["en/test-0.parquet".into(), "en/test-1.parquet".into()]
                ),
            ]
        );
        assert_eq!(
            c[1].data_files,
            vec![("train".into(), vec!["de/*.parquet".into()])]
        );
        assert_eq!(
            c[2].data_files,
            vec![("train".into(), vec!["fr/**/*.jsonl".into()])]
        );
        assert_eq!(parse_card("x", "# no front matter").unwrap(), None);
        assert_eq!(parse_card("x", "---\nlicense: mit\n---\n").unwrap(), None);
        let bad = parse_card("org/x", "---\nconfigs: [1, 2\n---\n").unwrap_err();
        assert!(bad.to_string().contains("org/x README.md"), "{bad}");
    }

    #[test]
    fn globs_match_as_datasets_resolves_them() {
        assert!(glob_match("en/train-*", "en/train-00000-of-00002.parquet"));
        assert!(!glob_match("en/train-*", "en/sub/train-0.parquet"));
        assert!(!glob_match("de/*.parquet", "de/a/b.parquet"));
        assert!(glob_match("fr/**/*.jsonl", "fr/a/b/c.jsonl"));
        assert!(glob_match("fr/**/*.jsonl", "fr/c.jsonl"));
        assert!(glob_match("./data/t?st.csv", "data/test.csv"));
        assert!(!glob_match("data/t?st.csv", "data/t/st.csv"));
        assert!(glob_match("**", "a/b.parquet"));
    }

    #[test]
    fn choose_by_name_default_or_the_only_one() {
        let c = parse_card("org/x", CARD).unwrap().unwrap();
        assert_eq!(choose("org/x", &c, None).unwrap().name, "en");
        assert_eq!(choose("org/x", &c, Some("de")).unwrap().name, "de");
        let e = choose("org/x", &c, Some("es")).unwrap_err().to_string();
        assert!(e.contains("no config `es`") && e.contains("\"fr\""), "{e}");
        let none_default: Vec<ConfigSpec> = c
            .iter()
            .cloned()
            .map(|mut x| {
                x.default = false;
                x
            })
            .collect();
        let e = choose("org/x", &none_default, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("config_name") && e.contains("\"de\""), "{e}");
        assert_eq!(
            choose("org/x", &none_default[1..2], None).unwrap().name,
            "de"
        );
    }

    #[test]
    fn config_files_and_missing_splits() {
        let c = parse_card("org/x", CARD).unwrap().unwrap();
        let listing: Vec<String> = [
            "README.md",
            "en/train-00001.parquet",
            "en/train-00000.parquet",
            "en/test-0.parquet",
            "en/test-1.parquet",
            "de/all.parquet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            config_files("org/x", &c[0], "train", &listing).unwrap(),
            vec!["en/train-00000.parquet", "en/train-00001.parquet"]
        );
        assert_eq!(
            config_files("org/x", &c[0], "test", &listing)
                .unwrap()
                .len(),
            2
        );
        let e = config_files("org/x", &c[1], "test", &listing)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no split `test`") && e.contains("\"train\""),
            "{e}"
        );
        assert_eq!(config_folders(&listing), vec!["de", "en"]);
    }
}
