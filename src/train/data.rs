//! Training data: JSONL lines → tokenized examples → fixed-order batches.
//!
//! Each line is one JSON object, of one of four shapes (detected per line,
//! extra keys ignored, blank lines skipped):
//! 1. `{"text": …}`: language modelling. `ids = encode(text, true)`, then the
//!    eos id unless the ids end with it; every token is trained. This is TRL's
//!    `SFTTrainer` on a `text` column (which appends the eos token to the text).
//! 2. `{"prompt": …, "completion": …}`: `SFTTrainer` with `completion_only_loss`
//!    (TRL's default). Text: `ids = encode(prompt + completion, true)` + eos;
//!    conversational (both lists of messages): `ids = render(prompt +
//!    completion)` encoded without special tokens, no eos added. The first
//!    `len(prompt ids)` tokens are not trained, the prompt's ids being
//!    `encode(prompt, true)` or `render(prompt, add_generation_prompt=true)`,
//!    as TRL masks them, by count, even where the joint tokenization does not
//!    start with the prompt's (a merge across the seam). With
//!    `completion_only_loss` off, every token is trained.
//! 3. `{"messages": [{"role", "content"}, …]}`: rendered with the tokenizer's
//!    chat template (no generation prompt) and encoded without special tokens,
//!    as `apply_chat_template(tokenize=True)`. With `assistant_only_loss`
//!    (webpeft's default; TRL's is off) only assistant turns are trained:
//!    turn `i` spans the text between `render(messages[..i], add_generation_prompt=true)`
//!    and `render(messages[..=i])`, and a token is trained when its bytes lie
//!    inside such a span (the eos that closes the turn included). Off, every
//!    token is trained, as TRL's default.
//! 4. `{"input_ids": [...], "labels": [...]}`: pre-tokenized, `labels`
//!    optional (defaults to `input_ids`); needs no tokenizer.
//!
//! Labels are not shifted: `labels[t]` is the id at `t` (or −100), and the
//! model predicts `labels[t + 1]` from position `t`, as in transformers.
//!
//! A [`Dataset`] then truncates each example to `seq_len` (packing: and puts
//! several whole examples in each row of at most `seq_len`, see [`pack`]),
//! drops rows in which no token is predicted, and cuts an epoch into batches,
//! right-padded with the pad id and −100.

use std::rc::Rc;

use serde_json::{Map, Value};

use super::chat::{ChatTemplate, Message};
use crate::model::llama::IGNORE_INDEX;
use crate::model::tokenizer::Tokenizer;
use crate::util::rng::Rng;
use crate::{Error, Result};

/// One tokenized training example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input_ids: Vec<u32>,
    /// Same length as `input_ids`: the id where the token is trained, −100 where not.
    pub labels: Vec<i32>,
}

impl Example {
    /// Labels that are not −100.
    pub fn trained(&self) -> usize {
        self.labels.iter().filter(|&&l| l != IGNORE_INDEX).count()
    }

    /// Whether the loss sees at least one of this row's labels: the label at 0
    /// is never predicted (nothing comes before it).
    fn predicts_any(&self) -> bool {
        self.labels.iter().skip(1).any(|&l| l != IGNORE_INDEX)
    }
}

/// B rows of one length, right-padded.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// (B, T)
    pub input_ids: Vec<Vec<u32>>,
    /// (B, T), −100 on padding.
    pub labels: Vec<Vec<i32>>,
    /// (B, T), packed rows only: each token's position in its own example
    /// (0 where an example starts; the padding counts on as one more). The
    /// model then keeps attention inside each example and ropes each token at
    /// its position, as transformers does with `position_ids` for padding-free
    /// batches. `None`: every row is one sequence at positions 0..T.
    pub position_ids: Option<Vec<Vec<u32>>>,
    /// KTO: each example's label (true: desirable); its rows are the B
    /// examples' own, then their B KL rows. `None` elsewhere.
    pub desirable: Option<Vec<bool>>,
    /// Each row's tokens before its padding (the rest of the row is padding,
    /// which the attention mask of transformers leaves out: TRL's SFT
    /// metrics count these tokens only).
    pub lengths: Vec<usize>,
    /// Preference data whose reference log-probabilities were precomputed
    /// (TRL's `precompute_ref_log_probs`): each row's, in row order.
    pub reference_logps: Option<Vec<f32>>,
    /// GRPO: each row's completion's advantage (`train::grpo`).
    pub advantages: Option<Vec<f32>>,
    /// GRPO: the tokens generated for the whole generation the rows belong
    /// to, before any masking (TRL's `num_items_in_batch`, dapo's
    /// normaliser; 0: the step's labels' count).
    pub generated_tokens: usize,
    /// GRPO past its first iteration: (B, T) log π_old of each label under
    /// the policy that sampled the completions (TRL's `old_per_token_logps`),
    /// at the label positions (read there only). `None`: that policy is the
    /// one being trained.
    pub old_logps: Option<Vec<Vec<f32>>>,
    /// Reward modelling: each pair's `margin` (the data's), in pair order;
    /// `None` where the data has none.
    pub margins: Option<Vec<f32>>,
    /// Sequence classification: each row's target, in row order (a class
    /// index as f32, −100 for none; or the row's L regression or
    /// multi-label values). `None` elsewhere.
    pub targets: Option<Vec<Vec<f32>>>,
}

impl Batch {
    /// An unpacked batch: each row one sequence at positions 0..T, none
    /// padded (set [`Batch::lengths`] for padded rows).
    pub fn new(input_ids: Vec<Vec<u32>>, labels: Vec<Vec<i32>>) -> Batch {
        let lengths = input_ids.iter().map(Vec::len).collect();
        Batch {
            input_ids,
            labels,
            position_ids: None,
            desirable: None,
            lengths,
            reference_logps: None,
            advantages: None,
            generated_tokens: 0,
            old_logps: None,
            margins: None,
            targets: None,
        }
    }

    /// The rows' tokens before padding, all rows together (the attention
    /// mask's sum).
    pub fn unpadded_tokens(&self) -> usize {
        self.lengths.iter().sum()
    }

    /// T of the (B, T, D) embeddings that NEFTune's noise is scaled by, as
    /// transformers sees the batch: the rows' length, or for packed rows
    /// every token of the batch (TRL's padding-free collator makes them one row).
    pub fn noise_tokens(&self) -> usize {
        match self.position_ids {
            Some(_) => self.unpadded_tokens(),
            None => self.input_ids.first().map_or(0, Vec::len),
        }
    }
}

/// What [`parse_jsonl_counted`] read.
#[derive(Debug, Clone)]
pub struct ParsedData {
    pub examples: Vec<Example>,
    /// Valid lines left out because none of their tokens is trained (a chat
    /// without an assistant turn, say).
    pub skipped: usize,
}

/// The examples of a JSONL file; see the module docs for the line shapes.
/// `source_name` names the file in errors. The text, prompt/completion and
/// messages shapes need a tokenizer.
/// [`parse_jsonl`] on raw file bytes: text that is not UTF-8 is a `Data`
/// error naming the line and the byte.
pub fn parse_jsonl_bytes(source_name: &str, bytes: &[u8], tokenizer: Option<&Tokenizer>) -> Result<Vec<Example>> {
    parse_jsonl(source_name, utf8_text(source_name, bytes)?, tokenizer)
}

/// Which tokens of an SFT line are trained (TRL's `SFTConfig` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossMasks {
    /// prompt/completion lines: only the completion (`completion_only_loss`,
    /// TRL's default); off: every token.
    pub completion_only: bool,
    /// messages lines: only the assistant turns (`assistant_only_loss`;
    /// webpeft's default, TRL's is off); off: every token.
    pub assistant_only: bool,
}

impl Default for LossMasks {
    fn default() -> Self {
        LossMasks { completion_only: true, assistant_only: true }
    }
}

/// [`parse_jsonl_bytes`] with the given [`LossMasks`].
pub fn parse_jsonl_masked(
    source_name: &str,
    bytes: &[u8],
    tokenizer: Option<&Tokenizer>,
    masks: LossMasks,
) -> Result<Vec<Example>> {
    parse_with(source_name, utf8_text(source_name, bytes)?, tokenizer, masks).map(|parsed| parsed.examples)
}

/// `bytes` as text; bytes that are not UTF-8 are a `Data` error naming the line and the byte.
pub(super) fn utf8_text<'b>(source_name: &str, bytes: &'b [u8]) -> Result<&'b str> {
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
        Error::Data {
            source_name: source_name.to_string(),
            line,
            detail: format!("is not valid UTF-8 (byte {at} of the file, 0x{:02x})", bytes[at]),
        }
    })
}

/// The lines of JSONL text that are not blank, with their 1-based numbers
/// (a leading BOM and `\r` line ends dropped).
pub(super) fn jsonl_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line.strip_suffix('\r').unwrap_or(line)))
        .filter(|(_, line)| !line.trim().is_empty())
}

pub fn parse_jsonl(source_name: &str, text: &str, tokenizer: Option<&Tokenizer>) -> Result<Vec<Example>> {
    parse_jsonl_counted(source_name, text, tokenizer).map(|parsed| parsed.examples)
}

/// [`parse_jsonl`], also counting the lines left out for having no trained token.
pub fn parse_jsonl_counted(source_name: &str, text: &str, tokenizer: Option<&Tokenizer>) -> Result<ParsedData> {
    parse_with(source_name, text, tokenizer, LossMasks::default())
}

fn parse_with(source_name: &str, text: &str, tokenizer: Option<&Tokenizer>, masks: LossMasks) -> Result<ParsedData> {
    let mut parser = Parser { source_name, tokenizer, template: None, masks };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut examples = Vec::new();
    let mut skipped = 0;
    let mut lines = 0;
    for (index, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        lines += 1;
        let example = parser.line(index + 1, line)?;
        if example.trained() == 0 {
            skipped += 1;
        } else {
            examples.push(example);
        }
    }
    if examples.is_empty() {
        let detail = if lines == 0 {
            "no JSON lines".to_string()
        } else {
            format!("none of its {lines} examples has a trained token (a label other than -100)")
        };
        return Err(Error::EmptyDataset { source_name: source_name.to_string(), detail });
    }
    Ok(ParsedData { examples, skipped })
}

pub(super) struct Parser<'a> {
    pub(super) source_name: &'a str,
    pub(super) tokenizer: Option<&'a Tokenizer>,
    /// Compiled at the first chat line.
    pub(super) template: Option<Rc<ChatTemplate>>,
    /// Which tokens an SFT line trains.
    pub(super) masks: LossMasks,
}

impl<'a> Parser<'a> {
    pub(super) fn error(&self, line: usize, detail: impl Into<String>) -> Error {
        Error::Data { source_name: self.source_name.to_string(), line, detail: detail.into() }
    }

    fn line(&mut self, line: usize, text: &str) -> Result<Example> {
        let value: Value = serde_json::from_str(text).map_err(|e| self.error(line, format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(self.error(line, format!("expected a JSON object, got {}", kind(&value))));
        };
        if map.contains_key("messages") {
            self.messages(line, &map)
        } else if map.contains_key("prompt") || map.contains_key("completion") {
            self.prompt_completion(line, &map)
        } else if map.contains_key("text") {
            self.text(line, &map)
        } else if map.contains_key("input_ids") {
            self.pre_tokenized(line, &map)
        } else {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            Err(self.error(
                line,
                format!(
                    "no recognised shape: expected a `text`, `prompt` and `completion`, `messages` or `input_ids` \
                     field, found {keys:?}"
                ),
            ))
        }
    }

    pub(super) fn tokenizer(&self, line: usize, shape: &str) -> Result<&'a Tokenizer> {
        self.tokenizer.ok_or_else(|| self.error(line, format!("a `{shape}` example needs a tokenizer")))
    }

    pub(super) fn string<'m>(&self, line: usize, map: &'m Map<String, Value>, field: &str) -> Result<&'m str> {
        match map.get(field) {
            Some(Value::String(s)) => Ok(s),
            Some(other) => Err(self.error(line, format!("`{field}` must be a string, got {}", kind(other)))),
            None => Err(self.error(line, format!("missing the `{field}` field"))),
        }
    }

    pub(super) fn encode(&self, line: usize, tokenizer: &Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
        tokenizer.encode(text, special).map_err(|e| self.error(line, e.to_string()))
    }

    pub(super) fn labels(&self, line: usize, ids: &[u32]) -> Result<Vec<i32>> {
        ids.iter()
            .map(|&id| i32::try_from(id).map_err(|_| self.error(line, format!("token id {id} does not fit a label"))))
            .collect()
    }

    fn text(&self, line: usize, map: &Map<String, Value>) -> Result<Example> {
        let text = self.string(line, map, "text")?;
        if text.is_empty() {
            return Err(self.error(line, "`text` is empty"));
        }
        let tokenizer = self.tokenizer(line, "text")?;
        let mut input_ids = self.encode(line, tokenizer, text, true)?;
        push_eos(&mut input_ids, tokenizer);
        let labels = self.labels(line, &input_ids)?;
        Ok(Example { input_ids, labels })
    }

    fn prompt_completion(&mut self, line: usize, map: &Map<String, Value>) -> Result<Example> {
        let (input_ids, prompt_len) = match (map.get("prompt"), map.get("completion")) {
            (Some(Value::Array(_)), _) | (_, Some(Value::Array(_))) => self.conversation_with_completion(line, map)?,
            _ => {
                let prompt = self.string(line, map, "prompt")?;
                let completion = self.string(line, map, "completion")?;
                if completion.is_empty() {
                    return Err(self.error(line, "`completion` is empty"));
                }
                let tokenizer = self.tokenizer(line, "prompt")?;
                let prompt_ids = self.encode(line, tokenizer, prompt, true)?;
                let mut input_ids = self.encode(line, tokenizer, &format!("{prompt}{completion}"), true)?;
                push_eos(&mut input_ids, tokenizer);
                (input_ids, prompt_ids.len())
            }
        };
        let mut labels = self.labels(line, &input_ids)?;
        if self.masks.completion_only {
            // TRL's completion_mask: the prompt's token count, whatever the joint tokenization did at the seam.
            let masked = prompt_len.min(labels.len());
            labels[..masked].fill(IGNORE_INDEX);
        }
        Ok(Example { input_ids, labels })
    }

    /// A conversational prompt/completion line (both lists of messages), as
    /// TRL's SFTTrainer: the ids of `render(prompt + completion)` and the
    /// count of `render(prompt, add_generation_prompt=true)`'s.
    fn conversation_with_completion(&mut self, line: usize, map: &Map<String, Value>) -> Result<(Vec<u32>, usize)> {
        let prompt = self.message_list(line, map, "prompt")?;
        let completion = self.message_list(line, map, "completion")?;
        let kwargs = self.template_kwargs(line, map)?;
        let (tokenizer, template) = self.template(line, "prompt")?;
        let whole: Vec<Message> = prompt.iter().chain(&completion).cloned().collect();
        let prompt_text = self.render(line, &template, &prompt, true, &kwargs)?;
        let text = self.render(line, &template, &whole, false, &kwargs)?;
        let prompt_ids = self.encode(line, tokenizer, &prompt_text, false)?;
        Ok((self.encode(line, tokenizer, &text, false)?, prompt_ids.len()))
    }

    /// The non-empty list of `{"role", "content"}` objects in `field`.
    pub(super) fn message_list(&self, line: usize, map: &Map<String, Value>, field: &str) -> Result<Vec<Message>> {
        let messages = match map.get(field) {
            Some(Value::Array(list)) => list,
            other => {
                let got = other.map_or("nothing", kind);
                return Err(self.error(line, format!("`{field}` must be a list of messages, got {got}")));
            }
        };
        if messages.is_empty() {
            return Err(self.error(line, format!("`{field}` is empty")));
        }
        messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let Value::Object(m) = m else {
                    return Err(self.error(line, format!("`{field}[{i}]` must be an object, got {}", kind(m))));
                };
                let part = |name: &str| match m.get(name) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(other) => {
                        Err(self.error(line, format!("`{field}[{i}].{name}` must be a string, got {}", kind(other))))
                    }
                    None => Err(self.error(line, format!("`{field}[{i}]` has no `{name}`"))),
                };
                Ok(Message { role: part("role")?, content: part("content")? })
            })
            .collect()
    }

    /// The tokenizer and its chat template (compiled at the first chat line).
    pub(super) fn template(&mut self, line: usize, shape: &str) -> Result<(&'a Tokenizer, Rc<ChatTemplate>)> {
        let tokenizer = self.tokenizer(line, shape)?;
        if self.template.is_none() {
            self.template = ChatTemplate::from_tokenizer(tokenizer)?.map(Rc::new);
        }
        match &self.template {
            Some(template) => Ok((tokenizer, template.clone())),
            None => Err(self.error(line, format!("a `{shape}` example needs a tokenizer with a chat_template"))),
        }
    }

    /// A line's `chat_template_kwargs` (TRL's per-example keywords for the
    /// chat template, such as Qwen3's `enable_thinking`) and its `tools` (a
    /// list of JSON schemas, which TRL passes as `tools=`); none where absent.
    pub(super) fn template_kwargs(&self, line: usize, map: &Map<String, Value>) -> Result<Map<String, Value>> {
        let mut kwargs = match map.get("chat_template_kwargs") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(kwargs)) => kwargs.clone(),
            Some(other) => {
                return Err(self.error(line, format!("`chat_template_kwargs` must be an object, got {}", kind(other))))
            }
        };
        match map.get("tools") {
            None | Some(Value::Null) => {}
            Some(_) if kwargs.contains_key("tools") => {
                return Err(self.error(line, "`tools` is given twice: as a field and in `chat_template_kwargs`"))
            }
            Some(tools @ Value::Array(_)) => {
                kwargs.insert("tools".into(), tools.clone());
            }
            Some(other) => {
                return Err(self.error(line, format!("`tools` must be a list of JSON schemas, got {}", kind(other))))
            }
        }
        Ok(kwargs)
    }

    /// `messages` rendered with the chat template and the line's `kwargs`.
    pub(super) fn render(
        &self,
        line: usize,
        template: &ChatTemplate,
        messages: &[Message],
        generation: bool,
        kwargs: &Map<String, Value>,
    ) -> Result<String> {
        template.render_with(messages, generation, kwargs).map_err(|e| self.error(line, format!("chat template: {e}")))
    }

    fn messages(&mut self, line: usize, map: &Map<String, Value>) -> Result<Example> {
        let messages = self.message_list(line, map, "messages")?;
        let kwargs = self.template_kwargs(line, map)?;
        let (tokenizer, template) = self.template(line, "messages")?;
        if !self.masks.assistant_only {
            let text = self.render(line, &template, &messages, false, &kwargs)?;
            let input_ids = self.encode(line, tokenizer, &text, false)?;
            let labels = self.labels(line, &input_ids)?;
            return Ok(Example { input_ids, labels });
        }
        let render =
            |upto: usize, generation: bool| self.render(line, &template, &messages[..upto], generation, &kwargs);

        let full = render(messages.len(), false)?;
        let mut spans = Vec::new();
        for (i, message) in messages.iter().enumerate() {
            if message.role != "assistant" {
                continue;
            }
            let end = render(i + 1, false)?;
            if !full.starts_with(&end) {
                return Err(self.error(
                    line,
                    format!(
                        "cannot locate assistant turn `messages[{i}]`: the chat template does not render \
                         messages[..={i}] as a prefix of the whole chat"
                    ),
                ));
            }
            let with_prompt = render(i, true)?;
            let start = if end.starts_with(&with_prompt) { with_prompt } else { render(i, false)? };
            if !end.starts_with(&start) {
                return Err(self.error(
                    line,
                    format!(
                        "cannot locate assistant turn `messages[{i}]`: the chat template does not render \
                         messages[..{i}] as a prefix of the whole chat"
                    ),
                ));
            }
            spans.push((start.len(), end.len()));
        }

        let (input_ids, offsets) =
            tokenizer.encode_with_offsets(&full, false).map_err(|e| self.error(line, e.to_string()))?;
        let labels = self.labels(line, &input_ids)?;
        let labels = labels
            .into_iter()
            .zip(&offsets)
            .map(|(id, &(s, e))| if spans.iter().any(|&(a, b)| a <= s && e <= b) { id } else { IGNORE_INDEX })
            .collect();
        Ok(Example { input_ids, labels })
    }

    fn pre_tokenized(&self, line: usize, map: &Map<String, Value>) -> Result<Example> {
        let list = |field: &str| -> Result<Option<&Vec<Value>>> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(list)) => Ok(Some(list)),
                Some(other) => {
                    Err(self.error(line, format!("`{field}` must be a list of integers, got {}", kind(other))))
                }
            }
        };
        let Some(ids) = list("input_ids")? else { return Err(self.error(line, "`input_ids` is null")) };
        if ids.is_empty() {
            return Err(self.error(line, "`input_ids` is empty"));
        }
        let input_ids = ids
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| self.error(line, format!("`input_ids[{i}]` must be an integer in 0..2^32, got {v}")))
            })
            .collect::<Result<Vec<u32>>>()?;
        let labels = match list("labels")? {
            None => self.labels(line, &input_ids)?,
            Some(labels) => {
                if labels.len() != input_ids.len() {
                    return Err(self.error(
                        line,
                        format!("`labels` has {} entries, `input_ids` has {}", labels.len(), input_ids.len()),
                    ));
                }
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64()
                            .and_then(|l| i32::try_from(l).ok())
                            .filter(|&l| l == IGNORE_INDEX || l >= 0)
                            .ok_or_else(|| {
                                self.error(line, format!("`labels[{i}]` must be -100 or a token id, got {v}"))
                            })
                    })
                    .collect::<Result<Vec<i32>>>()?
            }
        };
        Ok(Example { input_ids, labels })
    }
}

/// Appends the tokenizer's eos id unless `ids` already ends with it.
fn push_eos(ids: &mut Vec<u32>, tokenizer: &Tokenizer) {
    if let Some(eos) = tokenizer.eos_token() {
        if ids.last() != Some(&eos.id) {
            ids.push(eos.id);
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// How examples become rows and rows become batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOptions {
    /// Tokens per row: longer examples are truncated (or, packing, split).
    pub seq_len: usize,
    /// Put several whole examples in each row of at most `seq_len` tokens
    /// (best fit decreasing, see [`pack`]); attention stays inside each example.
    pub packing: bool,
    /// Rows per batch.
    pub batch_size: usize,
    /// Shuffle the rows each epoch (seeded by `seed` and the epoch).
    pub shuffle: bool,
    pub seed: u64,
    /// Leave out an epoch's last batch when it has fewer than `batch_size` rows.
    pub drop_last: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions { seq_len: 512, packing: false, batch_size: 1, shuffle: true, seed: 0, drop_last: false }
    }
}

/// The rows of a training set and how to batch them.
#[derive(Debug, Clone)]
pub struct Dataset {
    rows: Vec<Example>,
    /// Packing: each row's position ids (see [`Batch::position_ids`]); else empty.
    positions: Vec<Vec<u32>>,
    batch_size: usize,
    shuffle: bool,
    seed: u64,
    drop_last: bool,
    pad_id: u32,
    dropped: usize,
    /// Rows come in (chosen, rejected) pairs, batched as TRL concatenates them.
    pairs: bool,
    /// What the data's reader noticed but let pass (a pair whose chosen and rejected are the same).
    warnings: Vec<String>,
    /// KTO: each unit's label (a desirable completion); else empty.
    desirable: Vec<bool>,
    /// Each row's precomputed reference log-probability (preference data); else empty.
    reference: Vec<f32>,
    /// Reward modelling: each pair's margin, where the data has them; else empty.
    margins: Vec<f32>,
    /// Sequence classification: each row's target ([`Batch::targets`]); else empty.
    targets: Vec<Vec<f32>>,
}

impl Dataset {
    /// Rows of at most `opts.seq_len` tokens from `examples`: each truncated,
    /// and (packing) several of them in one row ([`pack`]). Rows in
    /// which the loss would see no label (every label after the first is −100)
    /// are dropped and counted ([`dropped_rows`](Self::dropped_rows)).
    /// `pad_id` pads the batches (the tokenizer's pad token, or its eos).
    pub fn new(source_name: &str, examples: Vec<Example>, opts: &DataOptions, pad_id: u32) -> Result<Dataset> {
        const OP: &str = "Dataset::new";
        if opts.seq_len == 0 {
            return Err(Error::invalid(OP, "seq_len must be at least 1"));
        }
        if opts.batch_size == 0 {
            return Err(Error::invalid(OP, "batch_size must be at least 1"));
        }
        for (i, example) in examples.iter().enumerate() {
            if example.input_ids.len() != example.labels.len() {
                return Err(Error::invalid(
                    OP,
                    format!(
                        "example {i} has {} input_ids and {} labels",
                        example.input_ids.len(),
                        example.labels.len()
                    ),
                ));
            }
        }
        let empty = |detail: String| Error::EmptyDataset { source_name: source_name.to_string(), detail };
        if examples.is_empty() {
            return Err(empty("no examples".to_string()));
        }

        let truncated = examples.into_iter().map(|mut e| {
            e.input_ids.truncate(opts.seq_len);
            e.labels.truncate(opts.seq_len);
            e
        });
        let (rows, positions): (Vec<Example>, Vec<Vec<u32>>) = if opts.packing {
            pack(truncated.filter(|e| !e.input_ids.is_empty()).collect(), opts.seq_len).into_iter().unzip()
        } else {
            (truncated.collect(), Vec::new())
        };
        let total = rows.len();
        let keep: Vec<bool> = rows.iter().map(Example::predicts_any).collect();
        let rows: Vec<Example> = rows.into_iter().zip(&keep).filter(|(_, &k)| k).map(|(r, _)| r).collect();
        let positions: Vec<Vec<u32>> = positions.into_iter().zip(&keep).filter(|(_, &k)| k).map(|(p, _)| p).collect();
        let dropped = total - rows.len();
        if rows.is_empty() {
            return Err(empty(format!(
                "none of its {total} rows of at most {} tokens has a label the loss sees",
                opts.seq_len
            )));
        }
        if opts.drop_last && rows.len() < opts.batch_size {
            return Err(empty(format!(
                "{} rows make no full batch of {} and drop_last is set",
                rows.len(),
                opts.batch_size
            )));
        }
        Ok(Dataset {
            rows,
            positions,
            batch_size: opts.batch_size,
            shuffle: opts.shuffle,
            seed: opts.seed,
            drop_last: opts.drop_last,
            pad_id,
            dropped,
            pairs: false,
            warnings: Vec::new(),
            desirable: Vec::new(),
            reference: Vec::new(),
            margins: Vec::new(),
            targets: Vec::new(),
        })
    }

    /// Preference pairs, each `(chosen, rejected)` already tokenized and
    /// truncated (`train::preference`); a batch holds `batch_size` pairs: their
    /// chosen rows, then their rejected rows (TRL's `concatenated_inputs`).
    pub(crate) fn from_pairs(
        pairs: Vec<(Example, Example)>,
        opts: &DataOptions,
        pad_id: u32,
        warnings: Vec<String>,
    ) -> Dataset {
        Dataset {
            rows: pairs.into_iter().flat_map(|(c, r)| [c, r]).collect(),
            positions: Vec::new(),
            batch_size: opts.batch_size,
            shuffle: opts.shuffle,
            seed: opts.seed,
            drop_last: opts.drop_last,
            pad_id,
            dropped: 0,
            pairs: true,
            warnings,
            desirable: Vec::new(),
            reference: Vec::new(),
            margins: Vec::new(),
            targets: Vec::new(),
        }
    }

    /// Rows kept as they are, one a unit (KTO's examples without KL rows).
    pub(crate) fn from_rows(rows: Vec<Example>, opts: &DataOptions, pad_id: u32) -> Dataset {
        Dataset { rows, pairs: false, ..Dataset::from_pairs(Vec::new(), opts, pad_id, Vec::new()) }
    }

    /// KTO's units (an example's row and its KL row, as pairs) with their
    /// labels, which batches carry ([`Batch::desirable`]).
    pub(crate) fn with_desirable(self, desirable: Vec<bool>) -> Dataset {
        Dataset { desirable, ..self }
    }

    /// Reward modelling's pairs with their margins (one a pair, or none),
    /// which batches carry ([`Batch::margins`]).
    pub(crate) fn with_margins(self, margins: Vec<f32>) -> Dataset {
        Dataset { margins, ..self }
    }

    /// Sequence classification's rows with their targets (one a row), which
    /// batches carry ([`Batch::targets`]).
    pub(crate) fn with_targets(self, targets: Vec<Vec<f32>>) -> Dataset {
        Dataset { targets, ..self }
    }

    /// Whether the rows are preference pairs.
    pub fn is_pairs(&self) -> bool {
        self.pairs
    }

    /// What reading the data noticed but let pass, one line each.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Rows per unit of the order: 2 for pairs, else 1.
    fn unit(&self) -> usize {
        if self.pairs {
            2
        } else {
            1
        }
    }

    /// Rows (sequences) after truncation or packing; pairs for preference data.
    pub fn len(&self) -> usize {
        self.rows.len() / self.unit()
    }

    /// Never true: a dataset without rows is an error.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn rows(&self) -> &[Example] {
        &self.rows
    }

    /// Rows left out because the loss would see none of their labels.
    pub fn dropped_rows(&self) -> usize {
        self.dropped
    }

    /// Rows per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    pub fn batches_per_epoch(&self) -> usize {
        if self.drop_last {
            self.len() / self.batch_size
        } else {
            self.len().div_ceil(self.batch_size)
        }
    }

    /// Labels that are not −100, over every row (the label at a row's first
    /// position included, although the loss never predicts it).
    pub fn tokens(&self) -> usize {
        self.rows.iter().map(Example::trained).sum()
    }

    /// The order of the rows in `epoch`: a Fisher–Yates shuffle seeded by the
    /// seed and the epoch, or file order without shuffling.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if self.shuffle {
            Rng::new(self.seed ^ epoch.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03)).shuffle(&mut order);
        }
        order
    }

    /// The batches of `epoch`, each right-padded to its longest row.
    pub fn epoch(&self, epoch: u64) -> Vec<Batch> {
        self.batches(&self.order(epoch), self.drop_last)
    }

    /// The batches of every unit in file order (an epoch without shuffling),
    /// each with the dataset's index of each of its rows.
    pub fn in_file_order(&self) -> Vec<(Vec<usize>, Batch)> {
        let order: Vec<usize> = (0..self.len()).collect();
        // Every unit, a short last batch too (drop_last leaves out another unit in each shuffled epoch).
        let chunks = order.chunks(self.batch_size).map(|chunk| self.batch_rows(chunk));
        chunks.zip(self.batches(&order, false)).collect()
    }

    /// Each row's precomputed reference log-probability, in dataset row
    /// order (see [`Dataset::in_file_order`]); batches then carry theirs.
    pub fn set_reference(&mut self, values: Vec<f32>) -> Result<()> {
        if values.len() != self.rows.len() {
            return Err(Error::invalid(
                "Dataset::set_reference",
                format!("{} reference log-probabilities for {} rows", values.len(), self.rows.len()),
            ));
        }
        self.reference = values;
        Ok(())
    }

    /// Whether the reference log-probabilities are precomputed.
    pub fn has_reference(&self) -> bool {
        !self.reference.is_empty()
    }

    /// The dataset rows of the batch of `units`: pairs' every chosen row
    /// (2i), then every rejected row (2i + 1).
    fn batch_rows(&self, units: &[usize]) -> Vec<usize> {
        if self.pairs {
            let side = |k: usize| units.iter().map(move |&i| 2 * i + k);
            side(0).chain(side(1)).collect()
        } else {
            units.to_vec()
        }
    }

    /// The batches of the units in `order`, `batch_size` at a time (with
    /// `drop_last`, not the last one when it is short).
    fn batches(&self, order: &[usize], drop_last: bool) -> Vec<Batch> {
        order
            .chunks(self.batch_size)
            .filter(|chunk| !drop_last || chunk.len() == self.batch_size)
            .map(|chunk| {
                let indices = self.batch_rows(chunk);
                let rows: Vec<&Example> = indices.iter().map(|&i| &self.rows[i]).collect();
                let width = rows.iter().map(|row| row.input_ids.len()).max().unwrap_or(0);
                let mut batch = Batch::new(Vec::with_capacity(rows.len()), Vec::new());
                batch.lengths = rows.iter().map(|row| row.input_ids.len()).collect();
                for row in rows {
                    let mut ids = row.input_ids.clone();
                    ids.resize(width, self.pad_id);
                    let mut labels = row.labels.clone();
                    labels.resize(width, IGNORE_INDEX);
                    batch.input_ids.push(ids);
                    batch.labels.push(labels);
                }
                if !self.positions.is_empty() {
                    // The padding after a packed row's examples counts as one more.
                    let padded = |&i: &usize| {
                        let mut pos = self.positions[i].clone();
                        pos.extend(0..(width - pos.len()) as u32);
                        pos
                    };
                    batch.position_ids = Some(chunk.iter().map(padded).collect());
                }
                if !self.desirable.is_empty() {
                    batch.desirable = Some(chunk.iter().map(|&i| self.desirable[i]).collect());
                }
                if !self.reference.is_empty() {
                    batch.reference_logps = Some(indices.iter().map(|&i| self.reference[i]).collect());
                }
                if !self.margins.is_empty() {
                    batch.margins = Some(chunk.iter().map(|&i| self.margins[i]).collect());
                }
                if !self.targets.is_empty() {
                    batch.targets = Some(indices.iter().map(|&i| self.targets[i].clone()).collect());
                }
                batch
            })
            .collect()
    }
}

/// Best-fit-decreasing packing, as TRL's `pack_dataset(strategy="bfd")`:
/// examples longest first (file order among equal lengths), each into the row
/// with the least room that still holds it (of equally full rows, the one
/// that got that room first), or a new row of room `seq_len`. Rows come in
/// the order they were opened, examples in each in the order they went in.
///
/// Returns each row and its position ids (0.. in each example). As TRL's
/// padding-free collator (and transformers' `DataCollatorWithFlattening`), the
/// label at each example's first token becomes −100: the previous example's
/// last token does not predict it. Every example must fit (`len ≤ seq_len`).
pub fn pack(examples: Vec<Example>, seq_len: usize) -> Vec<(Example, Vec<u32>)> {
    struct Bin {
        members: Vec<usize>,
        room: usize,
        since: usize, // when `room` took its value: ties go to the longest-waiting row
    }
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(examples[i].input_ids.len())); // stable
    let mut bins: Vec<Bin> = Vec::new();
    for (step, &i) in order.iter().enumerate() {
        let len = examples[i].input_ids.len();
        let best = (0..bins.len()).filter(|&b| bins[b].room >= len).min_by_key(|&b| (bins[b].room, bins[b].since));
        let b = best.unwrap_or_else(|| {
            bins.push(Bin { members: Vec::new(), room: seq_len, since: step });
            bins.len() - 1
        });
        bins[b].members.push(i);
        bins[b].room -= len;
        bins[b].since = step;
    }
    bins.into_iter()
        .map(|bin| {
            let mut row = Example { input_ids: Vec::new(), labels: Vec::new() };
            let mut positions = Vec::new();
            for &i in &bin.members {
                let e = &examples[i];
                row.input_ids.extend_from_slice(&e.input_ids);
                row.labels.push(IGNORE_INDEX);
                row.labels.extend(e.labels.iter().skip(1));
                positions.extend(0..e.input_ids.len() as u32);
            }
            (row, positions)
        })
        .collect()
}
