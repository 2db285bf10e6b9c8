//! SFT's logged metrics against TRL 0.24's `SFTTrainer.train()` and
//! `evaluate()` (tests/fixtures/sft_metrics, `make_fixtures.py sft_metrics`):
//! each step's loss, grad_norm, entropy, mean_token_accuracy and num_tokens,
//! the adapter after training, and `eval_loss`, `eval_entropy`,
//! `eval_mean_token_accuracy` and `eval_num_tokens`. Three runs over the same
//! eight texts, batches of 2 read in order: padded rows under gradient
//! accumulation (TRL logs the mean of the micro-batches' means), packed rows
//! (TRL flattens them padding-free; webpeft pads them), and prompt tuning
//! (the virtual positions are in neither metric), and the padded run again
//! under TRL's DFT loss (`loss_type="dft"`). The rows come from
//! webpeft's own data path and must equal the ones TRL trained on.

mod common;
use common::{block_on, close_rel as close, fixture, fixture_adapter, fixture_model, gpu, max_abs_diff, Fixture};
use serde_json::Value;
use webpeft::model::llama::SftLoss;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::train::data::{parse_jsonl_masked, Batch, DataOptions, Dataset, LossMasks};
use webpeft::train::preference::Objective;
use webpeft::train::recipe::TrainRecipe;
use webpeft::train::trainer::{OptimizerConfig, Trainer};

const PAD: u32 = 383;

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("sft_metrics/cases.json")).unwrap()).unwrap()
}

fn numbers<T: TryFrom<i64>>(v: &Value) -> Vec<T> {
    v.as_array().unwrap().iter().map(|x| T::try_from(x.as_i64().unwrap()).ok().unwrap()).collect()
}

/// The texts as webpeft reads a JSONL file of them, batched as the case's run.
fn dataset(texts: &[Value], settings: &Value) -> Dataset {
    let file = |p: &str| std::fs::read(fixture(p)).unwrap();
    let tok = Tokenizer::from_bytes(&file("llama_gqa/tokenizer.json"), Some(&file("llama_gqa/tokenizer_config.json")))
        .unwrap();
    let jsonl: String = texts.iter().map(|t| format!("{}\n", serde_json::json!({ "text": t }))).collect();
    let examples = parse_jsonl_masked("train.jsonl", jsonl.as_bytes(), Some(&tok), LossMasks::default()).unwrap();
    let packing = settings["packing"].as_bool().unwrap_or(false);
    let seq_len = settings["max_length"].as_u64().unwrap_or(128) as usize;
    let opts = DataOptions { seq_len, packing, batch_size: 2, shuffle: false, seed: 0, drop_last: false };
    Dataset::new("train.jsonl", examples, &opts, PAD).unwrap()
}

/// webpeft's rows are TRL's: the same ids and labels (packed: also the same examples in each row).
fn assert_rows_are_trls(data: &Dataset, want: &Value, what: &str) {
    let want = want.as_array().unwrap();
    assert_eq!(data.rows().len(), want.len(), "{what}: rows");
    for (i, (got, w)) in data.rows().iter().zip(want).enumerate() {
        assert_eq!(got.input_ids, numbers::<u32>(&w["input_ids"]), "{what} row {i}: ids");
        assert_eq!(got.labels, numbers::<i32>(&w["labels"]), "{what} row {i}: labels");
    }
}

fn matches_trl(name: &str) {
    let c = cases();
    let case = &c["cases"][name];
    let settings = &case["settings"];
    let texts = c["texts"].as_array().unwrap();
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let (dir, method) = match case["method"].as_str().unwrap() {
        "lora" => ("lora/initial_adapter", "lora"),
        _ => ("prompt_tuning/llama_gqa/initial_adapter", "prompt_tuning"),
    };
    let train = dataset(texts, settings);
    assert_rows_are_trls(&train, &case["train_rows"], name);
    let eval = dataset(&texts[..3], settings);
    assert_rows_are_trls(&eval, &case["eval_rows"], name);

    let adapter = fixture_adapter(gpu, &model, dir, method);
    let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 0).unwrap();
    if settings["loss_type"] == "dft" {
        trainer.objective = Objective::Sft(SftLoss::Dft);
    }
    let lr = settings["learning_rate"].as_f64().unwrap_or(2e-2);
    let accumulation = settings["gradient_accumulation_steps"].as_u64().unwrap() as usize;
    let epochs = settings["num_train_epochs"].as_u64().unwrap();
    let micro: Vec<Batch> = (0..epochs).flat_map(|e| train.epoch(e)).collect();
    let steps = case["steps"].as_array().unwrap();
    assert_eq!(micro.len(), steps.len() * accumulation);
    for (batches, want) in micro.chunks(accumulation).zip(steps) {
        let s = block_on(trainer.step(gpu, &model, batches, lr)).unwrap();
        let w = |k: &str| want[k].as_f64().unwrap();
        eprintln!(
            "{name} step {}: loss {} vs {}, grad norm {} vs {}, entropy {:?} vs {}, accuracy {:?} vs {}, tokens {:?}",
            s.step,
            s.loss,
            w("loss"),
            s.grad_norm,
            w("grad_norm"),
            s.entropy,
            w("entropy"),
            s.mean_token_accuracy,
            w("mean_token_accuracy"),
            s.num_tokens
        );
        close("loss", s.loss as f64, w("loss"), 2e-6);
        close("grad_norm", s.grad_norm as f64, w("grad_norm"), 2e-5);
        close("entropy", s.entropy.unwrap() as f64, w("entropy"), 2e-6);
        close("mean_token_accuracy", s.mean_token_accuracy.unwrap() as f64, w("mean_token_accuracy"), 1e-6);
        assert_eq!(s.num_tokens, Some(w("num_tokens") as u64));
    }
    let fx = Fixture::open("sft_metrics/reference.safetensors");
    let mut worst = 0f32;
    for (key, p) in trainer.adapter.tensors() {
        let d = max_abs_diff(&block_on(p.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{name}.{key}")));
        worst = worst.max(d);
    }
    eprintln!("{name}: the adapter after {} steps: max |diff| {worst:e} against TRL's", steps.len());
    assert!(worst <= 5e-5, "adapter {worst:e}");

    let e = block_on(trainer.evaluate(gpu, &model, &eval.epoch(0))).unwrap();
    let want = &case["eval"];
    let w = |k: &str| want[k].as_f64().unwrap();
    eprintln!("{name} eval: {e:?} vs {want}");
    close("eval_loss", e.loss as f64, w("eval_loss"), 2e-6);
    close("eval_entropy", e.entropy as f64, w("eval_entropy"), 2e-6);
    close("eval_mean_token_accuracy", e.mean_token_accuracy as f64, w("eval_mean_token_accuracy"), 1e-6);
    assert_eq!(trainer.tokens_seen, w("eval_num_tokens") as u64);
}

#[test]
fn padded_rows_under_accumulation_match_trl() {
    matches_trl("padded");
}

#[test]
fn packed_rows_match_trl_s_padding_free_batches() {
    matches_trl("packed");
}

#[test]
fn prompt_tuning_leaves_the_virtual_positions_out() {
    matches_trl("prompt_tuning");
}

/// TRL's `loss_type="dft"`: each token's cross-entropy weighted by its
/// probability, held constant in the gradient, in training and evaluation.
#[test]
fn dft_loss_matches_trl() {
    matches_trl("dft");
    // Not under prompt tuning, whose longer logits TRL's dft_loss cannot pair with the labels: a typed error,
    // and the trainer as it was.
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let prompt = fixture_adapter(gpu, &model, "prompt_tuning/llama_gqa/initial_adapter", "prompt_tuning");
    let mut trainer = Trainer::new(gpu, prompt, OptimizerConfig::default(), 0).unwrap();
    trainer.objective = Objective::Sft(SftLoss::Dft);
    let batch = Batch::new(vec![vec![381, 40, 41, 42]], vec![vec![381, 40, 41, 42]]);
    let e = block_on(trainer.step(gpu, &model, &[batch], 1e-2)).unwrap_err();
    assert!(e.to_string().contains("dft loss with virtual tokens"), "{e}");
    assert_eq!(trainer.step, 0);
    // The front ends refuse it before that, by its option, where the recipe meets the adapter.
    let recipe = TrainRecipe { objective: Objective::Sft(SftLoss::Dft), ..Default::default() };
    let e = recipe.check_positions_before(4).unwrap_err();
    assert!(matches!(e, webpeft::Error::TrainOption { option: "loss_type", .. }), "{e}");
    recipe.check_positions_before(0).unwrap();
}
