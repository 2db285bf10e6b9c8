//! Sequence classification, as transformers' `Trainer` trains an
//! `AutoModelForSequenceClassification` wrapped by PEFT (`task_type`
//! SEQ_CLS): the LoRA-adapted body and its `score` head (num_labels rows,
//! trained whole through `modules_to_save`) read each text at its last
//! token that is not padding, and the loss of the `problem_type` compares
//! those logits with the row's label:
//!
//! ```text
//! z = score(norm(h))[last non-pad token]                          (L = num_labels values a row)
//! regression                   mean (z − y)²                      (num_labels 1: one number a row)
//! single_label_classification  mean −log softmax(z)[c]            (an integer class c a row; −100: none)
//! multi_label_classification   mean BCE-with-logits(z, y)         (L values in [0, 1] a row)
//! ```
//!
//! The problem type is transformers' inference unless given: one label is
//! regression, integer labels single-label, lists multi-label.
//!
//! The data is JSON lines `{"text": …, "label": …}` (`labels` too, as
//! transformers' collators name it), tokenized as `tokenizer(text,
//! truncation=True, max_length=seq_len)` (special tokens included, the
//! text cut to fit), or pre-tokenized `{"input_ids": […], "label": …}`.
//! Rows are padded right with the pad id, which the pooling skips (the
//! model's `config.pad_token_id`: the tokenizer's pad token, or its eos).
//!
//! Each micro-batch's loss is its mean; with gradient accumulation the
//! micro-batches' losses (and gradients) add up, undivided: transformers
//! 4.57 passes `num_items_in_batch` to a model whose forward takes
//! `**kwargs` and then leaves the division to that model's loss, which the
//! sequence-classification loss does not do. webpeft trains as it does.

use serde_json::{Map, Value};

use super::data::{jsonl_lines, utf8_text, Batch, DataOptions, Dataset, Example, LossMasks, Parser};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
pub use crate::kernels::classification::ProblemType;
use crate::kernels::classification::{classification_loss, CLASSIFICATION_STATS};
use crate::model::llama::score::{pooled_rows, ScoreHead};
use crate::model::llama::{Hooks, Model, IGNORE_INDEX};
use crate::model::tokenizer::Tokenizer;
use crate::peft::adapter::{hooks_of, Adapter};

/// The loss's settings: the score head's labels, the problem type (`None`:
/// transformers' inference from the labels) and the pad id the pooling skips.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClassificationLoss {
    pub num_labels: usize,
    pub problem_type: Option<ProblemType>,
    pub pad_token_id: u32,
}

impl ClassificationLoss {
    /// Each micro-batch's share of a step's loss: all of it (see the module
    /// docs: transformers adds the accumulated micro-batches' means).
    pub const MICRO_SCALE: f32 = 1.0;

    /// `num_labels` labels, the problem type inferred, pad id 0 (until the
    /// tokenizer gives it).
    pub fn new(num_labels: usize) -> ClassificationLoss {
        ClassificationLoss { num_labels, problem_type: None, pad_token_id: 0 }
    }

    /// At least one label, and two for single-label classification.
    pub fn validate(&self) -> Result<()> {
        if self.num_labels == 0 {
            return Err(Error::TrainOption { option: "num_labels", detail: "must be at least 1".into() });
        }
        if self.problem_type == Some(ProblemType::SingleLabelClassification) && self.num_labels < 2 {
            return Err(Error::TrainOption {
                option: "problem_type",
                detail: format!(
                    "single_label_classification needs 2 or more labels, num_labels is {}",
                    self.num_labels
                ),
            });
        }
        Ok(())
    }

    /// The adapter's score head has the loss's labels.
    pub fn check_head(&self, labels: usize) -> Result<()> {
        if labels != self.num_labels {
            return Err(Error::TrainOption {
                option: "num_labels",
                detail: format!("{}, but the adapter's score head has {labels} label(s)", self.num_labels),
            });
        }
        Ok(())
    }

    /// The problem type of a batch whose rows have `per_row` target values:
    /// the given one, or transformers' inference (one label: regression; a
    /// class index a row: single-label; else multi-label), as the data's
    /// reader shaped the targets by it.
    pub fn problem(&self, per_row: usize) -> ProblemType {
        self.problem_type.unwrap_or(match (self.num_labels, per_row) {
            (1, _) => ProblemType::Regression,
            (_, 1) => ProblemType::SingleLabelClassification,
            _ => ProblemType::MultiLabelClassification,
        })
    }
}

/// transformers' choice of problem type where the config names none
/// (`ForSequenceClassificationLoss`): one label is regression; more,
/// integer labels single-label classification, others multi-label.
fn infer_problem_type(num_labels: usize, integer_labels: bool) -> ProblemType {
    match (num_labels, integer_labels) {
        (1, _) => ProblemType::Regression,
        (_, true) => ProblemType::SingleLabelClassification,
        _ => ProblemType::MultiLabelClassification,
    }
}

/// Labelled texts from JSONL bytes for `loss`'s classifier (see the module
/// docs), each label read as the problem type wants it: the given one, or
/// the one transformers infers from the first line's label. Each row is cut
/// to `opts.seq_len` tokens; every line's label must fit the problem type
/// (a typed error naming the line).
pub fn classification_dataset(
    source_name: &str,
    bytes: &[u8],
    tokenizer: Option<&Tokenizer>,
    opts: &DataOptions,
    loss: &ClassificationLoss,
) -> Result<Dataset> {
    let text = utf8_text(source_name, bytes)?;
    let parser = Parser { source_name, tokenizer, template: None, masks: LossMasks::default() };
    loss.validate()?;
    let num_labels = loss.num_labels;
    let mut problem = loss.problem_type;
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (n, line) in jsonl_lines(text) {
        let value: Value = serde_json::from_str(line).map_err(|e| parser.error(n, format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(parser.error(n, "expected a JSON object with `text` (or `input_ids`) and `label`"));
        };
        let label = match (map.get("label"), map.get("labels")) {
            (Some(l), None) | (None, Some(l)) => l,
            (Some(_), Some(_)) => return Err(parser.error(n, "both `label` and `labels`: give one")),
            (None, None) => return Err(parser.error(n, "missing the `label` field")),
        };
        let problem = *problem.get_or_insert_with(|| infer_problem_type(num_labels, is_integer(label)));
        let target = target(&parser, n, label, num_labels, problem)?;
        let ids = row_ids(&parser, n, &map, opts.seq_len)?;
        rows.push(Example { labels: vec![IGNORE_INDEX; ids.len()], input_ids: ids });
        targets.push(target);
    }
    let Some(problem) = problem.filter(|_| !rows.is_empty()) else {
        let _ = problem;
        return Err(Error::EmptyDataset { source_name: source_name.to_string(), detail: "no JSON lines".into() });
    };
    if problem == ProblemType::SingleLabelClassification && targets.iter().all(|t| t[0] == IGNORE_INDEX as f32) {
        return Err(Error::EmptyDataset {
            source_name: source_name.to_string(),
            detail: "every label is -100: nothing to learn".into(),
        });
    }
    Ok(Dataset::from_rows(rows, opts, loss.pad_token_id).with_targets(targets))
}

fn is_integer(v: &Value) -> bool {
    v.as_i64().is_some() || v.as_u64().is_some()
}

/// A line's label as the loss reads it: a class index (single-label), one
/// number (regression, one label), or `num_labels` numbers.
fn target(parser: &Parser, n: usize, label: &Value, num_labels: usize, problem: ProblemType) -> Result<Vec<f32>> {
    let number = |v: &Value, what: &str| -> Result<f32> {
        v.as_f64()
            .map(|x| x as f32)
            .filter(|x| x.is_finite())
            .ok_or_else(|| parser.error(n, format!("{what} must be a finite number, got {v}")))
    };
    match problem {
        ProblemType::SingleLabelClassification => {
            let class = label.as_i64().ok_or_else(|| {
                parser.error(
                    n,
                    format!("`label` must be a class index (an integer) for single_label_classification, got {label}"),
                )
            })?;
            if class != IGNORE_INDEX as i64 && !(0..num_labels as i64).contains(&class) {
                return Err(parser.error(
                    n,
                    format!("`label` {class} is not a class of 0..{num_labels} (num_labels {num_labels}; -100: none)"),
                ));
            }
            Ok(vec![class as f32])
        }
        _ => {
            let values = match label {
                Value::Array(list) => {
                    list.iter().enumerate().map(|(i, v)| number(v, &format!("`label[{i}]`"))).collect::<Result<_>>()?
                }
                v => vec![number(v, "`label`")?],
            };
            if values.len() != num_labels {
                return Err(parser.error(
                    n,
                    format!(
                        "{} label value(s) for {}: need num_labels ({num_labels}) of them",
                        values.len(),
                        problem.name()
                    ),
                ));
            }
            Ok(values)
        }
    }
}

/// A line's token ids: its `text` tokenized and cut to `max_length`
/// (special tokens included), or its `input_ids` as they are (cut too).
fn row_ids(parser: &Parser, n: usize, map: &Map<String, Value>, max_length: usize) -> Result<Vec<u32>> {
    if let Some(ids) = map.get("input_ids") {
        let Value::Array(ids) = ids else {
            return Err(parser.error(n, "`input_ids` must be a list of token ids"));
        };
        if ids.is_empty() {
            return Err(parser.error(n, "`input_ids` is empty"));
        }
        let mut out = ids
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| parser.error(n, format!("`input_ids[{i}]` must be an integer in 0..2^32, got {v}")))
            })
            .collect::<Result<Vec<u32>>>()?;
        out.truncate(max_length);
        return Ok(out);
    }
    if !map.contains_key("text") {
        return Err(parser.error(n, "missing the `text` field (or `input_ids`)"));
    }
    let text = parser.string(n, map, "text")?;
    let tokenizer = parser.tokenizer(n, "classification")?;
    let ids = tokenizer.encode_truncated(text, max_length).map_err(|e| parser.error(n, e.to_string()))?;
    if ids.is_empty() {
        return Err(parser.error(n, "`text` gives no token"));
    }
    Ok(ids)
}

/// A micro-batch's problem type and targets, flattened as the loss kernel reads them.
fn batch_targets(batch: &Batch, loss: &ClassificationLoss) -> Result<(ProblemType, Vec<f32>)> {
    const OP: &str = "classification step";
    let Some(targets) = &batch.targets else {
        return Err(Error::invalid(OP, "the batch has no labels: it is not from classification data"));
    };
    let labels = loss.num_labels;
    let problem = loss.problem(targets.first().map_or(0, Vec::len));
    let per_row = if problem == ProblemType::SingleLabelClassification { 1 } else { labels };
    if targets.len() != batch.input_ids.len() || targets.iter().any(|t| t.len() != per_row) {
        return Err(Error::shape(
            OP,
            format!(
                "{} rows' targets for {} rows: {} needs {per_row} value(s) a row for a score head of {labels} labels",
                targets.len(),
                batch.input_ids.len(),
                problem.name()
            ),
        ));
    }
    if problem == ProblemType::SingleLabelClassification {
        if let Some(bad) =
            targets.iter().map(|t| t[0]).find(|&c| c != IGNORE_INDEX as f32 && !(c >= 0.0 && (c as usize) < labels))
        {
            return Err(Error::invalid(OP, format!("label {bad} is not a class of the score head's {labels}")));
        }
    }
    Ok((problem, targets.concat()))
}

/// Rows of a batch the loss counts: single-label's rows with a label, every
/// row otherwise.
pub(crate) fn counted_rows(batch: &Batch) -> usize {
    match &batch.targets {
        Some(t) => t.iter().filter(|t| !(t.len() == 1 && t[0] == IGNORE_INDEX as f32)).count(),
        None => 0,
    }
}

/// Records one micro-batch: the forward to the score head's pooled logits,
/// [`classification_loss`] (`scale` times its loss, and its counts, into
/// `stats`) and, with `grad`, the backward into the hooks' gradients.
/// Returns the logits (B, L).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_classification_micro(
    rec: &mut Recorder,
    model: &Model,
    loss: &ClassificationLoss,
    batch: &Batch,
    hooks: &dyn Hooks,
    checkpoint: bool,
    (stats, scale): (&Tensor, f32),
    grad: bool,
) -> Result<Tensor> {
    const OP: &str = "classification step";
    let (b, t) = (batch.input_ids.len(), batch.input_ids.first().map_or(0, Vec::len));
    if b == 0 || t == 0 {
        return Err(Error::shape(OP, format!("{b} rows of {t} tokens")));
    }
    if batch.position_ids.is_some() || hooks.virtual_tokens() > 0 {
        return Err(Error::invalid(
            OP,
            "a classifier reads whole rows: no packing, and no virtual tokens (prompt tuning), whose last position \
             transformers' pooling would read in place of the row's",
        ));
    }
    let head = ScoreHead::of(model, hooks)?;
    loss.validate()?;
    loss.check_head(head.labels())?;
    let (problem, targets) = batch_targets(batch, loss)?;
    let gpu = rec.gpu();
    let d = model.config.hidden_size;
    let ids = model.input_ids(gpu, &batch.input_ids)?;
    let (xn, saved) = model.hidden_packed(rec, &ids, None, hooks, checkpoint, None)?; // (B, T, D)
    let rows = pooled_rows(&batch.input_ids, loss.pad_token_id);
    let (x, logits) = head.forward(rec, &xn.reshape(&[b * t, d])?, &rows)?; // (B, D), (B, L)
    let targets = Tensor::from_slice(gpu, &[targets.len()], &targets)?;
    let dlogits = classification_loss(rec, (&logits, &targets), problem, (stats, scale))?;
    if grad {
        let dxn = head.backward(rec, &x, &dlogits, &rows, b * t)?;
        model.backward_from_hidden(rec, &dxn.reshape(xn.shape())?, &saved, hooks)?;
    }
    Ok(logits)
}

/// A classifier's loss on held-out rows, as `Trainer.evaluate()` reports it,
/// and its accuracy.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassificationEval {
    /// `eval_loss`: each batch's loss weighted by its rows (transformers
    /// repeats a batch's loss once a row).
    pub loss: f32,
    /// Single-label: the share of labelled rows whose highest logit (the
    /// first, on a tie) is their class, as `compute_metrics` with
    /// `argmax` accuracy gives it. `None` for the other problem types.
    pub accuracy: Option<f32>,
    /// The rows evaluated.
    pub rows: usize,
}

/// [`ClassificationEval`] of `model` with `adapter` (its score head) on
/// `batches`: no dropout, a submission and a read-back a batch.
pub async fn evaluate_classification(
    gpu: &Gpu,
    model: &Model,
    adapter: Option<&Adapter>,
    batches: &[Batch],
    loss: &ClassificationLoss,
) -> Result<ClassificationEval> {
    if batches.is_empty() {
        return Err(Error::invalid("evaluate_classification", "no batch to evaluate"));
    }
    let (mut rows, mut weighted, mut correct, mut counted) = (0, 0.0f64, 0.0f64, 0.0f64);
    let single = loss.problem(batches[0].targets.as_ref().and_then(|t| t.first()).map_or(0, Vec::len))
        == ProblemType::SingleLabelClassification;
    for b in batches {
        let stats = Tensor::zeros(gpu, &[CLASSIFICATION_STATS], DType::F32)?;
        let mut rec = Recorder::new(gpu);
        record_classification_micro(&mut rec, model, loss, b, hooks_of(adapter), false, (&stats, 1.0), false)?;
        rec.submit()?;
        let s = stats.to_vec::<f32>(gpu).await?;
        let n = b.input_ids.len();
        rows += n;
        weighted += s[0] as f64 * n as f64;
        correct += s[1] as f64;
        counted += s[2] as f64;
    }
    Ok(ClassificationEval {
        loss: (weighted / rows as f64) as f32,
        accuracy: (single && counted > 0.0).then(|| (correct / counted) as f32),
        rows,
    })
}

/// The labels of the classifier `adapter` (a SEQ_CLS LoRA) or, without one,
/// of `model` (a `…ForSequenceClassification` checkpoint); an error naming
/// what is missing otherwise.
pub fn classifier_labels(model: &Model, adapter: Option<&Adapter>) -> Result<usize> {
    match adapter {
        Some(a) if a.task_type() == crate::peft::TaskType::SeqCls => Ok(a.num_labels()),
        Some(a) => Err(Error::invalid(
            "classifier",
            format!(
                "the {} adapter is not a sequence classifier (its task_type is not SEQ_CLS): train one with \
                 objective classification",
                a.method()
            ),
        )),
        None => model.config.head.num_labels().ok_or_else(|| {
            Error::invalid(
                "classifier",
                "no classifier: give a SEQ_CLS adapter, or a …ForSequenceClassification checkpoint as the model",
            )
        }),
    }
}

/// A classifier's verdict on one text, as transformers' text-classification
/// pipeline gives its top label: the label of the highest logit (the
/// first, on a tie) and its score: the softmax probability for
/// single-label classification, the sigmoid for multi-label, the logit
/// itself for regression (the pipeline's `function_to_apply` for each).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    pub label: usize,
    pub score: f32,
    pub logits: Vec<f32>,
}

/// Each row's [`Prediction`] from `logits` (rows of `num_labels`), read as `problem`.
pub fn predictions(logits: &[f32], num_labels: usize, problem: ProblemType) -> Vec<Prediction> {
    logits
        .chunks(num_labels.max(1))
        .map(|row| {
            let (label, &top) =
                row.iter().enumerate().fold((0, &row[0]), |best, (i, v)| if *v > *best.1 { (i, v) } else { best });
            let score = match problem {
                ProblemType::Regression => top,
                ProblemType::MultiLabelClassification => 1.0 / (1.0 + (-top).exp()),
                ProblemType::SingleLabelClassification => 1.0 / row.iter().map(|v| (v - top).exp()).sum::<f32>(),
            };
            Prediction { label, score, logits: row.to_vec() }
        })
        .collect()
}

/// The classifier's [`Prediction`] of each text (`adapter`'s score head,
/// or without one a classifier checkpoint's own), tokenized as its training
/// data is (special tokens, cut to `max_length`), read as `problem_type`
/// (`None`: the checkpoint's, else regression with one label, else
/// single-label).
pub async fn classify_texts(
    (gpu, model, adapter): (&Gpu, &Model, Option<&Adapter>),
    tokenizer: &Tokenizer,
    texts: &[String],
    problem_type: Option<ProblemType>,
    max_length: usize,
) -> Result<Vec<Prediction>> {
    let head = ScoreHead::of(model, hooks_of(adapter))?;
    let own = match model.config.head {
        crate::model::config::ModelHead::SequenceClassification { problem_type, .. } => problem_type,
        crate::model::config::ModelHead::CausalLm => None,
    };
    let loss = ClassificationLoss { num_labels: head.labels(), problem_type: problem_type.or(own), pad_token_id: 0 };
    let ids = texts
        .iter()
        .enumerate()
        .map(|(i, t)| match tokenizer.encode_truncated(t, max_length)? {
            ids if ids.is_empty() => Err(Error::invalid("classify", format!("text {i} has no tokens"))),
            ids => Ok(ids),
        })
        .collect::<Result<Vec<_>>>()?;
    let pad = crate::train::recipe::pad_id(Some(tokenizer));
    let logits = crate::train::reward::score_sequences(gpu, model, adapter, &ids, pad).await?;
    Ok(predictions(&logits, loss.num_labels, loss.problem(1)))
}
