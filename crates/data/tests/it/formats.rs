//! Custom data files: the four formats, the loss masks, max_length rules, and errors that name
//! file, record and field.

use std::path::{Path, PathBuf};

use qtune_data::{
    alpaca_prompt, load_records, read_records, split_validation, ChatTemplate, CustomEncoder,
    CustomRecord, DataError, DatasetFormat, EncodeConfig, Encoded, FieldNames, RecordContent,
    IGNORE_INDEX,
};

use crate::common::{byte_tokenizer, BYTE_EOS};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn err_of(dir: &Path, name: &str, text: &str, format: DatasetFormat) -> String {
    let p = write(dir, name, text);
    load_records(&p, format, &FieldNames::default())
        .unwrap_err()
        .to_string()
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

fn encoder<'a>(
    tok: &'a tokenizers::Tokenizer,
    t: Option<&'a ChatTemplate>,
    max_length: usize,
    path: &'a Path,
) -> CustomEncoder<'a> {
    CustomEncoder {
        tokenizer: tok,
        template: t,
        cfg: EncodeConfig {
            max_length,
            eos_token_id: BYTE_EOS,
        },
        train_on_all_turns: false,
        path,
    }
}

fn text_of(tok: &tokenizers::Tokenizer, ids: &[u32]) -> String {
    tok.decode(ids, false).unwrap()
}

#[test]
fn all_file_types_read_the_same_records() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = write(
        dir.path(),
        "a.jsonl",
        "{\"prompt\": \"Q: 1+1?\\nA:\", \"completion\": \" 2\"}\n\n{\"prompt\": \"x\", \"completion\": \"y\"}\n",
    );
    let json = write(
        dir.path(),
        "a.json",
        "[{\"prompt\": \"Q: 1+1?\\nA:\", \"completion\": \" 2\"}, {\"prompt\": \"x\", \"completion\": \"y\"}]",
    );
    let csv = write(
        dir.path(),
        "a.csv",
        "prompt,completion\n\"Q: 1+1?\nA:\", 2\nx,y\n",
    );
    let f = FieldNames::default();
    let a = load_records(&jsonl, DatasetFormat::Completion, &f).unwrap();
    let b = load_records(&json, DatasetFormat::Completion, &f).unwrap();
    let c = load_records(&csv, DatasetFormat::Completion, &f).unwrap();
    let content = |v: &[CustomRecord]| v.iter().map(|r| r.content.clone()).collect::<Vec<_>>();
    assert_eq!(content(&a), content(&b));
    assert_eq!(content(&a), content(&c));
    assert_eq!(a[1].location, "line 3");
    assert_eq!(b[1].location, "record 2");
    assert_eq!(c[1].location, "line 4"); // the first row spans lines 2-3
    assert!(read_records(&write(dir.path(), "a.txt", "x")).is_err());
}

#[test]
fn completion_loss_is_on_the_completion_and_eos_and_left_truncates_the_prompt() {
    let tok = byte_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "c.jsonl",
        "{\"prompt\": \"abcdef\", \"completion\": \"XY\"}\n",
    );
    let recs = load_records(&p, DatasetFormat::Completion, &FieldNames::default()).unwrap();
    let Encoded::Fits(ex) = encoder(&tok, None, 64, &p).encode(&recs[0]).unwrap() else {
        panic!()
    };
    assert_eq!(text_of(&tok, &ex.input_ids), "abcdefXY<|endoftext|>");
    let targets: Vec<i64> = ex
        .labels
        .iter()
        .copied()
        .filter(|&l| l != IGNORE_INDEX)
        .collect();
    assert_eq!(targets.len(), 3);
    assert_eq!(*targets.last().unwrap(), i64::from(BYTE_EOS));
    // max_length 6: 3 target tokens kept, the prompt keeps its last 3 tokens.
    let Encoded::Truncated(ex) = encoder(&tok, None, 6, &p).encode(&recs[0]).unwrap() else {
        panic!()
    };
    assert_eq!(text_of(&tok, &ex.input_ids), "defXY<|endoftext|>");
    // max_length 3: the target alone fills it → dropped.
    assert!(matches!(
        encoder(&tok, None, 3, &p).encode(&recs[0]).unwrap(),
        Encoded::Dropped(_)
    ));
    // Generation prompt and gold text.
    let (ids, gold) = encoder(&tok, None, 64, &p)
        .eval_prompt(&recs[0], 4)
        .unwrap()
        .unwrap();
    assert_eq!(
        (text_of(&tok, &ids).as_str(), gold.as_str()),
        ("cdef", "XY")
    );
}

#[test]
fn alpaca_uses_the_stanford_prompts() {
    assert_eq!(
        alpaca_prompt("Add.", Some("1 2")),
        "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n1 2\n\n### Response:"
    );
    assert_eq!(alpaca_prompt("Add.", Some("")), alpaca_prompt("Add.", None));
    assert!(alpaca_prompt("Add.", None).ends_with("### Instruction:\nAdd.\n\n### Response:"));
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "a.jsonl",
        "{\"instruction\": \"Add.\", \"input\": \"1 2\", \"output\": \"3\"}\n{\"instruction\": \"Hi.\", \"output\": \"Hello\"}\n",
    );
    let recs = load_records(&p, DatasetFormat::Alpaca, &FieldNames::default()).unwrap();
    assert_eq!(
        recs[1].content,
        RecordContent::Completion {
            prompt: alpaca_prompt("Hi.", None),
            completion: "Hello".into()
        }
    );
}

#[test]
fn text_loss_is_on_every_token_and_long_texts_keep_their_start() {
    let tok = byte_tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "t.jsonl", "{\"body\": \"hello world\"}\n");
    let fields = FieldNames {
        text: "body".into(),
        ..FieldNames::default()
    };
    let recs = load_records(&p, DatasetFormat::Text, &fields).unwrap();
    let Encoded::Fits(ex) = encoder(&tok, None, 64, &p).encode(&recs[0]).unwrap() else {
        panic!()
    };
    assert!(ex.labels.iter().all(|&l| l != IGNORE_INDEX));
    assert_eq!(*ex.input_ids.last().unwrap(), BYTE_EOS);
    let Encoded::Truncated(ex) = encoder(&tok, None, 5, &p).encode(&recs[0]).unwrap() else {
        panic!()
    };
    assert_eq!(text_of(&tok, &ex.input_ids), "hello");
}

#[test]
fn messages_loss_is_on_assistant_turns_only() {
    let tok = byte_tokenizer();
    let t = ChatTemplate::new("chatml", CHATML).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // OpenAI and ShareGPT spellings of the same conversation.
    let p = write(
        dir.path(),
        "m.jsonl",
        concat!(
            "{\"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"U1\"}, {\"role\": \"assistant\", \"content\": \"A1\"}, {\"role\": \"user\", \"content\": \"U2\"}, {\"role\": \"assistant\", \"content\": \"A2\"}]}\n",
            "{\"messages\": [{\"from\": \"system\", \"value\": \"S\"}, {\"from\": \"human\", \"value\": \"U1\"}, {\"from\": \"gpt\", \"value\": \"A1\"}, {\"from\": \"human\", \"value\": \"U2\"}, {\"from\": \"gpt\", \"value\": \"A2\"}]}\n"
        ),
    );
    let recs = load_records(&p, DatasetFormat::Messages, &FieldNames::default()).unwrap();
    assert_eq!(recs[0].content, recs[1].content);
    let enc = encoder(&tok, Some(&t), 512, &p);
    let Encoded::Fits(ex) = enc.encode(&recs[0]).unwrap() else {
        panic!()
    };
    // The target bytes, in order: each assistant turn's content and the template's turn end.
    let target: Vec<u32> = ex
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    assert_eq!(text_of(&tok, &target), "A1<|im_end|>\nA2<|im_end|>\n");
    // train_on_all_turns: every token.
    let all = CustomEncoder {
        train_on_all_turns: true,
        ..enc
    };
    let Encoded::Fits(ex) = all.encode(&recs[0]).unwrap() else {
        panic!()
    };
    assert!(ex.labels.iter().all(|&l| l != IGNORE_INDEX));
    // Too long → dropped.
    assert!(matches!(
        encoder(&tok, Some(&t), 20, &p).encode(&recs[0]).unwrap(),
        Encoded::Dropped(_)
    ));
    // The generation prompt: everything before the last assistant turn + the assistant header.
    let (ids, gold) = enc.eval_prompt(&recs[0], 512).unwrap().unwrap();
    assert!(text_of(&tok, &ids).ends_with("U2<|im_end|>\n<|im_start|>assistant\n"));
    assert_eq!(gold, "A2");
    // No template: a clear error.
    let err = encoder(&tok, None, 512, &p)
        .encode(&recs[0])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("chat template") && err.contains("m.jsonl"),
        "{err}"
    );
}

#[test]
fn a_template_that_is_not_prefix_stable_is_refused_naming_the_record() {
    let tok = byte_tokenizer();
    // Puts the turn count at the start: the prefix renderings disagree with the whole.
    let t = ChatTemplate::new(
        "counting",
        "{{ messages | length }}{% for m in messages %}[{{ m.content }}]{% endfor %}",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "m.jsonl",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n",
    );
    let recs = load_records(&p, DatasetFormat::Messages, &FieldNames::default()).unwrap();
    let err = encoder(&tok, Some(&t), 512, &p)
        .encode(&recs[0])
        .unwrap_err();
    assert!(matches!(err, DataError::NotPrefixStable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("m.jsonl") && msg.contains("line 1") && msg.contains("counting"),
        "{msg}"
    );
}

#[test]
fn bad_records_name_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    use DatasetFormat::*;
    let cases: Vec<(&str, &str, DatasetFormat, &[&str])> = vec![
        ("missing.jsonl", "{\"prompt\": \"p\", \"completion\": \"c\"}\n{\"prompt\": \"p\"}\n", Completion,
         &["missing.jsonl", "`completion`", "line 2"]),
        ("type.jsonl", "{\"prompt\": 3, \"completion\": \"c\"}\n", Completion,
         &["type.jsonl", "`prompt`", "line 1", "a string", "a number"]),
        ("json.jsonl", "{\"prompt\": \"p\", \"completion\": \"c\"}\n{oops\n", Completion,
         &["json.jsonl", "line 2", "malformed JSON"]),
        ("role.jsonl", "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n", Messages,
         &["role.jsonl", "messages[0].role", "robot", "unknown role", "system, user, assistant"]),
        ("empty.jsonl", "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}, {\"from\": \"gpt\", \"value\": \" \"}]}\n", Messages,
         &["empty.jsonl", "messages[1].value", "empty assistant turn"]),
        ("noassist.json", "[{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}]", Messages,
         &["noassist.json", "record 1", "no assistant turn"]),
        ("notarray.jsonl", "{\"messages\": \"hello\"}\n", Messages,
         &["notarray.jsonl", "`messages`", "an array of turns", "a string"]),
        ("row.csv", "prompt,completion\np,c\nq\n", Completion,
         &["row.csv", "CSV"]),
        ("alpaca.jsonl", "{\"instruction\": \"i\", \"input\": 1, \"output\": \"o\"}\n", Alpaca,
         &["alpaca.jsonl", "`input`", "line 1"]),
    ];
    for (name, text, format, needles) in cases {
        let err = err_of(d, name, text, format);
        for n in needles {
            assert!(err.contains(n), "{name}: {err:?} lacks {n:?}");
        }
    }
}

#[test]
fn unknown_dataset_format_lists_the_accepted_ones() {
    let err = serde_json::from_str::<DatasetFormat>("\"chat\"")
        .unwrap_err()
        .to_string();
    for v in ["text", "completion", "alpaca", "messages"] {
        assert!(err.contains(v), "{err}");
    }
}

#[test]
fn validation_split_is_seeded_and_disjoint() {
    let xs: Vec<usize> = (0..100).collect();
    let (t1, v1) = split_validation(xs.clone(), 0.05, 7).unwrap();
    let (t2, v2) = split_validation(xs.clone(), 0.05, 7).unwrap();
    assert_eq!((&t1, &v1), (&t2, &v2));
    assert_eq!((t1.len(), v1.len()), (95, 5));
    assert!(v1.iter().all(|x| !t1.contains(x)));
    let (_, v3) = split_validation(xs, 0.05, 8).unwrap();
    assert_ne!(v1, v3);
    assert_eq!(split_validation(vec![1, 2], 0.01, 0).unwrap().1.len(), 1);
    assert!(split_validation(vec![1, 2], 1.0, 0).is_err());
}
