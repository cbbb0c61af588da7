//! Reading a data file's records: `.jsonl`, `.json`, `.csv`, `.parquet` (see the parent module).

use std::path::Path;

use serde_json::Value;

use super::{json_type, RawRecord};
use crate::error::{csv_header, DataError, Result};

/// Reads every record of `path` (by extension: `.jsonl`, `.json`, `.csv`, `.parquet`).
pub fn read_records(path: &Path) -> Result<Vec<RawRecord>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let read = || std::fs::read_to_string(path).map_err(|e| DataError::io(path, e));
    match ext.as_deref() {
        Some("jsonl") => {
            let text = read()?;
            let mut out = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let location = format!("line {}", i + 1);
                let value = serde_json::from_str(line).map_err(|source| DataError::JsonRecord {
                    path: path.to_path_buf(),
                    location: location.clone(),
                    source,
                })?;
                out.push(RawRecord { location, value });
            }
            Ok(out)
        }
        Some("json") => {
            let value: Value =
                serde_json::from_str(&read()?).map_err(|source| DataError::Json {
                    path: path.to_path_buf(),
                    source,
                })?;
            let found = json_type(&value);
            let Value::Array(items) = value else {
                return Err(DataError::WrongType {
                    path: path.to_path_buf(),
                    field: "(file)".into(),
                    location: "the top level".into(),
                    expected: "an array of records",
                    found,
                });
            };
            Ok(items
                .into_iter()
                .enumerate()
                .map(|(i, value)| RawRecord {
                    location: format!("record {}", i + 1),
                    value,
                })
                .collect())
        }
        Some("csv") => {
            let mut rdr = csv::Reader::from_path(path).map_err(DataError::csv(path, 0))?;
            let header = csv_header(&mut rdr, path)?;
            let mut out = Vec::new();
            for (i, rec) in rdr.records().enumerate() {
                let rec = rec.map_err(DataError::csv(path, i as u64 + 1))?;
                let line = rec.position().map_or(i as u64 + 2, |p| p.line());
                let obj: serde_json::Map<String, Value> = header
                    .iter()
                    .zip(rec.iter())
                    .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
                    .collect();
                out.push(RawRecord {
                    location: format!("line {line}"),
                    value: Value::Object(obj),
                });
            }
            Ok(out)
        }
        Some("parquet") => Ok(crate::parquet_hub::read_rows(path)?
            .iter()
            .enumerate()
            .map(|(i, row)| RawRecord {
                location: format!("row {}", i + 1),
                value: crate::parquet_hub::row_to_json(row),
            })
            .collect()),
        _ => Err(DataError::UnsupportedFile {
            path: path.to_path_buf(),
        }),
    }
}
