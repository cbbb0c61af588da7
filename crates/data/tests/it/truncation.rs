//! Truncation never cuts the answer: property test on generated contexts (byte tokenizer, no files)
//! and a sweep over the real dev set with GPT-J's tokenizer.

use proptest::prelude::*;
use qtune_data::{
    encode_squad_prompt, encode_squad_train, encode_text, load_squad, squad_completion,
    squad_prompt, DropReason, EncodeConfig, Encoded, SquadExample, IGNORE_INDEX,
};
use tokenizers::Tokenizer;

use crate::common::{byte_tokenizer, data_dir, gptj_tokenizer, BYTE_EOS, EOS};

const PREFIX: &str = "Read the context and question to find the correct answer:\n context: ";

/// The context kept in an encoded prompt (decoded, between the template's fixed parts).
fn kept_context(tok: &Tokenizer, prompt_ids: &[u32], question: &str) -> String {
    let text = tok.decode(prompt_ids, false).unwrap();
    let suffix = format!("\n question: {question}\nanswer:");
    let rest = text.strip_prefix(PREFIX).expect("template prefix");
    rest.strip_suffix(&suffix)
        .expect("template suffix")
        .to_string()
}

/// Checks one encoded example against the invariants; returns whether it was truncated.
fn check(tok: &Tokenizer, ex: &SquadExample, cfg: EncodeConfig, eos: u32) -> Option<bool> {
    let out = encode_squad_train(tok, ex, cfg).unwrap();
    let (e, truncated) = match out {
        Encoded::Fits(e) => (e, false),
        Encoded::Truncated(e) => (e, true),
        Encoded::Dropped(reason) => {
            // Dropped only when even the answer's words alone do not fit.
            if let (DropReason::TooLongWithoutContext, Some((s, t))) = (reason, ex.answer_span) {
                let min = encode_text(tok, &squad_prompt(&ex.context[s..t], &ex.question)).unwrap();
                let comp = encode_text(tok, &squad_completion(ex.first_answer())).unwrap();
                assert!(
                    min.len() + comp.len() + 1 > cfg.max_length,
                    "dropped but fits"
                );
            }
            return None;
        }
    };
    assert!(
        e.len() <= cfg.max_length,
        "{} > {}",
        e.len(),
        cfg.max_length
    );
    let n_prompt = e.labels.iter().take_while(|&&l| l == IGNORE_INDEX).count();
    let completion = tok
        .decode(&e.input_ids[n_prompt..e.len() - 1], false)
        .unwrap();
    assert_eq!(completion, squad_completion(ex.first_answer()));
    assert_eq!(*e.input_ids.last().unwrap(), eos);
    let kept = kept_context(tok, &e.input_ids[..n_prompt], &ex.question);
    if !truncated {
        assert_eq!(kept, ex.context);
    }
    // A contiguous slice of the context that covers the whole answer span.
    if let Some((s, t)) = ex.answer_span {
        let covers = ex
            .context
            .match_indices(kept.as_str())
            .any(|(at, k)| at <= s && at + k.len() >= t);
        assert!(
            covers,
            "kept {kept:?} does not cover the answer {:?}",
            &ex.context[s..t]
        );
    } else {
        assert!(ex.context.contains(kept.as_str()));
    }
    Some(truncated)
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}",
        "[A-Z][a-z]{0,6}[.,;]?",
        "[0-9]{1,4}",
        Just("café".to_string()),
        Just("“quoted”".to_string()),
        Just("Zürich—Genève".to_string()),
    ]
}

fn example() -> impl Strategy<Value = (SquadExample, usize)> {
    (
        prop::collection::vec(word(), 1..80),
        prop::collection::vec(" |  |\n".prop_map(String::from), 80),
        prop::collection::vec(word(), 1..6),
        any::<prop::sample::Index>(),
        1usize..6,
        any::<bool>(),
        16usize..400,
    )
        .prop_map(|(words, seps, q, at, len, impossible, max_length)| {
            let mut context = String::new();
            let mut spans = Vec::new();
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    context.push_str(&seps[i % seps.len()]);
                }
                spans.push((context.len(), context.len() + w.len()));
                context.push_str(w);
            }
            let a = at.index(words.len());
            let b = (a + len).min(words.len());
            let span = (spans[a].0, spans[b - 1].1);
            let answer = context[span.0..span.1].to_string();
            let ex = SquadExample {
                id: "p".into(),
                title: "t".into(),
                question: q.join(" ") + "?",
                answers: if impossible { vec![] } else { vec![answer] },
                answer_span: (!impossible).then_some(span),
                is_impossible: impossible,
                context,
            };
            (ex, max_length)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn truncation_never_cuts_the_answer((ex, max_length) in example()) {
        let tok = byte_tokenizer();
        check(&tok, &ex, EncodeConfig { max_length, eos_token_id: BYTE_EOS }, BYTE_EOS);
    }
}

#[test]
fn eval_prompts_keep_the_start_of_the_context() {
    let tok = byte_tokenizer();
    let ex = SquadExample {
        id: "e".into(),
        title: "t".into(),
        context: "one two three four five six seven eight nine ten".into(),
        question: "q?".into(),
        answers: vec!["ten".into()],
        answer_span: Some((47, 50)),
        is_impossible: false,
    };
    let full = encode_text(&tok, &squad_prompt(&ex.context, &ex.question)).unwrap();
    let (ids, cut) = encode_squad_prompt(&tok, &ex, full.len() - 10)
        .unwrap()
        .unwrap();
    assert!(cut && ids.len() <= full.len() - 10);
    let kept = kept_context(&tok, &ids, &ex.question);
    assert!(
        ex.context.starts_with(&kept) && !kept.contains("ten"),
        "{kept:?}"
    );
    assert!(encode_squad_prompt(&tok, &ex, 5).unwrap().is_none());
}

/// Every question of the dev set at a small max_length: the invariants hold and the counts are
/// reported.
#[test]
fn real_squad_truncation_keeps_answers() {
    let Some(data) = data_dir("real_squad_truncation_keeps_answers") else {
        return;
    };
    let tok = gptj_tokenizer(&data);
    let articles = load_squad(&data.join("squad-v2/dev-v2.0.json")).unwrap();
    let cfg = EncodeConfig {
        max_length: 128,
        eos_token_id: EOS,
    };
    let (mut fits, mut truncated, mut dropped) = (0, 0, 0);
    // Every 7th question keeps the test fast on 2 cores; all paragraphs lengths are represented.
    for ex in articles.iter().flat_map(|a| a.examples.iter().step_by(7)) {
        match check(&tok, ex, cfg, EOS) {
            Some(false) => fits += 1,
            Some(true) => truncated += 1,
            None => dropped += 1,
        }
    }
    eprintln!("max_length 128: {fits} fit, {truncated} truncated, {dropped} dropped");
    assert!(truncated > 0 && fits > 0);
}

/// Counts for the whole dev set at the lengths the configs use (slow: run with `--ignored`).
#[test]
#[ignore = "encodes all 11,873 questions three times; run with --ignored to get the counts"]
fn real_squad_truncation_counts_full() {
    let Some(data) = data_dir("real_squad_truncation_counts_full") else {
        return;
    };
    let tok = gptj_tokenizer(&data);
    let articles = load_squad(&data.join("squad-v2/dev-v2.0.json")).unwrap();
    for max_length in [192, 256, 512, 2048] {
        let cfg = EncodeConfig {
            max_length,
            eos_token_id: EOS,
        };
        let (mut fits, mut truncated, mut dropped) = (0, 0, 0);
        for ex in articles.iter().flat_map(|a| &a.examples) {
            match check(&tok, ex, cfg, EOS) {
                Some(false) => fits += 1,
                Some(true) => truncated += 1,
                None => dropped += 1,
            }
        }
        eprintln!("max_length {max_length}: {fits} fit, {truncated} truncated, {dropped} dropped");
        assert_eq!(fits + truncated + dropped, 11_873);
    }
}
