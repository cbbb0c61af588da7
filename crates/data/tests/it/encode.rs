use qtune_data::{
    encode_hate_speech_train, encode_prompt_completion, encode_text, hate_speech_prompt,
    load_hate_speech, load_squad, squad_completion, squad_prompt, squad_text, token_id,
    EncodeConfig, Encoded, IGNORE_INDEX, SQUAD_NO_ANSWER,
};

use crate::common::{byte_tokenizer, data_dir, fixtures, gptj_tokenizer, BYTE_EOS, EOS};

#[test]
fn squad_prompt_is_byte_exact() {
    let text = squad_text("Paris is in France.", "Where is Paris?", Some("France"));
    let expected = "Read the context and question to find the correct answer:\n context: Paris is in France.\n question: Where is Paris?\nanswer: France";
    assert_eq!(text.as_bytes(), expected.as_bytes());
    let impossible = squad_text("Paris is in France.", "Where is Rome?", None);
    let expected = "Read the context and question to find the correct answer:\n context: Paris is in France.\n question: Where is Rome?\nanswer: answers not in context";
    assert_eq!(impossible.as_bytes(), expected.as_bytes());
    assert_eq!(SQUAD_NO_ANSWER, "answers not in context");
    assert_eq!(
        squad_prompt("c", "q") + &squad_completion(Some("a")),
        squad_text("c", "q", Some("a"))
    );
}

#[test]
fn hate_speech_prompt_is_byte_exact() {
    let expected = "Classify the tweet as hate speech, offensive language or neither.\n tweet: hello & bye\nclass:";
    assert_eq!(
        hate_speech_prompt("hello & bye").as_bytes(),
        expected.as_bytes()
    );
}

#[test]
fn loss_is_on_completion_and_eos_only() {
    let tok = byte_tokenizer();
    let ex = encode_prompt_completion(&tok, "ab:", " cd", BYTE_EOS).unwrap();
    assert_eq!(ex.len(), 7);
    assert!(ex.labels[..3].iter().all(|&l| l == IGNORE_INDEX));
    let tail: Vec<u32> = ex.input_ids[3..].to_vec();
    assert_eq!(
        ex.labels[3..],
        tail.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()
    );
    assert_eq!(*ex.input_ids.last().unwrap(), BYTE_EOS);
    assert_eq!(tok.decode(&tail[..3], false).unwrap(), " cd");
    assert_eq!(ex.n_target_tokens(), 4);
    let cfg = EncodeConfig {
        max_length: 4,
        eos_token_id: BYTE_EOS,
    };
    let r = encode_hate_speech_train(&tok, "a long tweet", 0, cfg).unwrap();
    assert!(matches!(r, Encoded::Dropped(_)));
    assert!(encode_hate_speech_train(&tok, "x", 3, cfg).is_err());
}

/// Our test tokenizer is HF's GPT-J tokenizer: same ids as tests/fixtures/tokenizer/ids.json.
#[test]
fn gptj_test_tokenizer_matches_hf_ids() {
    let Some(data) = data_dir("gptj_test_tokenizer_matches_hf_ids") else {
        return;
    };
    let tok = gptj_tokenizer(&data);
    assert_eq!(token_id(&tok, "<|endoftext|>").unwrap(), EOS);
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer/ids.json")).unwrap(),
    )
    .unwrap();
    let squad = load_squad(&data.join("squad-v2/dev-v2.0.json")).unwrap();
    let mut checked = 0;
    for case in fx["cases"].as_array().unwrap() {
        let text = match case["source"].as_str().unwrap() {
            "literal" => case["text"].as_str().unwrap().to_string(),
            "squad-v2/dev-v2.0.json" if case["field"] == "context" => {
                let title = case["title"].as_str().unwrap();
                let a = squad.iter().find(|a| a.title == title).unwrap();
                // The fixture takes the first qa's paragraph order; match contexts by ids length.
                let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
                let ctx = a
                    .examples
                    .iter()
                    .map(|e| e.context.clone())
                    .find(|c| encode_text(&tok, c).unwrap() == want);
                assert!(ctx.is_some(), "no context of {title} encodes to HF's ids");
                checked += 1;
                continue;
            }
            _ => continue,
        };
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(encode_text(&tok, &text).unwrap(), want, "{text:?}");
        checked += 1;
    }
    assert!(checked >= 7, "checked {checked} cases");
}

/// Encoding prompt and completion apart gives the ids of the whole text, so training on
/// `prompt ++ completion` is training on the documented text.
#[test]
fn split_encoding_equals_whole_text_encoding() {
    let Some(data) = data_dir("split_encoding_equals_whole_text_encoding") else {
        return;
    };
    let tok = gptj_tokenizer(&data);
    let squad = load_squad(&data.join("squad-v2/dev-v2.0.json")).unwrap();
    let mut n = 0;
    for ex in squad.iter().flat_map(|a| a.examples.iter().step_by(25)) {
        let p = squad_prompt(&ex.context, &ex.question);
        let c = squad_completion(ex.first_answer());
        let e = encode_prompt_completion(&tok, &p, &c, EOS).unwrap();
        let whole = encode_text(&tok, &(p + &c)).unwrap();
        assert_eq!(e.input_ids[..e.len() - 1], whole[..], "question {}", ex.id);
        n += 1;
    }
    let tweets = load_hate_speech(&data.join("hate-speech-davidson2017/labeled_data.csv")).unwrap();
    let cfg = EncodeConfig {
        max_length: 512,
        eos_token_id: EOS,
    };
    for t in tweets.iter().step_by(97) {
        let Encoded::Fits(e) = encode_hate_speech_train(&tok, &t.text, t.class, cfg).unwrap()
        else {
            panic!("tweet row {} does not fit 512 tokens", t.row)
        };
        let text =
            hate_speech_prompt(&t.text) + &qtune_data::hate_speech_completion(t.class).unwrap();
        assert_eq!(
            e.input_ids[..e.len() - 1],
            encode_text(&tok, &text).unwrap()[..]
        );
        n += 1;
    }
    eprintln!("split == whole encoding on {n} texts");
    assert!(n > 700);
}
