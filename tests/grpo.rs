//! GRPO against TRL 0.24's GRPOTrainer (tests/fixtures/grpo, `make_fixtures.py
//! grpo`): on fixed completions of two prompts (three each) and two reward
//! functions' values, the advantages TRL computes from them, and the step's
//! loss, every LoRA gradient and the kl metric for the dapo, grpo (β 0.04,
//! temperature 0.7, batch-scaled rewards), bnpo (truncated completions
//! masked, unscaled rewards) and dr_grpo (β 0.1, temperature 1.3) cases; the
//! kernel against its CPU reference; a step split into micro-batches.

mod common;
use common::{block_on, fixture, fixture_adapter, fixture_model, gpu, max_abs_diff, randn, uniform, Fixture};
use serde_json::Value;
use webpeft::gpu::Recorder;
use webpeft::kernels::grpo::grpo_row_scale;
use webpeft::kernels::reference::{assert_close, grpo as cpu};
use webpeft::model::llama::IGNORE_INDEX;
use webpeft::model::Model;
use webpeft::train::data::Batch;
use webpeft::train::grpo::{advantages, combine_rewards, GrpoLoss, GrpoLossType, ScaleRewards};
use webpeft::train::preference::Objective;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{DType, Tensor};

const EOS: u32 = 382;
const PAD: u32 = 383;

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("grpo/cases.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The case's settings as webpeft's.
fn settings(case: &Value, max_completion_length: usize) -> (GrpoLoss, ScaleRewards, bool) {
    let s = &case["settings"];
    let loss = GrpoLoss {
        loss_type: GrpoLossType::from_name(s["loss_type"].as_str().unwrap()).unwrap(),
        beta: s["beta"].as_f64().unwrap() as f32,
        temperature: s["temperature"].as_f64().unwrap() as f32,
        max_completion_length,
    };
    let scale = ScaleRewards::from_name(s["scale_rewards"].as_str().unwrap()).unwrap();
    (loss, scale, s["mask_truncated_completions"].as_bool().unwrap_or(false))
}

/// Rows prompt + completion, right-padded; labels the completion's tokens
/// (−100 for a truncated one when masked: its last token is no eos).
fn rows(c: &Value, mask_truncated: bool, adv: &[f32]) -> Batch {
    let prompts: Vec<Vec<u32>> = c["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
    let completions: Vec<Vec<u32>> = c["completion_ids"].as_array().unwrap().iter().map(ids).collect();
    let g = c["num_generations"].as_u64().unwrap() as usize;
    let len = completions.iter().enumerate().map(|(i, comp)| prompts[i / g].len() + comp.len()).max().unwrap();
    let (mut input_ids, mut labels) = (Vec::new(), Vec::new());
    for (i, comp) in completions.iter().enumerate() {
        let p = &prompts[i / g];
        let masked = mask_truncated && comp.last() != Some(&EOS);
        let mut row: Vec<u32> = p.iter().chain(comp).copied().collect();
        let mut lab: Vec<i32> = vec![IGNORE_INDEX; p.len()];
        lab.extend(comp.iter().map(|&t| if masked { IGNORE_INDEX } else { t as i32 }));
        row.resize(len, PAD);
        lab.resize(len, IGNORE_INDEX);
        input_ids.push(row);
        labels.push(lab);
    }
    let mut batch = Batch::new(input_ids, labels);
    batch.advantages = Some(adv.to_vec());
    batch.generated_tokens = completions.iter().map(Vec::len).sum();
    batch
}

fn the_advantages(c: &Value, scale: ScaleRewards) -> Vec<f32> {
    let rewards: Vec<Vec<Option<f32>>> = (0..2)
        .map(|f| c["rewards"].as_array().unwrap().iter().map(|r| r[f].as_f64().map(|x| x as f32)).collect())
        .collect();
    let weights: Vec<f32> =
        c["reward_weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap() as f32).collect();
    let combined = combine_rewards(&rewards, &weights).unwrap();
    advantages(&combined, c["num_generations"].as_u64().unwrap() as usize, scale).unwrap().advantages
}

/// Each gradient by its key.
type Named = Vec<(String, Vec<f32>)>;

/// The step's loss, kl and gradients at lr 0 over `micro`.
fn step(model: &Model, loss: GrpoLoss, micro: &[Batch]) -> (f32, Option<f32>, Named) {
    let gpu = gpu();
    let ad = fixture_adapter(gpu, model, "lora/initial_adapter", "lora");
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(gpu, ad, opt, 0).unwrap();
    trainer.objective = Objective::Grpo(loss);
    let stats = block_on(trainer.step(gpu, model, micro, 0.0)).unwrap();
    let grads =
        trainer.gradients().tensors().into_iter().map(|(k, g)| (k, block_on(g.to_vec::<f32>(gpu)).unwrap())).collect();
    (stats.loss, stats.kl, grads)
}

#[test]
fn advantages_and_steps_match_trl() {
    let c = cases();
    let fx = Fixture::open("grpo/reference.safetensors");
    let model = fixture_model(gpu(), "llama_gqa");
    let max_len = c["max_completion_length"].as_u64().unwrap() as usize;
    for (name, case) in c["cases"].as_object().unwrap() {
        let (loss, scale, mask_truncated) = settings(case, max_len);
        let adv = the_advantages(&c, scale);
        let d = max_abs_diff(&adv, &fx.f32(&format!("{name}.advantages")));
        assert!(d <= 1e-6, "{name}: advantages max |diff| {d:e}: {adv:?}");
        let batch = rows(&c, mask_truncated, &adv);
        let (got_loss, kl, grads) = step(&model, loss, std::slice::from_ref(&batch));
        let want = fx.f32(&format!("{name}.loss"))[0];
        assert_eq!(grads.len(), 28);
        let mut worst = 0f32;
        for (key, g) in &grads {
            let d = max_abs_diff(g, &fx.f32(&format!("{name}.{key}.grad")));
            assert!(d <= 2e-5, "{name} {key}: max |diff| {d:e}");
            worst = worst.max(d);
        }
        let want_kl = case["metrics"]["kl"].as_f64().map(|k| k as f32);
        eprintln!("{name}: loss {got_loss} vs {want}, kl {kl:?} vs {want_kl:?}, gradients worst {worst:e}");
        assert!((got_loss - want).abs() <= 2e-6 + 1e-5 * want.abs(), "{name}: loss {got_loss} vs {want}");
        match (kl, want_kl) {
            (Some(k), Some(w)) => assert!((k - w).abs() <= 1e-5 * w.abs().max(1.0), "{name}: kl {k} vs {w}"),
            (None, None) => {}
            other => panic!("{name}: kl {other:?}"),
        }
    }
}

/// dapo normalises by the step's generated tokens: two micro-batches of
/// three completions take the step of one batch of six (up to summation order).
#[test]
fn dapo_over_micro_batches_is_the_whole_batch() {
    let c = cases();
    let model = fixture_model(gpu(), "llama_gqa");
    let loss = GrpoLoss { max_completion_length: 8, ..GrpoLoss::TRL };
    let adv = the_advantages(&c, ScaleRewards::Group);
    let whole = rows(&c, false, &adv);
    let half = |r: std::ops::Range<usize>| {
        let mut b = Batch::new(whole.input_ids[r.clone()].to_vec(), whole.labels[r.clone()].to_vec());
        b.advantages = Some(adv[r.clone()].to_vec());
        b.generated_tokens = whole.labels[r].iter().flatten().filter(|&&l| l != IGNORE_INDEX).count();
        b
    };
    let (l1, _, g1) = step(&model, loss, std::slice::from_ref(&whole));
    let (l2, _, g2) = step(&model, loss, &[half(0..3), half(3..6)]);
    assert!((l1 - l2).abs() <= 1e-6, "loss {l1} vs {l2}");
    for ((k, a), (_, b)) in g1.iter().zip(&g2) {
        let d = max_abs_diff(a, b);
        assert!(d <= 1e-6, "{k}: {d:e}");
    }
}

#[test]
fn row_scale_kernel_matches_the_reference() {
    let gpu = gpu();
    let m = 1037;
    let token_loss = uniform(1, m, 0.0, 6.0);
    let ref_loss: Vec<f32> = token_loss.iter().zip(randn(2, m)).map(|(l, e)| (l + 0.3 * e).max(0.0)).collect();
    let weight: Vec<f32> = uniform(3, m, -1.0, 1.0).iter().map(|&u| if u < 0.0 { 0.0 } else { u * 1e-2 }).collect();
    let adv = randn(4, m);
    for (beta, temperature) in [(0.0, 1.0), (0.04, 0.7), (0.5, 1.3)] {
        let (want, sums) = cpu::grpo_row_scale(&token_loss, &ref_loss, &weight, &adv, beta, temperature);
        let up = |x: &[f32]| Tensor::from_slice(gpu, &[m], x).unwrap();
        let stats = Tensor::zeros(gpu, &[2], DType::F32).unwrap();
        let (t, r, w, a) = (up(&token_loss), up(&ref_loss), up(&weight), up(&adv));
        let mut rec = Recorder::new(gpu);
        let reference = (beta != 0.0).then_some(&r);
        let got = grpo_row_scale(&mut rec, &t, reference, &w, &a, beta, temperature, &stats).unwrap();
        rec.submit().unwrap();
        let name = format!("β {beta}, T {temperature}");
        assert_close(&format!("{name} row_scale"), &block_on(got.to_vec::<f32>(gpu)).unwrap(), &want, 1e-7, 1e-5);
        assert_close(&format!("{name} sums"), &block_on(stats.to_vec::<f32>(gpu)).unwrap(), &sums, 1e-5, 1e-4);
    }
    // β without the reference's losses is a typed error.
    let t = Tensor::zeros(gpu, &[4], DType::F32).unwrap();
    let stats = Tensor::zeros(gpu, &[2], DType::F32).unwrap();
    let r = grpo_row_scale(&mut Recorder::new(gpu), &t, None, &t, &t, 0.1, 1.0, &stats);
    assert!(matches!(r, Err(webpeft::Error::InvalidArgument { .. })), "{r:?}");
}

#[test]
fn rewards_and_advantages_as_trl_defines_them() {
    // nansum: a missing reward adds nothing; all missing is 0.
    let r = combine_rewards(&[vec![Some(1.0), None, None], vec![Some(2.0), Some(4.0), None]], &[1.0, 0.5]).unwrap();
    assert_eq!(r, [2.0, 2.0, 0.0]);
    // A group of equal rewards: advantage 0, counted in frac_reward_zero_std.
    let a = advantages(&[1.0, 2.0, 3.0, 5.0, 5.0, 5.0], 3, ScaleRewards::Group).unwrap();
    assert_eq!(&a.advantages[3..], [0.0, 0.0, 0.0]);
    assert_eq!(a.frac_reward_zero_std, 0.5);
    assert!((a.advantages[0] + 1.0 / 1.0001).abs() < 1e-6, "{:?}", a.advantages);
    assert!(advantages(&[1.0, 2.0], 3, ScaleRewards::Group).is_err());
    assert!(GrpoLossType::from_name("ppo").is_err() && ScaleRewards::from_name("mean").is_err());
}
