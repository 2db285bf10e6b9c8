//! Prefix tuning against PEFT (tests/fixtures/prefix_tuning, made by
//! `make_fixtures.py prefix_tuning`): 3 virtual tokens' keys and values in
//! every layer, in PEFT's grouped-query shapes, on a tiny Llama (KV 2,
//! head_dim 24) and a tiny Qwen2 (KV 2, head_dim 16, q/k/v biases). The
//! logits, the loss and the prefix's gradient, 10 AdamW steps, greedy
//! generation with the prefix as the KV cache's first entries, PEFT's files
//! both ways, and bad configs. With `prefix_projection`
//! (tests/fixtures/prefix_projection, `make_fixtures.py prefix_projection`):
//! the same checks on PEFT's PrefixEncoder MLP, whose every tensor's gradient
//! is checked, and the prefix it makes saved as PEFT saves it.
//!
//! Tolerances as for LoRA: logits and gradients 1e-4 abs, loss 1e-5,
//! per-step losses 1e-4, final prefix 1e-4; generated tokens equal.

mod common;

use common::{
    adapted_logits, adapter_values, adapter_with, assert_files_are_peft, assert_files_near_peft, block_on,
    check_failed_step_keeps_derived, check_greedy_and_cache, check_logits_training_and_greedy, check_peft_training,
    fixture, fixture_adapter, fixture_batch, fixture_init, fixture_model, gpu, load_files, max_abs_diff, Fixture,
};
use webpeft::model::{Config, Model};
use webpeft::peft::adapter::{Adapter, AdapterConfig};
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

/// The training references' folders with their models: Qwen3's (`make_fixtures.py qwen3`) too, whose prefix
/// joins after q_norm, k_norm and RoPE.
const REFERENCES: [(&str, &str); 3] = [
    ("prefix_tuning/llama_gqa", "llama_gqa"),
    ("prefix_tuning/qwen2_tied", "qwen2_tied"),
    ("qwen3/prefix_tuning", "qwen3_tiny"),
];

#[test]
fn logits_loss_gradient_and_ten_adamw_steps_match_peft() {
    let gpu = gpu();
    for (dir, name) in REFERENCES {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("{dir}/reference.safetensors"));
        let batch = fixture_batch(&fx, 0..2);
        let initial = format!("{dir}/initial_adapter");
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
    for (dir, name) in REFERENCES {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("{dir}/reference.safetensors"));
        let ad = adapter(gpu, &model, &format!("{dir}/initial_adapter"));
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

/// PEFT's config of the prefix_projection fixture (encoder_hidden_size 32).
fn projection_config(name: &str) -> AdapterConfig {
    let json =
        std::fs::read(fixture(&format!("prefix_projection/{name}/initial_adapter/adapter_config.json"))).unwrap();
    AdapterConfig::PrefixTuning(PrefixTuningConfig::from_json(&json).unwrap())
}

#[test]
fn prefix_projection_trains_peft_mlp_as_peft_does() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prefix_projection/{name}/reference.safetensors"));
        let init = fixture_init(&fx);
        let fresh = || adapter_with(gpu, &model, projection_config(name), &init);
        check_logits_training_and_greedy(gpu, &model, name, &fresh, &fx, &fx.f32("logits"), 3);
        let (ad, ids) = (fresh(), fixture_batch(&fx, 0..2).input_ids);
        // The files hold the prefix the MLP makes, as PEFT's; loaded back, a plain prefix with PEFT's logits.
        let dir = format!("prefix_projection/{name}/initial_adapter");
        let (files, d) = assert_files_near_peft(gpu, &ad, &model.config, &dir, 1e-5);
        eprintln!("{name}: saved prefix max |diff| {d:e}");
        let back = load_files(gpu, &files, &model.config);
        assert!(back.tensors().iter().all(|(k, _)| k.starts_with("prefix.")), "a loaded folder trains its prefix");
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&back), &ids), &fx.f32("logits"));
        assert!(d <= 1e-4, "{name}: reloaded logits {d:e}");
    }
}

/// y = x·Wᵀ + b on the CPU, x (n, k), W (m, k).
fn linear_cpu(x: &[f32], w: &[f32], b: &[f32], k: usize) -> Vec<f32> {
    let m = b.len();
    x.chunks(k)
        .flat_map(|row| (0..m).map(move |j| b[j] + row.iter().zip(&w[j * k..][..k]).map(|(a, c)| a * c).sum::<f32>()))
        .collect()
}

#[test]
fn a_fresh_projection_adapter_is_peft_shaped_torch_initialised_and_makes_its_prefix() {
    let gpu = gpu();
    let model = model(gpu, "llama_gqa");
    let fx = Fixture::open("prefix_projection/llama_gqa/reference.safetensors");
    let ad = Adapter::new(gpu, projection_config("llama_gqa"), &model.config, 7).unwrap();
    let ours: std::collections::BTreeMap<String, Vec<f32>> = adapter_values(gpu, &ad).into_iter().collect();
    let peft = fixture_init(&fx);
    assert_eq!(ours.keys().collect::<Vec<_>>(), peft.keys().collect::<Vec<_>>());
    for (k, v) in &ours {
        assert_eq!(v.len(), peft[k].len(), "{k}");
    }
    // nn.Linear's bounds 1/√fan_in (token_dim 48, then 32); nn.Embedding's N(0, 1) reaches past them.
    let t = |k: &str| &ours[&format!("prompt_encoder.{k}")];
    for (k, fan_in) in [("transform.0", 48.0f32), ("transform.2", 32.0)] {
        for part in ["weight", "bias"] {
            let max = t(&format!("{k}.{part}")).iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(max <= 1.0 / fan_in.sqrt() && max > 0.5 / fan_in.sqrt(), "{k}.{part}: max |w| {max}");
        }
    }
    assert!(t("embedding.weight").iter().any(|v| v.abs() > 1.0));
    // The prefix is the MLP's output: tanh(E·W0ᵀ + b0)·W2ᵀ + b2, (P, layers·2·token_dim).
    let h: Vec<f32> = linear_cpu(t("embedding.weight"), t("transform.0.weight"), t("transform.0.bias"), 48)
        .iter()
        .map(|v| v.tanh())
        .collect();
    let want = linear_cpu(&h, t("transform.2.weight"), t("transform.2.bias"), 32);
    let d = max_abs_diff(&embedding(gpu, &ad), &want);
    assert!(d <= 1e-5, "prefix vs the MLP on the CPU: {d:e}");
}

#[test]
fn a_failed_step_leaves_the_prefix_made_from_the_restored_mlp() {
    let gpu = gpu();
    let model = model(gpu, "llama_gqa");
    let fx = Fixture::open("prefix_projection/llama_gqa/reference.safetensors");
    let mut init = fixture_init(&fx);
    init.get_mut("prompt_encoder.transform.2.bias").unwrap()[0] = f32::INFINITY; // a key of layer 0: the loss is NaN
    let bad = adapter_with(gpu, &model, projection_config("llama_gqa"), &init);
    check_failed_step_keeps_derived(gpu, &model, bad, &fixture_batch(&fx, 0..2), &|ad| embedding(gpu, ad));
}

#[test]
fn a_projection_without_width_is_a_typed_error() {
    let config = Config::from_json(&std::fs::read(fixture("llama_gqa/config.json")).unwrap()).unwrap();
    let json = std::fs::read(fixture("prefix_projection/llama_gqa/initial_adapter/adapter_config.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    v["encoder_hidden_size"] = serde_json::json!(0);
    match PrefixTuningConfig::from_value(&v).and_then(|c| c.check(&config)) {
        Err(Error::AdapterConfig { field, .. }) => assert_eq!(field, "encoder_hidden_size"),
        other => panic!("{other:?}"),
    }
}
