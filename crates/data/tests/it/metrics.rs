//! Metrics against the official SQuAD v2 script (tests/fixtures/squad_eval, see its README) and
//! classification metrics against hand-counted cases.

use std::collections::HashMap;
use std::path::Path;

use qtune_data::metrics::squad::{compute_f1, normalize_answer, question_scores};
use qtune_data::{
    answer_from_generation, classification_eval, label_from_generation, load_squad,
    squad::parse_squad, squad_v2_eval, SquadExample, HATE_SPEECH_LABELS,
};
use serde_json::Value;

use crate::common::{data_dir, fixtures};

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn gold_of(examples: &[&SquadExample]) -> Vec<(String, Vec<String>)> {
    examples
        .iter()
        .map(|e| (e.id.clone(), e.answers.clone()))
        .collect()
}

/// Our scores equal the script's: every question's (exact, f1) and every aggregate, to 1e-9.
fn assert_matches_official(
    gold: &[(String, Vec<String>)],
    preds: &HashMap<String, String>,
    expected: &Value,
) {
    let per_q = expected["per_question"].as_object().unwrap();
    assert_eq!(per_q.len(), gold.len());
    for (id, answers) in gold {
        let (exact, f1) = question_scores(answers, &preds[id]);
        let want = &per_q[id];
        assert_eq!(
            exact,
            want[0].as_f64().unwrap(),
            "exact of {id}: pred {:?}",
            preds[id]
        );
        assert!((f1 - want[1].as_f64().unwrap()).abs() < 1e-12, "f1 of {id}");
    }
    let ours = serde_json::to_value(squad_v2_eval(gold, preds).unwrap()).unwrap();
    for key in [
        "exact",
        "f1",
        "total",
        "HasAns_exact",
        "HasAns_f1",
        "HasAns_total",
        "NoAns_exact",
        "NoAns_f1",
        "NoAns_total",
    ] {
        let (a, b) = (ours[key].as_f64().unwrap(), expected[key].as_f64().unwrap());
        assert!((a - b).abs() < 1e-9, "{key}: ours {a}, official {b}");
    }
}

#[test]
fn squad_metrics_match_official_script_on_synthetic_fixture() {
    let dir = fixtures().join("squad_eval");
    let text = std::fs::read_to_string(dir.join("synthetic.json")).unwrap();
    let articles = parse_squad(&text, &dir.join("synthetic.json")).unwrap();
    let examples: Vec<&SquadExample> = articles.iter().flat_map(|a| &a.examples).collect();
    let preds: HashMap<String, String> =
        serde_json::from_value(read_json(&dir.join("synthetic_pred.json"))).unwrap();
    assert_matches_official(
        &gold_of(&examples),
        &preds,
        &read_json(&dir.join("synthetic_expected.json")),
    );
}

#[test]
fn squad_metrics_match_official_script_on_dev_subset() {
    let Some(data) = data_dir("squad_metrics_match_official_script_on_dev_subset") else {
        return;
    };
    let dir = fixtures().join("squad_eval");
    let expected = read_json(&dir.join("dev_expected.json"));
    let n_articles = expected["_subset"]["first_articles"].as_u64().unwrap() as usize;
    let articles = load_squad(&data.join("squad-v2/dev-v2.0.json")).unwrap();
    let examples: Vec<&SquadExample> = articles[..n_articles]
        .iter()
        .flat_map(|a| &a.examples)
        .collect();
    let preds: HashMap<String, String> =
        serde_json::from_value(read_json(&dir.join("dev_pred.json"))).unwrap();
    assert_matches_official(&gold_of(&examples), &preds, &expected);
}

#[test]
fn no_answer_phrase_scores_as_the_empty_prediction() {
    let impossible: Vec<String> = vec![];
    let answerable = vec!["Paris".to_string()];
    assert_eq!(
        question_scores(&impossible, "answers not in context"),
        (1.0, 1.0)
    );
    assert_eq!(
        question_scores(&impossible, " Answers not in context."),
        (1.0, 1.0)
    );
    assert_eq!(question_scores(&impossible, ""), (1.0, 1.0));
    assert_eq!(
        question_scores(&answerable, "answers not in context"),
        (0.0, 0.0)
    );
    // Python's str.split also splits on U+001C..U+001F.
    assert_eq!(normalize_answer("a\u{1f}b"), "b");
}

#[test]
fn missing_prediction_is_an_error() {
    let gold = vec![("q1".to_string(), vec!["x".to_string()])];
    let err = squad_v2_eval(&gold, &HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("q1"), "{err}");
    assert!(squad_v2_eval(&[], &HashMap::new()).is_err());
}

#[test]
fn normalization_follows_the_official_rules() {
    assert_eq!(normalize_answer("The  Quick, brown-fox!"), "quick brownfox");
    assert_eq!(normalize_answer("an apple a day"), "apple day");
    assert_eq!(normalize_answer("Theater"), "theater");
    assert_eq!(normalize_answer("“The” end"), "“ ” end");
    // "a" is an article: gold "b c" vs "b c d" → P 2/3, R 1.
    assert_eq!(compute_f1("a b c", "b c d"), 0.8);
    assert_eq!(compute_f1("x y z", "y z w"), 2.0 / 3.0);
}

#[test]
fn generated_answers_are_cut_and_no_answer_maps_to_empty() {
    assert_eq!(answer_from_generation(" Paris\nquestion: x"), "Paris");
    assert_eq!(answer_from_generation(" Paris<|endoftext|>junk"), "Paris");
    assert_eq!(answer_from_generation(" answers not in context"), "");
    assert_eq!(answer_from_generation(" Answers not in context.\n"), "");
    assert_eq!(answer_from_generation(""), "");
    assert_eq!(
        answer_from_generation(" answers not in context either"),
        "answers not in context either"
    );
}

#[test]
fn labels_match_by_normalized_prefix() {
    let l = &HATE_SPEECH_LABELS;
    assert_eq!(
        label_from_generation(" Hate  Speech<|endoftext|>", l),
        Some(0)
    );
    assert_eq!(
        label_from_generation(" offensive language\nmore", l),
        Some(1)
    );
    assert_eq!(label_from_generation("neither.", l), Some(2));
    assert_eq!(label_from_generation("neitherx", l), None);
    assert_eq!(label_from_generation(" offensive", l), None);
    assert_eq!(label_from_generation("", l), None);
}

#[test]
fn classification_metrics_on_a_hand_counted_case() {
    // gold:      0 0 0 1 1 2 2 2
    // predicted: 0 1 - 1 1 2 0 2   ("-" = unknown)
    // class 0: tp 1, predicted 2, support 3 → P 1/2, R 1/3, F1 2/5
    // class 1: tp 2, predicted 3, support 2 → P 2/3, R 1,   F1 4/5
    // class 2: tp 2, predicted 2, support 3 → P 1,   R 2/3, F1 4/5
    let gold = [0, 0, 0, 1, 1, 2, 2, 2];
    let pred = [
        Some(0),
        Some(1),
        None,
        Some(1),
        Some(1),
        Some(2),
        Some(0),
        Some(2),
    ];
    let r = classification_eval(&gold, &pred, &HATE_SPEECH_LABELS).unwrap();
    assert_eq!(
        r.confusion,
        vec![vec![1, 1, 0, 1], vec![0, 2, 0, 0], vec![1, 0, 2, 0]]
    );
    assert_eq!((r.unknown, r.total), (1, 8));
    assert!((r.accuracy - 5.0 / 8.0).abs() < 1e-12);
    let f1: Vec<f64> = r.per_class.iter().map(|c| c.f1).collect();
    for (got, want) in f1.iter().zip([0.4, 0.8, 0.8]) {
        assert!((got - want).abs() < 1e-12, "{f1:?}");
    }
    assert!((r.macro_f1 - 2.0 / 3.0).abs() < 1e-12);
    assert!((r.per_class[0].precision - 0.5).abs() < 1e-12);
    assert_eq!(r.per_class[2].support, 3);
    assert!(classification_eval(&[0], &[], &HATE_SPEECH_LABELS).is_err());
    assert!(classification_eval(&[3], &[Some(0)], &HATE_SPEECH_LABELS).is_err());
}
