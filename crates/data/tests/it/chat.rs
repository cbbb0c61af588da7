//! Chat templates rendered byte for byte as HF `apply_chat_template(tokenize=False)`: every case
//! of tests/fixtures/chat_templates/reference.json (ChatML/SmolLM2, Llama 3, Qwen2.5 ×
//! 3 conversations × add_generation_prompt).

use qtune_data::{ChatMessage, ChatTemplate, DataError};
use serde_json::Value;

use crate::common::fixtures;

fn reference() -> Value {
    let path = fixtures().join("chat_templates/reference.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn every_reference_case_is_byte_identical_to_hf() {
    let r = reference();
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 18);
    let mut failures = Vec::new();
    for c in cases {
        let name = c["template"].as_str().unwrap();
        let src = r["templates"][name]["template"].as_str().unwrap();
        let mut t = ChatTemplate::new(name, src).unwrap();
        for (k, v) in c["template_vars"].as_object().unwrap() {
            t = t.with_var(k, v.as_str().unwrap());
        }
        let conv = c["conversation"].as_str().unwrap();
        let msgs: Vec<ChatMessage> =
            serde_json::from_value(r["conversations"][conv].clone()).unwrap();
        let agp = c["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&msgs, agp).unwrap();
        let want = c["rendered"].as_str().unwrap();
        if got != want {
            failures.push(format!(
                "{name}/{conv}/agp={agp}:\n got {got:?}\nwant {want:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_template_error_names_the_template() {
    // Undefined function call: an engine error, not a panic.
    let t = ChatTemplate::new("custom.jinja", "{{ nope(messages) }}").unwrap();
    let err = t
        .render(&[ChatMessage::new("user", "hi")], false)
        .unwrap_err();
    assert!(matches!(&err, DataError::ChatTemplate { template, .. } if template == "custom.jinja"));
    assert!(err.to_string().contains("custom.jinja"), "{err}");
}
