use std::collections::HashSet;
use std::path::Path;

use qtune_data::hate_speech::{parse_hate_speech, per_class};
use qtune_data::{balanced_split, load_hate_speech, DataError, Tweet};

use crate::common::data_dir;

#[test]
fn parses_by_header_and_decodes_html() {
    let csv = ",count,hate_speech,offensive_language,neither,class,tweet\n\
               0,3,0,0,3,2,\"!!! RT &amp; &#8220;hi&#8221; &lt;3\"\n\
               1,3,0,3,0,1,plain\n";
    let tweets = parse_hate_speech(csv.as_bytes(), Path::new("x.csv")).unwrap();
    assert_eq!(
        tweets,
        [
            Tweet {
                row: 0,
                text: "!!! RT & “hi” <3".into(),
                class: 2
            },
            Tweet {
                row: 1,
                text: "plain".into(),
                class: 1
            },
        ]
    );
}

#[test]
fn bad_csv_names_file_and_column() {
    let p = Path::new("labeled_data.csv");
    let err = parse_hate_speech(",count,class,text\n0,3,1,hi\n".as_bytes(), p).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DataError::MissingColumn { .. }));
    assert!(
        msg.contains("labeled_data.csv") && msg.contains("`tweet`"),
        "{msg}"
    );
    let err = parse_hate_speech("class,tweet\n1,a\n2\n".as_bytes(), p).unwrap_err();
    assert!(matches!(err, DataError::Csv { record: 2, .. }), "{err}");
    let err = parse_hate_speech("class,tweet\n7,a\n".as_bytes(), p).unwrap_err();
    assert!(err.to_string().contains("`class`"), "{err}");
    let err = parse_hate_speech("class,tweet\n".as_bytes(), p).unwrap_err();
    assert!(matches!(err, DataError::Empty { .. }));
}

#[test]
fn per_class_counts_split_remainders_to_low_classes() {
    assert_eq!(
        (0..3).map(|c| per_class(1000, 3, c)).collect::<Vec<_>>(),
        [334, 333, 333]
    );
    assert_eq!(
        (0..3).map(|c| per_class(200, 3, c)).collect::<Vec<_>>(),
        [67, 67, 66]
    );
}

fn synthetic(n_per_class: usize) -> Vec<Tweet> {
    (0..3 * n_per_class)
        .map(|i| Tweet {
            row: i,
            text: format!("t{i}"),
            class: i % 3,
        })
        .collect()
}

#[test]
fn balanced_split_counts_no_overlap_and_seeded() {
    let tweets = synthetic(500);
    let s = balanced_split(&tweets, 1000, 200, 3).unwrap();
    let count = |v: &[Tweet], c: usize| v.iter().filter(|t| t.class == c).count();
    assert_eq!(
        [count(&s.train, 0), count(&s.train, 1), count(&s.train, 2)],
        [334, 333, 333]
    );
    assert_eq!(
        [
            count(&s.validation, 0),
            count(&s.validation, 1),
            count(&s.validation, 2)
        ],
        [67, 67, 66]
    );
    let train_rows: HashSet<_> = s.train.iter().map(|t| t.row).collect();
    assert_eq!(train_rows.len(), 1000);
    assert!(s.validation.iter().all(|t| !train_rows.contains(&t.row)));
    let again = balanced_split(&tweets, 1000, 200, 3).unwrap();
    assert_eq!(again.train, s.train);
    assert_eq!(again.validation, s.validation);
    assert_ne!(
        balanced_split(&tweets, 1000, 200, 4).unwrap().train,
        s.train
    );
    let err = balanced_split(&synthetic(100), 1000, 200, 3).unwrap_err();
    assert!(err.to_string().contains("hate speech"), "{err}");
}

#[test]
fn real_file_counts_and_balanced_sample() {
    let Some(data) = data_dir("real_file_counts_and_balanced_sample") else {
        return;
    };
    let tweets = load_hate_speech(&data.join("hate-speech-davidson2017/labeled_data.csv")).unwrap();
    assert_eq!(tweets.len(), 24_783);
    let count = |c: usize| tweets.iter().filter(|t| t.class == c).count();
    assert_eq!([count(0), count(1), count(2)], [1_430, 19_190, 4_163]);
    // Decoding removed every single-encoded entity of the common kinds.
    assert!(tweets
        .iter()
        .all(|t| !t.text.contains("&#8220;") && !t.text.contains("&lt;")));
    let s = balanced_split(&tweets, 1000, 200, 0).unwrap();
    let by_class = |v: &[Tweet]| {
        (0..3)
            .map(|c| v.iter().filter(|t| t.class == c).count())
            .collect::<Vec<_>>()
    };
    assert_eq!(by_class(&s.train), [334, 333, 333]);
    assert_eq!(by_class(&s.validation), [67, 67, 66]);
    let rows: HashSet<_> = s.train.iter().map(|t| t.row).collect();
    assert_eq!(rows.len(), 1000);
    assert!(s.validation.iter().all(|t| !rows.contains(&t.row)));
}

/// Our decoding equals Python's `html.unescape` on every tweet. The digest was computed with
/// `python3 -c "import csv,html,hashlib; rows=list(csv.DictReader(open('labeled_data.csv',
/// encoding='utf-8', newline=''))); print(hashlib.sha256('\n'.join(html.unescape(r['tweet'])
/// for r in rows).encode()).hexdigest())"` (Python 3.11.7) on the manifest's file.
#[test]
fn real_file_decoding_equals_python_html_unescape() {
    let Some(data) = data_dir("real_file_decoding_equals_python_html_unescape") else {
        return;
    };
    let tweets = load_hate_speech(&data.join("hate-speech-davidson2017/labeled_data.csv")).unwrap();
    let joined = tweets
        .iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("decoded.txt");
    std::fs::write(&file, &joined).unwrap();
    assert_eq!(joined.len(), 2_064_120, "UTF-8 bytes");
    assert_eq!(
        qtune_data::source::sha256_file(&file).unwrap(),
        "34fab8b678caec7ada86fdc7b301a6367b618d8259de7161f322d78959c94b5c"
    );
}
