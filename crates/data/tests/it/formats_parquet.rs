//! `.parquet` input of your own data, one test per format: files written here with the same
//! `parquet` crate the reader uses, in the layout pyarrow / HF `datasets` write (optional
//! string columns; `messages` as `list<struct<content, role>>`), read back as the same records
//! as the equal JSONL file (locations `row N`, 1-based).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use qtune_data::{load_records, CustomRecord, DatasetFormat, FieldNames};

/// One leaf column: values (present ones only), definition and repetition levels.
struct Column<'a> {
    values: Vec<&'a str>,
    def: Vec<i16>,
    rep: Option<Vec<i16>>,
}

/// A flat optional string column (`None` = null).
fn strings<'a>(cells: &[Option<&'a str>]) -> Column<'a> {
    Column {
        values: cells.iter().flatten().copied().collect(),
        def: cells.iter().map(|c| i16::from(c.is_some())).collect(),
        rep: None,
    }
}

fn write_parquet(path: &Path, schema: &str, columns: Vec<Column>) {
    let schema = Arc::new(parse_message_type(schema).unwrap());
    let props = Arc::new(WriterProperties::builder().build());
    let mut w = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let mut columns = columns.into_iter();
    while let Some(mut col) = rg.next_column().unwrap() {
        let c = columns.next().expect("one Column per leaf");
        let values: Vec<ByteArray> = c.values.iter().map(|s| ByteArray::from(*s)).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&c.def), c.rep.as_deref())
            .unwrap();
        col.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
}

/// The records of both files, which must agree but for their locations (`row i` / `line i`).
fn same_records(parquet: &Path, jsonl: &Path, format: DatasetFormat) -> Vec<CustomRecord> {
    let fields = FieldNames::default();
    let a = load_records(parquet, format, &fields).unwrap();
    let b = load_records(jsonl, format, &fields).unwrap();
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.location, format!("row {}", i + 1));
        assert_eq!(x.content, y.content, "record {}", i + 1);
    }
    a
}

fn files(dir: &Path, name: &str, jsonl: &str) -> (PathBuf, PathBuf) {
    let j = dir.join(format!("{name}.jsonl"));
    std::fs::write(&j, jsonl).unwrap();
    (dir.join(format!("{name}.parquet")), j)
}

#[test]
fn parquet_text_and_completion_read_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let (p, j) = files(
        dir.path(),
        "text",
        "{\"text\": \"first doc\"}\n{\"text\": \"second, with \\u00e9\"}\n",
    );
    write_parquet(
        &p,
        "message schema { OPTIONAL BYTE_ARRAY text (STRING); }",
        vec![strings(&[Some("first doc"), Some("second, with é")])],
    );
    same_records(&p, &j, DatasetFormat::Text);
    let (p, j) = files(
        dir.path(),
        "completion",
        "{\"prompt\": \"Q: 1+1?\\nA:\", \"completion\": \" 2\", \"id\": \"a\"}\n\
         {\"prompt\": \"Q: 2+2?\\nA:\", \"completion\": \" 4\", \"id\": \"b\"}\n",
    );
    write_parquet(
        &p,
        "message schema { OPTIONAL BYTE_ARRAY prompt (STRING); \
         OPTIONAL BYTE_ARRAY completion (STRING); OPTIONAL BYTE_ARRAY id (STRING); }",
        vec![
            strings(&[Some("Q: 1+1?\nA:"), Some("Q: 2+2?\nA:")]),
            strings(&[Some(" 2"), Some(" 4")]),
            strings(&[Some("a"), Some("b")]),
        ],
    );
    same_records(&p, &j, DatasetFormat::Completion);
    // A null where a string is required: the error names file, row and field.
    let bad = dir.path().join("bad.parquet");
    write_parquet(
        &bad,
        "message schema { OPTIONAL BYTE_ARRAY prompt (STRING); \
         OPTIONAL BYTE_ARRAY completion (STRING); }",
        vec![
            strings(&[Some("p"), Some("q")]),
            strings(&[Some("c"), None]),
        ],
    );
    let e = load_records(&bad, DatasetFormat::Completion, &FieldNames::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.parquet") && e.contains("row 2") && e.contains("completion"),
        "{e}"
    );
}

#[test]
fn parquet_alpaca_with_a_null_input_reads_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let (p, j) = files(
        dir.path(),
        "alpaca",
        "{\"instruction\": \"Add.\", \"input\": \"1 and 2\", \"output\": \"3\"}\n\
         {\"instruction\": \"Say hi.\", \"input\": null, \"output\": \"hi\"}\n\
         {\"instruction\": \"Say bye.\", \"input\": \"\", \"output\": \"bye\"}\n",
    );
    write_parquet(
        &p,
        "message schema { OPTIONAL BYTE_ARRAY instruction (STRING); \
         OPTIONAL BYTE_ARRAY input (STRING); OPTIONAL BYTE_ARRAY output (STRING); }",
        vec![
            strings(&[Some("Add."), Some("Say hi."), Some("Say bye.")]),
            strings(&[Some("1 and 2"), None, Some("")]),
            strings(&[Some("3"), Some("hi"), Some("bye")]),
        ],
    );
    same_records(&p, &j, DatasetFormat::Alpaca);
}

#[test]
fn parquet_messages_as_list_of_structs_read_as_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let (p, j) = files(
        dir.path(),
        "messages",
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, \
         {\"role\": \"user\", \"content\": \"Hi\"}, {\"role\": \"assistant\", \"content\": \"Hello\"}]}\n\
         {\"messages\": [{\"role\": \"user\", \"content\": \"2+2?\"}, \
         {\"role\": \"assistant\", \"content\": \"4\"}]}\n",
    );
    // pyarrow's list<struct<content: string, role: string>>: optional list, repeated `list`,
    // optional `element`, optional leaves; a present leaf has definition level 4, repetition
    // level 0 at a row's first turn and 1 after.
    let schema = "message schema { OPTIONAL GROUP messages (LIST) { REPEATED GROUP list { \
                  OPTIONAL GROUP element { OPTIONAL BYTE_ARRAY content (STRING); \
                  OPTIONAL BYTE_ARRAY role (STRING); } } } }";
    let levels = |values: Vec<&'static str>| Column {
        def: vec![4; values.len()],
        rep: Some(vec![0, 1, 1, 0, 1]),
        values,
    };
    write_parquet(
        &p,
        schema,
        vec![
            levels(vec!["Be brief.", "Hi", "Hello", "2+2?", "4"]),
            levels(vec!["system", "user", "assistant", "user", "assistant"]),
        ],
    );
    let recs = same_records(&p, &j, DatasetFormat::Messages);
    assert!(
        matches!(&recs[0].content, qtune_data::RecordContent::Messages(m) if m.len() == 3),
        "{:?}",
        recs[0]
    );
    // The same turns as a JSON string column (as a CSV cell holds them).
    let s = dir.path().join("messages_str.parquet");
    let rows: Vec<&str> = std::fs::read_to_string(&j)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Box::leak(v["messages"].to_string().into_boxed_str()) as &str
        })
        .collect();
    write_parquet(
        &s,
        "message schema { OPTIONAL BYTE_ARRAY messages (STRING); }",
        vec![strings(&rows.iter().map(|r| Some(*r)).collect::<Vec<_>>())],
    );
    same_records(&s, &j, DatasetFormat::Messages);
}
