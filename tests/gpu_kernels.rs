//! The real-GPU kernel family (the workgroup-memory blocked GEMM and the
//! decoding GEMV, `kernels::blocked`) end to end against the reference stack,
//! forced on whatever adapter runs the tests (lavapipe in CI), so the kernels
//! a user's GPU picks are checked by the same fixtures as the CPU ones:
//! PEFT's LoRA loss, all 28 gradients and 10 AdamW steps; transformers'
//! logits of the NF4 and Q8_0 bases; and greedy decoding, where every
//! projection and the lm_head are one-row products (the GEMV).
//!
//! Tolerances are the other tests': 1e-5 loss, 1e-4 gradients, logits, step
//! losses and final weights; greedy tokens exactly.

mod common;

use common::{block_on, fixture, Fixture};
use webpeft::model::llama::GenerationConfig;
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::LoraAdapter;
use webpeft::quant::QuantFormat;
use webpeft::train::data::Batch;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{Gpu, GpuOptions, KernelFamily};

fn gpu() -> &'static Gpu {
    common::gpu_family()
}

fn load(name: &str, format: QuantFormat) -> Model {
    let files = DirFiles::new(fixture(name)).unwrap();
    block_on(Model::load(gpu(), &files, format)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn rows<T>(fx: &Fixture, key: &str, f: impl Fn(i64) -> T) -> Vec<Vec<T>> {
    let t = fx.shape(key)[1];
    fx.i64(key).chunks(t).map(|r| r.iter().map(|&v| f(v)).collect()).collect()
}

#[test]
fn lora_loss_gradients_and_steps_match_peft() {
    let gpu = gpu();
    assert_eq!(gpu.kernel_family(), KernelFamily::Gpu);
    let model = load("llama_gqa", QuantFormat::F32);
    let fx = Fixture::open("lora/reference.safetensors");
    let files = DirFiles::new(fixture("lora/initial_adapter")).unwrap();
    let adapter = || Adapter::Lora(block_on(LoraAdapter::load(gpu, &files, &model.config)).unwrap());
    let ids = rows(&fx, "input_ids", |v| v as u32);
    let labels = rows(&fx, "labels", |v| v as i32);
    let batch = Batch::new(ids[0..2].to_vec(), labels[0..2].to_vec());

    // lr 0: the loss and every gradient at PEFT's initial adapter.
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter(), opt, 0).unwrap();
    let stats = block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 0.0)).unwrap();
    let want = fx.f32("loss")[0];
    assert!((stats.loss - want).abs() <= 1e-5, "loss {} vs {want}", stats.loss);
    let grads = trainer.gradients().tensors();
    assert_eq!(grads.len(), 28);
    let mut worst = 0f32;
    for (key, g) in grads {
        let d = max_abs_diff(&block_on(g.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{key}.grad")));
        worst = worst.max(d);
        assert!(d <= 1e-4, "{key}: max |diff| {d:e}");
    }
    eprintln!("loss {} (PEFT {want}); gradients: worst max |diff| {worst:e}", stats.loss);

    // Ten AdamW steps.
    let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter(), opt, 0).unwrap();
    for (i, &w) in fx.f32("losses").iter().enumerate() {
        let s = block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
        assert!((s.loss - w).abs() <= 1e-4, "step {i}: {} vs {w}", s.loss);
    }
    for (key, t) in trainer.adapter.tensors() {
        let d = max_abs_diff(&block_on(t.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("final.{key}")));
        assert!(d <= 1e-4, "final {key}: max |diff| {d:e}");
    }
}

#[test]
fn quantized_bases_match_transformers() {
    let fx = Fixture::open("quant/llama_gqa_quant_logits.safetensors");
    let ids = rows(&fx, "input_ids", |v| v as u32);
    for (format, key) in [(QuantFormat::Nf4, "logits_nf4"), (QuantFormat::Q8_0, "logits_q8_0")] {
        let model = load("llama_gqa", format);
        let (logits, _) = block_on(model.logits_and_loss(gpu(), &ids, None)).unwrap();
        let d = max_abs_diff(&logits, &fx.f32(key));
        eprintln!("llama_gqa {}: max |Δlogits| {d:.2e}", format.name());
        assert!(d <= 1e-4, "{}: logits differ by {d}", format.name());
    }
}

#[test]
fn greedy_decoding_matches_transformers() {
    for name in ["llama_gqa", "qwen2_tied", "mistral_f16"] {
        let path = fixture(&format!("refs/{name}/greedy.json"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let ids = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<_>>();
        let (prompt, expected) = (ids("prompt_ids"), ids("new_ids"));
        let model = load(name, QuantFormat::F32);
        let got =
            block_on(model.generate(gpu(), &prompt, &GenerationConfig::greedy(expected.len()), |_| true)).unwrap();
        assert_eq!(got, expected, "{name}: greedy tokens differ from transformers");
    }
}

/// The autotuner: a training step notes the blocked products it ran with no
/// tuned block (those of at least `MIN_TUNE_FLOPS`), the trainer times their
/// candidates, the next steps use the choices and match a device that keeps
/// the fallback table's blocks; the choices are written to the cache file and
/// read back by a new device on the same adapter; candidates always include
/// the fallback table's block; invalid entries are skipped; the decoding
/// GEMV's layouts are tuned the same way (`gemv_tuning`).
#[test]
fn autotuner_tunes_the_products_a_step_runs_and_caches_them() {
    use webpeft::bench::train::{llama_config, random_model_files};
    use webpeft::kernels::blocked::Blocks;
    use webpeft::kernels::tune::{candidates, import_tuning, tuning_counts, tuning_json};
    use webpeft::peft::{LoraConfig, TargetModules};
    let cache = std::env::temp_dir().join(format!("webpeft-tuning-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&cache);
    let options = || GpuOptions { kernels: KernelFamily::Gpu, tuning_cache: Some(cache.clone()), ..Default::default() };
    // Products big enough to tune: 2 rows of 96 tokens through 256-wide Linears.
    let files = random_model_files(&llama_config(384, 256, 512, 2, 4, 2), 3).unwrap();
    let mut rng = webpeft::util::rng::Rng::new(5);
    let ids: Vec<Vec<u32>> = (0..2).map(|_| (0..96).map(|_| rng.below(384) as u32).collect()).collect();
    let batch = Batch::new(ids.clone(), ids.iter().map(|r| r.iter().map(|&t| t as i32).collect()).collect());
    let steps = |gpu: &Gpu| {
        let model = block_on(Model::load(gpu, &files, QuantFormat::Nf4)).unwrap();
        let lora = LoraConfig::new(16, 32.0, TargetModules::AllLinear).unwrap();
        let adapter = Adapter::new_lora(gpu, lora, &model.config, 7).unwrap();
        let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 0).unwrap();
        let run = |t: &mut Trainer| block_on(t.step(gpu, &model, std::slice::from_ref(&batch), 1e-3)).unwrap().loss;
        let first = run(&mut trainer);
        let counts = tuning_counts(gpu);
        let losses = [first, run(&mut trainer), run(&mut trainer)];
        (losses, counts)
    };
    let gpu = block_on(Gpu::with_options(options())).unwrap();
    assert_eq!(tuning_counts(&gpu), (0, 0));
    let (tuned_losses, (tuned, pending)) = steps(&gpu);
    eprintln!("after one step: {tuned} shape classes tuned, {pending} pending; {}", tuning_json(&gpu));
    assert!(tuned >= 4 && pending == 0, "{tuned} tuned, {pending} pending");
    let json: serde_json::Value = serde_json::from_str(&tuning_json(&gpu)).unwrap();
    let classes = json.as_object().unwrap();
    assert!(
        classes.keys().any(|k| k.starts_with("nf4 fwd")) && classes.keys().any(|k| k.starts_with("f32 ")),
        "{json}"
    );
    assert_eq!(tuning_counts(&gpu), (tuned, 0), "nothing new to tune after the first step");
    // The tuned blocks compute the steps the fallback table's blocks compute.
    let off = block_on(Gpu::with_options(GpuOptions { autotune: false, ..options() })).unwrap();
    let (fallback_losses, counts) = steps(&off);
    assert_eq!(counts, (0, 0), "autotune off: nothing read, nothing noted");
    for (a, b) in tuned_losses.iter().zip(&fallback_losses) {
        assert!((a - b).abs() <= 1e-4, "tuned {tuned_losses:?} vs fallback {fallback_losses:?}");
    }

    // A new device on the same adapter reads the choices from the cache file.
    let again = block_on(Gpu::with_options(options())).unwrap();
    assert_eq!(tuning_counts(&again), (tuned, 0));
    assert_eq!(tuning_json(&again), tuning_json(&gpu));
    let plain = block_on(Gpu::with_options(GpuOptions { tuning_cache: None, ..options() })).unwrap();
    assert_eq!(tuning_counts(&plain), (0, 0));
    // Entries that are no valid block here are skipped; garbage is an error.
    assert_eq!(import_tuning(&plain, r#"{"f32 nt m2^4 n2^4 k2^4 b2^0": [64, 64, 8, 3, 4]}"#), Ok(0));
    // f16 compute's blocks walk K in slices that divide its 32-product runs.
    let f16_class = |bk: u32| format!(r#"{{"nf4 fwd f16 m2^9 n2^11 k2^11 b2^0": [64, 64, {bk}, 4, 4]}}"#);
    assert_eq!(import_tuning(&plain, &f16_class(12)), Ok(0));
    assert_eq!(import_tuning(&plain, &f16_class(16)), Ok(1));
    assert!(import_tuning(&plain, "[1, 2]").is_err());
    // A GEMV entry: lanes and rows the kernel takes, a 0/1 reduction and,
    // in files written since wide spans, a 0/1 `wide`.
    let gemv = |v: &str| import_tuning(&plain, &format!(r#"{{"gemv nf4 m2^0 n2^11 k2^11 b2^0": {v}}}"#));
    assert_eq!((gemv("[0, 8, 0]"), gemv("[32, 8, 2]"), gemv("[64, 4, 1]")), (Ok(0), Ok(0), Ok(1)));
    assert_eq!((gemv("[64, 4, 1, 1]"), gemv("[64, 4, 1, 2]"), gemv("[64, 4, 1, 0, 0]")), (Ok(1), Ok(0), Ok(0)));
    let _ = std::fs::remove_file(&cache);

    gemv_tuning(&gpu);
    let _ = std::fs::remove_file(&cache);
    for (m, n) in [(512, 16), (16, 2048), (512, 2048), (4096, 4096)] {
        let c = candidates(m, n, 1);
        assert_eq!(c[0], Blocks::for_shape(m, n, 1), "the fallback is a candidate");
        assert!(c.len() >= 3 && c.iter().all(|b| b.check(&gpu).is_ok()), "{m}x{n}: {c:?}");
    }
}

/// The decoding GEMV's layouts are tuned too: a one-row product through a
/// weight of at least `MIN_GEMV_WEIGHTS` values is noted, `autotune_pending`
/// times every candidate (the rule's choice first), keeps the fastest for
/// the class, and the tuned layout computes the rule's sums; a small weight
/// (LoRA's factors) is not noted.
fn gemv_tuning(gpu: &Gpu) {
    use webpeft::kernels::blocked::GemvTiles;
    use webpeft::kernels::matmul::Gemm;
    use webpeft::kernels::qmatmul::{qgemm_with, QVariant, QWeight};
    use webpeft::kernels::tune::{autotune_pending, gemv_candidates, tuning_counts, tuning_json};
    use webpeft::quant::ComputeDtype;
    use webpeft::Tensor;
    let (n, k) = (1024, 1024);
    let w = QWeight::from_f32(gpu, &common::randn(8, n * k), n, k, QuantFormat::Nf4).unwrap();
    let x = Tensor::from_slice(gpu, &[1, k], &common::randn(9, k)).unwrap();
    let run = |v: QVariant| {
        let y = Tensor::zeros(gpu, &[1, n], webpeft::DType::F32).unwrap();
        let mut rec = webpeft::gpu::Recorder::new(gpu);
        qgemm_with(&mut rec, &x, &w, &y, false, v).unwrap();
        rec.submit().unwrap();
        block_on(y.to_vec::<f32>(gpu)).unwrap()
    };
    let before = tuning_counts(gpu);
    let rule = QVariant::tuned(gpu, QuantFormat::Nf4, &Gemm::new(1, n, k, false, true), true, false, ComputeDtype::F32);
    assert_eq!(rule, QVariant::Gemv(GemvTiles::for_weight(gpu, QuantFormat::Nf4)), "untuned: the rule's layout");
    assert_eq!(tuning_counts(gpu), (before.0, before.1 + 1), "noted for tuning");
    let small = Gemm::new(1, 16, 1024, false, true); // a LoRA factor's product: too small to tune
    QVariant::tuned(gpu, QuantFormat::Nf4, &small, true, false, ComputeDtype::F32);
    assert_eq!(tuning_counts(gpu).1, before.1 + 1);
    let report = block_on(autotune_pending(gpu)).unwrap();
    eprintln!("GEMV tuning: {report:?}");
    let gemv = report.iter().find(|t| t.class.starts_with("gemv nf4")).expect("the GEMV class was tuned");
    assert_eq!(gemv.candidates, gemv_candidates(gpu).len());
    assert!(gemv_candidates(gpu).contains(&GemvTiles::for_weight(gpu, QuantFormat::Nf4)), "the rule is a candidate");
    assert!(tuning_json(gpu).contains("\"gemv nf4 m2^0 n2^10 k2^10 b2^0\""), "{}", tuning_json(gpu));
    let tuned =
        QVariant::tuned(gpu, QuantFormat::Nf4, &Gemm::new(1, n, k, false, true), true, false, ComputeDtype::F32);
    let QVariant::Gemv(t) = tuned else { panic!("{tuned:?}") };
    assert_eq!(t.to_string(), gemv.choice, "the tuned layout is the one used");
    let want = run(rule);
    for (a, b) in run(tuned).iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "tuned {tuned:?} vs the rule's layout: {a} vs {b}");
    }
}
