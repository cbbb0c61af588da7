//! Token ids identical to HF's GPT-J tokenizer (needs $QTUNE_DATA_DIR for the texts and BPE).

use std::path::PathBuf;

use qtune_gptj::tokenizer;

/// `$QTUNE_DATA_DIR` (absolute or relative to the repository root) with the files the test reads; else
/// the skip is reported as qtune-data's `report_skip` does (this crate does not depend on it):
/// `SKIPPED …` on the real stderr, and under `CI=true` with the mirror present, a failure.
fn data_dir(test: &str) -> Option<PathBuf> {
    let skip = |why: String, mirror: bool| {
        use std::io::Write;
        let ci = std::env::var("CI").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
        assert!(
            !(ci && mirror),
            "{test} would be skipped ({why}), but CI=true and the data mirror is present: \
             under CI no data test may skip"
        );
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
        None
    };
    let Some(dir) = std::env::var_os("QTUNE_DATA_DIR").filter(|v| !v.is_empty()) else {
        return skip(
            "QTUNE_DATA_DIR is not set (the shared data mirror)".into(),
            false,
        );
    };
    let dir = PathBuf::from(dir);
    let dir = if dir.is_relative() {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(dir)
    } else {
        dir
    };
    if !dir.is_dir() {
        return skip(
            format!("QTUNE_DATA_DIR={} is not a directory", dir.display()),
            false,
        );
    }
    for rel in [
        "gpt2-tokenizer/encoder.json",
        "gpt2-tokenizer/vocab.bpe",
        "squad-v2/dev-v2.0.json",
        "wikitext-2/wiki.test.raw",
    ] {
        let file = dir.join(rel);
        if !file.is_file() {
            return skip(
                format!("{} is missing from the data mirror", file.display()),
                true,
            );
        }
    }
    Some(dir)
}

#[test]
fn ids_match_hf_gptj_tokenizer() {
    let Some(data) = data_dir("ids_match_hf_gptj_tokenizer") else {
        return;
    };
    let tok = tokenizer::from_gpt2_files(
        &data.join("gpt2-tokenizer/encoder.json"),
        &data.join("gpt2-tokenizer/vocab.bpe"),
    )
    .unwrap();
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer/ids.json");
    let ids: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let squad: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data.join("squad-v2/dev-v2.0.json")).unwrap(),
    )
    .unwrap();
    let raw = std::fs::read(data.join("wikitext-2/wiki.test.raw")).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    // The texts in make.py's order: 3 articles × 2 paragraphs × (context, first question),
    // then 20,000 code points of wikitext, then a literal.
    let mut texts: Vec<String> = Vec::new();
    for a in squad["data"].as_array().unwrap().iter().take(3) {
        for p in a["paragraphs"].as_array().unwrap().iter().take(2) {
            texts.push(p["context"].as_str().unwrap().to_string());
            texts.push(p["qas"][0]["question"].as_str().unwrap().to_string());
        }
    }
    texts.push(raw.chars().take(20000).collect());
    let mut checked = 0;
    let mut total_ids = 0;
    for (k, case) in ids["cases"].as_array().unwrap().iter().enumerate() {
        let text = match case["source"].as_str().unwrap() {
            "literal" => case["text"].as_str().unwrap().to_string(),
            _ => texts[k].clone(),
        };
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tokenizer::encode(&tok, &text).unwrap(),
            want,
            "case {case:?}"
        );
        checked += 1;
        total_ids += want.len();
    }
    println!("tokenizer: {checked} cases, {total_ids} ids identical to HF");
    assert_eq!(checked, ids["cases"].as_array().unwrap().len());
}
