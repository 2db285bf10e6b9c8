//! P-tuning against PEFT (tests/fixtures/p_tuning, made by `make_fixtures.py
//! p_tuning`): 4 virtual tokens made by PEFT's MLP prompt encoder (width 32)
//! from PEFT's own initial tensors, on a tiny Llama and a tiny Qwen2. The
//! logits of the rows' own positions, the loss and every encoder tensor's
//! gradient, 10 AdamW steps, greedy generation, the prompt saved as PEFT
//! saves it, PEFT's folders loaded (as prompt tuning with those embeddings)
//! and written back byte for byte, a failed step, and bad configs.
//!
//! Tolerances as for LoRA: logits and gradients 1e-4 abs, loss 1e-5,
//! per-step losses 1e-4, final tensors 1e-4; generated tokens equal.

mod common;

use common::{
    adapted_logits, adapter_values, adapter_with, assert_files_are_peft, assert_files_near_peft, block_on,
    check_failed_step_keeps_derived, check_logits_training_and_greedy, fixture, fixture_adapter, fixture_batch,
    fixture_init, fixture_model, gpu, load_files, max_abs_diff, Fixture,
};
use webpeft::model::{Config, Model};
use webpeft::peft::adapter::{Adapter, AdapterConfig};
use webpeft::peft::p_tuning::PTuningConfig;
use webpeft::{Error, Gpu};

const MODELS: [&str; 2] = ["llama_gqa", "qwen2_tied"];
const V: usize = 4;

fn model(gpu: &Gpu, name: &str) -> Model {
    fixture_model(gpu, name)
}

fn config_json(name: &str) -> Vec<u8> {
    std::fs::read(fixture(&format!("p_tuning/{name}/initial_adapter/adapter_config.json"))).unwrap()
}

/// PEFT's config of the fixture (encoder_hidden_size 32).
fn config(name: &str) -> AdapterConfig {
    AdapterConfig::PTuning(PTuningConfig::from_json(&config_json(name)).unwrap())
}

/// PEFT's logits (B, V+T, vocab) at the rows' own positions, (B, T, vocab).
fn own_positions(fx: &Fixture, vocab: usize) -> Vec<f32> {
    let (logits, t) = (fx.f32("logits"), fx.shape("input_ids")[1]);
    (0..2).flat_map(|i| logits[(i * (V + t) + V) * vocab..(i * (V + t) + V + t) * vocab].to_vec()).collect()
}

/// The prompt the model sees, (V, D).
fn prompt(gpu: &Gpu, ad: &Adapter) -> Vec<f32> {
    let Adapter::PTuning(p) = ad else { panic!("not P-tuning") };
    block_on(p.prompt.to_vec::<f32>(gpu)).unwrap()
}

#[test]
fn logits_loss_every_gradient_ten_adamw_steps_and_greedy_tokens_match_peft() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("p_tuning/{name}/reference.safetensors"));
        let init = fixture_init(&fx);
        let fresh = || adapter_with(gpu, &model, config(name), &init);
        let want = own_positions(&fx, model.config.vocab_size);
        check_logits_training_and_greedy(gpu, &model, name, &fresh, &fx, &want, V);
    }
}

#[test]
fn the_prompt_is_saved_as_peft_saves_it_and_peft_folders_load_as_prompt_tuning() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("p_tuning/{name}/reference.safetensors"));
        let ids = fixture_batch(&fx, 0..2).input_ids;
        let want = own_positions(&fx, model.config.vocab_size);
        let ad = adapter_with(gpu, &model, config(name), &fixture_init(&fx));
        let initial = format!("p_tuning/{name}/initial_adapter");
        let (files, d) = assert_files_near_peft(gpu, &ad, &model.config, &initial, 1e-5);
        eprintln!("{name}: saved prompt max |diff| {d:e}");
        // Ours and PEFT's folders load the same way: the saved prompt, trained directly.
        for loaded in [load_files(gpu, &files, &model.config), fixture_adapter(gpu, &model, &initial, "p_tuning")] {
            assert_eq!(loaded.tensors().iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["prompt_embeddings"]);
            let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&loaded), &ids), &want);
            assert!(d <= 1e-4, "{name}: loaded logits {d:e}");
        }
        for dir in ["initial_adapter", "final_adapter"] {
            let dir = format!("p_tuning/{name}/{dir}");
            assert_files_are_peft(gpu, &fixture_adapter(gpu, &model, &dir, "p_tuning"), &model.config, &dir);
        }
        // A fresh config is PEFT's for the model.
        let mut ours = PTuningConfig::new(V, Some(32), &model.config).unwrap().to_value();
        let theirs: serde_json::Value = serde_json::from_slice(&config_json(name)).unwrap();
        ours["base_model_name_or_path"] = theirs["base_model_name_or_path"].clone();
        assert_eq!(ours, theirs, "{name}: a fresh config");
    }
}

#[test]
fn a_fresh_adapter_has_peft_tensors_and_a_failed_step_keeps_its_prompt() {
    let gpu = gpu();
    let model = model(gpu, "llama_gqa");
    let fx = Fixture::open("p_tuning/llama_gqa/reference.safetensors");
    let ours = Adapter::new(gpu, config("llama_gqa"), &model.config, 3).unwrap();
    let shapes = |n: Vec<(String, Vec<f32>)>| n.into_iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>();
    let mut peft: Vec<(String, usize)> = fixture_init(&fx).into_iter().map(|(k, v)| (k, v.len())).collect();
    let mut mine = shapes(adapter_values(gpu, &ours));
    peft.sort();
    mine.sort();
    assert_eq!(mine, peft);
    assert!(prompt(gpu, &ours).iter().any(|v| *v != 0.0), "the prompt is made at creation");

    let mut init = fixture_init(&fx);
    init.get_mut("prompt_encoder.mlp_head.4.bias").unwrap()[0] = f32::INFINITY; // the loss is NaN
    let bad = adapter_with(gpu, &model, config("llama_gqa"), &init);
    check_failed_step_keeps_derived(gpu, &model, bad, &fixture_batch(&fx, 0..2), &|ad| prompt(gpu, ad));
}

#[test]
fn bad_p_tuning_configs_are_typed_errors() {
    let config = Config::from_json(&std::fs::read(fixture("llama_gqa/config.json")).unwrap()).unwrap();
    let base = config_json("llama_gqa");
    let with = |key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
        v[key] = value;
        PTuningConfig::from_value(&v).and_then(|c| c.check(&config).map(|_| c))
    };
    let field = |r: webpeft::Result<PTuningConfig>, want: &str| match r {
        Err(Error::AdapterConfig { field, .. } | Error::AdapterUnsupported { field, .. }) => assert_eq!(field, want),
        other => panic!("{want}: {other:?}"),
    };
    match with("encoder_reparameterization_type", serde_json::json!("LSTM")) {
        Err(e @ Error::AdapterUnsupported { .. }) => assert!(e.to_string().contains("LSTM"), "{e}"),
        other => panic!("LSTM: {other:?}"),
    }
    field(with("encoder_reparameterization_type", serde_json::json!("GRU")), "encoder_reparameterization_type");
    field(with("encoder_hidden_size", serde_json::json!(0)), "encoder_hidden_size");
    field(with("token_dim", serde_json::json!(48)), "token_dim");
    field(with("num_virtual_tokens", serde_json::json!(0)), "num_virtual_tokens");
    field(with("peft_type", serde_json::json!("PROMPT_TUNING")), "peft_type");
    field(PTuningConfig::new(config.max_position_embeddings, None, &config), "num_virtual_tokens");
}
