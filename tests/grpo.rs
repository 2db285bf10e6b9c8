//! GRPO against TRL 0.24's GRPOTrainer (tests/fixtures/grpo, `make_fixtures.py
//! grpo`): on fixed completions of two prompts (three each) and two reward
//! functions' values, the advantages TRL computes from them, and the step's
//! loss, every LoRA gradient and the kl metric for the dapo, grpo (β 0.04,
//! temperature 0.7, batch-scaled rewards), bnpo (truncated completions
//! masked, unscaled rewards), dr_grpo (β 0.1, temperature 1.3) and
//! top_entropy_quantile (0.4 with β; 0.25 with GSPO ratios) cases; the kernel
//! against its CPU reference; a step split into micro-batches.

mod common;
use common::{block_on, fixture, fixture_adapter, fixture_model, gpu, max_abs_diff, randn, uniform, Fixture};
use serde_json::Value;
use webpeft::gpu::Recorder;
use webpeft::kernels::grpo::{grpo_row_scale, Clip, ImportanceSampling};
use webpeft::kernels::reference::{assert_close, grpo as cpu};
use webpeft::model::Model;
use webpeft::train::data::Batch;
use webpeft::train::grpo::{
    advantages, combine_rewards, completion_batches, grpo_prompts, is_truncated, think_format_reward, GrpoLoss,
    GrpoLossType, ScaleRewards,
};
use webpeft::train::preference::Objective;
use webpeft::train::schedule::{LrSchedule, Schedule};
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
        estimator: webpeft::train::grpo::Estimator::Grpo,
        loss_type: GrpoLossType::from_name(s["loss_type"].as_str().unwrap()).unwrap(),
        beta: s["beta"].as_f64().unwrap() as f32,
        temperature: s["temperature"].as_f64().unwrap() as f32,
        max_completion_length,
        clip: Clip {
            epsilon_low: s["epsilon"].as_f64().unwrap_or(0.2) as f32,
            epsilon_high: s["epsilon_high"].as_f64().or(s["epsilon"].as_f64()).unwrap_or(0.2) as f32,
            delta: s["delta"].as_f64().map(|d| d as f32),
        },
        importance_sampling: ImportanceSampling::from_name(s["importance_sampling_level"].as_str().unwrap_or("token"))
            .unwrap(),
        top_entropy_quantile: s["top_entropy_quantile"].as_f64().unwrap_or(1.0),
    };
    let scale = ScaleRewards::from_name(s["scale_rewards"].as_str().unwrap()).unwrap();
    (loss, scale, s["mask_truncated_completions"].as_bool().unwrap_or(false))
}

/// The fixture's six rows as one batch (`completion_batches`).
fn rows(c: &Value, mask_truncated: bool, adv: &[f32]) -> Batch {
    let prompts: Vec<Vec<u32>> = c["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
    let completions: Vec<Vec<u32>> = c["completion_ids"].as_array().unwrap().iter().map(ids).collect();
    let g = c["num_generations"].as_u64().unwrap() as usize;
    let pairs: Vec<(&[u32], &[u32])> =
        completions.iter().enumerate().map(|(i, comp)| (prompts[i / g].as_slice(), comp.as_slice())).collect();
    let mut batches = completion_batches(&pairs, adv, (&[EOS], PAD), mask_truncated, 6).unwrap();
    assert_eq!(batches.len(), 1);
    batches.remove(0)
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

/// TRL's generation metrics (its `_generate` on the fixed completions, and
/// `_generate_and_score_completions`): each reward function's nanmean and
/// nanstd (reward_b has a None), the completions' lengths, and num_tokens.
#[test]
fn generation_metrics_match_trl() {
    use webpeft::train::grpo::{reward_stats, CompletionLengths};
    let c = cases();
    let prompts: Vec<Vec<u32>> = c["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
    let completions: Vec<Vec<u32>> = c["completion_ids"].as_array().unwrap().iter().map(ids).collect();
    let rewards: Vec<Vec<Option<f32>>> = (0..2)
        .map(|f| c["rewards"].as_array().unwrap().iter().map(|r| r[f].as_f64().map(|x| x as f32)).collect())
        .collect();
    let stats = reward_stats(&rewards);
    let l = CompletionLengths::of(&completions, &[EOS], PAD);
    let tokens: usize = completions.iter().enumerate().map(|(i, c)| prompts[i / 3].len() + c.len()).sum();
    let mut compared = 0;
    for (name, case) in c["cases"].as_object().unwrap() {
        // The TRL-loop cases log them with the generation's first step (their rewards are reward_c's).
        let m = case.get("metrics").unwrap_or(&case["steps"][0]);
        let close = |got: f32, key: &str| {
            let want = m[key].as_f64().unwrap() as f32;
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "{name} {key}: {got} vs TRL's {want}");
        };
        for (i, (mean, std)) in stats.iter().enumerate().filter(|_| m.get("rewards/reward_a/mean").is_some()) {
            let f = ["reward_a", "reward_b"][i];
            close(*mean, &format!("rewards/{f}/mean"));
            close(*std, &format!("rewards/{f}/std"));
        }
        for (got, key) in [
            (l.mean, "mean_length"),
            (l.min, "min_length"),
            (l.max, "max_length"),
            (l.clipped_ratio, "clipped_ratio"),
            (l.mean_terminated, "mean_terminated_length"),
            (l.min_terminated, "min_terminated_length"),
            (l.max_terminated, "max_terminated_length"),
        ] {
            close(got, &format!("completions/{key}"));
        }
        if let Some(n) = m["num_tokens"].as_u64() {
            assert_eq!(n as usize, tokens, "{name}: num_tokens");
        }
        compared += 1;
    }
    assert_eq!(compared, 10);
    // The fixed completions end and run out both ways, and reward_b leaves one out.
    assert!(0.0 < l.clipped_ratio && l.clipped_ratio < 1.0 && l.min_terminated < l.max_terminated, "{l:?}");
    assert!(rewards[1].iter().any(Option::is_none));
    // TRL's edge cases: no completion ended (its terminated lengths are 0), a function with one score or none.
    let cut = CompletionLengths::of(&[vec![5, 6], vec![7]], &[EOS], PAD);
    assert_eq!((cut.clipped_ratio, cut.mean_terminated, cut.max_terminated, cut.mean), (1.0, 0.0, 0.0, 1.5));
    let one = reward_stats(&[vec![Some(2.0), None], vec![None, None]]);
    assert!(one[0].0 == 2.0 && one[0].1.is_nan() && one[1].0.is_nan() && one[1].1.is_nan(), "{one:?}");
}

/// The step's loss, kl, entropy and gradients at lr 0 over `micro`.
fn step(model: &Model, loss: GrpoLoss, micro: &[Batch]) -> (f32, [Option<f32>; 2], Named) {
    let gpu = gpu();
    let ad = fixture_adapter(gpu, model, "lora/initial_adapter", "lora");
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(gpu, ad, opt, 0).unwrap();
    trainer.objective = Objective::Grpo(loss);
    let stats = block_on(trainer.step(gpu, model, micro, 0.0)).unwrap();
    let grads =
        trainer.gradients().tensors().into_iter().map(|(k, g)| (k, block_on(g.to_vec::<f32>(gpu)).unwrap())).collect();
    (stats.loss, [stats.kl, stats.entropy], grads)
}

#[test]
fn advantages_and_steps_match_trl() {
    let c = cases();
    let fx = Fixture::open("grpo/reference.safetensors");
    let model = fixture_model(gpu(), "llama_gqa");
    let max_len = c["max_completion_length"].as_u64().unwrap() as usize;
    // One iteration: the policy is the sampler (the moved-policy cases have tests of their own).
    let moved = ["clipped", "gspo", "generation_steps", "accumulated"];
    for (name, case) in c["cases"].as_object().unwrap().iter().filter(|(n, _)| !moved.contains(&n.as_str())) {
        let (loss, scale, mask_truncated) = settings(case, max_len);
        let adv = the_advantages(&c, scale);
        let d = max_abs_diff(&adv, &fx.f32(&format!("{name}.advantages")));
        assert!(d <= 1e-6, "{name}: advantages max |diff| {d:e}: {adv:?}");
        let batch = rows(&c, mask_truncated, &adv);
        let (got_loss, [kl, entropy], grads) = step(&model, loss, std::slice::from_ref(&batch));
        let want = fx.f32(&format!("{name}.loss"))[0];
        assert_eq!(grads.len(), 28);
        let mut worst = 0f32;
        for (key, g) in &grads {
            let d = max_abs_diff(g, &fx.f32(&format!("{name}.{key}.grad")));
            assert!(d <= 2e-5, "{name} {key}: max |diff| {d:e}");
            worst = worst.max(d);
        }
        let want_kl = case["metrics"]["kl"].as_f64().map(|k| k as f32);
        let (entropy, want_entropy) = (entropy.unwrap(), case["metrics"]["entropy"].as_f64().unwrap() as f32);
        eprintln!(
            "{name}: loss {got_loss} vs {want}, kl {kl:?} vs {want_kl:?}, entropy {entropy} vs {want_entropy}, \
             gradients worst {worst:e}"
        );
        assert!((entropy - want_entropy).abs() <= 1e-5 * want_entropy, "{name}: entropy {entropy} vs {want_entropy}");
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
    let prompts: Vec<Vec<u32>> = c["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
    let completions: Vec<Vec<u32>> = c["completion_ids"].as_array().unwrap().iter().map(ids).collect();
    let pairs: Vec<(&[u32], &[u32])> =
        completions.iter().enumerate().map(|(i, comp)| (prompts[i / 3].as_slice(), comp.as_slice())).collect();
    let halves = completion_batches(&pairs, &adv, (&[EOS], PAD), false, 3).unwrap();
    assert_eq!(halves.len(), 2);
    assert!(halves.iter().all(|b| b.generated_tokens == whole.generated_tokens));
    let (l1, _, g1) = step(&model, loss, std::slice::from_ref(&whole));
    let (l2, _, g2) = step(&model, loss, &halves);
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
    // In quarter nats: ties, which the entropy mask's order breaks by row.
    let entropy: Vec<f32> = uniform(5, m, 0.0, 6.0).iter().map(|e| (e * 4.0).round() / 4.0).collect();
    // The sampling policy's losses: the same (one iteration), or moved by up to ±0.6 nats a token
    // and up to ±0.5 more over each run of 61 rows (a completion at sequence level).
    let shift = uniform(7, 17, -0.5, 0.5);
    let moved: Vec<f32> =
        token_loss.iter().zip(uniform(6, m, -0.6, 0.6)).enumerate().map(|(r, (l, e))| l + e + shift[r / 61]).collect();
    let cases = [
        (0.0, 1.0, None, Clip { epsilon_low: 0.2, epsilon_high: 0.2, delta: None }),
        (0.04, 0.7, None, Clip { epsilon_low: 0.2, epsilon_high: 0.2, delta: None }),
        (0.5, 1.3, Some(&moved), Clip { epsilon_low: 0.2, epsilon_high: 0.28, delta: Some(1.5) }),
        (0.0, 1.0, Some(&moved), Clip { epsilon_low: 0.1, epsilon_high: 0.3, delta: None }),
    ];
    // Token level over the rows; sequence level (GSPO) over 17 completions of 61 rows each; every
    // token's policy term, the top 35% by entropy, or only the highest (top_entropy_quantile 1, 0.35, 0).
    let levels = [(ImportanceSampling::Token, 1), (ImportanceSampling::Sequence, 17)];
    let kept = [1.0, 0.35, 0.0];
    let mut each = Vec::new();
    for c in cases {
        for l in levels {
            each.extend(kept.map(|k| (c, l, k)));
        }
    }
    for ((beta, temperature, old, clip), (level, completions), rho) in each {
        let old_loss = old.map_or(&token_loss, |o| o);
        let settings = (clip, level, completions, rho);
        let (want, sums) = cpu::grpo_row_scale(
            [&token_loss, &entropy, old_loss, &ref_loss],
            &weight,
            &adv,
            beta,
            temperature,
            settings,
        );
        let up = |x: &[f32]| Tensor::from_slice(gpu, &[m], x).unwrap();
        let stats = Tensor::zeros(gpu, &[6], DType::F32).unwrap();
        // The micro-batch's share of the step's metrics (one of 4 micro-batches), the loss's sum whole.
        let share = 0.25;
        let sums = [sums[0], sums[1] * share, sums[2] * share, sums[3] * share, sums[4] * share, sums[5] * share];
        let (t, r, w, a, h) = (up(&token_loss), up(&ref_loss), up(&weight), up(&adv), up(&entropy));
        let o = old.map(|o| up(o));
        let mut rec = Recorder::new(gpu);
        let reference = (beta != 0.0).then_some(&r);
        let got = grpo_row_scale(
            &mut rec,
            [&t, &h],
            (reference, o.as_ref()),
            (&w, &a),
            (beta, temperature),
            settings,
            (&stats, share),
        )
        .unwrap();
        rec.submit().unwrap();
        let name = format!("{level:?}, β {beta}, T {temperature}, {clip:?}, moved {}, ρ {rho}", old.is_some());
        if old.is_some() {
            // Somewhere, not everywhere: of the ~520 weighted tokens, or of 17 completions.
            let ratio = sums[5] / share;
            assert!((0.1..0.9).contains(&ratio), "{name}: the clipping should bind somewhere: {sums:?}");
        }
        let got = block_on(got.to_vec::<f32>(gpu)).unwrap();
        if beta == 0.0 && old.is_none() && level == ImportanceSampling::Token {
            // Without β's KL or a clip a dropped token has no gradient: the kernel kept ρ of the completion tokens
            // (ties at the threshold kept), or only the highest entropy's (ties too) at ρ = 0.
            let weighted = weight.iter().filter(|&&w| w != 0.0).count() as f64;
            let kept = got.iter().filter(|&&s| s != 0.0).count() as f64;
            let range = if rho == 0.0 { 1.0..=30.0 } else { (rho * weighted).floor()..=rho * weighted + 30.0 };
            assert!(range.contains(&kept), "{name}: {kept} of {weighted} tokens kept");
        }
        assert_close(&format!("{name} row_scale"), &got, &want, 1e-7, 1e-5);
        assert_close(&format!("{name} sums"), &block_on(stats.to_vec::<f32>(gpu)).unwrap(), &sums, 1e-5, 1e-4);
    }
    // β without the reference's losses is a typed error.
    let t = Tensor::zeros(gpu, &[4], DType::F32).unwrap();
    let stats = Tensor::zeros(gpu, &[6], DType::F32).unwrap();
    let settings = (GrpoLoss::TRL.clip, ImportanceSampling::Token, 1, 1.0);
    let r =
        grpo_row_scale(&mut Recorder::new(gpu), [&t, &t], (None, None), (&t, &t), (0.1, 1.0), settings, (&stats, 1.0));
    assert!(matches!(r, Err(webpeft::Error::InvalidArgument { .. })), "{r:?}");
    // Completions that do not divide the rows: a shape error.
    let settings = (GrpoLoss::TRL.clip, ImportanceSampling::Sequence, 3, 1.0);
    let r =
        grpo_row_scale(&mut Recorder::new(gpu), [&t, &t], (None, None), (&t, &t), (0.0, 1.0), settings, (&stats, 1.0));
    assert!(matches!(r, Err(webpeft::Error::Shape { .. })), "{r:?}");
    // 1 − ρ as Python computes it from the ρ written (from f32 0.09 itself it would be 0.90999997).
    use webpeft::kernels::grpo::entropy_quantile;
    let q = [0.4, 0.09, 0.058, 0.0, 1.0].map(entropy_quantile);
    assert_eq!(q, [Some(0.6), Some(0.91), Some(0.942), Some(1.0), None]);
    // A quantile outside [0, 1]: a typed error.
    let settings = (GrpoLoss::TRL.clip, ImportanceSampling::Token, 1, 1.5);
    let r =
        grpo_row_scale(&mut Recorder::new(gpu), [&t, &t], (None, None), (&t, &t), (0.0, 1.0), settings, (&stats, 1.0));
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

#[test]
fn prompts_rewards_and_truncation() {
    let tokenizer = block_on(webpeft::model::tokenizer::Tokenizer::load(
        &webpeft::model::DirFiles::new(fixture("llama_gqa")).unwrap(),
    ))
    .unwrap();
    let data = br#"{"prompt": "The river rose and", "answer": "3"}
{"prompt": [{"role": "user", "content": "Hi"}]}
"#;
    let p = grpo_prompts("prompts.jsonl", data, &tokenizer, 3).unwrap();
    // Text without special tokens, cut to 3; messages rendered with the generation prompt.
    assert_eq!(p[0].ids, tokenizer.encode("The river rose and", false).unwrap()[..3]);
    assert_eq!(p[0].fields["answer"], "3");
    assert!(p[1].text.ends_with("<|assistant|>\n"), "{:?}", p[1].text);
    for (bad, needle) in [
        (&br#"{"text": "x"}"#[..], "need a `prompt`"),
        (br#"{"prompt": [{"role": "assistant", "content": "x"}]}"#, "user turn"),
        (b"not json", "not valid JSON"),
    ] {
        let e = grpo_prompts("p.jsonl", bad, &tokenizer, 8).unwrap_err().to_string();
        assert!(e.contains(needle) && e.contains("p.jsonl"), "{e}");
    }
    // TRL's think_format_reward's examples, and more.
    for (text, want) in [
        ("<think>\nThis is my reasoning.\n</think>\nThis is my answer.", 1.0),
        ("<think>\nThis is my reasoning.\nThis is my answer.", 0.0),
        ("<think>a</think><think>b</think>", 0.0),
        (" <think>a</think>", 0.0),
        ("<think></think>", 1.0),
    ] {
        assert_eq!(think_format_reward(text), want, "{text:?}");
    }
    assert!(is_truncated(&[5, 6], &[382], 383) && !is_truncated(&[5, 382], &[382], 383));
    assert!(!is_truncated(&[383], &[382], 383) && is_truncated(&[], &[382], 383));
}

/// A GRPO run learns: on llama_gqa with a fresh LoRA on lm_head, 8 completions sampled
/// through the adapter, rewarded by how many of their tokens are ids below 192, the mean
/// reward of the last steps beats the first steps' (a seeded, deterministic run).
#[test]
fn a_grpo_run_raises_its_reward() {
    raises_its_reward(GrpoLoss { max_completion_length: 8, ..GrpoLoss::TRL });
}

/// So does an RLOO run, the same way, with RLOO's β 0.05 against the base (its reward, as
/// measured here, without the KL it pays).
#[test]
fn an_rloo_run_raises_its_reward() {
    raises_its_reward(GrpoLoss { max_completion_length: 8, ..GrpoLoss::RLOO });
}

fn raises_its_reward(loss: GrpoLoss) {
    use webpeft::model::llama::GenerationConfig;
    use webpeft::peft::adapter::hooks_of;
    use webpeft::peft::TargetModules;
    use webpeft::train::grpo::{grpo_step, GrpoSettings};
    use webpeft::train::recipe::{AdapterRecipe, LoraRecipe};
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let lora = LoraRecipe { targets: TargetModules::List(vec!["lm_head".into()]), ..LoraRecipe::default() };
    let adapter = AdapterRecipe::Lora(lora).build(gpu, &model, None, None, 7).unwrap();
    let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 7).unwrap();
    trainer.objective = Objective::Grpo(loss);
    let prompts: [&[u32]; 1] = [&[310, 373, 305, 220]];
    let settings = GrpoSettings {
        num_generations: 8,
        num_iterations: 1,
        scale_rewards: ScaleRewards::Group,
        normalize_advantages: false,
        reward_clip_range: None,
        mask_truncated_completions: false,
        gradient_accumulation_steps: 1,
        steps_per_generation: 1,
        batch_size: 8,
        reward_weights: vec![1.0],
        eos: vec![EOS],
        pad: PAD,
        shuffle: Some(7),
        max_steps: None,
    };
    let mut means = Vec::new();
    let lr = LrSchedule::new(Schedule::Constant, 5e-2, 0, 24).unwrap();
    for step in 0..24u64 {
        let mut completions = Vec::new();
        for (k, p) in prompts.iter().enumerate() {
            let config = GenerationConfig {
                greedy: false,
                max_new_tokens: 8,
                eos_token_ids: vec![EOS],
                seed: step * 100 + k as u64 * 10,
                ..GenerationConfig::default()
            };
            completions
                .extend(block_on(model.sample_group(gpu, p, 8, &config, hooks_of(Some(&trainer.adapter)))).unwrap());
        }
        let reward: Vec<Option<f32>> =
            completions.iter().map(|c| Some(c.iter().filter(|&&t| t < 192).count() as f32)).collect();
        let s = block_on(grpo_step(gpu, &model, &mut trainer, (&prompts, &completions), &[reward], &settings, &lr))
            .unwrap();
        means.push(s.rewards.iter().sum::<f32>() / s.rewards.len() as f32);
    }
    let (first, last) = (means[..6].iter().sum::<f32>() / 6.0, means[18..].iter().sum::<f32>() / 6.0);
    eprintln!(
        "{}: mean reward {first} over the first 6 steps, {last} over the last 6: {means:?}",
        loss.estimator.name()
    );
    assert!(last > first + 1.0, "no learning: {first} → {last}");
}

/// A group sampled together is the completions sampled one at a time with
/// seeds seed, seed + 1, …: each row's logits are the single sequence's, and
/// each draw depends on its own seed, token number and logits only.
#[test]
fn a_sampled_group_is_its_completions_sampled_alone() {
    use webpeft::model::llama::GenerationConfig;
    use webpeft::peft::adapter::hooks_of;
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let ad = fixture_adapter(gpu, &model, "lora/initial_adapter", "lora");
    let prompt = [310, 373, 305, 220, 314];
    for (temperature, top_p, top_k) in [(1.0, 1.0, 0), (0.7, 0.9, 20)] {
        let config = GenerationConfig {
            greedy: false,
            max_new_tokens: 12,
            eos_token_ids: vec![EOS, 100],
            seed: 99,
            temperature,
            top_p,
            top_k,
            ..GenerationConfig::default()
        };
        let start = std::time::Instant::now();
        let group = block_on(model.sample_group(gpu, &prompt, 5, &config, hooks_of(Some(&ad)))).unwrap();
        let together = start.elapsed();
        let start = std::time::Instant::now();
        for (i, got) in group.iter().enumerate() {
            let alone = GenerationConfig { seed: 99 + i as u64, ..config.clone() };
            let want = block_on(model.generate_adapted(gpu, &prompt, &alone, &ad, |_| true)).unwrap();
            assert_eq!(got, &want, "row {i} (temperature {temperature}, top-p {top_p}, top-k {top_k})");
        }
        eprintln!("5 completions: {together:?} together, {:?} one at a time", start.elapsed());
        assert!(group.iter().any(|c| c.len() < 12) || group.windows(2).any(|w| w[0] != w[1]), "{group:?}");
    }
    let greedy = GenerationConfig::greedy(4);
    assert!(block_on(model.sample_group(gpu, &prompt, 2, &greedy, hooks_of(None))).is_err());
}

/// TRL's num_iterations 2: the completions scored by the policy that sampled
/// them (lora/initial_adapter; webpeft's `label_logps` equals TRL's
/// old_per_token_logps), then the step of a moved policy (its factors
/// perturbed, `grpo/moved`), whose ratios the clipping cuts (ε 0.2, ε_high
/// 0.28, δ 1.5): the loss, every gradient, kl, entropy and the clip ratios.
#[test]
fn a_moved_policy_is_clipped_as_trl_clips_it() {
    moved_policy_step("clipped", "grpo/moved");
}

/// GSPO (importance_sampling_level "sequence", loss grpo): one ratio a
/// completion, e^(mean of its tokens' log-ratios), on a policy moved the
/// other way (`grpo/reflected`); ε 0.02, ε_high 0.1 cut the first
/// completion's (TRL's clip ratios are of completions here).
#[test]
fn gspo_clips_whole_completions_as_trl_does() {
    moved_policy_step("gspo", "grpo/reflected");
}

/// The `name` case of cases.json: its completions scored by
/// lora/initial_adapter, then a step of the policy in `policy`.
fn moved_policy_step(name: &str, policy: &str) {
    let c = cases();
    let fx = Fixture::open("grpo/reference.safetensors");
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let case = &c["cases"][name];
    let (loss, scale, mask_truncated) = settings(case, 8);
    let adv = the_advantages(&c, scale);
    assert!(max_abs_diff(&adv, &fx.f32(&format!("{name}.advantages"))) <= 1e-6);
    let mut batch = rows(&c, mask_truncated, &adv);
    // The sampling policy's log-probabilities at the completions' label positions.
    let sampler = fixture_adapter(gpu, &model, "lora/initial_adapter", "lora");
    let old = block_on(webpeft::train::grpo::label_logps(gpu, &model, &sampler, &batch, loss.temperature)).unwrap();
    let trl_old = fx.f32(&format!("{name}.old_logps"));
    let mask = fx.i64("clipped.completion_mask");
    let width = fx.shape(&format!("{name}.old_logps"))[1];
    let prompts: Vec<Vec<u32>> = c["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
    let mut worst = 0f32;
    for (i, row) in old.iter().enumerate() {
        let start = prompts[i / 3].len();
        for j in (0..width).filter(|&j| mask[i * width + j] == 1) {
            worst = worst.max((row[start + j] - trl_old[i * width + j]).abs());
        }
    }
    eprintln!("{name}: old log-probabilities: max |diff| {worst:e} against TRL's");
    assert!(worst <= 2e-5, "old logps {worst:e}");
    batch.old_logps = Some(old);
    let moved = fixture_adapter(gpu, &model, policy, "lora");
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(gpu, moved, opt, 0).unwrap();
    trainer.objective = Objective::Grpo(loss);
    let stats = block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 0.0)).unwrap();
    let m = &case["metrics"];
    let want = fx.f32(&format!("{name}.loss"))[0];
    let mut worst = 0f32;
    for (key, g) in trainer.gradients().tensors() {
        let d = max_abs_diff(&block_on(g.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{name}.{key}.grad")));
        worst = worst.max(d);
    }
    let clip = stats.clip_ratio.unwrap();
    eprintln!("{name}: loss {} vs {want}, gradients worst {worst:e}, clip ratios {clip:?}, metrics {m}", stats.loss);
    assert!(worst <= 2e-5, "gradients {worst:e}");
    assert!((stats.loss - want).abs() <= 1e-6, "loss {} vs {want}", stats.loss);
    let metric = |k: &str| m[k].as_f64().unwrap() as f32;
    assert_eq!(clip, [metric("clip_ratio/low_mean"), metric("clip_ratio/high_mean"), metric("clip_ratio/region_mean")]);
    assert!(clip[2] > 0.0, "the clipping binds: {clip:?}");
    assert!((stats.kl.unwrap() - metric("kl")).abs() <= 1e-5 * metric("kl").max(1.0));
    assert!((stats.entropy.unwrap() - metric("entropy")).abs() <= 1e-5 * metric("entropy"));
}

/// TRL's own training loop with steps_per_generation 2 over accumulation 1
/// (its generation shuffle kept in order): two optimizer steps on one
/// generation of two prompts' three completions, the second on the second
/// prompt's with the policy the first step moved, its sequence-level ratios
/// (GSPO) scored at generation time and cut by ε 0.05; dapo divides both by
/// the generation's tokens; AdamW at lr 2e-2 with the norm clipped at 1.
/// webpeft's `grpo_step` takes the same two steps: each step's loss, grad
/// norm, kl, entropy and clip ratios, and the adapter after them.
#[test]
fn two_steps_on_one_generation_match_trls_training_loop() {
    matches_trls_training_loop("generation_steps");
}

/// TRL's loop with gradient accumulation 2 and two iterations (bnpo, β 0.04,
/// the policy term on the top half by entropy, ε 0.05 cutting the second
/// step's ratios): each step is two micro-batches of unequal token counts, and
/// TRL logs its kl, entropy and clip ratios as the mean of the micro-batches'
/// means; `grpo_step` logs the same, and ends with the same adapter.
#[test]
fn accumulated_steps_log_trls_micro_batch_means() {
    matches_trls_training_loop("accumulated");
}

/// The fixture case `name` of TRL's own training loop, through `grpo_step`.
fn matches_trls_training_loop(name: &str) {
    use webpeft::train::grpo::{grpo_step, GrpoSettings};
    let c = cases();
    let fx = Fixture::open("grpo/reference.safetensors");
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let case = &c["cases"][name];
    let (loss, scale, mask_truncated) = settings(case, 8);
    let t = &case["training"];
    let adapter = fixture_adapter(gpu, &model, "lora/initial_adapter", "lora");
    let opt = OptimizerConfig { max_grad_norm: t["max_grad_norm"].as_f64().unwrap() as f32, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter, opt, 0).unwrap();
    trainer.objective = Objective::Grpo(loss);
    let lr = t["learning_rate"].as_f64().unwrap();
    let schedule = LrSchedule::new(Schedule::Constant, lr, 0, 2).unwrap();
    let accumulation = t["gradient_accumulation_steps"].as_u64().unwrap_or(1) as usize;
    let settings = GrpoSettings {
        num_generations: 3,
        num_iterations: case["settings"]["num_iterations"].as_u64().unwrap_or(1) as usize,
        gradient_accumulation_steps: accumulation,
        steps_per_generation: case["settings"]["steps_per_generation"].as_u64().map_or(accumulation, |s| s as usize),
        scale_rewards: scale,
        normalize_advantages: false,
        reward_clip_range: None,
        mask_truncated_completions: mask_truncated,
        batch_size: 3,
        reward_weights: vec![1.0],
        eos: vec![EOS],
        pad: PAD,
        shuffle: None,
        max_steps: None,
    };
    assert!(settings.scores_old_policy() && settings.steps() == 2);
    let prompts: Vec<Vec<u32>> = c["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
    let prompts: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let completions: Vec<Vec<u32>> = c["completion_ids"].as_array().unwrap().iter().map(ids).collect();
    let rewards = vec![case["rewards"].as_array().unwrap().iter().map(|r| r.as_f64().map(|x| x as f32)).collect()];
    let s = block_on(grpo_step(gpu, &model, &mut trainer, (&prompts, &completions), &rewards, &settings, &schedule))
        .unwrap();
    assert_eq!(s.steps.len(), 2);
    // The generation's metrics, which TRL logs with the first step.
    let first = &case["steps"][0];
    let w = |k: &str| first[k].as_f64().unwrap() as f32;
    assert_eq!(s.num_tokens, w("num_tokens") as u64);
    assert!((s.reward_stds[0] - w("rewards/reward_c/std")).abs() <= 1e-6, "{:?} vs {first}", s.reward_stds);
    assert!((s.lengths.mean - w("completions/mean_length")).abs() <= 1e-6);
    assert_eq!(s.lengths.max_terminated, w("completions/max_terminated_length"));
    for (got, want) in s.steps.iter().zip(case["steps"].as_array().unwrap()) {
        let w = |k: &str| want[k].as_f64().unwrap() as f32;
        eprintln!(
            "step {}: loss {} vs {}, grad norm {} vs {}, kl {:?} vs {}, entropy {:?} vs {}, clip ratios {:?} vs {}",
            got.step,
            got.loss,
            w("loss"),
            got.grad_norm,
            w("grad_norm"),
            got.kl,
            w("kl"),
            got.entropy,
            w("entropy"),
            got.clip_ratio,
            w("clip_ratio/region_mean")
        );
        // transformers logs the loss rounded to 4 digits.
        assert!((got.loss - w("loss")).abs() <= 6e-5, "loss {} vs {}", got.loss, w("loss"));
        assert!((got.grad_norm - w("grad_norm")).abs() <= 1e-5 * w("grad_norm").max(1.0));
        assert!((got.kl.unwrap() - w("kl")).abs() <= 1e-5 * w("kl").max(1.0));
        assert!((got.entropy.unwrap() - w("entropy")).abs() <= 1e-5 * w("entropy"));
        let clip = got.clip_ratio.unwrap();
        let want_clip = [w("clip_ratio/low_mean"), w("clip_ratio/high_mean"), w("clip_ratio/region_mean")];
        assert!(max_abs_diff(&clip, &want_clip) <= 1e-6, "clip ratios {clip:?} vs {want_clip:?}");
    }
    let mut worst = 0f32;
    for (key, p) in trainer.adapter.tensors() {
        let d = max_abs_diff(&block_on(p.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{name}.{key}")));
        worst = worst.max(d);
    }
    eprintln!("the adapter after two steps: max |diff| {worst:e} against TRL's");
    // Two AdamW steps of lr 2e-2: the gradients' last-bit differences move a weight by ~1e-5.
    assert!(worst <= 5e-5, "adapter {worst:e}");
}

/// TRL's `evaluate()` of GRPO and RLOO on held-out prompts (tests/fixtures/group_eval, `make_fixtures.py
/// group_eval`): the fixed completions in eval batches as TRL's sampler ordered them (one of six rows, or two of
/// three), through `evaluate_group` and `GroupEval::combine`: eval_loss (GRPO's grpo loss divided by the
/// accumulation of the run it evaluates, as TRL's is mid-training), eval_reward and its stds, each reward
/// function's, the completions' lengths, kl (GRPO's and RLOO's, with β) and entropy.
#[test]
fn evaluation_matches_trl() {
    use webpeft::train::grpo::{evaluate_group, Estimator, GroupEval, GrpoSettings};
    let c: Value = serde_json::from_slice(&std::fs::read(fixture("group_eval/cases.json")).unwrap()).unwrap();
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let adapter = fixture_adapter(gpu, &model, "lora/initial_adapter", "lora");
    let prompts: Vec<Vec<u32>> = c["prompt_ids"].as_array().unwrap().iter().map(ids).collect();
    let completions: Vec<Vec<u32>> = c["completion_ids"].as_array().unwrap().iter().map(ids).collect();
    let reward = |k: usize, f: usize| c["rewards"][k][f].as_f64().map(|x| x as f32);
    for (name, case) in c["cases"].as_object().unwrap() {
        let s = &case["settings"];
        let estimator = if case["objective"] == "rloo" { Estimator::Rloo } else { Estimator::Grpo };
        let defaults = if estimator == Estimator::Rloo { GrpoLoss::RLOO } else { GrpoLoss::TRL };
        let loss = GrpoLoss {
            loss_type: GrpoLossType::from_name(s["loss_type"].as_str().unwrap_or("dapo")).unwrap(),
            beta: s["beta"].as_f64().unwrap() as f32,
            temperature: s["temperature"].as_f64().unwrap() as f32,
            max_completion_length: 8,
            ..defaults
        };
        let settings = GrpoSettings {
            num_generations: 3,
            num_iterations: 1,
            gradient_accumulation_steps: case["gradient_accumulation_steps"].as_u64().unwrap() as usize,
            steps_per_generation: 1,
            scale_rewards: ScaleRewards::from_name(s["scale_rewards"].as_str().unwrap_or("group")).unwrap(),
            normalize_advantages: false,
            reward_clip_range: None,
            mask_truncated_completions: s["mask_truncated_completions"].as_bool().unwrap_or(false),
            batch_size: case["rows"].as_u64().unwrap() as usize,
            reward_weights: vec![1.0, 0.5],
            eos: vec![EOS],
            pad: PAD,
            shuffle: None,
            max_steps: None,
        };
        let mut batches = Vec::new();
        for order in case["batches"].as_array().unwrap() {
            // Each prompt's rows together, its k-th row its k-th completion (as the fixture's generator gave them).
            let rows: Vec<usize> = order.as_array().unwrap().iter().map(|p| p.as_u64().unwrap() as usize).collect();
            let mut group_prompts: Vec<&[u32]> = Vec::new();
            let mut picked = Vec::new();
            for chunk in rows.chunks(3) {
                assert!(chunk.iter().all(|&p| p == chunk[0]), "{name}: {rows:?}");
                group_prompts.push(&prompts[chunk[0]]);
                picked.extend((0..3).map(|k| 3 * chunk[0] + k));
            }
            let batch_completions: Vec<Vec<u32>> = picked.iter().map(|&k| completions[k].clone()).collect();
            let rewards: Vec<Vec<Option<f32>>> =
                (0..2).map(|f| picked.iter().map(|&k| reward(k, f)).collect()).collect();
            let one = evaluate_group(
                (gpu, &model, &adapter),
                &loss,
                &settings,
                (&group_prompts, &batch_completions),
                &rewards,
            );
            batches.push(block_on(one).unwrap());
        }
        let e = GroupEval::combine(&batches).unwrap();
        let m = &case["metrics"];
        let w = |k: &str| m[&format!("eval_{k}")].as_f64().unwrap() as f32;
        eprintln!(
            "{name}: {} batches, loss {} (TRL logs {}), reward {} vs {}, kl {:?} vs {:?}, entropy {} vs {}",
            batches.len(),
            e.loss,
            w("loss"),
            e.reward,
            w("reward"),
            e.kl,
            m["eval_kl"].as_f64(),
            e.entropy,
            w("entropy")
        );
        let close = |what: &str, got: f32, want: f32| {
            assert!((got - want).abs() <= 2e-6 + 1e-5 * want.abs(), "{name} {what}: {got} vs {want}");
        };
        // Each batch's loss as TRL's prediction_step gives it, and eval_loss their rows-weighted mean (transformers'
        // logged one keeps fewer of the last batch's rows, which the fixture checks and records; see README).
        let want_losses: Vec<f32> =
            case["batch_losses"].as_array().unwrap().iter().map(|l| l.as_f64().unwrap() as f32).collect();
        for (b, want) in batches.iter().zip(&want_losses) {
            close("batch loss", b.loss, *want);
        }
        close("loss", e.loss, want_losses.iter().sum::<f32>() / want_losses.len() as f32);
        close("reward", e.reward, w("reward"));
        close("reward_std", e.reward_std, w("reward_std"));
        close("frac_reward_zero_std", e.frac_reward_zero_std, w("frac_reward_zero_std"));
        close("entropy", e.entropy, w("entropy"));
        for (f, key) in ["reward_a", "reward_b"].iter().enumerate() {
            close(key, e.reward_means[f], w(&format!("rewards/{key}/mean")));
            close(key, e.reward_stds[f], w(&format!("rewards/{key}/std")));
        }
        for (key, got) in e.lengths.named() {
            close(key, got, w(&format!("completions/{key}")));
        }
        for (i, key) in ["low_mean", "high_mean", "region_mean"].iter().enumerate() {
            close(key, e.clip_ratio[i], w(&format!("clip_ratio/{key}")));
        }
        match (e.kl, m["eval_kl"].as_f64()) {
            (Some(k), Some(want)) => close("kl", k, want as f32),
            (None, None) => {}
            other => panic!("{name}: kl {other:?}"),
        }
    }
}
