//! The exact prompt texts. A prompt ends just before the completion's leading space, so that
//! `prompt + completion` is the documented text byte for byte and, because GPT-2's BPE attaches a
//! space to the word after it (" Paris"), encoding the two halves separately gives the same ids as
//! encoding the whole text (checked in tests/it/encode.rs). Generation is fed the prompt alone.

/// What the model must answer for an impossible SQuAD v2 question.
pub const SQUAD_NO_ANSWER: &str = "answers not in context";

/// `Read the context and question to find the correct answer:\n context: {context}\n question:
/// {question}\nanswer:` (the completion adds ` {answer}`).
pub fn squad_prompt(context: &str, question: &str) -> String {
    format!(
        "Read the context and question to find the correct answer:\n context: {context}\n question: {question}\nanswer:"
    )
}

/// ` {answer}`: the first gold answer, or [`SQUAD_NO_ANSWER`] for an impossible question.
pub fn squad_completion(answer: Option<&str>) -> String {
    format!(" {}", answer.unwrap_or(SQUAD_NO_ANSWER))
}

/// The full training text, `squad_prompt + squad_completion`.
pub fn squad_text(context: &str, question: &str, answer: Option<&str>) -> String {
    squad_prompt(context, question) + &squad_completion(answer)
}

/// Label texts of the Davidson classes 0, 1, 2, in that order.
pub const HATE_SPEECH_LABELS: [&str; 3] = ["hate speech", "offensive language", "neither"];

/// `Classify the tweet as hate speech, offensive language or neither.\n tweet: {tweet}\nclass:`
/// (the completion adds ` {label}`).
pub fn hate_speech_prompt(tweet: &str) -> String {
    format!(
        "Classify the tweet as hate speech, offensive language or neither.\n tweet: {tweet}\nclass:"
    )
}

/// ` {label}` for class 0, 1 or 2; `None` for any other class.
pub fn hate_speech_completion(class: usize) -> Option<String> {
    HATE_SPEECH_LABELS.get(class).map(|l| format!(" {l}"))
}
