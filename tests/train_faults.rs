//! Faults injected through the runtime's test hooks: an allocation that fails
//! in the middle of a step and a lost device are typed errors; the adapter,
//! the moments, the step count and the RNG stay at the last completed step,
//! can be saved, and training goes on exactly as if the failed call had never
//! happened.

mod common;

use common::{block_on, fixture, gpu};
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::{InitLoraWeights, LoraConfig, TargetModules};
use webpeft::quant::QuantFormat;
use webpeft::train::checkpoint::save_checkpoint;
use webpeft::train::data::Batch;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{Error, Gpu};

fn setup(gpu: &Gpu) -> (Model, Trainer) {
    let model = block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap();
    let mut c = LoraConfig::new(4, 8.0, TargetModules::AllLinear).unwrap();
    c.init_lora_weights = InitLoraWeights::Random;
    c.lora_dropout = 0.1; // the RNG is part of the state
    let adapter = Adapter::new_lora(gpu, c, &model.config, 5).unwrap();
    let trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 9).unwrap();
    (model, trainer)
}

fn batch() -> Batch {
    let ids = vec![(0..14).map(|i| (i * 37 + 5) % 380).collect::<Vec<u32>>()];
    Batch::new(ids.clone(), ids.iter().map(|r| r.iter().map(|&v| v as i32).collect()).collect())
}

fn snapshot(gpu: &Gpu, t: &Trainer) -> Vec<Vec<u32>> {
    let (m, v) = t.moments();
    [&t.adapter, m, v]
        .iter()
        .flat_map(|a| a.tensors().into_iter().map(|(_, x)| x.clone()).collect::<Vec<_>>())
        .map(|x| block_on(x.to_vec::<f32>(gpu)).unwrap().iter().map(|f| f.to_bits()).collect())
        .collect()
}

fn step(gpu: &Gpu, model: &Model, t: &mut Trainer) -> Result<u32, Error> {
    block_on(t.step(gpu, model, &[batch()], 1e-2)).map(|s| s.loss.to_bits())
}

#[test]
fn an_allocation_failure_or_a_lost_device_mid_training_keeps_the_last_step() {
    let gpu = gpu();
    let (model, mut t) = setup(gpu);
    let (_, mut reference) = setup(gpu);
    for _ in 0..2 {
        assert_eq!(step(gpu, &model, &mut t).unwrap(), step(gpu, &model, &mut reference).unwrap());
    }
    let before = snapshot(gpu, &t);

    // Out of memory in the middle of recording the step.
    gpu.inject_allocation_failure(40);
    let err = step(gpu, &model, &mut t).unwrap_err();
    gpu.clear_faults();
    eprintln!("{err}");
    assert!(matches!(err, Error::Gpu { .. }), "{err:?}");
    assert_eq!(t.step, 2);
    assert_eq!(snapshot(gpu, &t), before, "the failed step changed the state");
    // The state is readable and saves.
    let ckpt = block_on(save_checkpoint(gpu, &t, &model.config, &serde_json::json!({}))).unwrap();
    assert!(!ckpt.is_empty());

    // A lost device.
    gpu.inject_device_loss("the GPU was reset");
    let err = step(gpu, &model, &mut t).unwrap_err();
    gpu.clear_faults();
    eprintln!("{err}");
    assert!(matches!(err, Error::DeviceLost(_)), "{err:?}");
    assert_eq!(t.step, 2);
    assert_eq!(snapshot(gpu, &t), before);

    // Training goes on exactly as a run that never failed.
    for _ in 0..2 {
        assert_eq!(step(gpu, &model, &mut t).unwrap(), step(gpu, &model, &mut reference).unwrap());
    }
    assert_eq!(snapshot(gpu, &t), snapshot(gpu, &reference));
}
