//! Unpaired preference data for KTO, tokenized as TRL 0.24's `KTOTrainer`
//! does.
//!
//! Each line is `{"prompt", "completion", "label"}` (`label` true for a
//! desirable completion), text or conversational (`prompt` messages ending
//! with a user turn, `completion` assistant messages, rendered with the chat
//! template as TRL's `apply_chat_template` does). A file of paired lines
//! (`{"prompt", "chosen", "rejected"}`) is unpaired first, as
//! `unpair_preference_dataset` does: in runs of 1000 lines, every chosen
//! completion (label true), then every rejected one.
//!
//! Then, as the trainer's `_tokenize` and `_process_tokens`: the completion's
//! tokens are what encoding prompt + completion adds to the prompt's own
//! (one fewer prompt token where the two merge across the boundary); with
//! `max_length` the row length and `max_prompt_length` min(512, seq_len / 2),
//! an example too long keeps the prompt's end, then the completion's start;
//! the bos id goes before the prompt and the eos id after the completion
//! where they are missing.
//!
//! KTO's KL term pairs each prompt with another example's completion: in
//! runs of `batch_size` examples in file order (`_get_kl_dataset`), example i
//! takes the completion of example i − 1 (the first, the last's). Each
//! example is kept as two rows, its own and its KL row, which batches keep
//! together ([`Dataset::from_pairs`] with the labels beside them).

use serde_json::{Map, Value};

use super::data::{jsonl_lines, utf8_text, DataOptions, Dataset, Example, LossMasks, Parser};
use super::preference::{chat_renders, common_prefix, eos_id, pair_row, MAX_PROMPT_LENGTH};
use crate::model::tokenizer::Tokenizer;
use crate::{Error, Result};

/// `unpair_preference_dataset`'s run length (`datasets.map`'s default batch size).
const UNPAIR_RUN: usize = 1000;

/// One example's text and label, with the line it came from.
struct Unpaired {
    line: usize,
    prompt: String,
    completion: String,
    desirable: bool,
}

/// An example's prompt and completion tokens (`_tokenize`).
struct Tokens {
    prompt: Vec<u32>,
    answer: Vec<u32>,
}

/// Unpaired preference examples from JSONL bytes, as a [`Dataset`] whose
/// units are (the example's row, its KL row) with the examples' labels, or
/// without `kl` the example's row alone (apo_zero_unpaired: TRL builds no KL
/// dataset); rows of at most `opts.seq_len` tokens.
pub fn kto_dataset(
    source_name: &str,
    bytes: &[u8],
    tokenizer: Option<&Tokenizer>,
    opts: &DataOptions,
    pad_id: u32,
    kl: bool,
) -> Result<Dataset> {
    let text = utf8_text(source_name, bytes)?;
    let mut parser = Parser { source_name, tokenizer, template: None, masks: LossMasks::default() };
    let mut examples = Vec::new();
    let mut paired: Option<bool> = None;
    let mut run: Vec<(Unpaired, Unpaired)> = Vec::new();
    let flush = |run: &mut Vec<(Unpaired, Unpaired)>, examples: &mut Vec<Unpaired>| {
        let (chosen, rejected): (Vec<_>, Vec<_>) = run.drain(..).unzip();
        examples.extend(chosen);
        examples.extend(rejected);
    };
    for (n, line) in jsonl_lines(text) {
        let value: Value = serde_json::from_str(line).map_err(|e| parser.error(n, format!("not valid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(parser.error(n, "expected a JSON object with `prompt`, `completion` and `label`"));
        };
        let is_pair = map.contains_key("chosen") || map.contains_key("rejected");
        match paired {
            Some(p) if p != is_pair => {
                return Err(parser.error(
                    n,
                    "mixes paired ({\"prompt\", \"chosen\", \"rejected\"}) and unpaired ({\"prompt\", \
                     \"completion\", \"label\"}) lines; a KTO file holds one shape",
                ))
            }
            _ => paired = Some(is_pair),
        }
        if is_pair {
            let (prompt, chosen) = example_text(&mut parser, n, &map, "chosen")?;
            let (_, rejected) = example_text(&mut parser, n, &map, "rejected")?;
            let side = |completion, desirable| Unpaired { line: n, prompt: prompt.clone(), completion, desirable };
            run.push((side(chosen, true), side(rejected, false)));
            if run.len() == UNPAIR_RUN {
                flush(&mut run, &mut examples);
            }
        } else {
            let desirable = match map.get("label") {
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(parser.error(n, "`label` must be true (a desirable completion) or false")),
                None => return Err(parser.error(n, "missing the `label` field of an unpaired preference")),
            };
            let (prompt, completion) = example_text(&mut parser, n, &map, "completion")?;
            examples.push(Unpaired { line: n, prompt, completion, desirable });
        }
    }
    flush(&mut run, &mut examples);
    if examples.is_empty() {
        return Err(Error::EmptyDataset { source_name: source_name.to_string(), detail: "no JSON lines".into() });
    }
    let tokens = examples.iter().map(|e| tokenize(&parser, e)).collect::<Result<Vec<_>>>()?;
    let (n, run) = (examples.len(), opts.batch_size.max(1));
    let mut units = Vec::with_capacity(n);
    for start in (0..n).step_by(run) {
        let len = run.min(n - start);
        for k in 0..len {
            // The KL row: this prompt, the previous example's completion in the run.
            let (i, other) = (start + k, start + (k + len - 1) % len);
            let e = &examples[i];
            let own = process(&parser, e.line, &tokens[i].prompt, &tokens[i].answer, opts.seq_len)?;
            let kl = process(&parser, e.line, &tokens[i].prompt, &tokens[other].answer, opts.seq_len)?;
            units.push(((own, kl), e.desirable));
        }
    }
    let (rows, labels): (Vec<_>, Vec<_>) = units.into_iter().unzip();
    let dataset = match kl {
        true => Dataset::from_pairs(rows, opts, pad_id, Vec::new()),
        false => Dataset::from_rows(rows.into_iter().map(|(own, _)| own).collect(), opts, pad_id),
    };
    Ok(dataset.with_desirable(labels))
}

/// The prompt and the `field` completion of a line as text: strings, or
/// messages rendered with the chat template (the completion is what the
/// prompt + completion render adds after their common prefix).
fn example_text(parser: &mut Parser, line: usize, map: &Map<String, Value>, field: &str) -> Result<(String, String)> {
    for name in ["prompt", field] {
        if !map.contains_key(name) {
            return Err(parser.error(line, format!("missing the `{name}` field of an unpaired preference")));
        }
    }
    let (prompt, completion) = if map["prompt"].is_array() {
        let (prompt_text, [whole]) = chat_renders(parser, line, map, [field])?;
        let prompt_text = common_prefix(&prompt_text, &whole).to_string();
        let completion = whole[prompt_text.len()..].to_string();
        (prompt_text, completion)
    } else {
        (parser.string(line, map, "prompt")?.to_string(), parser.string(line, map, field)?.to_string())
    };
    if completion.is_empty() {
        return Err(parser.error(line, format!("`{field}` is empty: there is nothing to judge")));
    }
    Ok((prompt, completion))
}

/// `_tokenize`: the completion's tokens are what prompt + completion adds to the prompt's.
fn tokenize(parser: &Parser, e: &Unpaired) -> Result<Tokens> {
    let tokenizer = parser.tokenizer(e.line, "preference")?;
    let prompt = parser.encode(e.line, tokenizer, &e.prompt, false)?;
    let full = parser.encode(e.line, tokenizer, &format!("{}{}", e.prompt, e.completion), false)?;
    if full.len() < prompt.len() {
        return Err(parser.error(e.line, "prompt + completion encodes to fewer tokens than the prompt alone"));
    }
    let start = if full[..prompt.len()] == prompt[..] { prompt.len() } else { prompt.len() - 1 };
    Ok(Tokens { prompt: full[..start].to_vec(), answer: full[start..].to_vec() })
}

/// `_process_tokens`: truncation to `seq_len` (`max_length`, less one for a
/// missing bos and one for a missing eos), then the bos and eos ids, and the
/// labels −100 on the prompt.
fn process(parser: &Parser, line: usize, prompt: &[u32], answer: &[u32], seq_len: usize) -> Result<Example> {
    let tokenizer = parser.tokenizer(line, "preference")?;
    let (bos, eos) = (tokenizer.bos_id(), eos_id(parser, line, tokenizer)?);
    let max_prompt = MAX_PROMPT_LENGTH.min(seq_len / 2);
    let mut max_length = seq_len;
    // TRL compares with the bos id even where the tokenizer has none (then it always differs).
    if prompt.first().is_some_and(|&p| Some(p) != bos) {
        max_length = max_length.saturating_sub(1);
    }
    if answer.last().is_some_and(|&a| a != eos) {
        max_length = max_length.saturating_sub(1);
    }
    let (mut prompt, mut answer) = (prompt.to_vec(), answer.to_vec());
    if prompt.len() + answer.len() > max_length {
        prompt.drain(..prompt.len().saturating_sub(max_prompt));
    }
    if prompt.len() + answer.len() > max_length {
        answer.truncate(max_length.saturating_sub(max_prompt));
    }
    if let Some(bos) = bos.filter(|&b| prompt.first() != Some(&b)) {
        prompt.insert(0, bos);
    }
    if answer.last() != Some(&eos) {
        answer.push(eos);
    }
    pair_row(parser, line, &prompt, &answer, seq_len)
}
