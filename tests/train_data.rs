//! Training data: the four JSONL line shapes on the fixture tokenizer
//! (tests/fixtures/tokenizer/, a byte-level BPE of 384 ids: bos 381, eos 382,
//! pad 383), chat templates against transformers' renderings in
//! encodings.json, truncation, packing, padding, shuffling, and every kind of
//! bad input as a typed error with its line. No GPU.

use serde_json::{json, Value};
use webpeft::model::llama::IGNORE_INDEX;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::train::chat::{ChatTemplate, Message, TEMPLATE_FILE};
use webpeft::train::data::{
    parse_jsonl, parse_jsonl_counted, parse_jsonl_masked, DataOptions, Dataset, Example, LossMasks,
};
use webpeft::Error;

const BOS: u32 = 381;
const EOS: u32 = 382;
const PAD: u32 = 383;
const M: i32 = IGNORE_INDEX;

fn read(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tokenizer() -> Tokenizer {
    Tokenizer::from_bytes(&read("tokenizer.json"), Some(&read("tokenizer_config.json"))).unwrap()
}

/// The fixture tokenizer with another (or no) chat template.
fn tokenizer_with_template(template: Option<&str>) -> Tokenizer {
    let mut config: Value = serde_json::from_slice(&read("tokenizer_config.json")).unwrap();
    let map = config.as_object_mut().unwrap();
    match template {
        Some(t) => map.insert("chat_template".into(), json!(t)),
        None => map.remove("chat_template"),
    };
    Tokenizer::from_bytes(&read("tokenizer.json"), Some(&serde_json::to_vec(&config).unwrap())).unwrap()
}

fn labels_of(ids: &[u32]) -> Vec<i32> {
    ids.iter().map(|&id| id as i32).collect()
}

fn parse(text: &str) -> Vec<Example> {
    parse_jsonl("train.jsonl", text, Some(&tokenizer())).unwrap()
}

fn one(line: Value) -> Example {
    let mut examples = parse(&line.to_string());
    assert_eq!(examples.len(), 1);
    examples.remove(0)
}

/// Asserts a `Data` error at `line` whose detail contains `needle`.
fn assert_data_error<T: std::fmt::Debug>(result: webpeft::Result<T>, line: usize, needle: &str) {
    match result {
        Err(Error::Data { source_name, line: got, detail }) => {
            assert_eq!(source_name, "train.jsonl");
            assert_eq!(got, line, "{detail}");
            assert!(detail.contains(needle), "{detail:?} does not mention {needle:?}");
        }
        other => panic!("expected a Data error at line {line}, got {other:?}"),
    }
}

fn parse_err(text: &str) -> webpeft::Result<Vec<Example>> {
    parse_jsonl("train.jsonl", text, Some(&tokenizer()))
}

// ---- the four shapes --------------------------------------------------------

#[test]
fn text_line_is_bos_text_eos_all_trained() {
    // encodings.json: "Hello world!" → [381, 39, 68, 285, 78, 260, 292, 281, 0].
    let e = one(json!({"text": "Hello world!", "id": 7}));
    let ids = vec![BOS, 39, 68, 285, 78, 260, 292, 281, 0, EOS];
    assert_eq!(e.input_ids, ids);
    assert_eq!(e.labels, labels_of(&ids));
}

#[test]
fn text_line_ending_in_eos_gets_no_second_eos() {
    let e = one(json!({"text": "Hello world!<|end_of_text|>"}));
    assert_eq!(e.input_ids, vec![BOS, 39, 68, 285, 78, 260, 292, 281, 0, EOS]);
}

#[test]
fn prompt_completion_masks_the_prompt() {
    let tok = tokenizer();
    let prompt_ids = tok.encode("Hello", true).unwrap();
    assert_eq!(prompt_ids, vec![BOS, 39, 68, 285, 78]);
    let e = one(json!({"prompt": "Hello", "completion": " world!"}));
    assert_eq!(e.input_ids, vec![BOS, 39, 68, 285, 78, 260, 292, 281, 0, EOS]);
    assert_eq!(e.labels, vec![M, M, M, M, M, 260, 292, 281, 0, EOS as i32]);
}

#[test]
fn prompt_completion_with_a_merge_across_the_seam_masks_the_prompt_s_token_count() {
    let tok = tokenizer();
    let prompt_ids = tok.encode("Hello wo", true).unwrap();
    let full = tok.encode("Hello world!", true).unwrap();
    assert!(!full.starts_with(&prompt_ids), "{prompt_ids:?} must not be a prefix of {full:?} for this test");
    // The prompt alone ends "Ġw" "o"; joined with the completion it is "Ġw" "or": TRL masks the
    // prompt's 7 tokens by count, "or" with them.
    assert_eq!(prompt_ids.len(), 7);
    let e = one(json!({"prompt": "Hello wo", "completion": "rld!"}));
    assert_eq!(e.input_ids, vec![BOS, 39, 68, 285, 78, 260, 292, 281, 0, EOS]);
    assert_eq!(e.labels, vec![M, M, M, M, M, M, M, 281, 0, EOS as i32]);
}

/// Every SFT line shape against TRL 0.24's SFTTrainer (tests/fixtures/sft_data, `make_fixtures.py
/// sft_data`): the ids and the labels its collator makes, with `completion_only_loss` at TRL's
/// default and off, and messages with TRL's default `assistant_only_loss` (off).
#[test]
fn every_line_shape_matches_trl_s_sft_trainer() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let file = |p: &str| std::fs::read(dir.join(p)).unwrap();
    let tok = Tokenizer::from_bytes(&file("llama_gqa/tokenizer.json"), Some(&file("llama_gqa/tokenizer_config.json")))
        .unwrap();
    let expected: Value = serde_json::from_slice(&file("sft_data/expected.json")).unwrap();
    let mut compared = 0;
    for (shape, settings) in expected.as_object().unwrap() {
        let jsonl = file(&format!("sft_data/{shape}.jsonl"));
        for (setting, examples) in settings.as_object().unwrap() {
            let masks = LossMasks { completion_only: setting == "default", assistant_only: false };
            let got = parse_jsonl_masked("train.jsonl", &jsonl, Some(&tok), masks).unwrap();
            let want = examples.as_array().unwrap();
            assert_eq!(got.len(), want.len(), "{shape} {setting}");
            for (i, (g, w)) in got.iter().zip(want).enumerate() {
                let ids: Vec<u32> =
                    w["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
                let labels: Vec<i32> =
                    w["labels"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
                assert_eq!(g.input_ids, ids, "{shape} {setting} example {i}: ids");
                assert_eq!(g.labels, labels, "{shape} {setting} example {i}: labels");
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 18);
    // webpeft's default for messages trains the assistant turns only: TRL's ids, fewer labels.
    let jsonl = file("sft_data/messages.jsonl");
    let own = parse_jsonl_masked("train.jsonl", &jsonl, Some(&tok), LossMasks::default()).unwrap();
    let trl = &expected["messages"]["default"][1];
    assert_eq!(own[1].input_ids.len(), trl["input_ids"].as_array().unwrap().len());
    let trained = own[1].labels.iter().filter(|&&l| l != M).count();
    assert!(0 < trained && trained < own[1].labels.len(), "{trained}");
}

#[test]
fn messages_train_only_the_assistant_turn() {
    let tok = tokenizer();
    let e = one(json!({"messages": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello world!"},
    ]}));
    let prompt = "<|begin_of_text|><|user|>\nHi there<|end_of_text|>\n<|assistant|>\n";
    let answer = "Hello world!<|end_of_text|>\n";
    let prompt_ids = tok.encode(prompt, false).unwrap();
    let answer_ids = tok.encode(answer, false).unwrap();
    assert_eq!(answer_ids, vec![39, 68, 285, 78, 260, 292, 281, 0, EOS, 198]);
    assert_eq!(e.input_ids, [prompt_ids.clone(), answer_ids.clone()].concat());
    assert_eq!(e.input_ids, tok.encode(&format!("{prompt}{answer}"), false).unwrap());
    let expected: Vec<i32> = prompt_ids.iter().map(|_| M).chain(labels_of(&answer_ids)).collect();
    assert_eq!(e.labels, expected);
}

#[test]
fn messages_mask_on_the_fixture_chat() {
    // encodings.json's chats[2]: system, user, assistant "1, 2, 3.", user; the
    // assistant turn is ids[62..72] = "1, 2, 3.<|end_of_text|>\n".
    let chat = &encodings()["chats"][2];
    let e = one(json!({"messages": chat["messages"]}));
    let ids: Vec<u32> = serde_json::from_value(chat["ids"].clone()).unwrap();
    assert_eq!(e.input_ids, ids);
    assert_eq!(&ids[62..72], &[16, 11, 220, 17, 11, 220, 18, 13, EOS, 198]);
    let expected: Vec<i32> = (0..ids.len()).map(|i| if (62..72).contains(&i) { ids[i] as i32 } else { M }).collect();
    assert_eq!(e.labels, expected);
}

#[test]
fn offsets_are_byte_ranges_of_the_text() {
    // encodings.json: "naïve" starts n a Ã ¯ v e; "ï" is two bytes and two tokens.
    let (ids, offsets) = tokenizer().encode_with_offsets("naïve<|end_of_text|>", true).unwrap();
    assert_eq!(ids, vec![BOS, 77, 64, 127, 107, 85, 68, EOS]);
    assert_eq!(offsets, vec![(0, 0), (0, 1), (1, 2), (2, 4), (2, 4), (4, 5), (5, 6), (6, 21)]);
}

#[test]
fn pre_tokenized_lines_need_no_tokenizer() {
    let text = "{\"input_ids\": [5, 6, 7]}\n{\"input_ids\": [1, 2, 3, 4], \"labels\": [-100, -100, 3, 4]}\n";
    let examples = parse_jsonl("train.jsonl", text, None).unwrap();
    assert_eq!(
        examples,
        vec![
            Example { input_ids: vec![5, 6, 7], labels: vec![5, 6, 7] },
            Example { input_ids: vec![1, 2, 3, 4], labels: vec![M, M, 3, 4] },
        ]
    );
}

#[test]
fn lines_without_a_trained_token_are_skipped_and_counted() {
    let text = "{\"input_ids\": [1, 2], \"labels\": [-100, -100]}\n\
                {\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n\
                {\"input_ids\": [1, 2]}\n";
    let parsed = parse_jsonl_counted("train.jsonl", text, Some(&tokenizer())).unwrap();
    assert_eq!(parsed.skipped, 2);
    assert_eq!(parsed.examples, vec![Example { input_ids: vec![1, 2], labels: vec![1, 2] }]);
}

#[test]
fn crlf_bom_and_blank_lines_are_accepted() {
    let text = "\u{feff}{\"input_ids\": [1, 2]}\r\n\r\n   \n{\"input_ids\": [3, 4]}";
    let examples = parse_jsonl("train.jsonl", text, None).unwrap();
    assert_eq!(examples.len(), 2);
    assert_eq!(examples[1].input_ids, vec![3, 4]);
}

// ---- chat templates ------------------------------------------------------

fn encodings() -> Value {
    serde_json::from_slice(&read("encodings.json")).unwrap()
}

#[test]
fn chat_rendering_matches_transformers() {
    let tok = tokenizer();
    let template = ChatTemplate::from_tokenizer(&tok).unwrap().unwrap();
    let chats = encodings()["chats"].as_array().unwrap().clone();
    assert!(chats.len() >= 4);
    for chat in chats {
        let messages: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
        let generation = chat["add_generation_prompt"].as_bool().unwrap();
        let rendered = template.render(&messages, generation).unwrap();
        assert_eq!(rendered, chat["rendered"].as_str().unwrap());
        let ids: Vec<u32> = serde_json::from_value(chat["ids"].clone()).unwrap();
        assert_eq!(tok.encode(&rendered, false).unwrap(), ids);
    }
}

#[test]
fn generation_prompt_is_apply_chat_template_with_add_generation_prompt() {
    // The multi-turn fixture (system, user, assistant, user) is what a chat's second turn sends.
    let template = ChatTemplate::from_tokenizer(&tokenizer()).unwrap().unwrap();
    let chats = encodings()["chats"].as_array().unwrap().clone();
    let answered: Vec<&Value> = chats.iter().filter(|c| c["add_generation_prompt"] == true).collect();
    assert!(answered.iter().any(|c| c["messages"].as_array().unwrap().len() >= 4));
    for chat in answered {
        let messages: Vec<Message> = serde_json::from_value(chat["messages"].clone()).unwrap();
        assert_eq!(template.generation_prompt(&messages).unwrap(), chat["rendered"].as_str().unwrap());
    }
}

#[test]
fn generation_prompt_refuses_conversations_the_assistant_cannot_answer() {
    let template = ChatTemplate::from_tokenizer(&tokenizer()).unwrap().unwrap();
    let cases = [
        (vec![], "the conversation is empty"),
        (vec![Message::new("user", "Hi"), Message::new("bot", "Hello")], "message 1 has role \"bot\""),
        (vec![Message::new("user", "Hi"), Message::new("assistant", "Hello")], "message 1 is the assistant's"),
    ];
    for (messages, needle) in cases {
        match template.generation_prompt(&messages) {
            Err(e @ Error::InvalidArgument { op: "generate", .. }) => assert!(e.to_string().contains(needle), "{e}"),
            other => panic!("{messages:?}: expected an InvalidArgument error, got {other:?}"),
        }
    }
}

#[test]
fn generation_config_eos_ids_are_read_when_the_file_exists() {
    use webpeft::model::{Config, MemoryFiles};
    let mut files = MemoryFiles::new();
    assert_eq!(pollster::block_on(Config::generation_defaults(&files)).unwrap().eos_token_ids, Vec::<u32>::new());
    files.insert("generation_config.json", br#"{"bos_token_id": 1, "eos_token_id": [128001, 128009]}"#.to_vec());
    assert_eq!(pollster::block_on(Config::generation_defaults(&files)).unwrap().eos_token_ids, vec![128001, 128009]);
    files.insert("generation_config.json", br#"{"eos_token_id": "x"}"#.to_vec());
    match pollster::block_on(Config::generation_defaults(&files)) {
        Err(Error::File { file, detail }) => {
            assert_eq!((file.as_str(), detail.contains("eos_token_id")), ("generation_config.json", true))
        }
        other => panic!("expected a File error, got {other:?}"),
    }
}

/// A ChatML template in the style of Zephyr/Mistral: alternation checked
/// with `raise_exception`, contents `.strip()`ped, a system message optional.
const CHATML: &str = "{% if messages[0]['role'] == 'system' %}\
{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}\
{% else %}{% set system = 'You are helpful.' %}{% set loop_messages = messages %}{% endif %}
<|im_start|>system
{{ system }}<|im_end|>
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message.content.startswith('!') %}{{ raise_exception('no commands') }}{% endif %}
<|im_start|>{{ message['role'] }}
{{ message['content'].strip() }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}";

#[test]
fn second_template_with_blocks_and_python_methods() {
    let template = ChatTemplate::new(CHATML, Some("<s>"), None).unwrap();
    let messages = vec![Message::new("user", "  Hi  "), Message::new("assistant", "Hello.\n")];
    assert_eq!(
        template.render(&messages, false).unwrap(),
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
         <|im_start|>assistant\nHello.<|im_end|>\n"
    );
    let messages = vec![Message::new("system", "Be brief."), Message::new("user", "Hi")];
    assert_eq!(
        template.render(&messages, true).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn raise_exception_is_a_typed_error() {
    let template = ChatTemplate::new(CHATML, None, None).unwrap();
    let messages = vec![Message::new("assistant", "Hello.")];
    match template.render(&messages, false) {
        Err(Error::Tokenizer { file, detail }) => {
            assert_eq!(file, TEMPLATE_FILE);
            assert!(detail.contains("raised an exception: Conversation roles must alternate"), "{detail}");
        }
        other => panic!("expected a Tokenizer error, got {other:?}"),
    }
}

#[test]
fn template_syntax_error_is_a_typed_error() {
    match ChatTemplate::new("{% for m in messages %}{{ m.content }}", None, None) {
        Err(Error::Tokenizer { file, detail }) => {
            assert_eq!(file, TEMPLATE_FILE);
            assert!(detail.contains("does not compile"), "{detail}");
        }
        other => panic!("expected a Tokenizer error, got {other:?}"),
    }
}

#[test]
fn tojson_is_pythons_json_dumps() {
    let template = ChatTemplate::new(
        "{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}|{{ 1.0 | tojson }}",
        None,
        None,
    )
    .unwrap();
    let rendered = template.render(&[Message::new("user", "a <b> \"é\"\n")], false).unwrap();
    assert_eq!(
        rendered,
        "[{\"role\": \"user\", \"content\": \"a <b> \\\"é\\\"\\n\"}]|\
         {\n  \"role\": \"user\",\n  \"content\": \"a <b> \\\"é\\\"\\n\"\n}|1.0"
    );
}

#[test]
fn bos_eos_and_strftime_are_available() {
    let template = ChatTemplate::new(
        "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}{% if strftime_now is defined %}:{{ strftime_now('%Y') | length }}{% endif %}",
        Some("<s>"),
        None,
    )
    .unwrap();
    assert_eq!(template.render(&[Message::new("user", "x")], false).unwrap(), "<s>x:4");
}

#[test]
fn template_failure_in_data_is_a_data_error_at_its_line() {
    let tok = tokenizer_with_template(Some(CHATML));
    let text = "{\"text\": \"ok\"}\n{\"messages\": [{\"role\": \"assistant\", \"content\": \"Hi\"}]}\n";
    assert_data_error(parse_jsonl("train.jsonl", text, Some(&tok)), 2, "Conversation roles must alternate");
}

#[test]
fn messages_with_the_second_template_mask_every_assistant_turn() {
    let tok = tokenizer_with_template(Some(CHATML));
    let e = parse_jsonl(
        "train.jsonl",
        &json!({"messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Yo"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Ciao"},
        ]})
        .to_string(),
        Some(&tok),
    )
    .unwrap()
    .remove(0);
    let rendered = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
                    <|im_start|>assistant\nYo<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
                    <|im_start|>assistant\nCiao<|im_end|>\n";
    assert_eq!(e.input_ids, tok.encode(rendered, false).unwrap());
    // The trained tokens, in order, are those of the two answers with their closing tags.
    let trained: Vec<u32> = e.input_ids.iter().zip(&e.labels).filter(|(_, &l)| l != M).map(|(&id, _)| id).collect();
    let answers = [tok.encode("Yo<|im_end|>\n", false).unwrap(), tok.encode("Ciao<|im_end|>\n", false).unwrap()];
    assert_eq!(trained, answers.concat());
}

// ---- datasets -------------------------------------------------------------

fn ex(ids: &[u32]) -> Example {
    Example { input_ids: ids.to_vec(), labels: labels_of(ids) }
}

fn opts(seq_len: usize, batch_size: usize) -> DataOptions {
    DataOptions { seq_len, packing: false, batch_size, shuffle: false, seed: 0, drop_last: false }
}

#[test]
fn truncation_and_right_padding() {
    let examples = vec![ex(&[1, 2, 3, 4, 5, 6]), ex(&[7, 8]), ex(&[9, 10, 11])];
    let data = Dataset::new("d", examples, &opts(4, 2), PAD).unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!(data.batches_per_epoch(), 2);
    assert_eq!(data.tokens(), 4 + 2 + 3);
    let batches = data.epoch(0);
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].input_ids, vec![vec![1, 2, 3, 4], vec![7, 8, PAD, PAD]]);
    assert_eq!(batches[0].labels, vec![vec![1, 2, 3, 4], vec![7, 8, M, M]]);
    // The last batch is padded to its own longest row only.
    assert_eq!(batches[1].input_ids, vec![vec![9, 10, 11]]);
    assert_eq!(batches[1].labels, vec![vec![9, 10, 11]]);
}

#[test]
fn drop_last_leaves_out_the_partial_batch() {
    let examples = vec![ex(&[1, 2]), ex(&[3, 4]), ex(&[5, 6])];
    let data = Dataset::new("d", examples, &DataOptions { drop_last: true, ..opts(4, 2) }, PAD).unwrap();
    assert_eq!(data.batches_per_epoch(), 1);
    assert_eq!(data.epoch(0).len(), 1);
    // Precomputing a value for every row walks every unit, the short last batch too.
    let walked: Vec<usize> = data.in_file_order().into_iter().flat_map(|(rows, _)| rows).collect();
    assert_eq!(walked, [0, 1, 2]);
}

#[test]
fn rows_that_predict_nothing_after_truncation_are_dropped() {
    // A long masked prompt: truncated to 3 tokens, nothing is left to train.
    let prompt_only = Example { input_ids: vec![1, 2, 3, 4, 5], labels: vec![M, M, M, 4, 5] };
    let data = Dataset::new("d", vec![prompt_only.clone(), ex(&[6, 7])], &opts(3, 1), PAD).unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data.dropped_rows(), 1);
    match Dataset::new("d", vec![prompt_only], &opts(3, 1), PAD) {
        Err(Error::EmptyDataset { source_name, .. }) => assert_eq!(source_name, "d"),
        other => panic!("expected EmptyDataset, got {other:?}"),
    }
}

#[test]
fn packing_puts_whole_examples_in_rows_best_fit_decreasing() {
    // Lengths 3, 4, 3, 2 and 6 (truncated from 7) into rows of 6, longest first:
    // [4] fills row A, [1] opens row B, [0] opens row C, [2] fills C, [3] fills B.
    let examples = vec![
        ex(&[1, 2, 3]),
        Example { input_ids: vec![4, 5, 6, 7], labels: vec![M, M, 6, 7] },
        ex(&[8, 9, 10]),
        ex(&[11, 12]),
        ex(&[13, 14, 15, 16, 17, 18, 19]),
    ];
    let data = Dataset::new("d", examples, &DataOptions { packing: true, ..opts(6, 3) }, PAD).unwrap();
    assert_eq!(data.len(), 3);
    // Each example's first label is −100: the example before it does not predict it.
    assert_eq!(data.tokens(), 5 + 3 + 4);
    let batches = data.epoch(0);
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(b.input_ids, vec![vec![13, 14, 15, 16, 17, 18], vec![4, 5, 6, 7, 11, 12], vec![1, 2, 3, 8, 9, 10]]);
    assert_eq!(b.labels, vec![vec![M, 14, 15, 16, 17, 18], vec![M, M, 6, 7, M, 12], vec![M, 2, 3, M, 9, 10]]);
    let positions = vec![vec![0, 1, 2, 3, 4, 5], vec![0, 1, 2, 3, 0, 1], vec![0, 1, 2, 0, 1, 2]];
    assert_eq!(b.position_ids, Some(positions));
}

#[test]
fn packed_padding_counts_as_one_more_example() {
    let examples = vec![ex(&[1, 2, 3, 4]), ex(&[5, 6])];
    let data = Dataset::new("d", examples, &DataOptions { packing: true, ..opts(4, 2) }, PAD).unwrap();
    let b = &data.epoch(0)[0];
    assert_eq!(b.input_ids, vec![vec![1, 2, 3, 4], vec![5, 6, PAD, PAD]]);
    assert_eq!(b.labels, vec![vec![M, 2, 3, 4], vec![M, 6, M, M]]);
    assert_eq!(b.position_ids, Some(vec![vec![0, 1, 2, 3], vec![0, 1, 0, 1]]));
    // Unpacked batches carry no position ids.
    let plain = Dataset::new("d", vec![ex(&[1, 2])], &opts(4, 1), PAD).unwrap();
    assert_eq!(plain.epoch(0)[0].position_ids, None);
    // NEFTune scales its noise by T of transformers' (B, T, D) embeddings: TRL's padding-free
    // collator makes packed rows one row of their 6 tokens; unpacked rows are padded to the longest.
    assert_eq!((b.unpadded_tokens(), b.noise_tokens()), (6, 6));
    let padded =
        Dataset::new("d", vec![ex(&[1, 2, 3]), ex(&[4, 5])], &DataOptions { shuffle: false, ..opts(4, 2) }, PAD);
    let b = &padded.unwrap().epoch(0)[0];
    assert_eq!((b.input_ids[1].len(), b.lengths.clone(), b.noise_tokens()), (3, vec![3, 2], 3));
}

fn order(data: &Dataset, epoch: u64) -> Vec<u32> {
    data.epoch(epoch).iter().flat_map(|b| b.input_ids.iter().map(|row| row[0])).collect()
}

#[test]
fn shuffling_is_seeded_and_per_epoch() {
    let examples: Vec<Example> = (0..20).map(|i| ex(&[i, 1000])).collect();
    let make =
        |shuffle, seed| Dataset::new("d", examples.clone(), &DataOptions { shuffle, seed, ..opts(8, 3) }, PAD).unwrap();
    let file_order: Vec<u32> = (0..20).collect();
    assert_eq!(order(&make(false, 1), 0), file_order);
    assert_eq!(order(&make(false, 1), 5), file_order);

    let a = make(true, 1);
    let first = order(&a, 0);
    assert_eq!(first, order(&make(true, 1), 0), "same seed, same order");
    assert_ne!(first, file_order);
    assert_ne!(first, order(&make(true, 2), 0), "another seed, another order");
    assert_ne!(first, order(&a, 1), "another epoch, another order");
    let mut sorted = first.clone();
    sorted.sort();
    assert_eq!(sorted, file_order, "a shuffle is a permutation");
    assert_eq!(a.epoch(0).len(), 7);
    assert_eq!(a.epoch(0)[6].input_ids.len(), 2);
}

#[test]
fn zero_seq_len_or_batch_size_is_invalid() {
    for (seq_len, batch_size) in [(0, 1), (4, 0)] {
        match Dataset::new("d", vec![ex(&[1, 2])], &opts(seq_len, batch_size), PAD) {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
}

#[test]
fn mismatched_example_lengths_are_invalid() {
    let bad = Example { input_ids: vec![1, 2], labels: vec![1] };
    assert!(matches!(Dataset::new("d", vec![bad], &opts(4, 1), PAD), Err(Error::InvalidArgument { .. })));
}

// ---- bad input --------------------------------------------------------------

#[test]
fn malformed_json_at_line_3() {
    let text = "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n{\"text\": \"c\"}\n";
    assert_data_error(parse_err(text), 3, "not valid JSON");
}

#[test]
fn a_line_that_is_not_an_object() {
    assert_data_error(parse_err("{\"text\": \"a\"}\n[1, 2]\n"), 2, "expected a JSON object, got a list");
}

#[test]
fn a_line_of_no_known_shape() {
    assert_data_error(parse_err("{\"question\": \"a\"}"), 1, "no recognised shape");
}

#[test]
fn text_of_the_wrong_type() {
    assert_data_error(parse_err("{\"text\": 5}"), 1, "`text` must be a string, got a number");
}

#[test]
fn empty_text() {
    assert_data_error(parse_err("{\"text\": \"x\"}\n{\"text\": \"\"}"), 2, "`text` is empty");
}

#[test]
fn prompt_without_completion() {
    assert_data_error(parse_err("{\"prompt\": \"x\"}"), 1, "missing the `completion` field");
}

#[test]
fn empty_completion() {
    assert_data_error(parse_err("{\"prompt\": \"x\", \"completion\": \"\"}"), 1, "`completion` is empty");
}

#[test]
fn messages_not_a_list() {
    assert_data_error(parse_err("{\"messages\": \"hi\"}"), 1, "`messages` must be a list");
}

#[test]
fn empty_messages() {
    assert_data_error(parse_err("{\"messages\": []}"), 1, "`messages` is empty");
}

#[test]
fn message_without_role() {
    let line = json!({"messages": [{"role": "user", "content": "a"}, {"content": "b"}]});
    assert_data_error(parse_err(&line.to_string()), 1, "`messages[1]` has no `role`");
}

#[test]
fn message_without_content() {
    let line = json!({"messages": [{"role": "user"}]});
    assert_data_error(parse_err(&format!("\n{line}")), 2, "`messages[0]` has no `content`");
}

#[test]
fn message_content_not_a_string() {
    let line = json!({"messages": [{"role": "user", "content": null}]});
    assert_data_error(parse_err(&line.to_string()), 1, "`messages[0].content` must be a string, got null");
}

#[test]
fn text_without_a_tokenizer() {
    assert_data_error(parse_jsonl("train.jsonl", "{\"text\": \"a\"}", None), 1, "needs a tokenizer");
}

#[test]
fn messages_without_a_chat_template() {
    let tok = tokenizer_with_template(None);
    let text = "{\"text\": \"a\"}\n{\"messages\": [{\"role\": \"user\", \"content\": \"a\"}]}";
    assert_data_error(parse_jsonl("train.jsonl", text, Some(&tok)), 2, "chat_template");
}

#[test]
fn pre_tokenized_labels_of_another_length() {
    let text = "{\"input_ids\": [1, 2], \"labels\": [1]}";
    assert_data_error(parse_jsonl("train.jsonl", text, None), 1, "`labels` has 1 entries, `input_ids` has 2");
}

#[test]
fn pre_tokenized_negative_or_fractional_or_huge_ids() {
    for bad in ["-1", "1.5", "4294967296", "\"7\""] {
        let text = format!("{{\"input_ids\": [1, {bad}]}}");
        assert_data_error(parse_jsonl("train.jsonl", &text, None), 1, "`input_ids[1]` must be an integer");
    }
}

#[test]
fn pre_tokenized_invalid_label() {
    let text = "{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 2], \"labels\": [-100, -5]}";
    assert_data_error(parse_jsonl("train.jsonl", text, None), 2, "`labels[1]` must be -100 or a token id");
}

#[test]
fn pre_tokenized_empty_or_mistyped() {
    assert_data_error(parse_jsonl("train.jsonl", "{\"input_ids\": []}", None), 1, "`input_ids` is empty");
    assert_data_error(parse_jsonl("train.jsonl", "{\"input_ids\": 3}", None), 1, "must be a list of integers");
}

fn assert_empty(result: webpeft::Result<Vec<Example>>) {
    match result {
        Err(Error::EmptyDataset { source_name, .. }) => assert_eq!(source_name, "train.jsonl"),
        other => panic!("expected EmptyDataset, got {other:?}"),
    }
}

#[test]
fn empty_file() {
    assert_empty(parse_err(""));
}

#[test]
fn only_blank_lines() {
    assert_empty(parse_err("\n  \n\r\n"));
}

#[test]
fn no_example_with_a_trained_token() {
    assert_empty(parse_jsonl("train.jsonl", "{\"input_ids\": [1, 2], \"labels\": [-100, -100]}", None));
}

#[test]
fn empty_example_list() {
    match Dataset::new("d", Vec::new(), &opts(4, 1), PAD) {
        Err(Error::EmptyDataset { .. }) => {}
        other => panic!("expected EmptyDataset, got {other:?}"),
    }
}

#[test]
fn a_runaway_chat_template_is_stopped() {
    use webpeft::train::chat::{ChatTemplate, Message};
    let t = ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        None,
        None,
    )
    .unwrap();
    let err = t.render(&[Message::new("user", "hi")], false).unwrap_err();
    assert!(matches!(err, webpeft::Error::Tokenizer { .. }), "{err}");
    eprintln!("{err}");
}
