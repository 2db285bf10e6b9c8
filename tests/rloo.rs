//! RLOO against TRL 0.24's RLOOTrainer (tests/fixtures/rloo, `make_fixtures.py
//! rloo`), on GRPO's fixed completions of two prompts (three each) and two
//! reward functions' values: the advantages (leave-one-out baselines, β's
//! sequence KL taken from the rewards, normalised or not, rewards clipped),
//! the loss, every LoRA gradient and the logged metrics of one step; two
//! steps of TRL's own training loop (a generation over two optimizer steps;
//! accumulation with two iterations), whose second steps' completion ratios
//! are clipped; and the kernel against its CPU reference.

mod common;
use common::{block_on, fixture, fixture_adapter, fixture_model, gpu, max_abs_diff, randn, uniform, Fixture};
use serde_json::Value;
use webpeft::gpu::Recorder;
use webpeft::kernels::grpo::{rloo_row_scale, Clip};
use webpeft::kernels::reference::{assert_close, grpo as cpu};
use webpeft::model::Model;
use webpeft::train::grpo::{grpo_step, rloo_advantages, GrpoLoss, GrpoSettings, GrpoStepStats, ScaleRewards};
use webpeft::train::preference::Objective;
use webpeft::train::schedule::{LrSchedule, Schedule};
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{DType, Tensor};

const EOS: u32 = 382;
const PAD: u32 = 383;

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("rloo/cases.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The case's RLOOConfig as webpeft's loss.
fn loss_of(case: &Value) -> GrpoLoss {
    let s = &case["settings"];
    let epsilon = s["epsilon"].as_f64().map_or(0.2, |e| e as f32);
    GrpoLoss {
        beta: s["beta"].as_f64().unwrap() as f32,
        temperature: s["temperature"].as_f64().unwrap() as f32,
        max_completion_length: 8,
        clip: Clip { epsilon_low: epsilon, epsilon_high: epsilon, delta: None },
        ..GrpoLoss::RLOO
    }
}

/// One generation of the fixture through `grpo_step`: `batch_size` rows a
/// micro-batch, the case's settings, `rewards` with their `weights`, at
/// `schedule`'s rates; returns the step's stats and the trainer.
fn run(
    model: &Model,
    case: &Value,
    (batch_size, accumulation): (usize, usize),
    (rewards, weights): (Vec<Vec<Option<f32>>>, Vec<f32>),
    (schedule, max_grad_norm): (&LrSchedule, f32),
) -> (GrpoStepStats, Trainer) {
    let c = cases();
    let gpu = gpu();
    let s = &case["settings"];
    let adapter = fixture_adapter(gpu, model, "lora/initial_adapter", "lora");
    let opt = OptimizerConfig { max_grad_norm, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter, opt, 0).unwrap();
    trainer.objective = Objective::Grpo(loss_of(case));
    let clip_range =
        s["reward_clip_range"].as_array().map(|r| (r[0].as_f64().unwrap() as f32, r[1].as_f64().unwrap() as f32));
    let settings = GrpoSettings {
        num_generations: 3,
        num_iterations: s["num_iterations"].as_u64().unwrap_or(1) as usize,
        gradient_accumulation_steps: accumulation,
        steps_per_generation: s["steps_per_generation"].as_u64().map_or(accumulation, |n| n as usize),
        scale_rewards: ScaleRewards::Group,
        normalize_advantages: s["normalize_advantages"].as_bool().unwrap_or(false),
        reward_clip_range: clip_range,
        mask_truncated_completions: s["mask_truncated_completions"].as_bool().unwrap_or(false),
        batch_size,
        reward_weights: weights,
        eos: vec![EOS],
        pad: PAD,
        shuffle: None,
        max_steps: None,
    };
    let prompts: Vec<Vec<u32>> = c["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
    let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let completions: Vec<Vec<u32>> = c["completion_ids"].as_array().unwrap().iter().map(ids).collect();
    let stats =
        block_on(grpo_step(gpu, model, &mut trainer, (&prompts, &completions), &rewards, &settings, schedule)).unwrap();
    (stats, trainer)
}

fn close(what: &str, got: f32, want: f32, tol: f32) {
    assert!((got - want).abs() <= tol * want.abs().max(1.0), "{what}: {got} vs {want}");
}

/// One step on the six rows (β's KL in the rewards at 0.05; normalised
/// advantages over masked truncated completions and clipped rewards; both
/// with β 0.2): the advantages, the loss, every gradient and TRL's metrics.
#[test]
fn advantages_and_steps_match_trl() {
    let c = cases();
    let fx = Fixture::open("rloo/reference.safetensors");
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let rewards: Vec<Vec<Option<f32>>> = (0..2)
        .map(|f| c["rewards"].as_array().unwrap().iter().map(|r| r[f].as_f64().map(|x| x as f32)).collect())
        .collect();
    // lr 0: the step's gradients without moving the adapter.
    let schedule = LrSchedule::new(Schedule::Constant, 0.0, 0, 1).unwrap();
    for name in ["kl", "normalized_masked", "kl_normalized"] {
        let case = &c["cases"][name];
        let (s, trainer) = run(&model, case, (6, 1), (rewards.clone(), vec![1.0, 0.5]), (&schedule, 0.0));
        let m = &case["metrics"];
        let metric = |k: &str| m[k].as_f64().unwrap() as f32;
        let d = max_abs_diff(&s.advantages.advantages, &fx.f32(&format!("{name}.advantages")));
        assert!(d <= 2e-5, "{name}: advantages max |diff| {d:e}: {:?}", s.advantages.advantages);
        let mut worst = 0f32;
        let grads = trainer.gradients().tensors();
        assert_eq!(grads.len(), 28);
        for (key, g) in grads {
            let d = max_abs_diff(&block_on(g.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{name}.{key}.grad")));
            assert!(d <= 2e-5, "{name} {key}: max |diff| {d:e}");
            worst = worst.max(d);
        }
        let step = &s.steps[0];
        let want = fx.f32(&format!("{name}.loss"))[0];
        eprintln!(
            "{name}: loss {} vs {want}, kl {:?} vs {:?}, reward {} vs {}, entropy {:?} vs {}, gradients worst {worst:e}",
            step.loss,
            s.kl,
            m["kl"].as_f64(),
            s.advantages.reward,
            metric("reward"),
            step.entropy,
            metric("entropy"),
        );
        assert!((step.loss - want).abs() <= 2e-6, "{name}: loss {} vs {want}", step.loss);
        close("reward", s.advantages.reward, metric("reward"), 1e-5);
        close("reward_std", s.advantages.reward_std, metric("reward_std"), 1e-5);
        assert_eq!(s.advantages.frac_reward_zero_std, metric("frac_reward_zero_std"), "{name}");
        close("entropy", step.entropy.unwrap(), metric("entropy"), 1e-5);
        assert_eq!(step.clip_ratio, Some([0.0; 3]), "{name}: one iteration, ratio 1");
        // RLOO's kl is the generation's, not the step's.
        assert_eq!(step.kl, None);
        match (s.kl, m["kl"].as_f64()) {
            (Some(k), Some(w)) => close(&format!("{name}: kl"), k, w as f32, 1e-5),
            (None, None) => {}
            other => panic!("{name}: kl {other:?}"),
        }
        for (f, key) in ["reward_a", "reward_b"].iter().enumerate() {
            close(key, s.reward_means[f], metric(&format!("rewards/{key}/mean")), 1e-6);
        }
    }
}

/// TRL's training loop on the generation, as `grpo_step` takes it: two
/// optimizer steps (steps_per_generation 2; or accumulation 2 with two
/// iterations), the second's completion ratios clipped; each step's loss,
/// grad norm, entropy and clip ratios, the generation's kl and reward, and
/// the adapter after both.
#[test]
fn training_loops_match_trl() {
    let c = cases();
    let fx = Fixture::open("rloo/reference.safetensors");
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    for name in ["generation_steps", "accumulated"] {
        let case = &c["cases"][name];
        let t = &case["training"];
        let lr = t["learning_rate"].as_f64().unwrap();
        let schedule = LrSchedule::new(Schedule::Constant, lr, 0, 2).unwrap();
        let accumulation = t["gradient_accumulation_steps"].as_u64().unwrap_or(1) as usize;
        let rewards = vec![case["rewards"].as_array().unwrap().iter().map(|r| r.as_f64().map(|x| x as f32)).collect()];
        let max_norm = t["max_grad_norm"].as_f64().unwrap() as f32;
        let (s, trainer) = run(&model, case, (3, accumulation), (rewards, vec![1.0]), (&schedule, max_norm));
        assert_eq!(s.steps.len(), 2, "{name}");
        let first = &case["steps"][0];
        let w = |k: &str| first[k].as_f64().unwrap() as f32;
        close(&format!("{name}: kl"), s.kl.unwrap(), w("kl"), 1e-5);
        close(&format!("{name}: reward"), s.advantages.reward, w("reward"), 1e-5);
        close(&format!("{name}: reward_std"), s.advantages.reward_std, w("reward_std"), 1e-5);
        assert_eq!(s.num_tokens, w("num_tokens") as u64);
        for (got, want) in s.steps.iter().zip(case["steps"].as_array().unwrap()) {
            let w = |k: &str| want[k].as_f64().unwrap() as f32;
            let clip = got.clip_ratio.unwrap();
            eprintln!(
                "{name} step {}: loss {} vs {}, grad norm {} vs {}, entropy {:?} vs {}, clip ratios {clip:?} vs {}",
                got.step,
                got.loss,
                w("loss"),
                got.grad_norm,
                w("grad_norm"),
                got.entropy,
                w("entropy"),
                w("clip_ratio/region_mean")
            );
            // transformers logs the loss rounded to 4 digits.
            assert!((got.loss - w("loss")).abs() <= 6e-5, "{name}: loss {} vs {}", got.loss, w("loss"));
            close(&format!("{name}: grad norm"), got.grad_norm, w("grad_norm"), 1e-5);
            close(&format!("{name}: entropy"), got.entropy.unwrap(), w("entropy"), 1e-5);
            let want_clip = [w("clip_ratio/low_mean"), w("clip_ratio/high_mean"), w("clip_ratio/region_mean")];
            assert!(max_abs_diff(&clip, &want_clip) <= 1e-6, "{name}: clip ratios {clip:?} vs {want_clip:?}");
        }
        let mut worst = 0f32;
        for (key, p) in trainer.adapter.tensors() {
            let d = max_abs_diff(&block_on(p.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{name}.{key}")));
            worst = worst.max(d);
        }
        eprintln!("{name}: the adapter after two steps: max |diff| {worst:e} against TRL's");
        assert!(worst <= 5e-5, "{name}: adapter {worst:e}");
    }
}

/// The leave-one-out baselines by hand, and normalisation over the batch.
#[test]
fn leave_one_out_advantages() {
    let a = rloo_advantages(&[1.0, 2.0, 6.0, 0.5, 0.5, 0.5], 3, false).unwrap();
    assert_eq!(a.advantages, [1.0 - 4.0, 2.0 - 3.5, 6.0 - 1.5, 0.0, 0.0, 0.0]);
    assert_eq!(a.frac_reward_zero_std, 0.5);
    assert!((a.reward - (3.0 + 0.5) / 2.0).abs() < 1e-6);
    let n = rloo_advantages(&[1.0, 2.0, 6.0, 0.5, 0.5, 0.5], 3, true).unwrap().advantages;
    let mean = n.iter().sum::<f32>() / 6.0;
    assert!(mean.abs() < 1e-6, "{n:?}");
    // One completion a prompt has no other to compare with: a typed error.
    let e = rloo_advantages(&[1.0, 2.0], 1, false).unwrap_err();
    assert!(matches!(e, webpeft::Error::TrainOption { option: "num_generations", .. }), "{e}");
}

/// The kernel against its CPU reference: 17 completions of 61 rows, one of
/// them masked whole, the sampling policy's losses the same (ratio 1) or
/// moved so that the clipping binds on some completions.
#[test]
fn rloo_kernel_matches_the_reference() {
    let gpu = gpu();
    let (completions, per) = (17, 61);
    let m = completions * per;
    let token_loss = uniform(11, m, 0.0, 6.0);
    let mut weight: Vec<f32> =
        uniform(12, m, -1.0, 1.0).iter().map(|&u| if u < 0.0 { 0.0 } else { 1.0 / 34.0 }).collect();
    weight[5 * per..6 * per].fill(0.0); // a truncated completion, masked whole
    let adv: Vec<f32> = randn(13, completions).iter().flat_map(|&a| std::iter::repeat_n(a, per)).collect();
    let entropy = uniform(14, m, 0.0, 6.0);
    // Moved by up to ±0.05 nats a token and ±0.3 more over each completion: its ~30 tokens' sum spreads the ratios.
    let shift = uniform(16, completions, -0.3, 0.3);
    let moved: Vec<f32> = token_loss
        .iter()
        .zip(uniform(15, m, -0.05, 0.05))
        .enumerate()
        .map(|(r, (l, e))| l + e + shift[r / per])
        .collect();
    let up = |x: &[f32]| Tensor::from_slice(gpu, &[m], x).unwrap();
    let cases = [
        (1.0, None, Clip { epsilon_low: 0.2, epsilon_high: 0.2, delta: None }),
        (0.7, Some(&moved), Clip { epsilon_low: 0.2, epsilon_high: 0.28, delta: None }),
        (1.3, Some(&moved), Clip { epsilon_low: 0.05, epsilon_high: 0.1, delta: None }),
    ];
    for (temperature, old, clip) in cases {
        let old_loss = old.map_or(&token_loss, |o| o);
        let sequence_weight = 1.0 / (completions as f32 * 2.0);
        let (want, sums) = cpu::rloo_row_scale(
            [&token_loss, &entropy, old_loss],
            (&weight, &adv),
            (temperature, clip),
            (completions, sequence_weight),
        );
        let share = 0.5;
        let sums = [sums[0], 0.0, sums[2] * share, sums[3] * share, sums[4] * share, sums[5] * share];
        let stats = Tensor::zeros(gpu, &[6], DType::F32).unwrap();
        let (t, w, a, h) = (up(&token_loss), up(&weight), up(&adv), up(&entropy));
        let o = old.map(|o| up(o));
        let mut rec = Recorder::new(gpu);
        let got = rloo_row_scale(
            &mut rec,
            [&t, &h],
            o.as_ref(),
            (&w, &a),
            (temperature, clip),
            (completions, sequence_weight),
            (&stats, share),
        )
        .unwrap();
        rec.submit().unwrap();
        let name = format!("T {temperature}, {clip:?}, moved {}", old.is_some());
        if old.is_some() {
            let region = sums[5] / share;
            assert!((0.05..0.95).contains(&region), "{name}: the clipping should bind on some completions: {sums:?}");
        }
        let got = block_on(got.to_vec::<f32>(gpu)).unwrap();
        assert!(got[5 * per..6 * per].iter().all(|&g| g == 0.0), "{name}: a masked completion has no gradient");
        assert_close(&format!("{name} row_scale"), &got, &want, 1e-7, 1e-5);
        assert_close(&format!("{name} sums"), &block_on(stats.to_vec::<f32>(gpu)).unwrap(), &sums, 1e-6, 1e-4);
    }
    // The masked completion still counts in the loss: −A·weight at ratio 1.
    let only_masked: Vec<f32> = (0..m).map(|r| if r / per == 5 { 0.0 } else { weight[r] }).collect();
    let (_, with) = cpu::rloo_row_scale(
        [&token_loss, &entropy, &token_loss],
        (&only_masked, &adv),
        (1.0, GrpoLoss::RLOO.clip),
        (completions, 1.0),
    );
    let all_adv: f32 = (0..completions).map(|s| adv[s * per]).sum();
    assert!((with[0] + all_adv).abs() < 1e-4, "{with:?} vs Σ A {all_adv}");
    // δ is GRPO's: a typed error.
    let t = Tensor::zeros(gpu, &[4], DType::F32).unwrap();
    let stats = Tensor::zeros(gpu, &[6], DType::F32).unwrap();
    let clip = Clip { delta: Some(1.5), ..GrpoLoss::RLOO.clip };
    let r = rloo_row_scale(&mut Recorder::new(gpu), [&t, &t], None, (&t, &t), (1.0, clip), (1, 0.5), (&stats, 1.0));
    assert!(matches!(r, Err(webpeft::Error::InvalidArgument { .. })), "{r:?}");
}
