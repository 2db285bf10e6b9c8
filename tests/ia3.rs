//! (IA)³ against PEFT (tests/fixtures/ia3, made by `make_fixtures.py ia3`):
//! on a tiny Llama (k, v, down) and a tiny Qwen2 (q, v, down; q/k/v biases,
//! tied embeddings), the logits with PEFT's adapter, the loss and every
//! vector's gradient, 10 AdamW steps, the files both ways, the KV-cache
//! forward, and bad configs as typed errors.
//!
//! Tolerances as for LoRA: logits and gradients 1e-4 abs, loss 1e-5,
//! per-step losses 1e-4, final vectors 1e-4.

mod common;

use common::{
    adapted_logits, adapter_values, block_on, cached_vs_full, check_peft_training, fixture, fixture_adapter,
    fixture_batch, fixture_model, gpu, max_abs_diff, uniform, Fixture,
};
use webpeft::model::{Config, MemoryFiles, Model, ModelType};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::ia3::Ia3Config;
use webpeft::{Error, Gpu};

const MODELS: [&str; 2] = ["llama_gqa", "qwen2_tied"];

fn model(gpu: &Gpu, name: &str) -> Model {
    fixture_model(gpu, name)
}

fn adapter(gpu: &Gpu, model: &Model, dir: &str) -> Adapter {
    fixture_adapter(gpu, model, dir, "ia3")
}

#[test]
fn logits_with_peft_adapters_match() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("ia3/{name}/reference.safetensors"));
        let ad = adapter(gpu, &model, &format!("ia3/{name}/initial_adapter"));
        let ids = fixture_batch(&fx, 0..2).input_ids;
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &ids), &fx.f32("logits"));
        let base = max_abs_diff(&adapted_logits(gpu, &model, None, &ids), &fx.f32("base_logits"));
        eprintln!("{name}: logits max |diff| {d:e}, base {base:e}");
        assert!(d <= 1e-4 && base <= 1e-4, "{name}: {d:e} / {base:e}");
        // A fresh adapter (vectors of ones) leaves the model as it is.
        let fresh = Adapter::new_ia3(gpu, Ia3Config::default_for(model.config.model_type), &model.config, 0).unwrap();
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&fresh), &ids), &fx.f32("base_logits"));
        assert!(d <= 1e-4, "{name}: fresh adapter moved the logits by {d:e}");
    }
}

#[test]
fn loss_every_gradient_and_ten_adamw_steps_match_peft() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("ia3/{name}/reference.safetensors"));
        let initial = format!("ia3/{name}/initial_adapter");
        assert_eq!(adapter(gpu, &model, &initial).tensors().len(), 6, "{name}");
        check_peft_training(gpu, &model, &|| adapter(gpu, &model, &initial), &fx, &|ad| adapter_values(gpu, ad));
    }
}

#[test]
fn files_we_write_are_peft_files() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let dir = format!("ia3/{name}/final_adapter");
        let ad = adapter(gpu, &model, &dir);
        let files = block_on(ad.to_files(gpu, &model.config)).unwrap();
        // The config PEFT wrote, key for key (ours: the same JSON value).
        let ours: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        let theirs: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(&format!("{dir}/adapter_config.json"))).unwrap()).unwrap();
        assert_eq!(ours, theirs, "{name}: adapter_config.json");
        // The weights: PEFT's keys, shapes and values.
        let st = safetensors::SafeTensors::deserialize(&files[1].1).unwrap();
        let peft_bytes = std::fs::read(fixture(&format!("{dir}/adapter_model.safetensors"))).unwrap();
        let peft = safetensors::SafeTensors::deserialize(&peft_bytes).unwrap();
        let mut names = st.names();
        names.sort();
        let mut peft_names = peft.names();
        peft_names.sort();
        assert_eq!(names, peft_names, "{name}");
        for k in names {
            let (a, b) = (st.tensor(k).unwrap(), peft.tensor(k).unwrap());
            assert_eq!(a.shape(), b.shape(), "{name} {k}");
            assert_eq!(a.data(), b.data(), "{name} {k}");
        }
        // And they load back with the same logits.
        let mut mem = MemoryFiles::new();
        for (n, b) in files {
            mem.insert(n, b);
        }
        let back = block_on(Adapter::load(gpu, &mem, &model.config)).unwrap();
        let ids = vec![vec![5u32, 17, 99, 200, 3]];
        assert_eq!(
            adapted_logits(gpu, &model, Some(&back), &ids),
            adapted_logits(gpu, &model, Some(&ad), &ids),
            "{name}"
        );
    }
}

#[test]
fn the_kv_cache_forward_matches_the_full_forward() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let ad = adapter(gpu, &model, &format!("ia3/{name}/final_adapter"));
        let ids: Vec<u32> = vec![7, 300, 12, 45, 99, 3, 150, 8];
        let d = cached_vs_full(gpu, &model, &ad, &ids, 5, 0);
        assert!(d <= 1e-4, "{name}: cached vs full logits {d:e}");
    }
}

/// (IA)³ scaling the outputs of o_proj and down_proj (neither a feed-forward
/// module) changes the Linears whose products decoding adds straight into
/// the residual stream where a method leaves that join plain
/// (`Hooks::plain_residual`): here it must not, and the cache still matches.
#[test]
fn output_scaling_of_the_residual_linears_through_the_kv_cache() {
    let gpu = gpu();
    let model = model(gpu, "llama_gqa");
    let config = std::fs::read(fixture("ia3/llama_gqa/initial_adapter/adapter_config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    config["target_modules"] = serde_json::json!(["o_proj", "down_proj"]);
    config["feedforward_modules"] = serde_json::json!([]);
    let ad = Adapter::new_ia3(gpu, Ia3Config::from_value(&config).unwrap(), &model.config, 3).unwrap();
    for (i, (_, t)) in ad.tensors().into_iter().enumerate() {
        t.write(gpu, &uniform(40 + i as u64, t.numel(), 0.3, 1.7)).unwrap();
    }
    let ids: Vec<u32> = vec![7, 300, 12, 45, 99, 3, 150, 8];
    let base = adapted_logits(gpu, &model, None, std::slice::from_ref(&ids));
    let scaled = adapted_logits(gpu, &model, Some(&ad), std::slice::from_ref(&ids));
    assert!(max_abs_diff(&base, &scaled) > 1e-2, "the vectors change the logits");
    let d = cached_vs_full(gpu, &model, &ad, &ids, 5, 0);
    assert!(d <= 1e-4, "cached vs full logits {d:e}");
    // A generation's hooks scale the outputs in place and save nothing: the same logits.
    let frozen = webpeft::model::llama::Hooks::frozen(&ad).expect("(IA)³ generates through its frozen hooks");
    let (own, _) = common::prefill_and_steps(gpu, &model, &ad, false);
    let (kept, _) = common::prefill_and_steps(gpu, &model, frozen.as_ref(), false);
    assert_eq!(own, kept, "the frozen hooks' logits");
}

#[test]
fn bad_ia3_configs_are_typed_errors() {
    let base = std::fs::read(fixture("ia3/llama_gqa/initial_adapter/adapter_config.json")).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
        v[key] = value;
        Ia3Config::from_value(&v)
    };
    let named = |r: webpeft::Result<Ia3Config>, want: &str| match r {
        Err(Error::AdapterConfig { field, .. } | Error::AdapterUnsupported { field, .. }) => {
            assert_eq!(field, want)
        }
        other => panic!("{want}: {other:?}"),
    };
    named(with("feedforward_modules", serde_json::json!(["gate_proj"])), "feedforward_modules");
    named(with("fan_in_fan_out", serde_json::json!(true)), "fan_in_fan_out");
    named(with("modules_to_save", serde_json::json!(["lm_head"])), "modules_to_save");
    named(with("target_modules", serde_json::json!(".*k_proj")), "target_modules");
    named(with("peft_type", serde_json::json!("LORA")), "peft_type");
    let config = Config::from_json(&std::fs::read(fixture("llama_gqa/config.json")).unwrap()).unwrap();
    assert_eq!(config.model_type, ModelType::Llama);
    named(
        with("target_modules", serde_json::json!(["w_q", "down_proj"])).and_then(|c| c.modules(&config).map(|_| c)),
        "target_modules",
    );
    // A vector of the wrong shape in the weights file names the tensor.
    let gpu = gpu();
    let model = model(gpu, "llama_gqa");
    let dir = fixture("ia3/qwen2_tied/initial_adapter"); // Qwen2's q_proj vectors: not this model's modules
    let mut files = MemoryFiles::new();
    files.insert("adapter_config.json", base.clone());
    files.insert("adapter_model.safetensors", std::fs::read(dir.join("adapter_model.safetensors")).unwrap());
    let err = block_on(Adapter::load(gpu, &files, &model.config)).unwrap_err();
    assert!(matches!(err, Error::AdapterTensor { .. }), "{err}");
}

#[test]
fn merging_into_the_base_gives_the_adapted_model_and_unmerging_the_base() {
    use webpeft::peft::ia3::merge::{merge_ia3, unmerge_ia3};
    let gpu = gpu();
    for name in MODELS {
        let mut model = model(gpu, name);
        let Adapter::Ia3(ia3) = adapter(gpu, &model, &format!("ia3/{name}/final_adapter")) else { unreachable!() };
        let ids = vec![vec![7u32, 300, 12, 45, 99, 3, 150, 8]];
        let base = adapted_logits(gpu, &model, None, &ids);
        let adapted = adapted_logits(gpu, &model, Some(&Adapter::Ia3(ia3.clone())), &ids);
        merge_ia3(gpu, &mut model, &ia3).unwrap();
        let merged = adapted_logits(gpu, &model, None, &ids);
        let d = max_abs_diff(&merged, &adapted);
        block_on(unmerge_ia3(gpu, &mut model, &ia3)).unwrap();
        let back = max_abs_diff(&adapted_logits(gpu, &model, None, &ids), &base);
        eprintln!("{name}: merged vs adapted {d:e}, unmerged vs base {back:e}");
        assert!(d <= 1e-4 && back <= 1e-4, "{name}: merged {d:e}, unmerged {back:e}");
    }
}
