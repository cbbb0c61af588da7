use std::collections::HashSet;
use std::path::Path;

use qtune_data::squad::{locate_answer, parse_squad};
use qtune_data::{load_squad, split_by_article, DataError};

use crate::common::data_dir;

#[test]
fn answer_start_is_a_character_offset() {
    let ctx = "Zürich’s lake: Zürichsee";
    // Python: ctx.index("Zürichsee") == 15 (characters), 18 in UTF-8 bytes.
    assert_eq!(locate_answer(ctx, "Zürichsee", Some(15)), Some((18, 28)));
    // A wrong offset falls back to the first occurrence.
    assert_eq!(locate_answer(ctx, "Zürich", Some(3)), Some((0, 7)));
    assert_eq!(locate_answer(ctx, "Geneva", Some(0)), None);
}

#[test]
fn malformed_or_incomplete_json_names_file_and_field() {
    let p = Path::new("broken.json");
    let err = parse_squad("{\"data\": [", p).unwrap_err();
    assert!(matches!(err, DataError::Json { .. }) && err.to_string().contains("broken.json"));
    let no_question = r#"{"data":[{"title":"T","paragraphs":[{"context":"c","qas":[{"id":"x","answers":[]}]}]}]}"#;
    let err = parse_squad(no_question, p).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("`question`") && msg.contains("data[0].paragraphs[0].qas[0]"),
        "{msg}"
    );
    let empty = r#"{"data":[{"title":"T","paragraphs":[]}]}"#;
    assert!(matches!(
        parse_squad(empty, p).unwrap_err(),
        DataError::Empty { .. }
    ));
    let inconsistent = r#"{"data":[{"title":"T","paragraphs":[{"context":"c","qas":[{"id":"x","question":"q","answers":[],"is_impossible":false}]}]}]}"#;
    let msg = parse_squad(inconsistent, p).unwrap_err().to_string();
    assert!(msg.contains("is_impossible"), "{msg}");
}

#[test]
fn dev_set_loads_with_official_counts() {
    let Some(data) = data_dir("dev_set_loads_with_official_counts") else {
        return;
    };
    let articles = load_squad(&data.join("squad-v2/dev-v2.0.json")).unwrap();
    let all: Vec<_> = articles.iter().flat_map(|a| &a.examples).collect();
    assert_eq!(articles.len(), 35);
    assert_eq!(all.len(), 11_873);
    assert_eq!(all.iter().filter(|e| e.is_impossible).count(), 5_945);
    assert_eq!(all.iter().map(|e| e.answers.len()).sum::<usize>(), 20_302);
    let located = all.iter().filter(|e| e.answer_span.is_some()).count();
    assert_eq!(
        located,
        11_873 - 5_945,
        "every first gold answer is found in its context"
    );
    for e in all.iter().filter(|e| !e.is_impossible) {
        let (s, t) = e.answer_span.unwrap();
        assert_eq!(&e.context[s..t], e.first_answer().unwrap());
    }
}

#[test]
fn split_by_article_is_disjoint_and_reproducible() {
    let Some(data) = data_dir("split_by_article_is_disjoint_and_reproducible") else {
        return;
    };
    let articles = load_squad(&data.join("squad-v2/dev-v2.0.json")).unwrap();
    let split = split_by_article(&articles, 5, 42).unwrap();
    let train_titles: HashSet<_> = split.train_titles.iter().collect();
    let val_titles: HashSet<_> = split.validation_titles.iter().collect();
    assert_eq!(train_titles.len(), 30);
    assert_eq!(val_titles.len(), 5);
    assert!(train_titles.is_disjoint(&val_titles));
    assert!(split.train.iter().all(|e| train_titles.contains(&e.title)));
    assert!(split
        .validation
        .iter()
        .all(|e| val_titles.contains(&e.title)));
    let contexts: HashSet<_> = split.train.iter().map(|e| &e.context).collect();
    assert!(split
        .validation
        .iter()
        .all(|e| !contexts.contains(&e.context)));
    assert_eq!(split.train.len() + split.validation.len(), 11_873);
    let again = split_by_article(&articles, 5, 42).unwrap();
    assert_eq!(again.validation_titles, split.validation_titles);
    assert_eq!(again.train.len(), split.train.len());
    let other = split_by_article(&articles, 5, 99).unwrap();
    assert_ne!(other.validation_titles, split.validation_titles);
    eprintln!(
        "seed 42, 5 validation articles: train {} questions ({} impossible), validation {} ({} impossible): {:?}",
        split.train.len(),
        split.train.iter().filter(|e| e.is_impossible).count(),
        split.validation.len(),
        split.validation.iter().filter(|e| e.is_impossible).count(),
        split.validation_titles
    );
    assert!(split_by_article(&articles, 35, 0).is_err());
    assert!(split_by_article(&articles, 0, 0).is_err());
}

/// On a file with original offsets (cs224n's half of the dev set), every first answer is placed at
/// its `answer_start` character offset, not found by the text-search fallback.
#[test]
fn answer_spans_follow_original_character_offsets() {
    let Some(data) = data_dir("answer_spans_follow_original_character_offsets") else {
        return;
    };
    let path = data.join("squad-v2/cs224n-dev-v2.0.json");
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut starts = std::collections::HashMap::new();
    for a in raw["data"].as_array().unwrap() {
        for p in a["paragraphs"].as_array().unwrap() {
            for q in p["qas"].as_array().unwrap() {
                if let Some(first) = q["answers"].as_array().unwrap().first() {
                    starts.insert(
                        q["id"].as_str().unwrap().to_string(),
                        first["answer_start"].as_u64().unwrap(),
                    );
                }
            }
        }
    }
    let articles = load_squad(&path).unwrap();
    let mut non_ascii = 0;
    for e in articles
        .iter()
        .flat_map(|a| &a.examples)
        .filter(|e| !e.is_impossible)
    {
        let (s, _) = e.answer_span.unwrap();
        assert_eq!(
            e.context[..s].chars().count() as u64,
            starts[&e.id],
            "question {}",
            e.id
        );
        non_ascii += usize::from(!e.context[..s].is_ascii());
    }
    assert_eq!(starts.len(), 6_078 - 3_168);
    eprintln!(
        "{} answers placed by offset, {non_ascii} after non-ASCII text",
        starts.len()
    );
    assert!(non_ascii > 0);
}
