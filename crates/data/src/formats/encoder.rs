//! Tokenizing [`CustomRecord`]s: loss masks and the `max_length` rules of the parent module.

use std::path::Path;

use tokenizers::Tokenizer;

use super::{CustomRecord, RecordContent};
use crate::batch::{Example, IGNORE_INDEX};
use crate::chat::{ChatMessage, ChatTemplate};
use crate::encode::{encode_each, encode_text, DropReason, EncodeConfig, EncodeStats, Encoded};
use crate::error::{DataError, Result};

/// Tokenizes [`CustomRecord`]s as the module doc states.
#[derive(Clone, Copy)]
pub struct CustomEncoder<'a> {
    pub tokenizer: &'a Tokenizer,
    /// Needed for `messages` records.
    pub template: Option<&'a ChatTemplate>,
    pub cfg: EncodeConfig,
    /// `messages`: loss on every token of the conversation, not only the assistant turns.
    pub train_on_all_turns: bool,
    /// The data file, for errors.
    pub path: &'a Path,
}

impl CustomEncoder<'_> {
    fn in_record(&self, rec: &CustomRecord, e: DataError) -> DataError {
        DataError::InRecord {
            path: self.path.to_path_buf(),
            location: rec.location.clone(),
            source: Box::new(e),
        }
    }

    fn template(&self) -> Result<&ChatTemplate> {
        self.template.ok_or_else(|| {
            DataError::NoChatTemplate(format!(
                "{}: `messages` records need a chat template: the model has none; set \
                 [data] chat_template (Jinja text) or chat_template_file",
                self.path.display()
            ))
        })
    }

    fn ids(&self, rec: &CustomRecord, text: &str) -> Result<Vec<u32>> {
        encode_text(self.tokenizer, text).map_err(|e| self.in_record(rec, e))
    }

    /// One training example.
    pub fn encode(&self, rec: &CustomRecord) -> Result<Encoded> {
        let max = self.cfg.max_length;
        match &rec.content {
            RecordContent::Text(text) => {
                let mut ids = self.ids(rec, text)?;
                ids.push(self.cfg.eos_token_id);
                let cut = ids.len() > max;
                ids.truncate(max);
                let labels = ids.iter().map(|&t| i64::from(t)).collect();
                let ex = Example {
                    input_ids: ids,
                    labels,
                };
                Ok(if cut {
                    Encoded::Truncated(ex)
                } else {
                    Encoded::Fits(ex)
                })
            }
            RecordContent::Completion { prompt, completion } => {
                let p = self.ids(rec, prompt)?;
                let mut c = self.ids(rec, completion)?;
                c.push(self.cfg.eos_token_id);
                if c.len() >= max {
                    return Ok(Encoded::Dropped(DropReason::TargetTooLong));
                }
                let keep = max - c.len();
                Ok(if p.len() > keep {
                    Encoded::Truncated(Example::from_prompt_completion(&p[p.len() - keep..], &c))
                } else {
                    Encoded::Fits(Example::from_prompt_completion(&p, &c))
                })
            }
            RecordContent::Messages(msgs) => {
                let ex = self.encode_messages(rec, msgs)?;
                Ok(if ex.len() > max {
                    Encoded::Dropped(DropReason::TooLong)
                } else {
                    Encoded::Fits(ex)
                })
            }
        }
    }

    fn encode_messages(&self, rec: &CustomRecord, msgs: &[ChatMessage]) -> Result<Example> {
        let t = self.template()?;
        let render =
            |m: &[ChatMessage], agp: bool| t.render(m, agp).map_err(|e| self.in_record(rec, e));
        let full = render(msgs, false)?;
        let ids = self.ids(rec, &full)?;
        if self.train_on_all_turns {
            let labels = ids.iter().map(|&t| i64::from(t)).collect();
            return Ok(Example {
                input_ids: ids,
                labels,
            });
        }
        let unstable = |detail: String| DataError::NotPrefixStable {
            path: self.path.to_path_buf(),
            location: rec.location.clone(),
            template: t.name().to_string(),
            detail,
        };
        let mut labels = vec![IGNORE_INDEX; ids.len()];
        for (i, m) in msgs.iter().enumerate() {
            if m.role != "assistant" {
                continue;
            }
            let before = render(&msgs[..i], true)?;
            let through = render(&msgs[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(unstable(format!(
                    "the text up to turn {i} (with the generation prompt) is not a prefix of \
                     the text through it, or that of the whole conversation"
                )));
            }
            let a = self.ids(rec, &before)?;
            let b = self.ids(rec, &through)?;
            if !b.starts_with(&a) || !ids.starts_with(&b) {
                return Err(unstable(format!(
                    "the tokens up to assistant turn {i} are not a prefix of the conversation's \
                     (a token crosses the turn boundary)"
                )));
            }
            for (l, &id) in labels[a.len()..b.len()]
                .iter_mut()
                .zip(&ids[a.len()..b.len()])
            {
                *l = i64::from(id);
            }
        }
        Ok(Example {
            input_ids: ids,
            labels,
        })
    }

    /// The prompt to generate from and the gold text, for the exact-match metric:
    /// `completion` / `alpaca`: the prompt (left-truncated to `max_prompt` tokens) and the
    /// completion; `messages`: the conversation before its last assistant turn with the
    /// generation prompt, and that turn's content (`None` if longer than `max_prompt`);
    /// `text`: `None`.
    pub fn eval_prompt(
        &self,
        rec: &CustomRecord,
        max_prompt: usize,
    ) -> Result<Option<(Vec<u32>, String)>> {
        match &rec.content {
            RecordContent::Text(_) => Ok(None),
            RecordContent::Completion { prompt, completion } => {
                let p = self.ids(rec, prompt)?;
                let start = p.len().saturating_sub(max_prompt);
                Ok(Some((p[start..].to_vec(), completion.clone())))
            }
            RecordContent::Messages(msgs) => {
                let Some(k) = msgs.iter().rposition(|m| m.role == "assistant") else {
                    return Ok(None);
                };
                let t = self.template()?;
                let text = t
                    .render(&msgs[..k], true)
                    .map_err(|e| self.in_record(rec, e))?;
                let ids = self.ids(rec, &text)?;
                Ok((ids.len() <= max_prompt && !ids.is_empty())
                    .then(|| (ids, msgs[k].content.clone())))
            }
        }
    }

    /// Encodes every record; dropped ones are counted (and logged at debug level).
    pub fn encode_all(
        &self,
        records: &[CustomRecord],
    ) -> Result<(Vec<Example>, Vec<usize>, EncodeStats)> {
        let (out, kept, stats) = encode_each(
            records,
            |rec| self.encode(rec),
            |rec, reason| tracing::debug!(file = %self.path.display(), location = %rec.location, ?reason, "dropped record"),
        )?;
        tracing::info!(
            file = %self.path.display(),
            total = stats.total,
            truncated = stats.truncated,
            dropped = stats.dropped,
            max_length = self.cfg.max_length,
            "encoded records"
        );
        Ok((out, kept, stats))
    }
}
