//! A JSONL dataset in every shape (text, prompt/completion, messages through
//! the fixture tokenizer's chat template, pre-tokenized), then batching.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::train::data::{parse_jsonl_bytes, DataOptions, Dataset};

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer/");
        let json = std::fs::read(format!("{dir}tokenizer.json")).expect("fixture tokenizer");
        let config = std::fs::read(format!("{dir}tokenizer_config.json")).expect("fixture tokenizer config");
        Tokenizer::from_bytes(&json, Some(&config)).expect("the fixture tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(examples) = parse_jsonl_bytes("data.jsonl", data, Some(tokenizer())) {
        for packing in [false, true] {
            let opts = DataOptions { seq_len: 16, batch_size: 3, packing, ..Default::default() };
            if let Ok(ds) = Dataset::new("data.jsonl", examples.clone(), &opts, 383) {
                let _ = ds.epoch(0);
            }
        }
    }
});
