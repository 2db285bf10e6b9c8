//! AdaLoRA against PEFT (tests/fixtures/adalora, made by `make_fixtures.py
//! adalora`): on a tiny Llama and a tiny Qwen2 with every Linear adapted
//! (init_r 4, target_r 2, tinit 2, tfinal 3, deltaT 2, total_step 10), the
//! logits with PEFT's adapter, the loss (cross-entropy + the orthogonality
//! regulariser) and every A, E and B gradient, then 10 steps of AdamW with
//! gradient clipping and PEFT's rank allocator after each: the losses, the
//! triplet scores and the ranks kept at every allocation (steps 4, 6, 7), the
//! final tensors, and the files PEFT saves (resized by `rank_pattern`).
//!
//! Tolerances: logits and gradients 1e-4 abs, loss 1e-5, per-step losses
//! 1e-4, final tensors 1e-4, scores 1e-4 of the largest; kept ranks exactly.

mod common;

use common::{
    adapted_logits, adapter_values, block_on, cached_vs_full, fixture, fixture_adapter, fixture_batch, fixture_model,
    gpu, max_abs_diff, Fixture,
};
use webpeft::model::{MemoryFiles, Model};
use webpeft::peft::adalora::{AdaLoraAdapter, AdaLoraConfig};
use webpeft::peft::adapter::Adapter;
use webpeft::train::checkpoint::{load_checkpoint, save_checkpoint};
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{Error, Gpu};

const MODELS: [&str; 2] = ["llama_gqa", "qwen2_tied"];

fn adapter(gpu: &Gpu, model: &Model, dir: &str) -> Adapter {
    fixture_adapter(gpu, model, dir, "adalora")
}

fn adalora(ad: &Adapter) -> &AdaLoraAdapter {
    match ad {
        Adapter::AdaLora(a) => a,
        other => panic!("not AdaLoRA: {}", other.method()),
    }
}

/// The optimizer of the fixture's 10 steps: AdamW lr 1e-2, weight decay 0.01, clipping at 1.
fn optimizer() -> OptimizerConfig {
    OptimizerConfig { weight_decay: 0.01, max_grad_norm: 1.0, ..Default::default() }
}

#[test]
fn logits_with_peft_adapters_match() {
    let gpu = gpu();
    for name in MODELS {
        let model = fixture_model(gpu, name);
        let fx = Fixture::open(&format!("adalora/{name}/reference.safetensors"));
        let ids = fixture_batch(&fx, 0..2).input_ids;
        for (dir, want) in [("initial_adapter", "logits"), ("final_adapter", "final_logits")] {
            let ad = adapter(gpu, &model, &format!("adalora/{name}/{dir}"));
            let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &ids), &fx.f32(want));
            eprintln!("{name} {dir}: logits max |diff| {d:e}");
            assert!(d <= 1e-4, "{name} {dir}: {d:e}");
        }
        // PEFT's resized files: every module at the rank rank_pattern keeps.
        let fin = adapter(gpu, &model, &format!("adalora/{name}/final_adapter"));
        let ranks: usize = adalora(&fin).modules().iter().map(|(_, f)| f.rank()).sum();
        assert_eq!(ranks, fx.f32("alloc7.keep").iter().filter(|&&k| k == 1.0).count(), "{name}");
        // A fresh adapter (E = 0) leaves the model as it is.
        let c = adalora(&fin).config.clone();
        let fresh = Adapter::AdaLora(
            AdaLoraAdapter::init(gpu, AdaLoraConfig { rank_pattern: None, ..c }, &model.config, 1).unwrap(),
        );
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&fresh), &ids), &fx.f32("base_logits"));
        assert!(d <= 1e-4, "{name}: a fresh adapter moved the logits by {d:e}");
    }
}

#[test]
fn loss_with_the_regulariser_and_every_gradient_match_peft() {
    let gpu = gpu();
    for name in MODELS {
        let model = fixture_model(gpu, name);
        let fx = Fixture::open(&format!("adalora/{name}/reference.safetensors"));
        let batch = fixture_batch(&fx, 0..2);
        for checkpointing in [false, true] {
            let initial = adapter(gpu, &model, &format!("adalora/{name}/initial_adapter"));
            assert_eq!(initial.tensors().len(), 42, "{name}");
            let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
            let mut trainer = Trainer::new(gpu, initial, opt, 0).unwrap();
            trainer.gradient_checkpointing = checkpointing;
            let stats = block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 0.0)).unwrap();
            let (want, ce) = (fx.f32("loss")[0], fx.f32("ce_loss")[0]);
            eprintln!("{name}: loss {} vs PEFT {want} (cross-entropy {ce})", stats.loss);
            assert!((stats.loss - want).abs() <= 1e-5 * want.abs().max(1.0), "{name}: loss {} vs {want}", stats.loss);
            let mut worst = 0.0f32;
            for (key, got) in adapter_values(gpu, trainer.gradients()) {
                let d = max_abs_diff(&got, &fx.f32(&format!("{key}.grad")));
                worst = worst.max(d);
                assert!(d <= 1e-4, "{name} {key}: gradient max |diff| {d:e}");
            }
            eprintln!("{name} checkpointing {checkpointing}: 42 gradients, max |diff| {worst:e}");
        }
    }
}

/// The allocator's kept ranks and scores after the step just taken.
fn allocation(gpu: &Gpu, ad: &Adapter) -> (Vec<f32>, Vec<f32>) {
    let state = adalora(ad).allocator.as_ref().expect("a trained adapter has its allocator");
    (block_on(state.keep.to_vec::<f32>(gpu)).unwrap(), block_on(state.scores.to_vec::<f32>(gpu)).unwrap())
}

#[test]
fn ten_steps_with_the_rank_allocator_match_peft() {
    let gpu = gpu();
    for name in MODELS {
        let model = fixture_model(gpu, name);
        let fx = Fixture::open(&format!("adalora/{name}/reference.safetensors"));
        let batch = fixture_batch(&fx, 0..2);
        let initial = adapter(gpu, &model, &format!("adalora/{name}/initial_adapter"));
        let mut trainer = Trainer::new(gpu, initial, optimizer(), 0).unwrap();
        for (i, &want) in fx.f32("losses").iter().enumerate() {
            let s = block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
            assert!((s.loss - want).abs() <= 1e-4, "{name} step {}: loss {} vs PEFT {want}", i + 1, s.loss);
            let step = i + 1;
            if [4, 6, 7].contains(&step) {
                let (keep, scores) = allocation(gpu, &trainer.adapter);
                let want_scores = fx.f32(&format!("alloc{step}.scores"));
                // Relative to the largest score (the smallest are products of tiny EMAs). What the
                // scores decide, the kept ranks, must be PEFT's exactly: the fixture checks that no
                // score lies within 1% of the threshold.
                let top = want_scores.iter().fold(0.0f32, |m, s| m.max(s.abs()));
                let rel = max_abs_diff(&scores, &want_scores) / top;
                eprintln!(
                    "{name} step {step}: scores max |diff| / max score {rel:e}, kept {}",
                    keep.iter().sum::<f32>()
                );
                assert!(rel <= 1e-4, "{name} step {step}: scores rel diff {rel:e}");
                assert_eq!(keep, fx.f32(&format!("alloc{step}.keep")), "{name} step {step}: kept ranks");
            }
        }
        let mut worst = 0.0f32;
        for (key, got) in adapter_values(gpu, &trainer.adapter) {
            let d = max_abs_diff(&got, &fx.f32(&format!("final.{key}")));
            worst = worst.max(d);
            assert!(d <= 1e-4, "{name} final {key}: max |diff| {d:e}");
        }
        let ids = fixture_batch(&fx, 0..2).input_ids;
        let trained = adapted_logits(gpu, &model, Some(&trainer.adapter), &ids);
        let d = max_abs_diff(&trained, &fx.f32("final_logits"));
        eprintln!("{name}: after 10 steps: tensors max |diff| {worst:e}, logits {d:e}");
        assert!(d <= 1e-4, "{name}: logits after 10 steps {d:e}");
        // What we save is what PEFT saved: rank_pattern, and only the kept ranks.
        let files = block_on(trainer.adapter.to_files(gpu, &model.config)).unwrap();
        let ours: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        let dir = format!("adalora/{name}/final_adapter");
        let theirs: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(&format!("{dir}/adapter_config.json"))).unwrap()).unwrap();
        assert_eq!(ours["rank_pattern"], theirs["rank_pattern"], "{name}");
        let mut keys: Vec<&String> = ours.as_object().unwrap().keys().collect();
        let mut peft_keys: Vec<&String> = theirs.as_object().unwrap().keys().collect();
        keys.sort();
        peft_keys.sort();
        assert_eq!(keys, peft_keys, "{name}: adapter_config.json keys");
        let st = safetensors::SafeTensors::deserialize(&files[1].1).unwrap();
        let peft_bytes = std::fs::read(fixture(&format!("{dir}/adapter_model.safetensors"))).unwrap();
        let peft = safetensors::SafeTensors::deserialize(&peft_bytes).unwrap();
        let (mut names, mut peft_names) = (st.names(), peft.names());
        names.sort();
        peft_names.sort();
        assert_eq!(names, peft_names, "{name}");
        for k in names {
            let (a, b) = (st.tensor(k).unwrap(), peft.tensor(k).unwrap());
            assert_eq!(a.shape(), b.shape(), "{name} {k}");
            let (a, b): (&[f32], &[f32]) = (bytemuck::cast_slice(a.data()), bytemuck::cast_slice(b.data()));
            assert!(max_abs_diff(a, b) <= 1e-4, "{name} {k}");
        }
        // They load back (resized) with the trained adapter's logits.
        let mut mem = MemoryFiles::new();
        for (n, b) in files {
            mem.insert(n, b);
        }
        let back = block_on(Adapter::load(gpu, &mem, &model.config)).unwrap();
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&back), &ids), &trained);
        eprintln!("{name}: saved (pruned ranks dropped) and reloaded: logits max |diff| {d:e}");
        assert!(d <= 1e-5, "{name}: {d:e}");
    }
}

#[test]
fn a_checkpoint_resumes_the_allocator_exactly() {
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let fx = Fixture::open("adalora/llama_gqa/reference.safetensors");
    let batch = fixture_batch(&fx, 0..2);
    let initial = || adapter(gpu, &model, "adalora/llama_gqa/initial_adapter");
    let step = |t: &mut Trainer| block_on(t.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
    let mut whole = Trainer::new(gpu, initial(), optimizer(), 0).unwrap();
    (0..10).for_each(|_| _ = step(&mut whole));
    // Stopped after step 5 (between two allocations), resumed from the file.
    let mut first = Trainer::new(gpu, initial(), optimizer(), 0).unwrap();
    (0..5).for_each(|_| _ = step(&mut first));
    let bytes = block_on(save_checkpoint(gpu, &first, &model.config, &serde_json::json!({}))).unwrap();
    let (mut resumed, _) = load_checkpoint(gpu, &bytes, &model.config).unwrap();
    (0..5).for_each(|_| _ = step(&mut resumed));
    assert_eq!(adapter_values(gpu, &resumed.adapter), adapter_values(gpu, &whole.adapter));
    assert_eq!(allocation(gpu, &resumed.adapter), allocation(gpu, &whole.adapter));
}

/// A generation (`Hooks::frozen`, what `generate` runs through) keeps each
/// A∘E and computes q, k, v's (and gate, up's) x·(A∘E)ᵀ in one product: a
/// prefill and three steps give the logits of the adapter's own pass, and
/// the steps rebuild no A∘E and make one x·Aᵀ for each group of Linears on
/// one input where the pass makes one a Linear.
#[test]
fn generation_keeps_a_e_and_shares_x_a() {
    use webpeft::gpu::KernelTime;
    use webpeft::model::llama::Hooks;
    // A device of its own: profiling is the device's, and other tests run meanwhile.
    let gpu = &block_on(Gpu::new()).unwrap();
    for name in MODELS {
        let model = fixture_model(gpu, name);
        let ad = adapter(gpu, &model, &format!("adalora/{name}/final_adapter"));
        let frozen = ad.frozen().expect("an AdaLoRA adapter keeps A∘E");
        let run = |hooks: &dyn Hooks| common::prefill_and_steps(gpu, &model, hooks, true);
        let calls = |steps: &[KernelTime], f: &dyn Fn(&str) -> bool| -> u64 {
            steps.iter().filter(|k| f(&k.kernel)).map(|k| k.calls).sum()
        };
        let (own, own_steps) = run(&ad);
        let (kept, kept_steps) = run(frozen.as_ref());
        let d = max_abs_diff(&kept, &own);
        eprintln!("{name}: the frozen hooks' logits against the pass's own: {d:e}");
        assert!(d <= 1e-5, "{name}: the frozen hooks' logits differ by {d}");
        let rebuilds = |steps: &[KernelTime]| calls(steps, &|k| k.contains("scale_rows"));
        assert_eq!((rebuilds(&own_steps) > 0, rebuilds(&kept_steps)), (true, 0), "{name}: A∘E rebuilt by the steps");
        if name == "llama_gqa" {
            let plain = |steps: &[KernelTime]| calls(steps, &|k| k.starts_with("matmul") && !k.contains("+low_rank"));
            // PEFT's resize left 12 of the 14 Linears adapted (layer 1's k_proj
            // and down_proj kept rank 0): the other f32 products are the
            // lm_head, those two frozen Linears and the x·Aᵀ, 12 alone and 7
            // shared (layer 0: q k v, o, gate up, down; layer 1: q v, o, gate up).
            let want = (3 * (1 + 2 + 12), 3 * (1 + 2 + 7));
            assert_eq!((plain(&own_steps), plain(&kept_steps)), want, "{name}: x·Aᵀ launches");
        }
    }
}

#[test]
fn merging_into_the_base_gives_the_adapted_model() {
    use webpeft::peft::adalora::merge::{merge_adalora, unmerge_adalora};
    let gpu = gpu();
    for name in MODELS {
        let mut model = fixture_model(gpu, name);
        let ad = adapter(gpu, &model, &format!("adalora/{name}/final_adapter"));
        let ids = vec![vec![7u32, 300, 12, 45, 99, 3, 150, 8]];
        let base = adapted_logits(gpu, &model, None, &ids);
        let adapted = adapted_logits(gpu, &model, Some(&ad), &ids);
        merge_adalora(gpu, &mut model, adalora(&ad)).unwrap();
        let d = max_abs_diff(&adapted_logits(gpu, &model, None, &ids), &adapted);
        unmerge_adalora(gpu, &mut model, adalora(&ad)).unwrap();
        let back = max_abs_diff(&adapted_logits(gpu, &model, None, &ids), &base);
        eprintln!("{name}: merged vs adapted {d:e}, unmerged vs base {back:e}");
        assert!(d <= 1e-4 && back <= 1e-4, "{name}: merged {d:e}, unmerged {back:e}");
        let c = cached_vs_full(gpu, &model, &ad, &ids[0], 5, 0);
        assert!(c <= 1e-4, "{name}: cached vs full logits {c:e}");
    }
}

#[test]
fn bad_adalora_configs_are_typed_errors() {
    let base = std::fs::read(fixture("adalora/llama_gqa/initial_adapter/adapter_config.json")).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
        match value {
            serde_json::Value::Null => _ = v.as_object_mut().unwrap().remove(key),
            value => v[key] = value,
        }
        AdaLoraConfig::from_value(&v)
    };
    let named = |r: webpeft::Result<AdaLoraConfig>, want: &str| match r {
        Err(Error::AdapterConfig { field, .. } | Error::AdapterUnsupported { field, .. }) => assert_eq!(field, want),
        other => panic!("{want}: {other:?}"),
    };
    named(with("total_step", serde_json::Value::Null), "total_step");
    named(with("tinit", serde_json::json!(8)), "tinit");
    named(with("target_r", serde_json::json!(5)), "target_r");
    named(with("deltaT", serde_json::json!(0)), "deltaT");
    named(with("beta1", serde_json::json!(1.0)), "beta1");
    named(with("use_dora", serde_json::json!(true)), "use_dora");
    named(
        with("rank_pattern", serde_json::json!({"model.layers.0.self_attn.q_proj.lora_E": [1, 0]})),
        "rank_pattern.model.layers.0.self_attn.q_proj.lora_E",
    );
    named(with("peft_type", serde_json::json!("LORA")), "peft_type");
    // A rank_pattern that does not fit the weights names the tensor.
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let mut files = MemoryFiles::new();
    files.insert(
        "adapter_config.json",
        std::fs::read(fixture("adalora/llama_gqa/final_adapter/adapter_config.json")).unwrap(),
    );
    let initial_weights = fixture("adalora/llama_gqa/initial_adapter/adapter_model.safetensors");
    files.insert("adapter_model.safetensors", std::fs::read(initial_weights).unwrap());
    let err = block_on(Adapter::load(gpu, &files, &model.config)).unwrap_err();
    assert!(matches!(err, Error::AdapterTensor { .. }), "{err}");
}
