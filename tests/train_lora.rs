//! LoRA training on the GPU against PEFT (tests/fixtures/lora, lora_sched,
//! lora_rslora): logits with the adapter, the loss and all 28 gradients at
//! the initial adapter, 10 AdamW steps, and a run with a cosine schedule,
//! clipping and gradient accumulation.
//!
//! Tolerances (the issue's): logits 1e-4 abs, loss 1e-5, gradients 1e-4 abs,
//! per-step losses 1e-4, and final weights 1e-4 abs.

mod common;

use common::{adapted_logits, block_on, fixture, fixture_batch, gpu, max_abs_diff, Fixture};
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::LoraAdapter;
use webpeft::quant::QuantFormat;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::Gpu;

fn model(gpu: &Gpu) -> Model {
    block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap()
}

fn adapter(gpu: &Gpu, model: &Model, dir: &str) -> Adapter {
    let files = DirFiles::new(fixture(dir)).unwrap();
    Adapter::Lora(block_on(LoraAdapter::load(gpu, &files, &model.config)).unwrap_or_else(|e| panic!("{dir}: {e}")))
}

fn check_final(gpu: &Gpu, adapter: &Adapter, fx: &Fixture, tol: f32) {
    for (key, t) in adapter.tensors() {
        let got = block_on(t.to_vec::<f32>(gpu)).unwrap();
        let d = max_abs_diff(&got, &fx.f32(&format!("final.{key}")));
        assert!(d <= tol, "final {key}: max |diff| {d:e}");
    }
}

#[test]
fn logits_with_the_adapter_match_peft() {
    let gpu = gpu();
    let model = model(gpu);
    for (dir, refs) in [
        ("lora/initial_adapter", "lora/reference.safetensors"),
        ("lora_rslora/adapter", "lora_rslora/reference.safetensors"),
    ] {
        let fx = Fixture::open(refs);
        let ad = adapter(gpu, &model, dir);
        let t = fx.shape("input_ids")[1];
        let ids: Vec<Vec<u32>> = fx.i64("input_ids").chunks(t).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &ids), &fx.f32("logits"));
        let base = max_abs_diff(&adapted_logits(gpu, &model, None, &ids), &fx.f32("base_logits"));
        eprintln!("{dir}: logits max |diff| {d:e}, base {base:e}");
        assert!(d <= 1e-4 && base <= 1e-4, "{dir}: {d:e} / {base:e}");
    }
}

#[test]
fn loss_and_every_gradient_match_peft() {
    let gpu = gpu();
    let model = model(gpu);
    let fx = Fixture::open("lora/reference.safetensors");
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter(gpu, &model, "lora/initial_adapter"), opt, 0).unwrap();
    // lr 0: the step computes everything and moves nothing.
    let stats = block_on(trainer.step(gpu, &model, &[fixture_batch(&fx, 0..2)], 0.0)).unwrap();
    let want = fx.f32("loss")[0];
    eprintln!("loss {} (PEFT {want}), {} tokens, |g| {}", stats.loss, stats.tokens, stats.grad_norm);
    assert!((stats.loss - want).abs() <= 1e-5, "loss {} vs {want}", stats.loss);
    assert_eq!(stats.tokens, 18);
    let grads = trainer.gradients().tensors();
    assert_eq!(grads.len(), 28);
    let mut worst = 0f32;
    for (key, g) in grads {
        let got = block_on(g.to_vec::<f32>(gpu)).unwrap();
        let d = max_abs_diff(&got, &fx.f32(&format!("{key}.grad")));
        worst = worst.max(d);
        assert!(d <= 1e-4, "{key}: max |diff| {d:e}");
    }
    eprintln!("gradients: worst max |diff| {worst:e}");
}

#[test]
fn ten_adamw_steps_match_peft() {
    let gpu = gpu();
    let model = model(gpu);
    let fx = Fixture::open("lora/reference.safetensors");
    let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter(gpu, &model, "lora/initial_adapter"), opt, 0).unwrap();
    let want = fx.f32("losses");
    for (i, &w) in want.iter().enumerate() {
        let s = block_on(trainer.step(gpu, &model, &[fixture_batch(&fx, 0..2)], 1e-2)).unwrap();
        eprintln!("step {}: loss {} (PEFT {w}, diff {:e})", s.step, s.loss, (s.loss - w).abs());
        assert!((s.loss - w).abs() <= 1e-4, "step {i}: {} vs {w}", s.loss);
    }
    check_final(gpu, &trainer.adapter, &fx, 1e-4);
}

#[test]
fn cosine_schedule_clipping_and_accumulation_match_peft() {
    let gpu = gpu();
    let model = model(gpu);
    let fx = Fixture::open("lora_sched/reference.safetensors");
    let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 0.5, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter(gpu, &model, "lora/initial_adapter"), opt, 0).unwrap();
    let (lrs, norms, losses) = (fx.f32("lrs"), fx.f32("grad_norms"), fx.f32("losses"));
    let schedule =
        webpeft::train::schedule::LrSchedule::new(webpeft::train::schedule::Schedule::COSINE, 1e-2, 3, 10).unwrap();
    for i in 0..10 {
        let lr = schedule.lr(i as u64);
        assert!((lr as f32 - lrs[i]).abs() <= 1e-9, "lr {i}");
        let micro = [fixture_batch(&fx, 0..1), fixture_batch(&fx, 1..2)];
        let s = block_on(trainer.step(gpu, &model, &micro, lr)).unwrap();
        eprintln!("step {}: loss {} (PEFT {}), |g| {} (PEFT {})", s.step, s.loss, losses[i], s.grad_norm, norms[i]);
        assert_eq!(s.tokens, 18);
        assert!((s.loss - losses[i]).abs() <= 1e-4, "step {i} loss");
        assert!((s.grad_norm - norms[i]).abs() <= 1e-4 * norms[i].max(1.0), "step {i} grad norm");
    }
    check_final(gpu, &trainer.adapter, &fx, 1e-4);
}

#[test]
fn gradients_match_peft_with_the_loss_in_many_chunks() {
    // A 14 KiB binding limit: the training logits go in chunks of 9 rows (24 rows: 2 chunks and a partial one).
    let gpu =
        block_on(Gpu::with_options(webpeft::GpuOptions { max_binding_bytes: Some(14 << 10), ..Default::default() }))
            .unwrap();
    let gpu = &gpu;
    assert_eq!(webpeft::model::llama::loss::logits_chunk_rows(384, gpu.max_binding_bytes()), 9);
    let model = model(gpu);
    let fx = Fixture::open("lora/reference.safetensors");
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter(gpu, &model, "lora/initial_adapter"), opt, 0).unwrap();
    let stats = block_on(trainer.step(gpu, &model, &[fixture_batch(&fx, 0..2)], 0.0)).unwrap();
    assert!((stats.loss - fx.f32("loss")[0]).abs() <= 1e-5, "loss {}", stats.loss);
    for (key, g) in trainer.gradients().tensors() {
        let d = max_abs_diff(&block_on(g.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{key}.grad")));
        assert!(d <= 1e-4, "{key}: {d:e}");
    }
}

/// LoRA+ against PEFT's `create_loraplus_optimizer` (tests/fixtures/lora_plus):
/// B at 4× the learning rate, weight decay 0.01 on both groups, clipping at 1,
/// 10 steps from `lora/initial_adapter`: every loss and final factor within 1e-4.
#[test]
fn loraplus_matches_peft_create_loraplus_optimizer() {
    let gpu = gpu();
    let model = model(gpu);
    let fx = Fixture::open("lora_plus/reference.safetensors");
    let batch = fixture_batch(&fx, 0..2);
    let opt = OptimizerConfig { weight_decay: 0.01, loraplus_lr_ratio: Some(4.0), ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter(gpu, &model, "lora/initial_adapter"), opt, 0).unwrap();
    let mut worst = 0.0f32;
    for (i, &want) in fx.f32("losses").iter().enumerate() {
        let s = block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
        worst = worst.max((s.loss - want).abs());
        assert!((s.loss - want).abs() <= 1e-4, "step {}: {} vs PEFT {want}", i + 1, s.loss);
    }
    let mut tensors = 0.0f32;
    for (key, got) in common::adapter_values(gpu, &trainer.adapter) {
        let d = max_abs_diff(&got, &fx.f32(&format!("final.{key}")));
        tensors = tensors.max(d);
        assert!(d <= 1e-4, "final {key}: {d:e}");
    }
    eprintln!("LoRA+: 10 losses within {worst:e} of PEFT's, final factors within {tensors:e}");
    // Without the ratio the run is plain LoRA's, and differs.
    let plain = OptimizerConfig { weight_decay: 0.01, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter(gpu, &model, "lora/initial_adapter"), plain, 0).unwrap();
    let last = (0..10).map(|_| block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap().loss);
    let last = last.last().unwrap();
    assert!((last - fx.f32("losses")[9]).abs() > 1e-2, "LoRA+ changed nothing: {last}");
}

/// Qwen3 (q_norm and k_norm before RoPE, `make_fixtures.py qwen3`): logits
/// with PEFT's LoRA on all seven projections, the loss and every gradient
/// (through the norms' backward; with and without gradient checkpointing),
/// 10 AdamW steps, and PEFT's greedy tokens through the adapter, with the KV
/// cache giving the full forward's logits; on both kernel families.
#[test]
fn qwen3_lora_matches_peft() {
    for gpu in [gpu(), common::gpu_family()] {
        qwen3_lora_on(gpu);
    }
}

fn qwen3_lora_on(gpu: &Gpu) {
    let model = common::fixture_model(gpu, "qwen3_tiny");
    assert!(model.config.qk_norm && model.layers.iter().all(|l| l.self_attn.q_norm.is_some()));
    lora_run_matches_peft(gpu, &model, "qwen3/lora");
}

/// SmolLM3 (a NoPE layer, `make_fixtures.py smollm3`): as Qwen3's run above,
/// on both kernel families.
#[test]
fn smollm3_lora_matches_peft() {
    for gpu in [gpu(), common::gpu_family()] {
        let model = common::fixture_model(gpu, "smollm3_tiny");
        assert!(!model.layers[1].self_attn.use_rope);
        lora_run_matches_peft(gpu, &model, "smollm3/lora");
    }
}

/// A LoRA's PEFT training reference `dir` on `model`: logits, the loss and
/// every gradient, 10 AdamW steps and PEFT's greedy tokens with the KV cache.
fn lora_run_matches_peft(gpu: &Gpu, model: &webpeft::model::Model, dir: &str) {
    let fx = Fixture::open(&format!("{dir}/reference.safetensors"));
    let initial = || adapter(gpu, model, &format!("{dir}/initial_adapter"));
    let t = fx.shape("input_ids")[1];
    let ids: Vec<Vec<u32>> = fx.i64("input_ids").chunks(t).map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let d = max_abs_diff(&adapted_logits(gpu, model, Some(&initial()), &ids), &fx.f32("logits"));
    assert!(d <= 1e-4, "{dir}: logits max |diff| {d:e}");
    common::check_peft_training(gpu, model, &initial, &fx, &|ad| common::adapter_values(gpu, ad));
    common::check_greedy_and_cache(gpu, model, &initial(), &fx, 0);
}
