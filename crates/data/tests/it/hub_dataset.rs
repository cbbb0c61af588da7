//! `[data] path` as a Hub dataset id or a local folder: the split's files from a repo listing
//! (the layouts the Hub uses), a fake offline HF cache, local paths winning, and the errors
//! (no network: the online path is the same listing → [`split_files`] → download).

use std::path::Path;

use qtune_data::{
    load_split_records, resolve_data_files, split_files, DataError, DatasetFormat, FieldNames,
    HubOptions, RecordContent,
};

fn list(files: &[&str]) -> Vec<String> {
    files.iter().map(|s| s.to_string()).collect()
}

/// The layouts of real repos: HF's parquet conversion (`data/{split}-*`, `{config}/{split}/*`),
/// files named by split, and keyword synonyms (`dev` → validation, `eval` → test).
#[test]
fn split_files_follow_the_hub_layouts() {
    let parquet = list(&[
        ".gitattributes",
        "README.md",
        "data/train-00000-of-00002.parquet",
        "data/train-00001-of-00002.parquet",
        "data/validation-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
    ]);
    assert_eq!(
        split_files(&parquet, "train"),
        list(&[
            "data/train-00000-of-00002.parquet",
            "data/train-00001-of-00002.parquet"
        ])
    );
    assert_eq!(
        split_files(&parquet, "validation"),
        list(&["data/validation-00000-of-00001.parquet"])
    );
    let converted = list(&["default/train/0000.parquet", "default/test/0000.parquet"]);
    assert_eq!(
        split_files(&converted, "test"),
        list(&["default/test/0000.parquet"])
    );
    let named = list(&["train.jsonl", "dev.jsonl", "my_eval.csv", "interval.jsonl"]);
    assert_eq!(split_files(&named, "validation"), list(&["dev.jsonl"]));
    assert_eq!(split_files(&named, "test"), list(&["my_eval.csv"]));
    assert_eq!(split_files(&named, "train"), list(&["train.jsonl"]));
    // Parquet conversion beside the original JSONL: parquet is read.
    let both = list(&["train.jsonl", "data/train-00000-of-00001.parquet"]);
    assert_eq!(
        split_files(&both, "train"),
        list(&["data/train-00000-of-00001.parquet"])
    );
    // No split named anywhere: everything is `train`, and nothing else.
    let plain = list(&["alpaca_data.json", "README.md"]);
    assert_eq!(split_files(&plain, "train"), list(&["alpaca_data.json"]));
    assert!(split_files(&plain, "test").is_empty());
    // Another split name matches only itself.
    let custom = list(&["data/train_sft-0.parquet", "data/test_sft-0.parquet"]);
    assert_eq!(
        split_files(&custom, "train_sft"),
        list(&["data/train_sft-0.parquet"])
    );
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const ROW: &str = "{\"prompt\": \"p\", \"completion\": \"c\"}\n";

/// A fake HF cache laid out as hf-hub writes it: `refs/main` → commit → `snapshots/{commit}`.
fn fake_cache(root: &Path) -> HubOptions {
    let repo = root.join("datasets--org--name");
    write(&repo.join("refs/main"), "abc123");
    let snap = repo.join("snapshots/abc123");
    write(&snap.join("data/train-00000-of-00002.jsonl"), ROW);
    write(
        &snap.join("data/train-00001-of-00002.jsonl"),
        &ROW.repeat(2),
    );
    write(&snap.join("data/test-00000-of-00001.jsonl"), ROW);
    write(&repo.join("snapshots/def456/data/train.jsonl"), ROW);
    HubOptions {
        cache: root.to_path_buf(),
        offline: true,
        endpoint: qtune_hub::DEFAULT_ENDPOINT.into(),
    }
}

#[test]
fn offline_reads_the_cached_snapshot_of_the_revision() {
    let dir = tempfile::tempdir().unwrap();
    let hub = fake_cache(dir.path());
    let got = resolve_data_files("org/name", "train", None, None, &hub).unwrap();
    assert_eq!(got.files.len(), 2);
    assert!(got.name.contains("org/name") && got.name.contains("train"));
    let recs = load_split_records(&got, DatasetFormat::Completion, &FieldNames::default()).unwrap();
    assert_eq!(recs.len(), 3);
    // Several files: a record names its file.
    assert_eq!(recs[2].location, "train-00001-of-00002.jsonl line 2");
    assert!(matches!(recs[0].content, RecordContent::Completion { .. }));
    let test = resolve_data_files("org/name", "test", None, None, &hub).unwrap();
    assert_eq!(test.files.len(), 1);
    // A commit as the revision: its snapshot.
    let pinned = resolve_data_files("org/name", "train", Some("def456"), None, &hub).unwrap();
    assert!(pinned.files[0].ends_with("snapshots/def456/data/train.jsonl"));
}

#[test]
fn offline_without_a_cached_copy_names_the_id_and_never_substitutes() {
    let dir = tempfile::tempdir().unwrap();
    let hub = fake_cache(dir.path());
    for (id, split, rev) in [
        ("org/other", "train", None),
        ("org/name", "train", Some("v2")),
    ] {
        let e = resolve_data_files(id, split, rev, None, &hub).unwrap_err();
        assert!(matches!(e, DataError::HubDataset { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(id) && msg.contains("HF_HUB_OFFLINE"), "{msg}");
        assert!(msg.contains(rev.unwrap_or("main")), "{msg}");
    }
    // The repo is cached but has no such split: the error lists what it has.
    let e = resolve_data_files("org/name", "validation", None, None, &hub)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("org/name") && e.contains("validation") && e.contains("train-00000"),
        "{e}"
    );
}

#[test]
fn a_local_path_that_exists_wins() {
    let dir = tempfile::tempdir().unwrap();
    let hub = fake_cache(&dir.path().join("cache"));
    // A folder named like the id, in the working directory's place: the folder is read.
    let local = dir.path().join("org/name");
    write(&local.join("train.jsonl"), &ROW.repeat(5));
    write(&local.join("test.jsonl"), ROW);
    let p = local.to_str().unwrap();
    let got = resolve_data_files(p, "train", None, None, &hub).unwrap();
    assert_eq!(got.files, vec![local.join("train.jsonl")]);
    // Files of one split in several folders (one per `datasets` config) are never mixed.
    let configs = dir.path().join("configs");
    write(&configs.join("en/train-0.jsonl"), ROW);
    write(&configs.join("de/train-0.jsonl"), ROW);
    let e = resolve_data_files(configs.to_str().unwrap(), "train", None, None, &hub)
        .unwrap_err()
        .to_string();
    assert!(e.contains("several folders") && e.contains("\"de\""), "{e}");
    // A file is read as is, whatever the split.
    let f = local.join("test.jsonl");
    let got = resolve_data_files(f.to_str().unwrap(), "train", None, None, &hub).unwrap();
    assert_eq!(got.files, vec![f]);
    // A missing path that is no Hub id: the plain not-found error, no Hub lookup.
    let missing = dir.path().join("nope.jsonl");
    let e = resolve_data_files(missing.to_str().unwrap(), "train", None, None, &hub)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.jsonl"), "{e}");
}

#[test]
fn config_name_picks_a_folder_when_the_card_declares_no_configs() {
    let dir = tempfile::tempdir().unwrap();
    let hub = fake_cache(&dir.path().join("cache"));
    let repo = dir.path().join("repo");
    // The Hub's parquet-conversion layout: {config}/{split}/NNNN.jsonl here.
    write(&repo.join("en/train/0000.jsonl"), &ROW.repeat(3));
    write(&repo.join("en/test/0000.jsonl"), ROW);
    write(&repo.join("de/train/0000.jsonl"), ROW);
    write(&repo.join("README.md"), "# no front matter\n");
    let p = repo.to_str().unwrap();
    let got = resolve_data_files(p, "train", None, Some("en"), &hub).unwrap();
    assert_eq!(got.files, vec![repo.join("en/train/0000.jsonl")]);
    let got = resolve_data_files(p, "test", None, Some("en"), &hub).unwrap();
    assert_eq!(got.files, vec![repo.join("en/test/0000.jsonl")]);
    // An unknown config names the folders there are; no config at all is never a mix.
    let e = resolve_data_files(p, "train", None, Some("fr"), &hub)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no config `fr`") && e.contains("[\"de\", \"en\"]"),
        "{e}"
    );
    let e = resolve_data_files(p, "train", None, None, &hub)
        .unwrap_err()
        .to_string();
    assert!(e.contains("config_name"), "{e}");
    // A config without the split: the usual no-split error, inside that folder.
    let e = resolve_data_files(p, "test", None, Some("de"), &hub)
        .unwrap_err()
        .to_string();
    assert!(e.contains("split `test`"), "{e}");
}

#[test]
fn the_cards_configs_choose_the_files_as_datasets_does() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cache");
    let hub = fake_cache(&root);
    let snap = root.join("datasets--org--name/snapshots/abc123");
    // Patterns that the file-name rules alone would get wrong: `sft/` files for config `chat`,
    // and `raw/` for the default config, whose train split is a list of patterns.
    write(&snap.join("sft/part-a.jsonl"), &ROW.repeat(4));
    write(&snap.join("raw/x.jsonl"), &ROW.repeat(2));
    write(&snap.join("raw/y.jsonl"), ROW);
    write(
        &snap.join("README.md"),
        "---\nconfigs:\n- config_name: plain\n  default: true\n  data_files:\n  - split: train\n    path: [raw/x.jsonl, raw/y.jsonl]\n  - split: test\n    path: data/test-*\n- config_name: chat\n  data_files: sft/*.jsonl\n---\nA card.\n",
    );
    let got = resolve_data_files("org/name", "train", None, None, &hub).unwrap();
    assert_eq!(
        got.files,
        vec![snap.join("raw/x.jsonl"), snap.join("raw/y.jsonl")]
    );
    let got = resolve_data_files("org/name", "test", None, None, &hub).unwrap();
    assert_eq!(got.files, vec![snap.join("data/test-00000-of-00001.jsonl")]);
    let got = resolve_data_files("org/name", "train", None, Some("chat"), &hub).unwrap();
    assert_eq!(got.files, vec![snap.join("sft/part-a.jsonl")]);
    let recs = load_split_records(&got, DatasetFormat::Completion, &FieldNames::default()).unwrap();
    assert_eq!(recs.len(), 4);
    for (config, split, want) in [
        (Some("chat"), "test", "no split `test`"),
        (Some("nope"), "train", "no config `nope`"),
    ] {
        let e = resolve_data_files("org/name", split, None, config, &hub)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("org/name"), "{e}");
    }
}
