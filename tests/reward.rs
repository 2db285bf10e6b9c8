//! Reward modelling against TRL 0.24's `RewardTrainer` (tests/fixtures/reward,
//! `make_fixtures.py reward`): from a SEQ_CLS LoRA on llama_gqa whose file
//! holds the score head PEFT trains (`modules_to_save` ["classifier",
//! "score"]), four runs over the same eight pairs in batches of 2 read in
//! order: text pairs with a prompt; with margins, center_rewards_coefficient
//! and gradient accumulation; implicit-prompt pairs with the pad token the
//! eos (the score then reads the token before each row's eos); and
//! conversational pairs through the chat template. Each run checks
//! webpeft's tokenization (TRL's rows), the initial rewards, each step's
//! loss, grad_norm and metrics, the adapter after training and
//! `evaluate()` on the first three pairs. The loss kernel is checked
//! against its CPU reference on seeded random scores first.

mod common;
use common::{
    assert_files_are_peft, block_on, close_rel as close, fixture, fixture_adapter, fixture_model, gpu, max_abs_diff,
    randn, Fixture,
};
use serde_json::Value;
use webpeft::gpu::{DType, Recorder, Tensor};
use webpeft::kernels::preference::{reward_loss, REWARD_STATS};
use webpeft::model::llama::score::last_non_pad;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::train::data::{Batch, DataOptions, Dataset};
use webpeft::train::preference::Objective;
use webpeft::train::reward::{evaluate_reward, reward_dataset, score_sequences, RewardLoss};
use webpeft::train::trainer::{OptimizerConfig, Trainer};

#[test]
fn the_loss_kernel_matches_its_reference() {
    let gpu = gpu();
    for (i, &(pairs, center, scale)) in
        [(1, 0.0, 1.0), (3, 0.01, 0.5), (7, 0.0, 0.25), (33, 0.3, 1.0)].iter().enumerate()
    {
        let seed = 70 + i as u64;
        let scores: Vec<f32> = randn(seed, 2 * pairs).iter().map(|x| 3.0 * x).collect();
        let margins: Vec<f32> = if i % 2 == 0 { vec![0.0; pairs] } else { randn(seed + 100, pairs) };
        let before: Vec<f32> = randn(seed + 200, REWARD_STATS);
        let stats = Tensor::from_slice(gpu, &[REWARD_STATS], &before).unwrap();
        let mut rec = Recorder::new(gpu);
        let s = Tensor::from_slice(gpu, &[2 * pairs], &scores).unwrap();
        let m = Tensor::from_slice(gpu, &[pairs], &margins).unwrap();
        let d = reward_loss(&mut rec, (&s, &m), center, (&stats, scale)).unwrap();
        rec.submit().unwrap();
        let (want_stats, want_d) =
            webpeft::kernels::reference::preference::reward_loss(&scores, &margins, center, scale);
        let got_stats = block_on(stats.to_vec::<f32>(gpu)).unwrap();
        let got_d = block_on(d.to_vec::<f32>(gpu)).unwrap();
        for (k, ((g, w), b)) in got_stats.iter().zip(&want_stats).zip(&before).enumerate() {
            assert!((g - (w + b)).abs() <= 1e-5 * (w + b).abs().max(1.0), "{pairs} pairs: stats[{k}] {g} vs {}", w + b);
        }
        let diff = max_abs_diff(&got_d, &want_d);
        assert!(diff <= 1e-6, "{pairs} pairs: dscores differ by {diff:e}");
    }
    // Bad shapes are typed errors.
    let mut rec = Recorder::new(gpu);
    let s = Tensor::zeros(gpu, &[5], DType::F32).unwrap();
    let m = Tensor::zeros(gpu, &[2], DType::F32).unwrap();
    let stats = Tensor::zeros(gpu, &[REWARD_STATS], DType::F32).unwrap();
    let e = reward_loss(&mut rec, (&s, &m), 0.0, (&stats, 1.0)).unwrap_err();
    assert!(e.to_string().contains("2P scores"), "{e}");
}

#[test]
fn the_pooled_token_is_the_last_that_is_not_padding() {
    let rows = vec![vec![5, 6, 7, 0, 0], vec![5, 0, 6, 0, 0], vec![0, 0, 0, 0, 0], vec![1, 2, 3, 4, 5]];
    assert_eq!(last_non_pad(&rows, 0), vec![2, 2, 0, 4]);
}

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("reward/cases.json")).unwrap()).unwrap()
}

fn tokenizer() -> Tokenizer {
    let file = |p: &str| std::fs::read(fixture(p)).unwrap();
    Tokenizer::from_bytes(&file("llama_gqa/tokenizer.json"), Some(&file("llama_gqa/tokenizer_config.json"))).unwrap()
}

fn numbers(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn dataset(case: &Value, pairs: Option<usize>) -> Dataset {
    let mut jsonl = std::fs::read_to_string(fixture(&format!("reward/{}", case["data"].as_str().unwrap()))).unwrap();
    if let Some(n) = pairs {
        jsonl = jsonl.lines().take(n).map(|l| format!("{l}\n")).collect();
    }
    let opts = DataOptions { seq_len: 1024, packing: false, batch_size: 2, shuffle: false, seed: 0, drop_last: false };
    let pad = case["pad_token_id"].as_u64().unwrap() as u32;
    reward_dataset("pairs.jsonl", jsonl.as_bytes(), Some(&tokenizer()), &opts, pad).unwrap()
}

fn matches_trl(name: &str) {
    let c = cases();
    let case = &c["cases"][name];
    let settings = &case["settings"];
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let adapter = fixture_adapter(gpu, &model, "reward/initial_adapter", "lora");
    assert_files_are_peft(gpu, &adapter, &model.config, "reward/initial_adapter");
    let pad = case["pad_token_id"].as_u64().unwrap() as u32;

    // The rows TRL trained on, from webpeft's own data path.
    let train = dataset(case, None);
    let want_rows = case["rows"].as_array().unwrap();
    assert_eq!(train.len(), want_rows.len(), "{name}: pairs");
    for (i, w) in want_rows.iter().enumerate() {
        let (chosen, rejected) = (&train.rows()[2 * i], &train.rows()[2 * i + 1]);
        assert_eq!(chosen.input_ids, numbers(&w["chosen_ids"]), "{name} pair {i}: chosen ids");
        assert_eq!(rejected.input_ids, numbers(&w["rejected_ids"]), "{name} pair {i}: rejected ids");
    }

    // The initial adapter's reward of every sequence, scored one padded batch at once as TRL's.
    let ids: Vec<Vec<u32>> = (0..2)
        .flat_map(|side| {
            want_rows.iter().map(move |w| numbers(&w[if side == 0 { "chosen_ids" } else { "rejected_ids" }]))
        })
        .collect();
    let got = block_on(score_sequences(gpu, &model, Some(&adapter), &ids, pad)).unwrap();
    let want: Vec<f32> = ["chosen", "rejected"]
        .iter()
        .flat_map(|k| case["initial_rewards"][k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
        .collect();
    let d = max_abs_diff(&got, &want);
    eprintln!("{name}: initial rewards within {d:e} of TRL's");
    assert!(d <= 2e-5, "{name}: initial rewards {d:e}");

    let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 0).unwrap();
    let loss = RewardLoss {
        center_rewards_coefficient: settings["center_rewards_coefficient"].as_f64().map(|c| c as f32),
        pad_token_id: pad,
    };
    trainer.objective = Objective::Reward(loss);
    let lr = c["learning_rate"].as_f64().unwrap();
    let accumulation = settings["gradient_accumulation_steps"].as_u64().unwrap() as usize;
    let micro: Vec<Batch> = train.epoch(0);
    let steps = case["steps"].as_array().unwrap();
    assert_eq!(micro.len(), steps.len() * accumulation);
    for (batches, want) in micro.chunks(accumulation).zip(steps) {
        let s = block_on(trainer.step(gpu, &model, batches, lr)).unwrap();
        let w = |k: &str| want[k].as_f64().unwrap();
        let r = s.reward.clone().unwrap();
        eprintln!(
            "{name} step {}: loss {} vs {}, grad norm {} vs {}, {r:?}",
            s.step,
            s.loss,
            w("loss"),
            s.grad_norm,
            w("grad_norm")
        );
        close("loss", s.loss as f64, w("loss"), 2e-5);
        close("grad_norm", s.grad_norm as f64, w("grad_norm"), 5e-5);
        for (k, v) in r.metrics() {
            close(k, v as f64, w(k), 2e-5);
        }
        assert_eq!(s.num_tokens, Some(w("num_tokens") as u64), "{name}: num_tokens");
    }
    let fx = Fixture::open("reward/reference.safetensors");
    let mut worst = 0f32;
    for (key, p) in trainer.adapter.tensors() {
        let d = max_abs_diff(&block_on(p.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{name}.{key}")));
        worst = worst.max(d);
    }
    eprintln!("{name}: the adapter after {} steps: max |diff| {worst:e} against TRL's", steps.len());
    assert!(worst <= 5e-5, "{name}: adapter {worst:e}");

    let eval = dataset(case, Some(3)).epoch(0);
    let e = block_on(evaluate_reward(gpu, &model, Some(&trainer.adapter), &eval, &loss)).unwrap();
    let want = &case["eval"];
    let w = |k: &str| want[k].as_f64().unwrap();
    eprintln!("{name} eval: {e:?} vs {want}");
    close("eval_loss", e.loss as f64, w("eval_loss"), 2e-5);
    for (k, v) in e.stats.metrics() {
        close(k, v as f64, w(&format!("eval_{k}")), 2e-5);
    }
}

#[test]
fn text_pairs_match_trl() {
    matches_trl("text");
}

#[test]
fn margins_centering_and_accumulation_match_trl() {
    matches_trl("margin_center");
}

#[test]
fn the_eos_as_padding_moves_the_score_as_in_transformers() {
    matches_trl("implicit_pad_eos");
}

#[test]
fn conversational_pairs_match_trl() {
    matches_trl("conversational");
}

/// Bad reward data is a typed error naming the line (the rows in README's "Bad input").
#[test]
fn bad_pairs_are_named() {
    let opts = DataOptions { seq_len: 64, packing: false, batch_size: 2, shuffle: false, seed: 0, drop_last: false };
    let read = |jsonl: &str| reward_dataset("pairs.jsonl", jsonl.as_bytes(), Some(&tokenizer()), &opts, 383);
    let error = |jsonl: &str| read(jsonl).err().map(|e| e.to_string()).unwrap_or_default();
    let text = r#"{"chosen": "a b", "rejected": "c"}"#;
    let chat = r#"{"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}"#;
    let cases = [
        (format!("{text}\n{chat}\n"), "pairs.jsonl, line 2: a conversational line after line 1's text one"),
        (
            format!("{text}\n{{\"chosen\": \"a\", \"rejected\": \"b\", \"margin\": 1}}\n"),
            "line 2: line 1 has no `margin`: every line has one, or none",
        ),
        ("{\"chosen\": \"a\", \"rejected\": \"b\", \"margin\": \"big\"}\n".into(), "line 1: `margin` must be a number"),
        ("{\"chosen\": \"a\"}\n".into(), "line 1: missing the `rejected` field of a preference pair"),
        (
            format!("{{\"chosen\": \"{}\", \"rejected\": \"b\"}}\n", "word ".repeat(80)),
            "all 1 pairs have an answer over 64 tokens",
        ),
    ];
    for (jsonl, needle) in &cases {
        let e = error(jsonl);
        eprintln!("{e}");
        assert!(e.contains(needle), "{jsonl:?}: {e}");
    }
    // A pair too long beside one that fits: left out with a warning.
    let kept = read(&format!("{text}\n{{\"chosen\": \"{}\", \"rejected\": \"b\"}}\n", "word ".repeat(80))).unwrap();
    assert_eq!(kept.len(), 1);
    assert!(
        kept.warnings().iter().any(|w| w.contains("1 pair(s) with an answer over 64 tokens left out")),
        "{:?}",
        kept.warnings()
    );
}

/// A reward model webpeft trained and saved loads in PEFT (`AutoModelForSequenceClassification` +
/// `PeftModel.from_pretrained`) and scores as webpeft does: the "text" run's adapter, written with
/// `WEBPEFT_WRITE_FIXTURES=1` into reward/webpeft_saved with webpeft's rewards of its 16 sequences;
/// `make_fixtures.py reward_saved` scores them with PEFT and records the result and each file's sha256.
#[test]
fn a_saved_reward_model_loads_in_peft() {
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let c = cases();
    let case = &c["cases"]["text"];
    let mut trainer = Trainer::new(
        gpu,
        fixture_adapter(gpu, &model, "reward/initial_adapter", "lora"),
        OptimizerConfig::default(),
        0,
    )
    .unwrap();
    let pad = case["pad_token_id"].as_u64().unwrap() as u32;
    trainer.objective = Objective::Reward(RewardLoss::new(pad));
    let train = dataset(case, None);
    for b in train.epoch(0) {
        block_on(trainer.step(gpu, &model, &[b], c["learning_rate"].as_f64().unwrap())).unwrap();
    }
    let ids: Vec<Vec<u32>> = train.rows().iter().map(|r| r.input_ids.clone()).collect();
    let rewards = block_on(score_sequences(gpu, &model, Some(&trainer.adapter), &ids, pad)).unwrap();
    let files = block_on(trainer.adapter.to_files(gpu, &model.config)).unwrap();
    let outputs = serde_json::json!({ "input_ids": ids, "pad_token_id": pad, "rewards": rewards });
    let Some(saved) =
        common::saved_classifier_checked_in_peft("reward/webpeft_saved", &files, ("rewards.json", outputs))
    else {
        return;
    };
    // This run's rewards are the committed ones (each kernel family rounds its own way).
    let want: Vec<f32> = saved["rewards"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let d = max_abs_diff(&rewards, &want);
    assert!(d <= 1e-4, "rewards now vs committed: {d:e}");
}

/// A reward model as GRPO's reward function: TRL's `GRPOTrainer._calculate_rewards` with
/// initial_adapter's reward model, on two prompts' two completions each (one empty), as text and as
/// messages: the same rows, one padded batch, the same rewards.
#[test]
fn a_reward_model_rewards_grpo_completions_as_trl() {
    use webpeft::train::reward::reward_model_ids;
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let adapter = fixture_adapter(gpu, &model, "reward/initial_adapter", "lora");
    let tok = tokenizer();
    let c = cases();
    let g = &c["grpo_rewards"];
    let completions: Vec<&str> = g["completions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    for shape in ["text", "conversational"] {
        let prompts = g[shape]["prompts"].as_array().unwrap();
        let ids: Vec<Vec<u32>> =
            completions.iter().enumerate().map(|(i, c)| reward_model_ids(&tok, &prompts[i / 2], c).unwrap()).collect();
        let got = block_on(score_sequences(gpu, &model, Some(&adapter), &ids, 383)).unwrap();
        let want: Vec<f32> =
            g[shape]["rewards"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let d = max_abs_diff(&got, &want);
        eprintln!("{shape}: the reward model's rewards within {d:e} of TRL's");
        assert!(d <= 2e-5, "{shape}: {got:?} vs {want:?}");
    }
}

/// TRL's processed pairs (`chosen_input_ids`, `rejected_input_ids`, TRL 0.24's names) are taken as they
/// are: the text case's rows written as ids read back as the same dataset (margins too); a list of
/// non-integers is named.
#[test]
fn processed_pairs_are_taken_as_they_are() {
    let c = cases();
    let case = &c["cases"]["text"];
    let text = dataset(case, None);
    let jsonl: String = case["rows"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let line = serde_json::json!({ "chosen_input_ids": r["chosen_ids"], "rejected_input_ids": r["rejected_ids"],
                                           "margin": i as f64 * 0.5 });
            format!("{line}\n")
        })
        .collect();
    let opts = DataOptions { seq_len: 1024, packing: false, batch_size: 2, shuffle: false, seed: 0, drop_last: false };
    let ids = reward_dataset("ids.jsonl", jsonl.as_bytes(), None, &opts, 383).unwrap();
    let rows = |d: &Dataset| d.rows().iter().map(|r| r.input_ids.clone()).collect::<Vec<_>>();
    assert_eq!(rows(&ids), rows(&text));
    assert_eq!(ids.epoch(0)[1].margins, Some(vec![1.0, 1.5]));
    let bad = reward_dataset("ids.jsonl", br#"{"chosen_input_ids": ["a"], "rejected_input_ids": [1]}"#, None, &opts, 0);
    let e = bad.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("`chosen_input_ids[0]` must be an integer"), "{e}");
}
