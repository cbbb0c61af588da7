//! WikiText-2 raw test text for perplexity.
//!
//! HF's recipe (`perplexity` docs) tokenizes `"\n\n".join(test["text"])` over the Hub's 4,358
//! `wikitext-2-raw-v1` test rows, where every non-empty row ends in `"\n"` and 1,467 rows are
//! empty. Our file keeps only the 2,891 non-empty rows, one per line, with CRLF endings. We read it
//! as: CRLF → LF, split into lines, drop empty ones, give each line back its `"\n"`, and join with
//! `"\n\n"`. That is HF's string minus the separators the empty rows contributed (runs of "\n" are
//! shorter), so token counts and perplexity are close to, but not identical with, HF's numbers.

use std::path::Path;

use crate::error::{DataError, Result};

/// The joined test text (see the module doc for exactly how). A `.parquet` path is HF's Hub copy,
/// read with its empty rows kept: `"\n\n".join(rows)`, HF's string exactly
/// ([`crate::parquet_hub::load_wikitext_parquet`]).
pub fn load_wikitext_raw(path: &Path) -> Result<String> {
    if crate::squad::is_parquet(path) {
        return crate::parquet_hub::load_wikitext_parquet(path);
    }
    let raw = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let text = join_rows(&raw);
    if text.is_empty() {
        return Err(DataError::Empty {
            what: path.display().to_string(),
        });
    }
    Ok(text)
}

/// Joins the non-empty lines of `raw` as HF joins rows: each row is `line + "\n"`, rows joined by
/// `"\n\n"`.
pub fn join_rows(raw: &str) -> String {
    raw.lines()
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect::<Vec<_>>()
        .join("\n\n")
}
