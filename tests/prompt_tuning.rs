//! Prompt tuning against PEFT (tests/fixtures/prompt_tuning, made by
//! `make_fixtures.py prompt_tuning`): 4 virtual tokens on a tiny Llama and a
//! tiny Qwen2 (tied embeddings). The logits of the rows' own positions, the
//! loss and the prompt's gradient, 10 AdamW steps, greedy generation through
//! the KV cache, PEFT's files both ways, the TEXT init, and bad configs.
//!
//! Tolerances as for LoRA: logits and gradients 1e-4 abs, loss 1e-5,
//! per-step losses 1e-4, final embeddings 1e-4; generated tokens equal.

mod common;

use common::{
    adapted_logits, adapter_values, assert_files_are_peft, block_on, check_greedy_and_cache, check_peft_training,
    fixture, fixture_adapter, fixture_batch, fixture_model, gpu, max_abs_diff, Fixture,
};
use webpeft::gpu::Recorder;
use webpeft::model::llama::GenerationConfig;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::{Config, DirFiles, Model};
use webpeft::peft::adapter::{Adapter, AdapterConfig};
use webpeft::peft::prompt_tuning::{PromptTuningConfig, PromptTuningInit};
use webpeft::{Error, Gpu};

const MODELS: [&str; 2] = ["llama_gqa", "qwen2_tied"];
const V: usize = 4;

fn model(gpu: &Gpu, name: &str) -> Model {
    fixture_model(gpu, name)
}

fn adapter(gpu: &Gpu, model: &Model, dir: &str) -> Adapter {
    fixture_adapter(gpu, model, dir, "prompt_tuning")
}

/// PEFT's logits (B, V+T, vocab) at the rows' own positions, (B, T, vocab).
fn own_positions(logits: &[f32], b: usize, t: usize, vocab: usize) -> Vec<f32> {
    (0..b).flat_map(|i| logits[(i * (V + t) + V) * vocab..(i * (V + t) + V + t) * vocab].to_vec()).collect()
}

#[test]
fn logits_loss_gradient_and_ten_adamw_steps_match_peft() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prompt_tuning/{name}/reference.safetensors"));
        let batch = fixture_batch(&fx, 0..2);
        let initial = format!("prompt_tuning/{name}/initial_adapter");
        let ad = adapter(gpu, &model, &initial);
        let (b, t, vocab) = (2, batch.input_ids[0].len(), model.config.vocab_size);
        let want = own_positions(&fx.f32("logits"), b, t, vocab);
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &batch.input_ids), &want);
        eprintln!("{name}: logits max |diff| {d:e}");
        assert!(d <= 1e-4, "{name}: logits {d:e}");

        check_peft_training(gpu, &model, &|| adapter(gpu, &model, &initial), &fx, &|ad| adapter_values(gpu, ad));
    }
}

#[test]
fn greedy_generation_equals_peft_and_the_cache_equals_the_full_forward() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prompt_tuning/{name}/reference.safetensors"));
        let ad = adapter(gpu, &model, &format!("prompt_tuning/{name}/initial_adapter"));
        check_greedy_and_cache(gpu, &model, &ad, &fx, V);
    }
}

#[test]
fn files_both_ways_and_the_text_init() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prompt_tuning/{name}/reference.safetensors"));
        for dir in ["initial_adapter", "final_adapter"] {
            let dir = format!("prompt_tuning/{name}/{dir}");
            assert_files_are_peft(gpu, &adapter(gpu, &model, &dir), &model.config, &dir);
        }
        // TEXT: the embeddings of the tokens of "The book" (with bos), repeated to 4, exactly.
        let tokenizer = block_on(Tokenizer::load(&DirFiles::new(fixture(name)).unwrap())).unwrap();
        let ids: Vec<u32> = fx.i64("text_init.ids").iter().map(|&v| v as u32).collect();
        assert_eq!(tokenizer.encode("The book", true).unwrap(), ids);
        let mut config = PromptTuningConfig::new(V, PromptTuningInit::Text("The book".into()), &model.config).unwrap();
        config.base_model_name_or_path = Some(name.into());
        config.tokenizer_name_or_path = Some(name.into());
        let text =
            Adapter::new_for_model(gpu, AdapterConfig::PromptTuning(config), &model, Some(&tokenizer), 0).unwrap();
        let got = block_on(text.tensors()[0].1.to_vec::<f32>(gpu)).unwrap();
        assert_eq!(got, fx.f32("text_init.prompt_embeddings"), "{name}: TEXT init");
        let theirs = std::fs::read(fixture(&format!("prompt_tuning/{name}/text_adapter/adapter_config.json"))).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&text.config_json(&model.config)).unwrap();
        assert_eq!(ours, serde_json::from_slice::<serde_json::Value>(&theirs).unwrap(), "{name}: TEXT config");
        // SAMPLE_VOCAB: rows of the embedding table.
        let config = PromptTuningConfig::new(V, PromptTuningInit::SampleVocab, &model.config).unwrap();
        let sampled = Adapter::new_for_model(gpu, AdapterConfig::PromptTuning(config), &model, None, 7).unwrap();
        let rows = block_on(sampled.tensors()[0].1.to_vec::<f32>(gpu)).unwrap();
        let table = block_on(model.embed_tokens.to_f32(gpu)).unwrap();
        let d = model.config.hidden_size;
        for row in rows.chunks(d) {
            assert!(table.chunks(d).any(|t| t == row), "{name}: a SAMPLE_VOCAB row is not an embedding row");
        }
    }
}

#[test]
fn bad_prompt_tuning_configs_and_inputs_are_typed_errors() {
    let config = Config::from_json(&std::fs::read(fixture("llama_gqa/config.json")).unwrap()).unwrap();
    let field = |r: webpeft::Result<PromptTuningConfig>, want: &str| match r {
        Err(Error::AdapterConfig { field, .. } | Error::AdapterUnsupported { field, .. }) => assert_eq!(field, want),
        other => panic!("{want}: {other:?}"),
    };
    field(PromptTuningConfig::new(0, PromptTuningInit::Random, &config), "num_virtual_tokens");
    field(
        PromptTuningConfig::new(config.max_position_embeddings, PromptTuningInit::Random, &config),
        "num_virtual_tokens",
    );
    let base = std::fs::read(fixture("prompt_tuning/llama_gqa/initial_adapter/adapter_config.json")).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
        v[key] = value;
        PromptTuningConfig::from_value(&v)
    };
    field(with("num_transformer_submodules", serde_json::json!(2)), "num_transformer_submodules");
    field(with("prompt_tuning_init", serde_json::json!("TEXT")), "prompt_tuning_init_text");
    field(with("prompt_tuning_init", serde_json::json!("SOMETHING")), "prompt_tuning_init");
    field(with("token_dim", serde_json::json!(96)).and_then(|c| c.check(&config).map(|_| c)), "token_dim");
    // A row that fits the model alone but not after the virtual tokens.
    let gpu = gpu();
    let model = model(gpu, "llama_gqa");
    let ad = adapter(gpu, &model, "prompt_tuning/llama_gqa/initial_adapter");
    let row = vec![vec![5u32; config.max_position_embeddings - 2]];
    let ids = model.input_ids(gpu, &row).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = model.forward_adapted(&mut rec, &ids, &ad).unwrap_err();
    eprintln!("ROW | a prompt whose virtual tokens push the input past the context | {err}");
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("max_position_embeddings"), "{err}");
    let err =
        block_on(model.generate_adapted(gpu, &[5; 100], &GenerationConfig::greedy(26), &ad, |_| true)).unwrap_err();
    assert!(err.to_string().contains("4 virtual tokens"), "{err}");
}
