//! The Hub parquet readers against the JSON/raw readers on the same rows
//! (tests/fixtures/hub_parquet, made by its make.py with pyarrow, snappy like HF's files).

use std::path::PathBuf;

use qtune_data::parquet_hub::{load_squad_parquet, wikitext_parquet_rows};
use qtune_data::{load_squad, load_wikitext_raw};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hub_parquet")
        .join(name)
}

/// SQuAD parquet rows (20 questions, 8 impossible, 2 articles) give exactly the JSON path's
/// articles; `load_squad` dispatches on the extension.
#[test]
fn squad_parquet_equals_json() {
    let json = load_squad(&fixture("squad_v2_sample.json")).unwrap();
    let pq = load_squad_parquet(&fixture("squad_v2_sample.parquet")).unwrap();
    let n: usize = pq.iter().map(|a| a.examples.len()).sum();
    let impossible = pq
        .iter()
        .flat_map(|a| &a.examples)
        .filter(|e| e.is_impossible)
        .count();
    assert_eq!((pq.len(), n, impossible), (2, 20, 8));
    assert_eq!(pq, json);
    assert_eq!(
        load_squad(&fixture("squad_v2_sample.parquet")).unwrap(),
        json
    );
}

/// WikiText parquet keeps HF's empty rows and joins them with "\n\n" (HF's string); dropping the
/// empty rows gives back the local-file text.
#[test]
fn wikitext_parquet_is_hf_join_and_matches_local_without_empty_rows() {
    let rows = wikitext_parquet_rows(&fixture("wikitext_sample.parquet")).unwrap();
    assert_eq!(rows.len(), 24);
    assert_eq!(rows.iter().filter(|r| r.is_empty()).count(), 12);
    let hub = load_wikitext_raw(&fixture("wikitext_sample.parquet")).unwrap();
    assert_eq!(hub, rows.join("\n\n"));
    let non_empty: Vec<&str> = rows
        .iter()
        .filter(|r| !r.is_empty())
        .map(String::as_str)
        .collect();
    let local = load_wikitext_raw(&fixture("wikitext_sample.raw")).unwrap();
    assert_eq!(local, non_empty.join("\n\n"));
    assert!(hub.len() > local.len());
}
