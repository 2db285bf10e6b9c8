//! Files webpeft writes load in the Hugging Face stack. This test writes
//! adapters (two LoRA, three bottleneck, an AdaLoRA with pruned ranks) with `Adapter::to_files` and checks
//! them against `tests/fixtures/webpeft_saved/`, which holds the same files
//! plus webpeft's logits with each adapter. `make_fixtures.py` loads those
//! folders with `PeftModel.from_pretrained` / `adapters`' `load_adapter`,
//! asserts no missing or unexpected keys and logits within 1e-4 of webpeft's,
//! and records what it checked (with each file's sha256) in
//! `webpeft_saved/python_check.json`, which this test requires to match.
//!
//! To rewrite the folder after a deliberate format change:
//! `WEBPEFT_WRITE_FIXTURES=1 cargo test --test roundtrip`, then rerun the
//! fixture script.

mod common;

use std::collections::BTreeMap;

use common::{block_on, fixture, gpu, randn, Fixture};
use webpeft::gpu::Recorder;
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adalora::{AdaLoraAdapter, AdaLoraConfig, AdaLoraWeights, Allocator, SvdTriplet};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::lora_modules;
use webpeft::peft::{BnInit, BottleneckConfig, BottleneckKind, InitLoraWeights, LoraConfig, TargetModules};
use webpeft::quant::QuantFormat;
use webpeft::Gpu;

fn adapters(gpu: &Gpu, model: &Model) -> Vec<(&'static str, Adapter)> {
    let mut all = LoraConfig::new(4, 8.0, TargetModules::AllLinear).unwrap();
    all.init_lora_weights = InitLoraWeights::Random;
    all.base_model_name_or_path = Some("llama_gqa".into());
    let mut qv = LoraConfig::new(2, 5.0, TargetModules::List(vec!["q_proj".into(), "v_proj".into()])).unwrap();
    qv.init_lora_weights = InitLoraWeights::Random;
    qv.use_rslora = true;
    qv.lora_dropout = 0.05;
    qv.layers_to_transform = Some(vec![1]);
    qv.base_model_name_or_path = Some("llama_gqa".into());
    let bn = |kind| {
        let mut c = BottleneckConfig::new(kind);
        c.init_weights = BnInit::Bert; // non-zero up-projection: the adapter changes the logits
        c.model_name = Some("llama_gqa".into());
        c
    };
    vec![
        ("lora_all_linear", Adapter::new_lora(gpu, all, &model.config, 21).unwrap()),
        ("lora_qv_rslora_layer1", Adapter::new_lora(gpu, qv, &model.config, 22).unwrap()),
        ("seq_bn", Adapter::new_bottleneck(gpu, bn(BottleneckKind::SeqBn), &model.config, 23).unwrap()),
        ("double_seq_bn", Adapter::new_bottleneck(gpu, bn(BottleneckKind::DoubleSeqBn), &model.config, 24).unwrap()),
        ("par_bn", Adapter::new_bottleneck(gpu, bn(BottleneckKind::ParBn), &model.config, 25).unwrap()),
        ("adalora_pruned", adalora_after_an_allocation(gpu, model)),
    ]
}

/// An AdaLoRA adapter (init_r 3, target_r 2 on q, v and down) as training
/// leaves it after an allocation: some ranks pruned (their E zero), the
/// allocator's `keep` saying which. Its files hold `rank_pattern` and only the
/// kept ranks, as PEFT's `save_pretrained` writes them.
fn adalora_after_an_allocation(gpu: &Gpu, model: &Model) -> Adapter {
    let mut lora =
        LoraConfig::new(8, 8.0, TargetModules::List(vec!["q_proj".into(), "v_proj".into(), "down_proj".into()]))
            .unwrap();
    lora.base_model_name_or_path = Some("llama_gqa".into());
    let config = AdaLoraConfig::new(lora, 3, 2, 20).unwrap();
    let mut weights = AdaLoraWeights::default();
    let mut keep = Vec::new();
    for (j, m) in lora_modules(&config.lora, &model.config).unwrap().into_iter().enumerate() {
        let r = 3;
        let flags: Vec<bool> = (0..r).map(|i| (j + i) % 3 != 0).collect();
        let seed = 40 + j as u64;
        let a = randn(seed, r * m.in_features).iter().map(|v| 0.1 * v).collect();
        let e = randn(seed + 100, r).iter().zip(&flags).map(|(v, &k)| if k { *v } else { 0.0 }).collect();
        let b = randn(seed + 200, m.out_features * r).iter().map(|v| 0.1 * v).collect();
        weights
            .modules
            .insert(m.name, SvdTriplet { a, e, b, r, in_features: m.in_features, out_features: m.out_features });
        keep.extend(flags.iter().map(|&k| k as u8 as f32));
    }
    let mut adapter = AdaLoraAdapter::upload(gpu, config, &weights, &model.config).unwrap();
    let state = Allocator::new(gpu, &adapter).unwrap();
    state.keep.write(gpu, &keep).unwrap();
    state.allocated.write(gpu, &[1.0f32]).unwrap();
    adapter.allocator = Some(Box::new(state));
    Adapter::AdaLora(adapter)
}

#[test]
fn saved_adapters_match_the_files_the_hugging_face_stack_checked() {
    let gpu = gpu();
    let model = block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap();
    let refs = Fixture::open("refs/llama_gqa/reference.safetensors");
    let t = refs.shape("input_ids")[1];
    let ids: Vec<Vec<u32>> = refs.i64("input_ids").chunks(t).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let ids = model.input_ids(gpu, &ids).unwrap();
    let root = fixture("webpeft_saved");
    let write = std::env::var_os("WEBPEFT_WRITE_FIXTURES").is_some();
    let mut logits_out: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let check: serde_json::Value = if write {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(
            &std::fs::read(root.join("python_check.json")).expect("python_check.json: run make_fixtures.py"),
        )
        .unwrap()
    };
    for (name, adapter) in adapters(gpu, &model) {
        let files = block_on(adapter.to_files(gpu, &model.config)).unwrap();
        let mut rec = Recorder::new(gpu);
        let (logits, _) = model.forward_adapted(&mut rec, &ids, &adapter).unwrap();
        rec.submit().unwrap();
        let logits = block_on(logits.to_vec::<f32>(gpu)).unwrap();
        let dir = root.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            for (file, bytes) in &files {
                std::fs::write(dir.join(file), bytes).unwrap();
            }
            logits_out.insert(name.to_string(), logits);
            continue;
        }
        for (file, bytes) in &files {
            let committed = std::fs::read(dir.join(file)).unwrap_or_else(|e| panic!("{name}/{file}: {e}"));
            assert!(committed == *bytes, "{name}/{file}: webpeft now writes different bytes (see the module doc)");
            let checked = &check["adapters"][name]["sha256"][file];
            assert_eq!(
                checked.as_str(),
                Some(common::sha256_hex(bytes).as_str()),
                "{name}/{file}: not the file Python checked"
            );
        }
        let py = &check["adapters"][name];
        assert_eq!(py["missing_keys"], serde_json::json!([]), "{name}");
        assert_eq!(py["unexpected_keys"], serde_json::json!([]), "{name}");
        let want = Fixture::open("webpeft_saved/logits.safetensors").f32(name);
        let d = logits.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("{name}: logits vs committed {d:e}; Python's max |diff| {}", py["max_abs_diff"]);
        assert!(d <= 1e-5, "{name}: {d:e}");
        assert!(py["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{name}");
    }
    if write {
        let views: Vec<(String, safetensors::tensor::TensorView)> = logits_out
            .iter()
            .map(|(k, v)| {
                let shape = vec![2, t, 384];
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, bytemuck::cast_slice(v))
                        .unwrap(),
                )
            })
            .collect();
        std::fs::write(root.join("logits.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
        eprintln!("wrote {}; now run make_fixtures.py", root.display());
    }
}
