//! TRL 0.24's per-example `chat_template_kwargs` on training lines
//! (tests/fixtures/template_kwargs, made by `make_fixtures.py
//! template_kwargs`, with a tokenizer whose template reads `enable_thinking`
//! and `style`): SFT messages lines render as
//! `apply_chat_template(messages, tokenize=True, **kwargs)`, DPO pairs
//! tokenize as `maybe_apply_chat_template` then `DPOTrainer.tokenize_row`,
//! and KTO examples as `KTOTrainer`'s data preparation. A line's `tools` go
//! to the template as `SFTTrainer` passes them, and `tools` and `documents`
//! are none where not given, as transformers defines them.

mod common;

use common::{block_on, fixture};
use serde_json::Value;
use webpeft::kernels::preference::PairTokenization;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::DirFiles;
use webpeft::train::data::{parse_jsonl, DataOptions};
use webpeft::train::kto::kto_dataset;
use webpeft::train::preference::preference_dataset;
use webpeft::Error;

const PAD: u32 = 383;

fn tokenizer() -> Tokenizer {
    block_on(Tokenizer::load(&DirFiles::new(fixture("template_kwargs/tokenizer")).unwrap())).unwrap()
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("template_kwargs/expected.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn text(name: &str) -> String {
    std::fs::read_to_string(fixture(&format!("template_kwargs/{name}"))).unwrap()
}

/// A row without its padding (pad ids under −100 labels at the end).
fn trimmed(row: &[u32], labels: &[i32]) -> Vec<u32> {
    let n = row.iter().zip(labels).rposition(|(&i, &l)| i != PAD || l != -100).map_or(0, |p| p + 1);
    row[..n].to_vec()
}

#[test]
fn sft_messages_render_with_their_kwargs() {
    let examples = parse_jsonl("messages.jsonl", &text("messages.jsonl"), Some(&tokenizer())).unwrap();
    let want = expected();
    let want: Vec<Vec<u32>> = want["messages"].as_array().unwrap().iter().map(ids).collect();
    let got: Vec<Vec<u32>> = examples.iter().map(|e| e.input_ids.clone()).collect();
    assert_eq!(got, want);
    // The first line's style shows in its ids; the second line has no kwargs.
    assert_ne!(want[0].len(), want[1].len());
    // The assistant turn is trained, the user's not.
    assert!(examples[0].labels.iter().any(|&l| l != -100) && examples[0].labels[0] == -100);
}

#[test]
fn dpo_pairs_render_with_their_kwargs() {
    let opts = DataOptions { seq_len: 512, batch_size: 2, shuffle: false, ..Default::default() };
    let tok = tokenizer();
    let data = preference_dataset(
        "pairs.jsonl",
        text("pairs.jsonl").as_bytes(),
        Some(&tok),
        &opts,
        PAD,
        PairTokenization::Separate,
    )
    .unwrap();
    let batch = data.epoch(0).remove(0);
    let want = expected();
    for (p, pair) in want["pairs"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&pair["prompt_input_ids"]);
        for (k, side) in ["chosen_input_ids", "rejected_input_ids"].iter().enumerate() {
            let r = k * 2 + p; // the chosen rows, then the rejected rows
            let row = trimmed(&batch.input_ids[r], &batch.labels[r]);
            assert_eq!(row, [prompt.clone(), ids(&pair[side])].concat(), "pair {p} {side}");
        }
    }
}

#[test]
fn kto_examples_render_with_their_kwargs() {
    let opts = DataOptions { seq_len: 512, batch_size: 2, shuffle: false, ..Default::default() };
    let tok = tokenizer();
    let data = kto_dataset("unpaired.jsonl", text("unpaired.jsonl").as_bytes(), Some(&tok), &opts, PAD, true).unwrap();
    let batch = data.epoch(0).remove(0);
    let want = &expected()["unpaired"];
    for (half, key) in [(0, "own"), (2, "kl")] {
        for i in 0..2 {
            let row = trimmed(&batch.input_ids[half + i], &batch.labels[half + i]);
            assert_eq!(row, ids(&want[key][0][i]), "{key} row {i}");
        }
    }
}

#[test]
fn a_line_s_kwargs_must_be_an_object_the_render_does_not_set() {
    let tok = tokenizer();
    let line = |kwargs: &str| {
        format!(
            r#"{{"messages": [{{"role": "user", "content": "Hi"}}, {{"role": "assistant", "content": "Yo"}}], "chat_template_kwargs": {kwargs}}}"#
        )
    };
    let error = |kwargs: &str| match parse_jsonl("d.jsonl", &line(kwargs), Some(&tok)) {
        Err(Error::Data { line: 1, detail, .. }) => detail,
        other => panic!("{kwargs}: expected a Data error at line 1, got {other:?}"),
    };
    assert!(error("[1]").contains("`chat_template_kwargs` must be an object, got a list"), "{}", error("[1]"));
    assert!(error(r#"{"messages": []}"#).contains("\"messages\" is one the render sets itself"));
    assert!(parse_jsonl("d.jsonl", &line("null"), Some(&tok)).is_ok());
    let with_tools = |tools: &str, kwargs: &str| {
        line(kwargs).replace(r#""chat_template_kwargs""#, &format!(r#""tools": {tools}, "chat_template_kwargs""#))
    };
    let tools_error = |tools: &str, kwargs: &str| match parse_jsonl("d.jsonl", &with_tools(tools, kwargs), Some(&tok)) {
        Err(Error::Data { line: 1, detail, .. }) => detail,
        other => panic!("tools {tools}: expected a Data error at line 1, got {other:?}"),
    };
    assert!(tools_error("{}", "null").contains("`tools` must be a list of JSON schemas, got an object"));
    assert!(tools_error("[]", r#"{"tools": []}"#).contains("`tools` is given twice"));
}
