//! Packed rows against transformers: two rows of 3 and 2 examples each
//! (tests/fixtures/packing, `make_fixtures.py packing`), run by transformers'
//! eager attention under the 4-D block-diagonal causal mask with position_ids
//! restarting per example. Logits and loss of llama_gqa and qwen2_tied, and
//! with PEFT's LoRA every gradient too; each example's logits in the packed
//! row against that example run alone; gradient checkpointing; refusals.

mod common;
use common::{check_lora_step_gradients, fixture_adapter, fixture_model, gpu, logits_and_loss, max_abs_diff, Fixture};
use webpeft::gpu::Recorder;
use webpeft::model::llama::{Hooks, NoHooks};
use webpeft::model::Model;
use webpeft::peft::adapter::hooks_of;
use webpeft::train::data::Batch;
use webpeft::Error;

const TOL: f32 = 1e-4;

fn rows<T>(fx: &Fixture, key: &str, f: impl Fn(i64) -> T) -> Vec<Vec<T>> {
    let t = fx.shape(key)[1];
    fx.i64(key).chunks(t).map(|r| r.iter().map(|&v| f(v)).collect()).collect()
}

fn packed_batch(fx: &Fixture) -> Batch {
    let mut batch = Batch::new(rows(fx, "input_ids", |v| v as u32), rows(fx, "labels", |v| v as i32));
    batch.position_ids = Some(rows(fx, "position_ids", |v| v as u32));
    batch
}

/// Each example of each packed row run alone (positions 0.., one sequence)
/// against its slice of the packed logits: the largest difference.
fn alone_vs_packed(model: &Model, batch: &Batch, packed: &[f32], hooks: &dyn Hooks) -> f32 {
    let vocab = model.config.vocab_size;
    let t = batch.input_ids[0].len();
    let mut worst = 0f32;
    for (r, positions) in batch.position_ids.as_ref().unwrap().iter().enumerate() {
        let starts: Vec<usize> = (0..t).filter(|&i| positions[i] == 0).collect();
        for (k, &from) in starts.iter().enumerate() {
            let to = starts.get(k + 1).copied().unwrap_or(t);
            let alone = Batch::new(vec![batch.input_ids[r][from..to].to_vec()], vec![vec![-100; to - from]]);
            let (logits, _) = logits_and_loss(model, &alone, hooks);
            worst = worst.max(max_abs_diff(&logits, &packed[(r * t + from) * vocab..(r * t + to) * vocab]));
        }
    }
    worst
}

#[test]
fn packed_logits_and_loss_match_transformers() {
    let fx = Fixture::open("packing/reference.safetensors");
    let batch = packed_batch(&fx);
    for name in ["llama_gqa", "qwen2_tied"] {
        let model = fixture_model(gpu(), name);
        let (logits, loss) = logits_and_loss(&model, &batch, &NoHooks);
        let d = max_abs_diff(&logits, &fx.f32(&format!("{name}.logits")));
        let want = fx.f32(&format!("{name}.loss"))[0];
        eprintln!("{name}: packed logits max |diff| {d:e}, loss {loss} vs {want}");
        assert!(d <= TOL, "{name}: logits max |diff| {d:e}");
        assert!((loss - want).abs() <= TOL, "{name}: loss {loss} vs {want}");
        let alone = alone_vs_packed(&model, &batch, &logits, &NoHooks);
        eprintln!("{name}: each example alone vs packed, max |diff| {alone:e}");
        assert!(alone <= 1e-5, "{name}: an example's logits alone differ by {alone:e}");
    }
}

#[test]
fn packed_lora_gradients_match_peft() {
    let gpu = gpu();
    let fx = Fixture::open("packing/reference.safetensors");
    let model = fixture_model(gpu, "llama_gqa");
    let batch = packed_batch(&fx);
    let adapter = || fixture_adapter(gpu, &model, "lora/initial_adapter", "lora");
    let ad = adapter();
    let (logits, loss) = logits_and_loss(&model, &batch, hooks_of(Some(&ad)));
    let d = max_abs_diff(&logits, &fx.f32("lora.logits"));
    assert!(d <= TOL, "LoRA logits max |diff| {d:e}");
    assert!((loss - fx.f32("lora.loss")[0]).abs() <= TOL, "LoRA loss {loss}");
    let alone = alone_vs_packed(&model, &batch, &logits, hooks_of(Some(&ad)));
    assert!(alone <= 1e-5, "LoRA: an example's logits alone differ by {alone:e}");

    // lr 0: the loss and every gradient at PEFT's adapter, with and without checkpointing.
    check_lora_step_gradients(&model, &batch, &adapter, &fx, TOL, "LoRA packed");
}

#[test]
fn bad_position_ids_and_virtual_tokens_are_typed_errors() {
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let ids = model.input_ids(gpu, &[vec![5, 6, 7, 8]]).unwrap();
    for bad in [vec![vec![1, 2, 3, 4]], vec![vec![0, 1, 3, 0]], vec![vec![0, 1, 2]], vec![vec![0, 1, 2, 200]]] {
        let mut rec = Recorder::new(gpu);
        let r = model.forward_packed(&mut rec, &ids, Some(&bad), &NoHooks);
        assert!(matches!(r, Err(Error::InvalidArgument { .. } | Error::Shape { .. })), "{bad:?}: {r:?}");
    }
    let prompt = fixture_adapter(gpu, &model, "prompt_tuning/llama_gqa/initial_adapter", "prompt_tuning");
    let mut rec = Recorder::new(gpu);
    let r = model.forward_packed(&mut rec, &ids, Some(&[vec![0, 1, 0, 1]]), hooks_of(Some(&prompt)));
    match r {
        Err(Error::InvalidArgument { detail, .. }) => assert!(detail.contains("virtual tokens"), "{detail}"),
        other => panic!("expected InvalidArgument, got {:?}", other.map(|_| ())),
    }
}
