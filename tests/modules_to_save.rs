//! PEFT's `modules_to_save` beside a LoRA: whole copies of `embed_tokens`
//! and `lm_head` trained in the model's place. The two gradient kernels
//! against the CPU reference (whole and in row chunks); against PEFT
//! (`make_fixtures.py modules_to_save`) on an untied model, a tied one with
//! two copies, and a tied one with one shared copy (`ensure_weight_tying`),
//! on both kernel families: logits, loss, every gradient, 10 AdamW steps,
//! greedy decoding through the KV cache, the files byte for byte; copies in
//! row chunks; a fresh adapter; merge; checkpoints; and what is refused.

mod common;
use common::{block_on, gpu, randn, Fixture};
use webpeft::gpu::{GpuOptions, Recorder};
use webpeft::kernels::embedding::embedding_weight_backward;
use webpeft::kernels::qmatmul::{weight_grad_accumulate, QWeight};
use webpeft::kernels::reference::token_rows::embedding_backward as cpu_embedding_backward;
use webpeft::kernels::reference::{assert_close, matmul as cpu};
use webpeft::peft::adapter::AdapterConfig;
use webpeft::peft::{Adapter, LoraConfig, TargetModules};
use webpeft::quant::QuantFormat;
use webpeft::{Error, Gpu, Tensor};

const CASES: [&str; 3] = ["llama_gqa", "qwen2_tied", "qwen2_tied_shared"];

fn gpu_with_binding_limit(bytes: u64) -> Gpu {
    block_on(Gpu::with_options(GpuOptions { max_binding_bytes: Some(bytes), ..Default::default() })).unwrap()
}

fn small_gpu() -> Gpu {
    gpu_with_binding_limit(4096)
}

fn read_weight(gpu: &Gpu, w: &QWeight) -> Vec<f32> {
    block_on(w.to_f32(gpu)).unwrap()
}

/// grad += the embedding's gradient: each id's row sums its tokens' rows of
/// dx (ids repeated, ids past the vocabulary adding nothing), whole and in
/// row chunks, onto a gradient that already holds values.
#[test]
fn embedding_gradient_matches_the_reference() {
    let small = small_gpu();
    for gpu in [gpu(), common::gpu_family(), &small] {
        let (vocab, dim, n) = (97, 13, 43);
        let mut ids: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 5) % vocab as u32).collect();
        ids[4] = ids[20];
        ids[7] = ids[20];
        ids[11] = vocab as u32 + 3;
        ids[30] = 96; // the last row
        ids[31] = 0;
        let dx = randn(1, n * dim);
        let g0 = randn(2, vocab * dim);
        let grad = QWeight::from_f32(gpu, &g0, vocab, dim, QuantFormat::F32).unwrap();
        let mut rec = Recorder::new(gpu);
        let t_ids = Tensor::from_slice(gpu, &[n], &ids).unwrap();
        embedding_weight_backward(&mut rec, &grad, &t_ids, &Tensor::from_slice(gpu, &[n, dim], &dx).unwrap()).unwrap();
        rec.submit().unwrap();
        let kept: Vec<usize> = (0..n).filter(|&t| ids[t] < vocab as u32).collect();
        let kept_ids: Vec<u32> = kept.iter().map(|&t| ids[t]).collect();
        let kept_dx: Vec<f32> = kept.iter().flat_map(|&t| dx[t * dim..(t + 1) * dim].to_vec()).collect();
        let dw = cpu_embedding_backward(&kept_ids, &kept_dx, vocab, dim);
        let want: Vec<f32> = g0.iter().zip(&dw).map(|(a, b)| a + b).collect();
        let label = format!("embedding gradient in {} chunk(s)", grad.chunks.len());
        assert_close(&label, &read_weight(gpu, &grad), &want, 1e-6, 1e-6);

        let mut rec = Recorder::new(gpu);
        let wrong = Tensor::zeros(gpu, &[n, dim + 1], webpeft::DType::F32).unwrap();
        let err = embedding_weight_backward(&mut rec, &grad, &t_ids, &wrong).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }
    assert!(QWeight::zeros(&small, 97, 13, QuantFormat::F32).unwrap().chunks.len() > 1);
}

/// grad (out, in) += dyᵀ·x for a weight in row chunks: each chunk takes its
/// columns of dy.
#[test]
fn weight_gradient_matches_the_reference() {
    let small = small_gpu();
    for gpu in [gpu(), common::gpu_family(), &small] {
        let (out, cols, m) = (91, 19, 7);
        let dy = randn(3, m * out);
        let x = randn(4, m * cols);
        let g0 = randn(5, out * cols);
        let grad = QWeight::from_f32(gpu, &g0, out, cols, QuantFormat::F32).unwrap();
        let mut rec = Recorder::new(gpu);
        let (t_dy, t_x) =
            (Tensor::from_slice(gpu, &[m, out], &dy).unwrap(), Tensor::from_slice(gpu, &[m, cols], &x).unwrap());
        weight_grad_accumulate(&mut rec, &t_dy, &t_x, &grad).unwrap();
        rec.submit().unwrap();
        let mut want = g0.clone();
        cpu::matmul(&dy, &x, &mut want, out, cols, m, true, false, true);
        let label = format!("weight gradient in {} chunk(s)", grad.chunks.len());
        assert_close(&label, &read_weight(gpu, &grad), &want, 1e-5, 1e-5);
        let mut rec = Recorder::new(gpu);
        let err = weight_grad_accumulate(&mut rec, &t_x, &t_x, &grad).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{err}");
    }
}

fn load(gpu: &Gpu, model: &webpeft::model::Model, case: &str) -> Adapter {
    common::fixture_adapter(gpu, model, &format!("modules_to_save/{case}/initial_adapter"), "lora")
}

/// Against PEFT, on both kernel families.
#[test]
fn modules_to_save_match_peft() {
    for gpu in [gpu(), common::gpu_family()] {
        for case in CASES {
            let model = common::fixture_model(gpu, common::model_of(case));
            let fx = Fixture::open(&format!("modules_to_save/{case}/reference.safetensors"));
            let initial = || load(gpu, &model, case);
            let Adapter::Lora(l) = initial() else { unreachable!() };
            let m = l.modules_to_save.as_ref().expect("copies");
            assert_eq!((m.head_is_embed, m.head.is_some()), (case.ends_with("_shared"), !case.ends_with("_shared")));
            eprintln!("{case}:");
            common::check_logits_training_and_greedy(gpu, &model, case, &initial, &fx, &fx.f32("logits"), 0);
        }
    }
}

/// The files PEFT wrote, byte for byte: the copies under their modules'
/// keys (a shared copy under both), and the config's list as PEFT keeps it.
#[test]
fn files_are_pefts() {
    let gpu = gpu();
    for case in CASES {
        let model = common::fixture_model(gpu, common::model_of(case));
        let files = block_on(load(gpu, &model, case).to_files(gpu, &model.config)).unwrap();
        let dir = common::fixture(&format!("modules_to_save/{case}/initial_adapter"));
        let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
        assert_eq!(json(&files[0].1), json(&std::fs::read(dir.join("adapter_config.json")).unwrap()), "{case}");
        assert_eq!(files[1].1, std::fs::read(dir.join("adapter_model.safetensors")).unwrap(), "{case}");
    }
}

fn config(targets: &[&str], save: &[&str], tie: bool) -> LoraConfig {
    let mut c = LoraConfig::new(4, 8.0, TargetModules::List(targets.iter().map(|s| s.to_string()).collect())).unwrap();
    c.modules_to_save = Some(save.iter().map(|s| s.to_string()).collect());
    c.ensure_weight_tying = tie;
    c
}

/// A fresh adapter's copies are the model's own weights (PEFT's deep
/// copies), so it starts as the base model; with `ensure_weight_tying` on a
/// tied model the list is PEFT's (the embedding's name added, lm_head's taken out).
#[test]
fn a_fresh_adapter_starts_from_the_model() {
    let gpu = gpu();
    for (name, tie) in [("llama_gqa", false), ("qwen2_tied", false), ("qwen2_tied", true)] {
        let model = common::fixture_model(gpu, name);
        let c = config(&["q_proj"], &["embed_tokens", "lm_head"], tie);
        let ad = Adapter::new_for_model(gpu, AdapterConfig::Lora(c), &model, None, 3).unwrap();
        let Adapter::Lora(l) = &ad else { unreachable!() };
        let m = l.modules_to_save.as_ref().unwrap();
        assert_eq!(read_weight(gpu, m.embed.as_ref().unwrap()), read_weight(gpu, &model.embed_tokens));
        assert_eq!(read_weight(gpu, m.head_weight().unwrap()), read_weight(gpu, &model.lm_head));
        let want = if tie { vec!["embed_tokens", "model.embed_tokens"] } else { vec!["embed_tokens", "lm_head"] };
        assert_eq!(l.config.modules_to_save.as_deref().unwrap(), want, "{name} tie {tie}");
        let ids = vec![vec![5u32, 80, 300, 12, 7, 99]];
        let d = common::max_abs_diff(
            &common::adapted_logits(gpu, &model, Some(&ad), &ids),
            &common::adapted_logits(gpu, &model, None, &ids),
        );
        assert!(d <= 1e-5, "{name}: a fresh adapter changed the logits by {d:e}");
    }
}

/// Copies over the binding limit are trained in row chunks: 10 AdamW steps
/// under a 20 KiB limit (the copies in 5 chunks) end where PEFT's do.
#[test]
fn copies_in_row_chunks_train_as_pefts() {
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let small = gpu_with_binding_limit(20 * 1024);
    let model = common::fixture_model(&small, "qwen2_tied");
    let fx = Fixture::open("modules_to_save/qwen2_tied/reference.safetensors");
    let batch = common::fixture_batch(&fx, 0..2);
    let ad = load(&small, &model, "qwen2_tied");
    let Adapter::Lora(l) = &ad else { unreachable!() };
    let chunks = l.modules_to_save.as_ref().unwrap().embed.as_ref().unwrap().chunks.len();
    assert!(chunks > 1, "the copy should be split, has {chunks} chunk(s)");
    let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(&small, ad, opt, 0).unwrap();
    for (i, &w) in fx.f32("losses").iter().enumerate() {
        let s = block_on(trainer.step(&small, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
        assert!((s.loss - w).abs() <= 1e-4, "step {i}: {} vs PEFT {w}", s.loss);
    }
    let Adapter::Lora(l) = &trainer.adapter else { unreachable!() };
    for (module, w) in l.modules_to_save.as_ref().unwrap().copies() {
        let key = webpeft::peft::modules_to_save::key(module);
        let d = common::max_abs_diff(&read_weight(&small, w), &fx.f32(&format!("final.{key}")));
        eprintln!("{key} in {} chunks after 10 steps: max |diff| {d:e}", w.chunks.len());
        assert!(d <= 1e-4, "{key}: {d:e}");
    }
}

/// `merge` puts the copies in the model's place (one table for a shared
/// copy, the model staying tied) and `unmerge` puts the model's own back;
/// two copies of a tied model's one table are refused.
#[test]
fn merge_puts_the_copies_in() {
    use webpeft::peft::lora::merge::{merge_lora, unmerge_lora};
    let gpu = gpu();
    for case in ["llama_gqa", "qwen2_tied_shared"] {
        let mut model = common::fixture_model(gpu, common::model_of(case));
        let ad = load(gpu, &model, case);
        let Adapter::Lora(l) = &ad else { unreachable!() };
        let ids = vec![vec![5u32, 80, 300, 12, 7, 99], vec![1, 2, 3, 4, 5, 6]];
        let (base, adapted) =
            (common::adapted_logits(gpu, &model, None, &ids), common::adapted_logits(gpu, &model, Some(&ad), &ids));
        assert!(common::max_abs_diff(&base, &adapted) > 1e-2);
        let merged = merge_lora(gpu, &mut model, l).unwrap();
        assert_eq!(model.lm_head_is_tied(), case.ends_with("_shared"));
        let d = common::max_abs_diff(&common::adapted_logits(gpu, &model, None, &ids), &adapted);
        assert!(d <= 1e-4, "{case}: merged logits {d:e}");
        unmerge_lora(gpu, &mut model, l, &merged).unwrap();
        let d = common::max_abs_diff(&common::adapted_logits(gpu, &model, None, &ids), &base);
        assert!(d <= 1e-4, "{case}: unmerged logits {d:e}");
    }
    let mut tied = common::fixture_model(gpu, "qwen2_tied");
    let Adapter::Lora(t) = load(gpu, &tied, "qwen2_tied") else { unreachable!() };
    let e = merge_lora(gpu, &mut tied, &t).unwrap_err().to_string();
    assert!(e.contains("untie"), "{e}");
    assert!(tied.lm_head_is_tied());
}

/// A checkpoint holds the copies and their moments, and resumes them.
#[test]
fn checkpoints_resume_the_copies() {
    use webpeft::train::checkpoint::{load_checkpoint, save_checkpoint};
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let gpu = gpu();
    let model = common::fixture_model(gpu, "qwen2_tied");
    let fx = Fixture::open("modules_to_save/qwen2_tied_shared/reference.safetensors");
    let batch = common::fixture_batch(&fx, 0..2);
    let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 0.0, ..Default::default() };
    let step = |t: &mut Trainer| block_on(t.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap().loss;
    let mut straight = Trainer::new(gpu, load(gpu, &model, "qwen2_tied_shared"), opt.clone(), 0).unwrap();
    let mut first = Trainer::new(gpu, load(gpu, &model, "qwen2_tied_shared"), opt, 0).unwrap();
    for _ in 0..3 {
        step(&mut straight);
        step(&mut first);
    }
    let bytes = block_on(save_checkpoint(gpu, &first, &model.config, &serde_json::json!({}))).unwrap();
    let (mut resumed, _) = load_checkpoint(gpu, &bytes, &model.config).unwrap();
    let (a, b) = (step(&mut straight), step(&mut resumed));
    assert_eq!(a, b, "the step after resuming");
    let (x, y) = (common::adapter_values(gpu, &straight.adapter), common::adapter_values(gpu, &resumed.adapter));
    assert_eq!(x, y);
    assert!(x.iter().any(|(k, _)| k == "base_model.model.model.embed_tokens.weight"));
}

/// What does not combine, or is not built, is a typed error naming the field.
#[test]
fn refused_combinations_are_typed_errors() {
    let gpu = gpu();
    let model = common::fixture_model(gpu, "qwen2_tied");
    let msg = |r: webpeft::Result<Adapter>| r.map(|_| ()).unwrap_err().to_string();
    // A module other than the embedding and the head.
    let json = |extra: &str| {
        format!(r#"{{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]{extra}}}"#)
    };
    let e = LoraConfig::from_json(json(r#", "modules_to_save": ["embed_tokens", "norm"]"#).as_bytes()).unwrap_err();
    eprintln!("ROW | modules_to_save naming a module other than the embedding and the head | {e}"); // the README's row
    assert!(e.to_string().contains("modules_to_save[1]") && e.to_string().contains("norm"), "{e}");
    let e = LoraConfig::from_json(json(r#", "modules_to_save": "lm_head""#).as_bytes()).unwrap_err();
    assert!(e.to_string().contains("modules_to_save"), "{e}");
    // A module both a LoRA target and saved whole is trained whole: PEFT's match skips modules_to_save.
    let both = config(&["q_proj", "lm_head"], &["lm_head"], false);
    assert!(both.validate().is_ok() && both.outer_targets().is_empty());
    // Trainable tokens in a table trained whole.
    let mut c = config(&["q_proj"], &["embed_tokens"], false);
    c.trainable_token_indices = Some(vec![5]);
    assert!(c.validate().unwrap_err().to_string().contains("trainable_token_indices"));
    // Trainable tokens on a tied head that has a copy of its own.
    let mut c = config(&["q_proj"], &["lm_head"], false);
    c.trainable_token_indices = Some(vec![5]);
    let e = msg(Adapter::new_for_model(gpu, AdapterConfig::Lora(c), &model, None, 0));
    assert!(e.contains("trainable_token_indices") && e.contains("lm_head"), "{e}");
    // ensure_weight_tying for a LoRA on a tied model's embedding.
    let mut c = LoraConfig::new(4, 8.0, TargetModules::List(vec!["q_proj".into(), "embed_tokens".into()])).unwrap();
    c.ensure_weight_tying = true;
    let e = msg(Adapter::new_for_model(gpu, AdapterConfig::Lora(c), &model, None, 0));
    assert!(e.contains("ensure_weight_tying"), "{e}");
    // AdaLoRA.
    let ada = r#"{"peft_type": "ADALORA", "init_r": 4, "target_modules": ["q_proj"], "total_step": 10, "modules_to_save": ["lm_head"]}"#;
    let e = webpeft::peft::adalora::AdaLoraConfig::from_json(ada.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("modules_to_save"), "{e}");
}

/// What webpeft saves after training loads in PEFT (`modules_to_save/webpeft_saved`,
/// see [`common::check_saved_cases_in_peft`]).
#[test]
fn saved_adapters_load_in_peft() {
    common::check_saved_cases_in_peft(gpu(), "modules_to_save", &CASES);
}

/// The memory plan counts each copy's vocab × hidden parameters: two on a
/// tied model by default (PEFT's deep copies), one with `ensure_weight_tying`.
#[test]
fn the_memory_plan_counts_the_copies() {
    use webpeft::train::plan::PlanAdapter;
    use webpeft::train::recipe::{AdapterRecipe, LoraRecipe};
    let model = common::fixture_model(gpu(), "qwen2_tied");
    let (vocab, hidden) = (model.config.vocab_size as u64, model.config.hidden_size as u64);
    for (save, tie, copies) in
        [(vec!["embed_tokens", "lm_head"], false, 2), (vec!["lm_head"], true, 1), (vec![], false, 0)]
    {
        let l = LoraRecipe {
            modules_to_save: Some(save.iter().map(|s| s.to_string()).collect()),
            ensure_weight_tying: tie,
            ..Default::default()
        };
        let PlanAdapter::Lora { outer_params, .. } = AdapterRecipe::Lora(l).plan_adapter(&model.config).unwrap() else {
            panic!("not a LoRA plan")
        };
        assert_eq!(outer_params, copies * vocab * hidden, "{save:?} tie {tie}");
    }
}
