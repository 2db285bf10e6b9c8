//! The bodies of the fuzz targets, one per parser that reads user bytes, so
//! cargo-fuzz (`fuzz/`, libFuzzer, nightly) and the stable test suite
//! (`tests/fuzz_smoke.rs`, a short mutation run in CI) call the same code.
//! Each must return, whatever the bytes: an error is fine, a panic or a hang
//! is a bug.

use std::future::Future;
use std::sync::OnceLock;

use crate::kernels::preference::PairTokenization;
use crate::model::tokenizer::Tokenizer;
use crate::model::{quantized, Checkpoint, Config, MemoryFiles, MemorySource, SafetensorsFile};
use crate::peft::{lora_modules, BottleneckConfig, LoraConfig};
use crate::train::chat::{ChatTemplate, Message};
use crate::train::classification::{classification_dataset, ClassificationLoss, ProblemType};
use crate::train::data::{parse_jsonl_bytes, DataOptions, Dataset};
use crate::train::kto::kto_dataset;
use crate::train::preference::preference_dataset;
use crate::train::reward::reward_dataset;

/// A target's body: must return on any bytes.
pub type Target = fn(&[u8]);

/// Every target, by the name its cargo-fuzz binary and corpus folder have.
pub const TARGETS: &[(&str, Target)] = &[
    ("safetensors", safetensors),
    ("checkpoint", checkpoint),
    ("config_json", config_json),
    ("tokenizer", tokenizer),
    ("chat_template", chat_template),
    ("adapter_config", adapter_config),
    ("jsonl", jsonl),
    ("training_checkpoint", training_checkpoint),
];

/// Runs a future over in-memory files to completion: they never wait, so a
/// single poll finishes it (`None` if it did not).
fn now<F: Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// A safetensors file: the header, then every tensor's byte range read as f32.
pub fn safetensors(data: &[u8]) {
    now(async {
        let Ok(file) = SafetensorsFile::open(MemorySource::new("model.safetensors", data.to_vec())).await else {
            return;
        };
        let names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
        for name in names {
            let _ = file.read_f32(&name).await;
        }
    });
}

/// A model folder: `config.json`, a shard index, two shards and
/// `model.safetensors` (the input split at `\n--part--\n`), opened and
/// checked against the config, webpeft's pre-quantized layout included;
/// every tensor read.
pub fn checkpoint(data: &[u8]) {
    const MARK: &[u8] = b"\n--part--\n";
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(MARK.len()).position(|w| w == MARK) {
        parts.push(&rest[..i]);
        rest = &rest[i + MARK.len()..];
    }
    parts.push(rest);
    let mut files = MemoryFiles::new();
    let names = [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors",
    ];
    for (name, bytes) in names.iter().zip(&parts) {
        files.insert(*name, bytes.to_vec());
    }
    now(async {
        let Ok(config) = Config::load(&files).await else { return };
        let Ok(checkpoint) = Checkpoint::open_for(&files, &config).await else { return };
        if let Ok(Some(format)) = quantized::stored_format(&checkpoint) {
            for t in config.tensor_names() {
                if quantized::is_block_linear(&t.name) {
                    if let [rows, cols] = t.shape[..] {
                        let _ = quantized::read_packed(&checkpoint, &t.name, rows, cols, format).await;
                    }
                }
            }
            return;
        }
        for t in config.tensor_names() {
            let _ = checkpoint.read_f32(&t.name).await;
        }
    });
}

/// `config.json`, and the tensor list it implies; the same bytes as a
/// `generation_config.json`, and the lengths it implies.
pub fn config_json(data: &[u8]) {
    if let Ok(c) = Config::from_json(data) {
        let _ = c.tensor_names();
    }
    if let Ok(g) = crate::model::config::GenerationDefaults::from_json(data) {
        let _ = g.new_tokens(7);
    }
}

/// `tokenizer.json` and `tokenizer_config.json` (split at the first 0xFF
/// byte, which UTF-8 JSON never holds); encoding and decoding a short text,
/// and its chat template.
pub fn tokenizer(data: &[u8]) {
    let (json, config) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    if let Ok(t) = Tokenizer::from_bytes(json, config) {
        if let Ok(ids) = t.encode("Hello world, naïve café", true) {
            let _ = t.decode(&ids, false);
        }
        if let Ok(Some(template)) = ChatTemplate::from_tokenizer(&t) {
            let _ = template.render(&[Message::new("user", "hi")], true);
        }
    }
}

/// A chat template from a file, rendered on a short chat (bounded work and
/// output), its variables listed, and rendered again with kwargs.
pub fn chat_template(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else { return };
    if let Ok(t) = ChatTemplate::new(source, Some("<s>"), Some("</s>")) {
        let chat = [Message::new("system", "be brief"), Message::new("user", "hi"), Message::new("assistant", "hello")];
        let _ = t.render(&chat, true);
        let _ = t.variables();
        let mut kwargs = serde_json::Map::new();
        kwargs.insert("enable_thinking".into(), false.into());
        kwargs.insert("tools".into(), serde_json::Value::Array(Vec::new()));
        if let Ok(t) = t.with_kwargs(&kwargs) {
            let _ = t.render(&chat, true);
        }
    }
}

/// PEFT's and AdapterHub's `adapter_config.json`, checked against a model config.
pub fn adapter_config(data: &[u8]) {
    const MODEL: &str = r#"{"model_type": "llama", "vocab_size": 384, "hidden_size": 64, "intermediate_size": 128,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}"#;
    let Ok(model) = Config::from_json(MODEL.as_bytes()) else { return };
    if let Ok(c) = LoraConfig::from_json(data) {
        let _ = lora_modules(&c, &model);
        let _ = c.to_json();
    }
    if let Ok(c) = BottleneckConfig::from_json(data) {
        let _ = c.check(&model);
        let _ = c.bottleneck_size(64);
        let _ = c.to_json(&model);
    }
}

/// The fixture tokenizer (`tests/fixtures/tokenizer/`), for the dataset target.
fn fixture_tokenizer() -> Option<&'static Tokenizer> {
    static T: OnceLock<Option<Tokenizer>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer/");
        let json = std::fs::read(format!("{dir}tokenizer.json")).ok()?;
        let config = std::fs::read(format!("{dir}tokenizer_config.json")).ok()?;
        Tokenizer::from_bytes(&json, Some(&config)).ok()
    })
    .as_ref()
}

/// A JSONL dataset in every shape (text, prompt/completion, messages through
/// the fixture tokenizer's chat template, pre-tokenized), then truncation,
/// packing and batching; and the same bytes as preference pairs (DPO's and
/// ORPO's tokenizations), as KTO's unpaired examples with their KL rows, and
/// as a reward model's pairs (text, messages or token ids, with margins),
/// and as a classifier's labelled texts (each problem type, 1 to 3 labels).
pub fn jsonl(data: &[u8]) {
    let tokenizer = fixture_tokenizer();
    if let Ok(examples) = parse_jsonl_bytes("data.jsonl", data, tokenizer) {
        for packing in [false, true] {
            let opts = DataOptions { seq_len: 16, batch_size: 3, packing, ..Default::default() };
            if let Ok(ds) = Dataset::new("data.jsonl", examples.clone(), &opts, 383) {
                let _ = ds.epoch(0);
            }
        }
    }
    let opts = DataOptions { seq_len: 16, batch_size: 3, ..Default::default() };
    for how in [PairTokenization::Separate, PairTokenization::Joined] {
        if let Ok(ds) = preference_dataset("pairs.jsonl", data, tokenizer, &opts, 383, how) {
            let _ = ds.epoch(0);
        }
    }
    if let Ok(ds) = kto_dataset("kto.jsonl", data, tokenizer, &opts, 383, true) {
        let _ = ds.epoch(0);
    }
    if let Ok(ds) = reward_dataset("reward.jsonl", data, tokenizer, &opts, 383) {
        let _ = ds.epoch(0);
    }
    for num_labels in 1..=3 {
        for problem_type in [None].into_iter().chain(ProblemType::ALL.map(Some)) {
            let loss = ClassificationLoss { num_labels, problem_type, pad_token_id: 383 };
            if let Ok(ds) = classification_dataset("texts.jsonl", data, tokenizer, &opts, &loss) {
                let _ = ds.epoch(0);
            }
        }
    }
}

/// A training checkpoint (`training_state.safetensors`), parsed on the CPU.
pub fn training_checkpoint(data: &[u8]) {
    let _ = crate::train::checkpoint::read_checkpoint(data);
}
