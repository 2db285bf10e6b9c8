//! Reward modelling, as TRL 0.24's `RewardTrainer` trains an outcome
//! reward model: a sequence classifier (the LoRA-adapted body and its
//! `score` head, PEFT's `task_type` SEQ_CLS) scores the chosen and the
//! rejected answer of each preference pair, and the Bradley–Terry loss
//! pushes the chosen one's score above the other's:
//!
//! ```text
//! r = score(norm(h))[last non-pad token]             one number a sequence
//! loss = mean_pairs −logσ(r_chosen − r_rejected − margin)
//!        + center_rewards_coefficient · mean_pairs (r_chosen + r_rejected)²
//! ```
//!
//! The data is TRL's preference shape (`RewardTrainer._prepare_dataset`), or its processed
//! rows (`chosen_input_ids`, `rejected_input_ids`: token ids used as they are):
//! - text lines `{"prompt"?, "chosen", "rejected", "margin"?}`: the eos
//!   token's text appended to each answer that does not end with it, the
//!   prompt (if any) put before each, then each tokenized whole as
//!   `tokenizer(text)` does (its special tokens: a bos where the
//!   tokenizer adds one);
//! - conversational lines (`chosen` and `rejected` lists of messages, an
//!   optional `prompt` list before them): each conversation rendered with
//!   the chat template (no generation prompt, the line's
//!   `chat_template_kwargs` and `tools`), tokenized without special tokens.
//!
//! A pair with either side longer than `seq_len` tokens is dropped (TRL's
//! `max_length` filter), not truncated. The loss averages over each
//! micro-batch's pairs; gradient accumulation averages the micro-batches.
//! TRL's metrics (`accuracy`, `margin`, `min_reward`, `mean_reward`,
//! `max_reward`) are each micro-batch's, averaged over the step's
//! micro-batches; `num_tokens` counts every row's tokens (its attention
//! mask).

use serde_json::{Map, Value};

use super::chat::Message;
use super::data::{jsonl_lines, utf8_text, Batch, DataOptions, Dataset, Example, LossMasks, Parser};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::preference::{reward_loss, REWARD_STATS};
use crate::model::llama::score::{pooled_rows, ScoreHead};
use crate::model::llama::{Hooks, Model};
use crate::model::tokenizer::Tokenizer;
use crate::peft::adapter::{hooks_of, Adapter};
use crate::peft::TaskType;
use crate::train::preference::Objective;

/// TRL's `RewardConfig` options of the loss, and the pad id the pooling
/// looks for (TRL sets `model.config.pad_token_id` to the tokenizer's pad
/// token, or its eos token where it has none).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RewardLoss {
    /// `center_rewards_coefficient`: γ of the term γ·mean (r_c + r_r)²
    /// that keeps the scores near zero (`None`: TRL's default, no term).
    pub center_rewards_coefficient: Option<f32>,
    /// The id whose tokens the score head skips at a row's end.
    pub pad_token_id: u32,
}

impl RewardLoss {
    /// TRL's defaults (no centering) with `pad_token_id`.
    pub fn new(pad_token_id: u32) -> RewardLoss {
        RewardLoss { center_rewards_coefficient: None, pad_token_id }
    }

    /// A finite coefficient.
    pub fn validate(&self) -> Result<()> {
        match self.center_rewards_coefficient {
            Some(c) if !c.is_finite() => {
                Err(Error::invalid("center_rewards_coefficient", format!("must be a finite number, got {c}")))
            }
            _ => Ok(()),
        }
    }
}

/// What TRL's `RewardTrainer` logs beside the loss, for a step (the mean
/// over its micro-batches of each one's value) or an evaluation (the mean
/// over its batches).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RewardStats {
    /// `accuracy`: the share of pairs whose chosen answer scores higher (strictly).
    pub accuracy: f32,
    /// `margin`: the mean of r_chosen − r_rejected.
    pub margin: f32,
    /// `min_reward`, `mean_reward`, `max_reward`: over every score of a micro-batch.
    pub min_reward: f32,
    pub mean_reward: f32,
    pub max_reward: f32,
}

impl RewardStats {
    /// From [`reward_loss`]'s stats (the loss first, which this leaves out).
    pub(crate) fn from_stats(s: &[f32]) -> RewardStats {
        RewardStats { accuracy: s[1], margin: s[2], min_reward: s[3], mean_reward: s[4], max_reward: s[5] }
    }

    /// `(TRL's name, value)` in the order TRL logs them.
    pub fn metrics(&self) -> [(&'static str, f32); 5] {
        [
            ("min_reward", self.min_reward),
            ("mean_reward", self.mean_reward),
            ("max_reward", self.max_reward),
            ("accuracy", self.accuracy),
            ("margin", self.margin),
        ]
    }
}

/// Preference pairs from JSONL bytes for reward modelling, tokenized as TRL
/// 0.24's `RewardTrainer` does (see the module docs), as a [`Dataset`] of
/// pairs whose batches carry each pair's margin where the data has them.
/// Pairs with a side over `opts.seq_len` tokens are left out (a warning
/// says how many); none left is an `EmptyDataset` error.
pub fn reward_dataset(
    source_name: &str,
    bytes: &[u8],
    tokenizer: Option<&Tokenizer>,
    opts: &DataOptions,
    pad_id: u32,
) -> Result<Dataset> {
    let text = utf8_text(source_name, bytes)?;
    let mut parser = Parser { source_name, tokenizer, template: None, masks: LossMasks::default() };
    let mut pairs = Vec::new();
    let mut margins = Vec::new();
    let mut warnings = Vec::new();
    let mut first: Option<(usize, Shape, bool)> = None; // (line, its shape, has a margin)
    let mut dropped = 0;
    for (n, line) in jsonl_lines(text) {
        let value: Value = serde_json::from_str(line).map_err(|e| parser.error(n, format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(parser.error(n, "expected a JSON object with `chosen` and `rejected` (and `prompt`, `margin`)"));
        };
        // TRL's processed rows: `chosen_input_ids` and `rejected_input_ids`, used as they are.
        let shape = if map.contains_key("chosen_input_ids") || map.contains_key("rejected_input_ids") {
            Shape::Ids
        } else {
            for field in ["chosen", "rejected"] {
                if !map.contains_key(field) {
                    return Err(parser.error(n, format!("missing the `{field}` field of a preference pair")));
                }
            }
            if map["chosen"].is_array() {
                Shape::Chat
            } else {
                Shape::Text
            }
        };
        let margin = match map.get("margin") {
            None => None,
            Some(Value::Number(m)) => Some(m.as_f64().unwrap_or(f64::NAN) as f32).filter(|m| m.is_finite()),
            Some(other) => return Err(parser.error(n, format!("`margin` must be a number, got {other}"))),
        };
        if map.contains_key("margin") && margin.is_none() {
            return Err(parser.error(n, "`margin` must be a finite number"));
        }
        let (first_line, first_shape, first_margin) = *first.get_or_insert((n, shape, margin.is_some()));
        if shape != first_shape {
            return Err(parser.error(
                n,
                format!(
                    "a {} line after line {first_line}'s {} one: the data is one or the other (TRL adds the eos \
                     to text lines by the first line's shape)",
                    shape.name(),
                    first_shape.name()
                ),
            ));
        }
        if margin.is_some() != first_margin {
            return Err(parser
                .error(n, format!("line {first_line} {} `margin`: every line has one, or none", has(first_margin))));
        }
        let (chosen, rejected) = match shape {
            Shape::Chat => (chat_ids(&mut parser, n, &map, "chosen")?, chat_ids(&mut parser, n, &map, "rejected")?),
            Shape::Text => (line_text_ids(&parser, n, &map, "chosen")?, line_text_ids(&parser, n, &map, "rejected")?),
            Shape::Ids => {
                (token_ids(&parser, n, &map, "chosen_input_ids")?, token_ids(&parser, n, &map, "rejected_input_ids")?)
            }
        };
        if chosen == rejected {
            warnings.push(format!(
                "{source_name}, line {n}: `chosen` and `rejected` are the same; the pair gives no preference"
            ));
        }
        if chosen.len() > opts.seq_len || rejected.len() > opts.seq_len {
            dropped += 1;
            continue;
        }
        let row =
            |ids: Vec<u32>| -> Result<Example> { Ok(Example { labels: parser.labels(n, &ids)?, input_ids: ids }) };
        pairs.push((row(chosen)?, row(rejected)?));
        margins.extend(margin);
    }
    if dropped > 0 {
        warnings.push(format!(
            "{source_name}: {dropped} pair(s) with an answer over {} tokens left out (TRL's max_length filter)",
            opts.seq_len
        ));
    }
    if pairs.is_empty() {
        let detail = match dropped {
            0 => "no JSON lines".to_string(),
            n => format!("all {n} pairs have an answer over {} tokens", opts.seq_len),
        };
        return Err(Error::EmptyDataset { source_name: source_name.to_string(), detail });
    }
    Ok(Dataset::from_pairs(pairs, opts, pad_id, warnings).with_margins(margins))
}

/// A reward line's shape: text, messages, or TRL's processed token ids.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    Text,
    Chat,
    Ids,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Text => "text",
            Shape::Chat => "conversational",
            Shape::Ids => "pre-tokenized",
        }
    }
}

/// A processed line's token ids (`chosen_input_ids`, `rejected_input_ids`):
/// a non-empty list of integers, taken as they are (no eos added, as TRL).
fn token_ids(parser: &Parser, line: usize, map: &Map<String, Value>, field: &str) -> Result<Vec<u32>> {
    let Some(Value::Array(ids)) = map.get(field) else {
        return Err(parser.error(line, format!("`{field}` must be a list of token ids (TRL's processed pairs)")));
    };
    if ids.is_empty() {
        return Err(parser.error(line, format!("`{field}` is empty")));
    }
    ids.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| parser.error(line, format!("`{field}[{i}]` must be an integer in 0..2^32, got {v}")))
        })
        .collect()
}

fn has(yes: bool) -> &'static str {
    if yes {
        "has a"
    } else {
        "has no"
    }
}

/// A text line's `prompt` + `answer` as [`text_ids`] tokenizes them.
fn line_text_ids(parser: &Parser, line: usize, map: &Map<String, Value>, answer: &str) -> Result<Vec<u32>> {
    let tokenizer = parser.tokenizer(line, "reward")?;
    let prompt = match map.get("prompt") {
        None => "",
        Some(_) => parser.string(line, map, "prompt")?,
    };
    text_ids(tokenizer, prompt, parser.string(line, map, answer)?).map_err(|e| parser.error(line, e.to_string()))
}

/// `prompt` + `answer` (+ the eos token's text where the answer does not
/// end with it), tokenized with special tokens: a text the reward trainer
/// scores, as TRL's `RewardTrainer` tokenizes it.
pub fn text_ids(tokenizer: &Tokenizer, prompt: &str, answer: &str) -> Result<Vec<u32>> {
    let eos = tokenizer.eos_token().ok_or_else(|| {
        Error::invalid("reward text", "the tokenizer has no eos token, which TRL appends to every answer")
    })?;
    let mut text = answer.to_string();
    if !text.ends_with(&eos.content) {
        text.push_str(&eos.content);
    }
    tokenizer.encode(&format!("{prompt}{text}"), true)
}

/// A conversational line's `prompt` messages (if any) + `answer`'s,
/// rendered with the chat template and tokenized without special tokens.
fn chat_ids(parser: &mut Parser, line: usize, map: &Map<String, Value>, answer: &str) -> Result<Vec<u32>> {
    let mut messages: Vec<Message> = match map.get("prompt") {
        None => Vec::new(),
        Some(_) => parser.message_list(line, map, "prompt")?,
    };
    messages.extend(parser.message_list(line, map, answer)?);
    let kwargs = parser.template_kwargs(line, map)?;
    let (tokenizer, template) = parser.template(line, "conversational reward")?;
    let text = parser.render(line, &template, &messages, false, &kwargs)?;
    parser.encode(line, tokenizer, &text, false)
}

/// Records one micro-batch of pairs (its rows the chosen ones, then the
/// rejected ones): the forward to the score head, [`reward_loss`] (its
/// loss and metrics times `scale` into `stats`) and, with `grad`, the
/// backward into the hooks' gradients.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_reward_micro(
    rec: &mut Recorder,
    model: &Model,
    loss: &RewardLoss,
    batch: &Batch,
    hooks: &dyn Hooks,
    checkpoint: bool,
    (stats, scale): (&Tensor, f32),
    grad: bool,
) -> Result<()> {
    const OP: &str = "reward step";
    let (b, t) = (batch.input_ids.len(), batch.input_ids.first().map_or(0, Vec::len));
    if b == 0 || b % 2 != 0 || t == 0 {
        return Err(Error::shape(OP, format!("{b} rows of {t} tokens: a batch of pairs has 2 rows a pair")));
    }
    if batch.position_ids.is_some() || hooks.virtual_tokens() > 0 {
        return Err(Error::invalid(
            OP,
            "a reward model scores whole rows: no packing, and no virtual tokens (prompt tuning), whose last \
             position transformers' pooling would score in place of the row's",
        ));
    }
    let pairs = b / 2;
    let margins = match &batch.margins {
        Some(m) if m.len() == pairs => m.clone(),
        Some(m) => return Err(Error::shape(OP, format!("{} margins for {pairs} pairs", m.len()))),
        None => vec![0.0; pairs],
    };
    let head = ScoreHead::of(model, hooks)?;
    if head.labels() != 1 {
        return Err(Error::shape(OP, format!("a reward model's score head has one label, this one {}", head.labels())));
    }
    let gpu = rec.gpu();
    let d = model.config.hidden_size;
    let ids = model.input_ids(gpu, &batch.input_ids)?;
    let (xn, saved) = model.hidden_packed(rec, &ids, None, hooks, checkpoint, None)?; // (B, T, D)
    let rows = pooled_rows(&batch.input_ids, loss.pad_token_id);
    let xn2 = xn.reshape(&[b * t, d])?;
    let (x, scores) = head.forward(rec, &xn2, &rows)?; // (B, D), (B, 1)
    let margins = Tensor::from_slice(gpu, &[pairs], &margins)?;
    let center = loss.center_rewards_coefficient.unwrap_or(0.0);
    let dscores = reward_loss(rec, (&scores.reshape(&[b])?, &margins), center, (stats, scale))?;
    if grad {
        let dxn = head.backward(rec, &x, &dscores, &rows, b * t)?;
        model.backward_from_hidden(rec, &dxn.reshape(xn.shape())?, &saved, hooks)?;
    }
    Ok(())
}

/// A reward model's loss and TRL's metrics on held-out pairs, as
/// `RewardTrainer.evaluate()` reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct RewardEval {
    /// `eval_loss`: each batch's loss weighted by its pairs (transformers
    /// repeats a batch's loss once a row).
    pub loss: f32,
    /// `eval_accuracy`, `eval_margin`, `eval_*_reward`: the mean over the batches.
    pub stats: RewardStats,
    /// The pairs evaluated.
    pub pairs: usize,
}

/// [`RewardEval`] of `model` with `adapter` (its score head) on `batches`
/// of pairs: no dropout, a submission and a read-back a batch.
pub async fn evaluate_reward(
    gpu: &Gpu,
    model: &Model,
    adapter: Option<&Adapter>,
    batches: &[Batch],
    loss: &RewardLoss,
) -> Result<RewardEval> {
    if batches.is_empty() {
        return Err(Error::invalid("evaluate_reward", "no batch to evaluate"));
    }
    let mut pairs = 0;
    let (mut weighted, mut sums) = (0.0f64, [0.0f64; REWARD_STATS]);
    for b in batches {
        let stats = Tensor::zeros(gpu, &[REWARD_STATS], DType::F32)?;
        let mut rec = Recorder::new(gpu);
        record_reward_micro(&mut rec, model, loss, b, hooks_of(adapter), false, (&stats, 1.0), false)?;
        rec.submit()?;
        let s = stats.to_vec::<f32>(gpu).await?;
        let n = b.input_ids.len() / 2;
        pairs += n;
        weighted += s[0] as f64 * n as f64;
        for (sum, v) in sums.iter_mut().zip(&s) {
            *sum += *v as f64;
        }
    }
    let mean: Vec<f32> = sums.iter().map(|s| (s / batches.len() as f64) as f32).collect();
    Ok(RewardEval { loss: (weighted / pairs as f64) as f32, stats: RewardStats::from_stats(&mean), pairs })
}

/// Sequences a reward model scores in one submission.
const SCORED_AT_ONCE: usize = 16;

/// The scores `model` with `adapter` (its score head; `None`: a classifier
/// checkpoint's own) gives each sequence of `input_ids` (rows of any
/// lengths, each scored at its last token that is not `pad_id`), num_labels
/// a sequence: a submission for each [`SCORED_AT_ONCE`] of them, each
/// padded to its longest.
pub async fn score_sequences(
    gpu: &Gpu,
    model: &Model,
    adapter: Option<&Adapter>,
    input_ids: &[Vec<u32>],
    pad_id: u32,
) -> Result<Vec<f32>> {
    const OP: &str = "score_sequences";
    if input_ids.is_empty() || input_ids.iter().any(Vec::is_empty) {
        return Err(Error::invalid(OP, "nothing to score: every sequence needs a token"));
    }
    let hooks = hooks_of(adapter);
    if hooks.virtual_tokens() > 0 {
        return Err(Error::invalid(OP, "a reward model scores whole rows, without virtual tokens"));
    }
    let head = ScoreHead::of(model, hooks)?;
    let d = model.config.hidden_size;
    let mut out = Vec::with_capacity(input_ids.len());
    for chunk in input_ids.chunks(SCORED_AT_ONCE) {
        let t = chunk.iter().map(Vec::len).max().unwrap_or(0);
        let padded: Vec<Vec<u32>> = chunk
            .iter()
            .map(|row| {
                let mut row = row.clone();
                row.resize(t, pad_id);
                row
            })
            .collect();
        let mut rec = Recorder::new(gpu);
        let ids = model.input_ids(gpu, &padded)?;
        let (xn, _) = model.hidden_packed(&mut rec, &ids, None, hooks, false, None)?;
        let rows = pooled_rows(&padded, pad_id);
        let (_, scores) = head.forward(&mut rec, &xn.reshape(&[padded.len() * t, d])?, &rows)?;
        rec.submit()?;
        out.extend(scores.to_vec::<f32>(gpu).await?);
    }
    Ok(out)
}

/// An adapter fit for `objective`: a sequence classifier (a SEQ_CLS LoRA,
/// its score head) for "reward" (of one label) and "classification", and
/// for every other objective an adapter that is not one (its head scores
/// text; it does not write it).
pub fn check_adapter_for(objective: &Objective, adapter: &Adapter) -> Result<()> {
    let scores = matches!(objective, Objective::Reward(_) | Objective::Classification(_));
    let labels = adapter.num_labels();
    let detail = match (scores, adapter.task_type() == TaskType::SeqCls) {
        (true, false) => format!(
            "{} trains a sequence classifier: a LoRA with task_type SEQ_CLS (its score head), not this {} adapter",
            objective.name(),
            adapter.method()
        ),
        (false, true) => format!(
            "the adapter is a sequence classifier or reward model (task_type SEQ_CLS): train it with objective \
             reward or classification, not {}",
            objective.name()
        ),
        (true, true) if labels != 1 && matches!(objective, Objective::Reward(_)) => format!(
            "a reward model's score head has one label, this adapter's {labels}: train it with objective \
             classification"
        ),
        (true, true) => {
            return match objective {
                Objective::Classification(loss) => loss.validate().and_then(|_| loss.check_head(labels)),
                _ => Ok(()),
            }
        }
        _ => return Ok(()),
    };
    Err(Error::TrainOption { option: "objective", detail })
}

/// A reward model: `adapter`, a SEQ_CLS adapter, or without one `model`, a
/// classifier checkpoint; either with a score head of one label (one number
/// a text). `what` names it in the error.
pub fn check_reward_model(model: &Model, adapter: Option<&Adapter>, what: &str) -> Result<()> {
    let labels = match adapter {
        Some(a) if a.task_type() != TaskType::SeqCls => {
            Err("not a reward model: its task_type is not SEQ_CLS (train one with objective reward)".to_string())
        }
        Some(a) => Ok(a.num_labels()),
        None => model.config.head.num_labels().ok_or_else(|| {
            "no reward model: give a SEQ_CLS adapter, or a …ForSequenceClassification checkpoint as the model"
                .to_string()
        }),
    };
    let detail = match labels {
        Err(detail) => detail,
        Ok(1) => return Ok(()),
        Ok(n) => {
            format!("a classifier of {n} labels, not a reward model (one label, one score a text): classify with it instead")
        }
    };
    Err(Error::invalid("reward model", format!("{what}: {detail}")))
}

/// The tokens a reward model scores for a completion in GRPO or RLOO, as
/// TRL 0.24's `GRPOTrainer._calculate_rewards` makes them: a text prompt
/// (the data line's `prompt`) and the completion's text joined, or for
/// messages the conversation with the completion as the assistant's turn,
/// rendered by the chat template (no generation prompt, no template
/// keywords); either tokenized without special tokens. (RewardTrainer's
/// training rows have the tokenizer's special tokens and an eos, which
/// these do not: TRL's own mismatch, kept.)
pub fn reward_model_ids(tokenizer: &Tokenizer, prompt: &Value, completion: &str) -> Result<Vec<u32>> {
    const OP: &str = "reward model input";
    let text = match prompt {
        Value::String(p) => format!("{p}{completion}"),
        Value::Array(_) => {
            let mut messages: Vec<Message> = serde_json::from_value(prompt.clone())
                .map_err(|e| Error::invalid(OP, format!("the prompt's messages: {e}")))?;
            messages.push(Message::new("assistant", completion));
            let template = crate::train::chat::ChatTemplate::from_tokenizer(tokenizer)?
                .ok_or_else(|| Error::invalid(OP, "a conversational prompt needs a tokenizer with a chat_template"))?;
            template.render(&messages, false)?
        }
        other => return Err(Error::invalid(OP, format!("the prompt must be a text or messages, got {other}"))),
    };
    tokenizer.encode(&text, false)
}

/// A reward model's reward of each completion (its text) of the prompt
/// beside it (the data line's `prompt` value), as TRL's GRPOTrainer scores
/// with one ([`reward_model_ids`]; the pad id the tokenizer's, else its
/// eos): `adapter` on `model`, or without one `model` itself, a reward model
/// checkpoint, with its own `tokenizer` (TRL's `reward_processing_classes`).
pub async fn reward_model_scores(
    (gpu, model, adapter): (&Gpu, &Model, Option<&Adapter>),
    tokenizer: &Tokenizer,
    prompts: &[&Value],
    completions: &[String],
) -> Result<Vec<f32>> {
    if prompts.len() != completions.len() {
        return Err(Error::invalid(
            "reward_model_scores",
            format!("{} prompts for {} completions", prompts.len(), completions.len()),
        ));
    }
    let ids =
        prompts.iter().zip(completions).map(|(p, c)| reward_model_ids(tokenizer, p, c)).collect::<Result<Vec<_>>>()?;
    score_sequences(gpu, model, adapter, &ids, crate::train::recipe::pad_id(Some(tokenizer))).await
}
