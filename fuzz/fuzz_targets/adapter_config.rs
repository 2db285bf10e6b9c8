//! PEFT's and AdapterHub's adapter_config.json, checked against a model config.
#![no_main]
use libfuzzer_sys::fuzz_target;
use webpeft::peft::{lora_modules, BottleneckConfig, LoraConfig};

const MODEL: &str = r#"{"model_type": "llama", "vocab_size": 384, "hidden_size": 64, "intermediate_size": 128,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}"#;

fuzz_target!(|data: &[u8]| {
    let model = webpeft::model::Config::from_json(MODEL.as_bytes()).expect("the fixed config parses");
    if let Ok(c) = LoraConfig::from_json(data) {
        let _ = lora_modules(&c, &model);
        let _ = c.to_json();
    }
    if let Ok(c) = BottleneckConfig::from_json(data) {
        let _ = c.check(&model);
        let _ = c.bottleneck_size(64);
        let _ = c.to_json(&model);
    }
});
