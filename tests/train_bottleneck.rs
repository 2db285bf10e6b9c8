//! Bottleneck adapters (seq_bn, double_seq_bn, par_bn) trained on the GPU
//! against AdapterHub's `adapters` (tests/fixtures/bottleneck/<kind>): logits
//! with the adapter, the loss and every adapter gradient at the initial
//! adapter, and 10 AdamW steps (lr 1e-2, weight decay 0.01, no clipping).
//!
//! Tolerances as for LoRA: logits 1e-4, loss 1e-5, gradients 1e-4 abs,
//! per-step losses 1e-4, final weights 1e-4.

mod common;

use common::{block_on, fixture, gpu, Fixture};
use webpeft::gpu::Recorder;
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::bottleneck::BottleneckAdapter;
use webpeft::quant::QuantFormat;
use webpeft::train::data::Batch;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::Gpu;

fn model(gpu: &Gpu) -> Model {
    block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap()
}

fn adapter(gpu: &Gpu, model: &Model, kind: &str) -> Adapter {
    let files = DirFiles::new(fixture(&format!("bottleneck/{kind}/initial_adapter"))).unwrap();
    Adapter::Bottleneck(
        block_on(BottleneckAdapter::load(gpu, &files, &model.config)).unwrap_or_else(|e| panic!("{kind}: {e}")),
    )
}

fn batch(fx: &Fixture) -> Batch {
    let t = fx.shape("input_ids")[1];
    let rows = |name: &str| fx.i64(name).chunks(t).map(|r| r.to_vec()).collect::<Vec<_>>();
    Batch::new(
        rows("input_ids").into_iter().map(|r| r.into_iter().map(|v| v as u32).collect()).collect(),
        rows("labels").into_iter().map(|r| r.into_iter().map(|v| v as i32).collect()).collect(),
    )
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn check_kind(kind: &str) {
    let gpu = gpu();
    let model = model(gpu);
    let fx = Fixture::open(&format!("bottleneck/{kind}/reference.safetensors"));
    let ad = adapter(gpu, &model, kind);
    let b = batch(&fx);

    let ids = model.input_ids(gpu, &b.input_ids).unwrap();
    let mut rec = Recorder::new(gpu);
    let (logits, _) = model.forward_adapted(&mut rec, &ids, &ad).unwrap();
    rec.submit().unwrap();
    let d = max_abs_diff(&block_on(logits.to_vec::<f32>(gpu)).unwrap(), &fx.f32("logits"));
    eprintln!("{kind}: logits max |diff| {d:e}");
    assert!(d <= 1e-4, "{kind} logits {d:e}");

    // Gradients at the initial adapter (lr 0 moves nothing).
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut t = Trainer::new(gpu, ad.clone(), opt, 0).unwrap();
    let s = block_on(t.step(gpu, &model, std::slice::from_ref(&b), 0.0)).unwrap();
    let want = fx.f32("loss")[0];
    assert!((s.loss - want).abs() <= 1e-5, "{kind} loss {} vs {want}", s.loss);
    let mut worst = 0f32;
    let grads = t.gradients().tensors();
    assert_eq!(grads.len(), fx.names().iter().filter(|n| n.ends_with(".grad")).count());
    for (key, g) in grads {
        let d = max_abs_diff(&block_on(g.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{key}.grad")));
        worst = worst.max(d);
        assert!(d <= 1e-4, "{kind} {key}: {d:e}");
    }
    eprintln!("{kind}: loss {} (adapters {want}), gradients worst max |diff| {worst:e}", s.loss);

    // 10 AdamW steps.
    let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 0.0, ..Default::default() };
    let mut t = Trainer::new(gpu, ad, opt, 0).unwrap();
    for (i, &w) in fx.f32("losses").iter().enumerate() {
        let s = block_on(t.step(gpu, &model, std::slice::from_ref(&b), 1e-2)).unwrap();
        assert!((s.loss - w).abs() <= 1e-4, "{kind} step {i}: {} vs {w}", s.loss);
        eprintln!("{kind} step {}: loss {} (adapters {w})", s.step, s.loss);
    }
    for (key, p) in t.adapter.tensors() {
        let d = max_abs_diff(&block_on(p.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("final.{key}")));
        assert!(d <= 1e-4, "{kind} final {key}: {d:e}");
    }
}

#[test]
fn seq_bn_matches_adapters() {
    check_kind("seq_bn");
}

#[test]
fn double_seq_bn_matches_adapters() {
    check_kind("double_seq_bn");
}

#[test]
fn par_bn_matches_adapters() {
    check_kind("par_bn");
}
