//! Prefix tuning against PEFT (tests/fixtures/prefix_tuning, made by
//! `make_fixtures.py prefix_tuning`): 3 virtual tokens' keys and values in
//! every layer, in PEFT's grouped-query shapes, on a tiny Llama (KV 2,
//! head_dim 24) and a tiny Qwen2 (KV 2, head_dim 16, q/k/v biases). The
//! logits, the loss and the prefix's gradient, 10 AdamW steps, greedy
//! generation with the prefix as the KV cache's first entries, PEFT's files
//! both ways, and bad configs.
//!
//! Tolerances as for LoRA: logits and gradients 1e-4 abs, loss 1e-5,
//! per-step losses 1e-4, final prefix 1e-4; generated tokens equal.

mod common;

use common::{
    adapted_logits, assert_files_are_peft, block_on, check_greedy_and_cache, check_peft_training, fixture,
    fixture_adapter, fixture_batch, fixture_model, gpu, max_abs_diff, Fixture,
};
use webpeft::model::{Config, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::prefix_tuning::{PrefixTuningAdapter, PrefixTuningConfig};
use webpeft::{Error, Gpu};

const MODELS: [&str; 2] = ["llama_gqa", "qwen2_tied"];

fn model(gpu: &Gpu, name: &str) -> Model {
    fixture_model(gpu, name)
}

fn adapter(gpu: &Gpu, model: &Model, dir: &str) -> Adapter {
    fixture_adapter(gpu, model, dir, "prefix_tuning")
}

/// The prefix of `ad` (or its gradient) in PEFT's layout, (P, layers·2·token_dim).
fn embedding(gpu: &Gpu, ad: &Adapter) -> Vec<f32> {
    let Adapter::PrefixTuning(p) = ad else { panic!("not prefix tuning") };
    block_on(p.embedding(gpu)).unwrap()
}

#[test]
fn logits_loss_gradient_and_ten_adamw_steps_match_peft() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prefix_tuning/{name}/reference.safetensors"));
        let batch = fixture_batch(&fx, 0..2);
        let initial = format!("prefix_tuning/{name}/initial_adapter");
        let ad = adapter(gpu, &model, &initial);
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &batch.input_ids), &fx.f32("logits"));
        eprintln!("{name}: logits max |diff| {d:e}");
        assert!(d <= 1e-4, "{name}: logits {d:e}");
        let prefix = |ad: &Adapter| vec![("prompt_embeddings".to_string(), embedding(gpu, ad))];
        check_peft_training(gpu, &model, &|| adapter(gpu, &model, &initial), &fx, &prefix);
    }
}

#[test]
fn greedy_generation_equals_peft_and_the_cache_equals_the_full_forward() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prefix_tuning/{name}/reference.safetensors"));
        let ad = adapter(gpu, &model, &format!("prefix_tuning/{name}/initial_adapter"));
        check_greedy_and_cache(gpu, &model, &ad, &fx, 3);
    }
}

#[test]
fn files_both_ways() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        for dir in ["initial_adapter", "final_adapter"] {
            let dir = format!("prefix_tuning/{name}/{dir}");
            assert_files_are_peft(gpu, &adapter(gpu, &model, &dir), &model.config, &dir);
        }
        // A fresh adapter has PEFT's config for the model.
        let fresh = PrefixTuningConfig::new(3, &model.config).unwrap();
        let theirs: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixture(&format!("prefix_tuning/{name}/initial_adapter/adapter_config.json"))).unwrap(),
        )
        .unwrap();
        let mut ours = fresh.to_value();
        ours["base_model_name_or_path"] = theirs["base_model_name_or_path"].clone();
        assert_eq!(ours, theirs, "{name}: a fresh config");
        let init = PrefixTuningAdapter::init(gpu, fresh, 1).unwrap();
        assert_eq!(init.keys.len(), model.config.num_hidden_layers);
    }
}

#[test]
fn bad_prefix_tuning_configs_are_typed_errors() {
    let config = Config::from_json(&std::fs::read(fixture("llama_gqa/config.json")).unwrap()).unwrap();
    let field = |r: webpeft::Result<PrefixTuningConfig>, want: &str| match r {
        Err(Error::AdapterConfig { field, .. } | Error::AdapterUnsupported { field, .. }) => assert_eq!(field, want),
        other => panic!("{want}: {other:?}"),
    };
    field(PrefixTuningConfig::new(0, &config), "num_virtual_tokens");
    field(PrefixTuningConfig::new(config.max_position_embeddings, &config), "num_virtual_tokens");
    let base = std::fs::read(fixture("prefix_tuning/llama_gqa/initial_adapter/adapter_config.json")).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
        v[key] = value;
        PrefixTuningConfig::from_value(&v)
    };
    field(with("token_dim", serde_json::json!(64)).and_then(|c| c.check(&config).map(|_| c)), "token_dim");
    field(with("num_layers", serde_json::json!(3)).and_then(|c| c.check(&config).map(|_| c)), "num_layers");
    field(with("num_virtual_tokens", serde_json::Value::Null), "num_virtual_tokens");
}

#[test]
fn a_folder_trained_with_prefix_projection_loads_as_its_projected_prefix() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prefix_tuning/{name}/reference.safetensors"));
        let dir = format!("prefix_tuning/{name}/projection_adapter");
        let ad = adapter(gpu, &model, &dir);
        let d = max_abs_diff(
            &adapted_logits(gpu, &model, Some(&ad), &fixture_batch(&fx, 0..2).input_ids),
            &fx.f32("projection.logits"),
        );
        assert!(d <= 1e-4, "{name}: logits {d:e}");
        assert_files_are_peft(gpu, &ad, &model.config, &dir);
    }
}
