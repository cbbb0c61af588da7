//! Evaluation, in one place: the mean token loss of a split, the evaluation the loop runs every
//! `eval_steps` (loss, optional generation metric, the value `metric_for_best_model` ranks), and
//! task metrics from greedy generations: SQuAD v2 EM/F1 (official normalization, HasAns/NoAns),
//! hate-speech accuracy / per-class F1 / confusion matrix, or (custom data) exact match of the
//! generated completion.
use std::collections::HashMap;

use qtune_data::{
    answer_from_generation, classification_eval, exact_match_eval, label_from_generation,
    squad_v2_eval, HATE_SPEECH_LABELS,
};
use qtune_gptj::GenerationConfig;
use qtune_kernels::QBackend;
use qtune_lm::CausalLm;
use serde::Serialize;
use tokenizers::Tokenizer;

use burn::tensor::backend::Backend;
use qtune_data::{collate, Example, Padding};

use crate::config::RunConfig;
use crate::step::{self, SegmentedLm};
use crate::task::{EvalItem, Gold};
use crate::TrainError;

/// The validation prompts of the generation metric at `eval_steps`, and how to decode them.
#[derive(Debug, Clone)]
pub struct EvalGeneration {
    pub tokenizer: tokenizers::Tokenizer,
    /// At most `eval_generate_samples` of them.
    pub items: Vec<EvalItem>,
    pub eos: u32,
    pub max_new_tokens: usize,
}

/// Mean token loss of `examples` (teacher forcing, no dropout), and the token count.
pub fn eval_loss<B: Backend, M: SegmentedLm<B>>(
    model: &M,
    examples: &[Example],
    batch_size: usize,
    pad_id: u32,
) -> Result<(f64, u64), TrainError> {
    let (mut sum, mut tokens) = (0.0, 0u64);
    for chunk in examples.chunks(batch_size.max(1)) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = collate(&refs, pad_id, Padding::Right)?;
        tokens += batch.n_target_tokens() as u64;
        sum += step::eval_loss_sum(model, &batch)?;
    }
    if tokens == 0 {
        return Err(TrainError::EmptyDataset {
            what: "validation examples have no target tokens".into(),
        });
    }
    Ok((sum / tokens as f64, tokens))
}

/// One evaluation of the loop at `eval_steps`.
#[derive(Debug, Clone)]
pub struct StepEval {
    /// Mean token loss on the validation split, and its target tokens.
    pub loss: f64,
    pub tokens: u64,
    /// The generation metric (`[training] eval_generate_samples` prompts), if configured.
    pub generation: Option<serde_json::Value>,
    /// What `metric_for_best_model` ranks: the loss, or the named generation metric.
    pub value: f64,
}

/// The loop's evaluation: eval loss on `val_set` and, with `generation` and
/// `eval_generate_samples > 0`, the generation metric; `value` is `metric_for_best_model`'s.
///
/// # Errors
/// As [`eval_loss`] and [`evaluate_generation`]; the generation metric lacking the key
/// `metric_for_best_model` names.
pub fn evaluate_step<B: QBackend, M: CausalLm<B>>(
    model: &M,
    cfg: &RunConfig,
    val_set: &[Example],
    pad_id: u32,
    generation: Option<&EvalGeneration>,
) -> Result<StepEval, TrainError> {
    let t = &cfg.training;
    let (loss, tokens) = eval_loss(model, val_set, t.per_device_eval_batch_size, pad_id)?;
    let generation = match generation {
        Some(g) if t.eval_generate_samples > 0 => Some(
            evaluate_generation(
                model,
                &g.tokenizer,
                &g.items,
                t.per_device_eval_batch_size,
                g.max_new_tokens,
                g.eos,
            )?
            .metrics,
        ),
        _ => None,
    };
    let best_metric = cfg.best_metric();
    let value = match best_metric.generation_key() {
        None => loss,
        Some(key) => generation
            .as_ref()
            .and_then(|m| m.get(key))
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| TrainError::EmptyDataset {
                what: format!(
                    "metric_for_best_model `{}`: the generation metric has no `{key}`",
                    best_metric.name
                ),
            })?,
    };
    Ok(StepEval {
        loss,
        tokens,
        generation,
        value,
    })
}

/// One decoded example, kept for the report (a few are printed).
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    pub id: String,
    pub generated: String,
    pub prediction: String,
    pub gold: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskMetrics {
    /// `squad_v2_eval`'s dict or the classification report, as JSON.
    pub metrics: serde_json::Value,
    pub predictions: Vec<Prediction>,
    /// Tokens generated over all items (EOS included where one was produced).
    pub new_tokens: u64,
}

/// The order items are generated in: longest prompt first (ties in item order,
/// [`qtune_lm::length_order`]). Batches are consecutive runs of `per_device_eval_batch_size` in
/// this order.
pub fn generation_order(items: &[EvalItem]) -> Vec<usize> {
    let lens: Vec<usize> = items.iter().map(|it| it.prompt_ids.len()).collect();
    qtune_lm::length_order(&lens)
}

/// Greedy new tokens of every item (`gen`'s settings), in item order, generated in batches of
/// `batch_size` (left-padded) in [`generation_order`] ([`qtune_lm::generate_batched`]).
pub fn generate_items<B: QBackend, M: CausalLm<B>>(
    model: &M,
    items: &[EvalItem],
    batch_size: usize,
    gen: &GenerationConfig,
) -> Result<Vec<Vec<u32>>, TrainError> {
    let prompts: Vec<Vec<u32>> = items.iter().map(|it| it.prompt_ids.clone()).collect();
    Ok(qtune_lm::generate_batched(
        model,
        &prompts,
        batch_size.max(1),
        gen,
    )?)
}

/// Greedy-decodes every item ([`generate_items`]: batched, left-padded, longest first) and
/// scores the answers.
pub fn evaluate_generation<B: QBackend, M: CausalLm<B>>(
    model: &M,
    tokenizer: &Tokenizer,
    items: &[EvalItem],
    batch_size: usize,
    max_new_tokens: usize,
    eos: u32,
) -> Result<TaskMetrics, TrainError> {
    if items.is_empty() {
        return Err(TrainError::EmptyDataset {
            what: "no held-back prompts for the generation metric".into(),
        });
    }
    let gen = GenerationConfig {
        max_new_tokens,
        eos_token_id: Some(eos),
        pad_token_id: Some(eos),
        ..GenerationConfig::default()
    };
    let generated = generate_items(model, items, batch_size, &gen)?;
    let new_tokens = generated.iter().map(|g| g.len() as u64).sum();
    let mut texts = Vec::with_capacity(items.len());
    for out in generated {
        let ids: Vec<u32> = out.into_iter().filter(|&t| t != eos).collect();
        let text = tokenizer
            .decode(&ids, true)
            .map_err(|e| TrainError::Tokenizer { msg: e.to_string() })?;
        texts.push(text);
    }
    let mut predictions = Vec::with_capacity(items.len());
    let metrics = match items[0].gold {
        Gold::Answers(_) => {
            let mut gold = Vec::new();
            let mut preds = HashMap::new();
            for (it, text) in items.iter().zip(&texts) {
                let Gold::Answers(a) = &it.gold else { continue };
                let answer = answer_from_generation(text);
                predictions.push(Prediction {
                    id: it.id.clone(),
                    generated: text.clone(),
                    prediction: answer.clone(),
                    gold: a.first().cloned().unwrap_or_default(),
                });
                gold.push((it.id.clone(), a.clone()));
                preds.insert(it.id.clone(), answer);
            }
            serde_json::to_value(squad_v2_eval(&gold, &preds)?).unwrap_or_default()
        }
        Gold::Class(_) => {
            let (mut gold, mut pred) = (Vec::new(), Vec::new());
            for (it, text) in items.iter().zip(&texts) {
                let Gold::Class(c) = it.gold else { continue };
                let p = label_from_generation(text, &HATE_SPEECH_LABELS);
                predictions.push(Prediction {
                    id: it.id.clone(),
                    generated: text.clone(),
                    prediction: p.map_or("?", |i| HATE_SPEECH_LABELS[i]).to_string(),
                    gold: HATE_SPEECH_LABELS[c].to_string(),
                });
                gold.push(c);
                pred.push(p);
            }
            serde_json::to_value(classification_eval(&gold, &pred, &HATE_SPEECH_LABELS)?)
                .unwrap_or_default()
        }
        Gold::Text(_) => {
            let (mut gold, mut pred) = (Vec::new(), Vec::new());
            for (it, text) in items.iter().zip(&texts) {
                let Gold::Text(g) = &it.gold else { continue };
                predictions.push(Prediction {
                    id: it.id.clone(),
                    generated: text.clone(),
                    prediction: text.trim().to_string(),
                    gold: g.clone(),
                });
                gold.push(g.clone());
                pred.push(text.clone());
            }
            serde_json::to_value(exact_match_eval(&gold, &pred)?).unwrap_or_default()
        }
    };
    Ok(TaskMetrics {
        metrics,
        predictions,
        new_tokens,
    })
}
