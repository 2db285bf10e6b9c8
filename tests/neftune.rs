//! NEFTune (transformers' `neftune_noise_alpha`) against PEFT + transformers
//! (tests/fixtures/neftune, `make_fixtures.py neftune`): LoRA on the fixture
//! Llama, alpha 5, 10 AdamW steps with clipping, where the reference adds
//! webpeft's draws at the magnitude transformers' hook computes. The losses,
//! step 1's gradients and the final factors; the same with gradient
//! checkpointing; the noise off in evaluation; refusals.

mod common;

use common::{block_on, fixture, fixture_batch, gpu, max_abs_diff, Fixture};
use webpeft::kernels::preference::{DpoLoss, PreferenceLoss};
use webpeft::model::llama::EmbeddingNoise;
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::LoraAdapter;
use webpeft::quant::QuantFormat;
use webpeft::train::data::Batch;
use webpeft::train::preference::Objective;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::Error;

const ALPHA: f32 = 5.0;
const SEED: u64 = 7;

fn trainer(model: &Model, checkpointing: bool) -> Trainer {
    let gpu = gpu();
    let files = DirFiles::new(fixture("lora/initial_adapter")).unwrap();
    let adapter = Adapter::Lora(block_on(LoraAdapter::load(gpu, &files, &model.config)).unwrap());
    let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 1.0, ..Default::default() };
    let mut t = Trainer::new(gpu, adapter, opt, SEED).unwrap();
    t.neftune_noise_alpha = Some(ALPHA);
    t.gradient_checkpointing = checkpointing;
    t
}

/// The fixture Llama, the reference and its batch.
fn setup() -> (Model, Fixture, Batch) {
    let model = block_on(Model::load(gpu(), &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap();
    let fx = Fixture::open("neftune/reference.safetensors");
    let batch = fixture_batch(&fx, 0..2);
    (model, fx, batch)
}

#[test]
fn the_magnitude_is_transformers() {
    let fx = Fixture::open("neftune/reference.safetensors");
    let t = fx.shape("input_ids")[1];
    let noise = EmbeddingNoise { alpha: ALPHA, seed: 0, tokens: t };
    assert_eq!(noise.magnitude(64).to_bits(), fx.f32("magnitude")[0].to_bits());
}

#[test]
fn ten_steps_with_noise_match_peft() {
    let gpu = gpu();
    let (model, fx, batch) = setup();
    let want = fx.f32("losses");
    let mut runs = Vec::new();
    for checkpointing in [false, true] {
        let mut t = trainer(&model, checkpointing);
        let mut losses = Vec::new();
        for step in 0..10 {
            let s = block_on(t.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
            losses.push(s.loss);
            if step == 0 {
                let mut worst = 0f32;
                for (key, g) in t.gradients().tensors() {
                    let d = max_abs_diff(&block_on(g.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{key}.grad")));
                    worst = worst.max(d);
                }
                eprintln!("checkpointing {checkpointing}: step 1's gradients, worst max |diff| {worst:e}");
                assert!(worst <= 1e-5, "step 1's gradients differ by {worst:e}");
            }
        }
        let d = max_abs_diff(&losses, &want);
        eprintln!("checkpointing {checkpointing}: losses {losses:?}, max |diff| {d:e}");
        assert!(d <= 1e-5, "losses differ by {d:e}");
        let mut worst = 0f32;
        for (key, p) in t.adapter.tensors() {
            let d = max_abs_diff(&block_on(p.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("final.{key}")));
            worst = worst.max(d);
        }
        eprintln!("checkpointing {checkpointing}: final factors, worst max |diff| {worst:e}");
        assert!(worst <= 1e-4, "final factors differ by {worst:e}");
        runs.push(losses);
    }
    // The noise is in the layers' saved inputs: checkpointing recomputes the same.
    assert_eq!(runs[0], runs[1]);
    // Without the noise the run is lora/'s (PEFT's first loss there), not this one.
    let plain = Fixture::open("lora/reference.safetensors").f32("losses")[0];
    assert!((want[0] - plain).abs() > 1e-3, "the noise changed nothing: {} vs {plain}", want[0]);
}

#[test]
fn evaluation_has_no_noise_and_bad_settings_are_refused() {
    let gpu = gpu();
    let (model, _, batch) = setup();
    let t = trainer(&model, false);
    let noisy = block_on(t.evaluate(gpu, &model, std::slice::from_ref(&batch))).unwrap();
    let mut plain = trainer(&model, false);
    plain.neftune_noise_alpha = None;
    let clean = block_on(plain.evaluate(gpu, &model, std::slice::from_ref(&batch))).unwrap();
    assert_eq!(noisy.loss.to_bits(), clean.loss.to_bits());

    let mut t = trainer(&model, false);
    for bad in [0.0f32, -1.0, f32::NAN] {
        t.neftune_noise_alpha = Some(bad);
        let e = block_on(t.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("neftune_noise_alpha"), "{e}");
    }
    t.neftune_noise_alpha = Some(ALPHA);
    t.objective = Objective::Preference(PreferenceLoss::Dpo(DpoLoss::TRL));
    let e = block_on(t.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap_err();
    assert!(e.to_string().contains("NEFTune's noise is for SFT"), "{e}");
    assert_eq!(t.step, 0);
    let recipe = webpeft::train::recipe::TrainRecipe {
        neftune_noise_alpha: Some(5.0),
        objective: Objective::Preference(PreferenceLoss::Dpo(DpoLoss::TRL)),
        ..Default::default()
    };
    let e = recipe.validate().unwrap_err();
    assert_eq!(e.to_string(), "training option `neftune_noise_alpha`: NEFTune's noise is for SFT, not dpo");
}
