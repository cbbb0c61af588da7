//! Davidson et al. 2017 hate speech CSV (`,count,hate_speech,offensive_language,neither,class,
//! tweet`): classes 0/1/2 = hate speech / offensive language / neither, tweets with HTML entities
//! decoded, and a class-balanced train/validation sample.
//!
//! Balanced sample: `n` examples over 3 classes give `n / 3` per class and the `n % 3` leftovers
//! go one each to the lowest class ids, so 1,000 train = 334 hate + 333 offensive + 333 neither and
//! 200 validation = 67 + 67 + 66. Each class's rows are shuffled once with the seed; train takes
//! the first rows of that order and validation the next ones, so the two never share a row.

use std::path::Path;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{csv_header, DataError, Result};
use crate::prompt::HATE_SPEECH_LABELS;

/// One labeled tweet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tweet {
    /// 0-based data row in the CSV (header excluded), to trace a sample back to the file.
    pub row: usize,
    /// HTML entities decoded (`&amp;` → `&`, `&#8220;` → `“`).
    pub text: String,
    /// 0 hate speech, 1 offensive language, 2 neither.
    pub class: usize,
}

/// Reads the CSV, finding `class` and `tweet` by header name.
pub fn load_hate_speech(path: &Path) -> Result<Vec<Tweet>> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    parse_hate_speech(file, path)
}

/// Parses the CSV from any reader; `path` only names the source in errors.
pub fn parse_hate_speech(reader: impl std::io::Read, path: &Path) -> Result<Vec<Tweet>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let header = csv_header(&mut rdr, path)?;
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::MissingColumn {
                path: path.to_path_buf(),
                column: name.to_string(),
                header: header.clone(),
            })
    };
    let class_col = column("class")?;
    let tweet_col = column("tweet")?;
    let mut out = Vec::new();
    for (row, rec) in rdr.records().enumerate() {
        let rec = rec.map_err(DataError::csv(path, row as u64 + 1))?;
        let field = |col: usize, name: &str| {
            rec.get(col).ok_or_else(|| DataError::MissingField {
                path: path.to_path_buf(),
                field: name.to_string(),
                location: format!("data row {row}"),
            })
        };
        let class_text = field(class_col, "class")?;
        let class = class_text
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|c| *c < HATE_SPEECH_LABELS.len())
            .ok_or_else(|| DataError::InvalidValue {
                path: path.to_path_buf(),
                field: "class".into(),
                location: format!("data row {row}"),
                value: class_text.to_string(),
                reason: "expected 0, 1 or 2".into(),
            })?;
        let text = html_escape::decode_html_entities(field(tweet_col, "tweet")?).into_owned();
        out.push(Tweet { row, text, class });
    }
    if out.is_empty() {
        return Err(DataError::Empty {
            what: path.display().to_string(),
        });
    }
    Ok(out)
}

/// How many of `n` examples class `class` (of `n_classes`) gets.
pub fn per_class(n: usize, n_classes: usize, class: usize) -> usize {
    n / n_classes + usize::from(class < n % n_classes)
}

/// A balanced train/validation sample.
#[derive(Debug, Clone)]
pub struct HateSpeechSplit {
    pub train: Vec<Tweet>,
    pub validation: Vec<Tweet>,
}

/// Samples `n_train` and `n_validation` tweets, balanced over the 3 classes as the module doc
/// says, without overlap; each side is then shuffled with the seed so classes are interleaved.
pub fn balanced_split(
    tweets: &[Tweet],
    n_train: usize,
    n_validation: usize,
    seed: u64,
) -> Result<HateSpeechSplit> {
    let n_classes = HATE_SPEECH_LABELS.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut train = Vec::with_capacity(n_train);
    let mut validation = Vec::with_capacity(n_validation);
    for (class, label) in HATE_SPEECH_LABELS.iter().enumerate() {
        let mut rows: Vec<&Tweet> = tweets.iter().filter(|t| t.class == class).collect();
        let (nt, nv) = (
            per_class(n_train, n_classes, class),
            per_class(n_validation, n_classes, class),
        );
        if rows.len() < nt + nv {
            return Err(DataError::NotEnough {
                what: "hate speech balanced sample".into(),
                class: (*label).to_string(),
                needed: nt + nv,
                available: rows.len(),
            });
        }
        rows.shuffle(&mut rng);
        train.extend(rows[..nt].iter().map(|t| (*t).clone()));
        validation.extend(rows[nt..nt + nv].iter().map(|t| (*t).clone()));
    }
    train.shuffle(&mut rng);
    validation.shuffle(&mut rng);
    Ok(HateSpeechSplit { train, validation })
}
