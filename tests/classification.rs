//! Sequence classification against transformers 4.57's `Trainer` on a PEFT
//! SEQ_CLS LoRA (tests/fixtures/classification, `make_fixtures.py
//! classification`): `AutoModelForSequenceClassification` on llama_gqa with
//! 3 labels (single-label, one row's label −100), 1 (regression, with
//! gradient accumulation 2, whose micro-batch losses transformers adds
//! undivided) and 4 (multi-label, rows truncated to 9 tokens), each run over
//! the same eight texts in batches of 2 read in order. Each run checks
//! webpeft's tokenization, the initial logits, each step's loss and
//! grad_norm, the adapter after training (its score head of num_labels rows
//! included) and `evaluate()` on the first three rows. The loss kernel is
//! checked against its CPU reference on seeded random logits first.

mod common;
use common::{
    assert_files_are_peft, block_on, close_rel as close, fixture, fixture_adapter, fixture_model, gpu, max_abs_diff,
    randn, Fixture,
};
use serde_json::Value;
use webpeft::gpu::{DType, Recorder, Tensor};
use webpeft::kernels::classification::{classification_loss, ProblemType, CLASSIFICATION_STATS};
use webpeft::model::tokenizer::Tokenizer;
use webpeft::train::classification::{classification_dataset, evaluate_classification, ClassificationLoss};
use webpeft::train::data::{Batch, DataOptions, Dataset};
use webpeft::train::preference::Objective;
use webpeft::train::reward::score_sequences;
use webpeft::train::trainer::{OptimizerConfig, Trainer};

#[test]
fn the_loss_kernel_matches_its_reference() {
    let gpu = gpu();
    let shapes = [(1, 2, 1.0), (3, 5, 0.5), (7, 1, 1.0), (33, 3, 0.25), (5, 17, 2.0)];
    for (i, &(rows, labels, scale)) in shapes.iter().enumerate() {
        for problem in ProblemType::ALL {
            if problem == ProblemType::SingleLabelClassification && labels < 2 {
                continue;
            }
            let seed = 90 + i as u64;
            let logits: Vec<f32> = randn(seed, rows * labels).iter().map(|x| 3.0 * x).collect();
            let targets: Vec<f32> = match problem {
                // Each row's class, one of them −100 where there are several rows.
                ProblemType::SingleLabelClassification => (0..rows)
                    .map(|b| if rows > 1 && b == rows / 2 { -100.0 } else { ((b * 7 + i) % labels) as f32 })
                    .collect(),
                ProblemType::Regression => randn(seed + 1, rows * labels),
                ProblemType::MultiLabelClassification => {
                    randn(seed + 1, rows * labels).iter().map(|x| if *x > 0.0 { 1.0 } else { 0.0 }).collect()
                }
            };
            let before = randn(seed + 2, CLASSIFICATION_STATS);
            let stats = Tensor::from_slice(gpu, &[CLASSIFICATION_STATS], &before).unwrap();
            let mut rec = Recorder::new(gpu);
            let z = Tensor::from_slice(gpu, &[rows, labels], &logits).unwrap();
            let t = Tensor::from_slice(gpu, &[targets.len()], &targets).unwrap();
            let d = classification_loss(&mut rec, (&z, &t), problem, (&stats, scale)).unwrap();
            rec.submit().unwrap();
            let (want_stats, want_d) = webpeft::kernels::reference::classification::classification_loss(
                &logits, &targets, labels, problem, scale,
            );
            let got_stats = block_on(stats.to_vec::<f32>(gpu)).unwrap();
            let got_d = block_on(d.to_vec::<f32>(gpu)).unwrap();
            let what = format!("{} ({rows}, {labels})", problem.name());
            for (k, ((g, w), b)) in got_stats.iter().zip(&want_stats).zip(&before).enumerate() {
                assert!((g - (w + b)).abs() <= 1e-5 * (w + b).abs().max(1.0), "{what}: stats[{k}] {g} vs {}", w + b);
            }
            let diff = max_abs_diff(&got_d, &want_d);
            assert!(diff <= 1e-6, "{what}: dlogits differ by {diff:e}");
        }
    }
    // Bad shapes are typed errors.
    let mut rec = Recorder::new(gpu);
    let z = Tensor::zeros(gpu, &[4, 3], DType::F32).unwrap();
    let t = Tensor::zeros(gpu, &[3], DType::F32).unwrap();
    let stats = Tensor::zeros(gpu, &[CLASSIFICATION_STATS], DType::F32).unwrap();
    let e = classification_loss(&mut rec, (&z, &t), ProblemType::SingleLabelClassification, (&stats, 1.0)).unwrap_err();
    assert!(e.to_string().contains("need B, L > 0 and 4 targets"), "{e}");
}

fn cases() -> Value {
    serde_json::from_slice(&std::fs::read(fixture("classification/cases.json")).unwrap()).unwrap()
}

fn tokenizer() -> Tokenizer {
    let file = |p: &str| std::fs::read(fixture(p)).unwrap();
    Tokenizer::from_bytes(&file("llama_gqa/tokenizer.json"), Some(&file("llama_gqa/tokenizer_config.json"))).unwrap()
}

fn loss_of(case: &Value) -> ClassificationLoss {
    ClassificationLoss {
        num_labels: case["num_labels"].as_u64().unwrap() as usize,
        problem_type: None, // inferred from the labels, as transformers does
        pad_token_id: case["pad_token_id"].as_u64().unwrap() as u32,
    }
}

fn dataset(case: &Value, rows: Option<usize>) -> Dataset {
    let mut jsonl =
        std::fs::read_to_string(fixture(&format!("classification/{}", case["data"].as_str().unwrap()))).unwrap();
    if let Some(n) = rows {
        jsonl = jsonl.lines().take(n).map(|l| format!("{l}\n")).collect();
    }
    let seq_len = case["max_length"].as_u64().unwrap() as usize;
    let opts = DataOptions { seq_len, packing: false, batch_size: 2, shuffle: false, seed: 0, drop_last: false };
    classification_dataset("texts.jsonl", jsonl.as_bytes(), Some(&tokenizer()), &opts, &loss_of(case)).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    let mut out = Vec::new();
    match v {
        Value::Array(items) => items.iter().for_each(|x| out.extend(floats(x))),
        x => out.push(x.as_f64().unwrap() as f32),
    }
    out
}

fn matches_transformers(name: &str) {
    let c = cases();
    let case = &c["cases"][name];
    let gpu = gpu();
    let model = fixture_model(gpu, case["base"].as_str().unwrap());
    let dir = format!("classification/{name}/initial_adapter");
    let adapter = fixture_adapter(gpu, &model, &dir, "lora");
    assert_files_are_peft(gpu, &adapter, &model.config, &dir);
    let loss = loss_of(case);
    let problem = ProblemType::from_name(case["problem_type"].as_str().unwrap()).unwrap();

    // The rows transformers trained on, from webpeft's own data path, and the problem type it inferred.
    let train = dataset(case, None);
    let want_rows: Vec<Vec<u32>> = serde_json::from_value(case["rows"].clone()).unwrap();
    let got_rows: Vec<Vec<u32>> = train.rows().iter().map(|r| r.input_ids.clone()).collect();
    assert_eq!(got_rows, want_rows, "{name}: rows");
    let first = train.epoch(0)[0].targets.clone().unwrap();
    assert_eq!(loss.problem(first[0].len()), problem, "{name}: problem type");

    // The initial adapter's logits of every row, one padded batch at a time.
    let got = block_on(score_sequences(gpu, &model, Some(&adapter), &want_rows, loss.pad_token_id)).unwrap();
    let want = floats(&case["initial_logits"]);
    let d = max_abs_diff(&got, &want);
    eprintln!("{name}: initial logits within {d:e} of transformers'");
    assert!(d <= 2e-5, "{name}: initial logits {d:e}");

    let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 0).unwrap();
    trainer.objective = Objective::Classification(loss);
    let lr = c["learning_rate"].as_f64().unwrap();
    let accumulation = case["gradient_accumulation_steps"].as_u64().unwrap() as usize;
    let micro: Vec<Batch> = train.epoch(0);
    let steps = case["steps"].as_array().unwrap();
    assert_eq!(micro.len(), steps.len() * accumulation);
    for (batches, want) in micro.chunks(accumulation).zip(steps) {
        let s = block_on(trainer.step(gpu, &model, batches, lr)).unwrap();
        let w = |k: &str| want[k].as_f64().unwrap();
        eprintln!(
            "{name} step {}: loss {} vs {}, grad norm {} vs {}",
            s.step,
            s.loss,
            w("loss"),
            s.grad_norm,
            w("grad_norm")
        );
        close("loss", s.loss as f64, w("loss"), 2e-5);
        close("grad_norm", s.grad_norm as f64, w("grad_norm"), 5e-5);
    }
    let fx = Fixture::open("classification/reference.safetensors");
    let mut worst = 0f32;
    for (key, p) in trainer.adapter.tensors() {
        let d = max_abs_diff(&block_on(p.to_vec::<f32>(gpu)).unwrap(), &fx.f32(&format!("{name}.{key}")));
        worst = worst.max(d);
    }
    eprintln!("{name}: the adapter after {} steps: max |diff| {worst:e} against transformers'", steps.len());
    assert!(worst <= 5e-5, "{name}: adapter {worst:e}");

    let eval = dataset(case, Some(3)).epoch(0);
    let e = block_on(evaluate_classification(gpu, &model, Some(&trainer.adapter), &eval, &loss)).unwrap();
    let want = &case["eval"];
    eprintln!("{name} eval: {e:?} vs {want}");
    close("eval_loss", e.loss as f64, want["eval_loss"].as_f64().unwrap(), 2e-5);
    match (e.accuracy, want["eval_accuracy"].as_f64()) {
        (Some(got), Some(want)) => close("eval_accuracy", got as f64, want, 1e-6),
        (got, want) => assert_eq!(got.map(f64::from), want, "{name}: eval_accuracy"),
    }
    assert_eq!(e.rows, 3);
}

#[test]
fn single_label_classification_matches_transformers() {
    matches_transformers("single_label");
}

#[test]
fn regression_with_accumulation_matches_transformers() {
    matches_transformers("regression");
}

#[test]
fn multi_label_classification_matches_transformers() {
    matches_transformers("multi_label");
}

/// A LoRA on a classifier checkpoint (`LlamaForSequenceClassification`, 3 labels), its score copy starting
/// from the checkpoint's own head as PEFT's does.
#[test]
fn a_lora_on_a_classifier_checkpoint_matches_transformers() {
    matches_transformers("classifier_base");
}

/// A `…ForSequenceClassification` checkpoint (llama_gqa_cls: a score head of 3 labels, no lm_head) loads,
/// scores texts with its own head as transformers' does, and refuses what needs an lm_head; a fresh SEQ_CLS
/// LoRA on it takes its labels and starts its score copy from the checkpoint's head (PEFT's
/// modules_to_save copy); an adapter of other labels is refused by name.
#[test]
fn a_classifier_checkpoint_scores_as_transformers() {
    use webpeft::model::config::ModelHead;
    use webpeft::train::recipe::{AdapterRecipe, LoraRecipe};
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa_cls");
    assert_eq!(model.config.head, ModelHead::SequenceClassification { num_labels: 3, problem_type: None });
    let refs: Value =
        serde_json::from_slice(&std::fs::read(fixture("refs/llama_gqa_cls/logits.json")).unwrap()).unwrap();
    let ids: Vec<Vec<u32>> = serde_json::from_value(refs["input_ids"].clone()).unwrap();
    let got = block_on(score_sequences(gpu, &model, None, &ids, 383)).unwrap();
    let d = max_abs_diff(&got, &floats(&refs["logits"]));
    eprintln!("llama_gqa_cls: its own logits within {d:e} of transformers'");
    assert!(d <= 2e-5, "{d:e}");
    // No lm_head: what predicts tokens is refused.
    let mut rec = Recorder::new(gpu);
    let t = model.input_ids(gpu, &ids[..1]).unwrap();
    let e = model.forward(&mut rec, &t).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("sequence classifier") && e.contains("no lm_head"), "{e}");
    // A fresh SEQ_CLS LoRA: the checkpoint's labels, its score copy the checkpoint's head.
    let lora = LoraRecipe { task_type: webpeft::peft::TaskType::SeqCls, ..LoraRecipe::default() };
    let adapter = AdapterRecipe::Lora(lora).build(gpu, &model, None, None, 7).unwrap();
    assert_eq!(adapter.num_labels(), 3);
    let (_, copy) = adapter.tensors().into_iter().find(|(k, _)| k.as_str() == "base_model.model.score.weight").unwrap();
    let score = Fixture::open("llama_gqa_cls/model.safetensors").f32("score.weight");
    assert_eq!(block_on(copy.to_vec::<f32>(gpu)).unwrap(), score, "the copy starts as the checkpoint's head");
    let two = LoraRecipe { task_type: webpeft::peft::TaskType::SeqCls, num_labels: Some(2), ..LoraRecipe::default() };
    let e = AdapterRecipe::Lora(two).build(gpu, &model, None, None, 7).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("2 labels, but the model is a classifier of 3"), "{e}");
    let other = webpeft::model::DirFiles::new(fixture("classification/single_label/initial_adapter")).unwrap();
    let single = block_on(webpeft::peft::Adapter::load(gpu, &other, &model.config)).map(|a| a.num_labels());
    assert_eq!(single.ok(), Some(3), "a classifier of 3 labels loads on it");
    let regression = webpeft::model::DirFiles::new(fixture("classification/regression/initial_adapter")).unwrap();
    let e = block_on(webpeft::peft::Adapter::load(gpu, &regression, &model.config)).err().map(|e| e.to_string());
    assert!(e.as_deref().unwrap_or_default().contains("1 labels, but the model is a classifier of 3"), "{e:?}");
}

/// Bad classification data is a typed error naming the line (the rows in README's "Bad input").
#[test]
fn bad_labels_are_named() {
    let opts = DataOptions { seq_len: 64, packing: false, batch_size: 2, shuffle: false, seed: 0, drop_last: false };
    let read = |jsonl: &str, labels: usize, problem: Option<ProblemType>| {
        let loss = ClassificationLoss { num_labels: labels, problem_type: problem, pad_token_id: 383 };
        classification_dataset("texts.jsonl", jsonl.as_bytes(), Some(&tokenizer()), &opts, &loss)
    };
    let error =
        |jsonl: &str, labels, problem| read(jsonl, labels, problem).err().map(|e| e.to_string()).unwrap_or_default();
    let single = Some(ProblemType::SingleLabelClassification);
    let cases = [
        ("{\"text\": \"a\", \"label\": 3}\n", 3, None, "texts.jsonl, line 1: `label` 3 is not a class of 0..3"),
        ("{\"text\": \"a\", \"label\": 0.5}\n", 3, single, "line 1: `label` must be a class index (an integer)"),
        (
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": [1.0, 0.0]}\n",
            2,
            None,
            "line 2: `label` must be a class index",
        ),
        (
            "{\"text\": \"a\", \"label\": 0.5}\n",
            3,
            None,
            "line 1: 1 label value(s) for multi_label_classification: need num_labels (3)",
        ),
        ("{\"text\": \"a\", \"label\": [1.0, \"x\"]}\n", 2, None, "line 1: `label[1]` must be a finite number"),
        ("{\"text\": \"a\"}\n", 2, None, "line 1: missing the `label` field"),
        ("{\"label\": 1}\n", 2, None, "line 1: missing the `text` field (or `input_ids`)"),
        ("{\"text\": \"a\", \"label\": -100}\n", 2, None, "every label is -100: nothing to learn"),
        ("{\"text\": \"a\", \"label\": 1}\n", 1, single, "single_label_classification needs 2 or more labels"),
    ];
    for (jsonl, labels, problem, needle) in cases {
        let e = error(jsonl, labels, problem);
        eprintln!("{e}");
        assert!(e.contains(needle), "{jsonl:?}: {e}");
    }
    // A regression label read as one number; a text cut to seq_len tokens with its bos kept.
    let long = format!("{{\"text\": \"{}\", \"label\": 2.5}}\n", "word ".repeat(80));
    let d = read(&long, 1, None).unwrap();
    assert_eq!(d.rows()[0].input_ids.len(), 64);
    assert_eq!(d.rows()[0].input_ids[0], tokenizer().bos_id().unwrap());
    assert_eq!(d.epoch(0)[0].targets, Some(vec![vec![2.5]]));
}

/// The trainer refuses an adapter whose score head does not have the loss's labels, and a reward
/// objective on a classifier of several labels; the adapter is left as it was.
#[test]
fn a_head_of_other_labels_is_refused() {
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let c = cases();
    let case = &c["cases"]["single_label"];
    let adapter = fixture_adapter(gpu, &model, "classification/single_label/initial_adapter", "lora");
    let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 0).unwrap();
    let batch = dataset(case, Some(2)).epoch(0);
    trainer.objective = Objective::Classification(ClassificationLoss { num_labels: 4, ..loss_of(case) });
    let e = block_on(trainer.step(gpu, &model, &batch, 1e-2)).unwrap_err().to_string();
    assert!(e.contains("num_labels") && e.contains("the adapter's score head has 3 label(s)"), "{e}");
    trainer.objective = Objective::Reward(webpeft::train::reward::RewardLoss::new(383));
    let e = block_on(trainer.step(gpu, &model, &batch, 1e-2)).unwrap_err().to_string();
    assert!(e.contains("a reward model's score head has one label, this adapter's 3"), "{e}");
    assert_eq!(trainer.step, 0);
}

/// A classifier webpeft trained and saved loads in PEFT (`AutoModelForSequenceClassification` with
/// num_labels 3 + `PeftModel.from_pretrained`) and gives webpeft's logits: the single_label run's
/// adapter, written with `WEBPEFT_WRITE_FIXTURES=1` into classification/webpeft_saved with webpeft's
/// logits of its eight rows; `make_fixtures.py classification_saved` runs them in PEFT and records the
/// result and each file's sha256.
#[test]
fn a_saved_classifier_loads_in_peft() {
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let c = cases();
    let case = &c["cases"]["single_label"];
    let adapter = fixture_adapter(gpu, &model, "classification/single_label/initial_adapter", "lora");
    let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 0).unwrap();
    let loss = loss_of(case);
    trainer.objective = Objective::Classification(loss);
    let train = dataset(case, None);
    for b in train.epoch(0) {
        block_on(trainer.step(gpu, &model, &[b], c["learning_rate"].as_f64().unwrap())).unwrap();
    }
    let ids: Vec<Vec<u32>> = train.rows().iter().map(|r| r.input_ids.clone()).collect();
    let logits = block_on(score_sequences(gpu, &model, Some(&trainer.adapter), &ids, loss.pad_token_id)).unwrap();
    let files = block_on(trainer.adapter.to_files(gpu, &model.config)).unwrap();
    let rows: Vec<&[f32]> = logits.chunks(loss.num_labels).collect();
    let outputs = serde_json::json!({ "input_ids": ids, "pad_token_id": loss.pad_token_id,
                                      "num_labels": loss.num_labels, "logits": rows });
    let dir = "classification/webpeft_saved";
    let Some(saved) = common::saved_classifier_checked_in_peft(dir, &files, ("logits.json", outputs)) else {
        return;
    };
    // This run's logits are the committed ones (each kernel family rounds its own way).
    let d = max_abs_diff(&logits, &floats(&saved["logits"]));
    assert!(d <= 1e-4, "logits now vs committed: {d:e}");
}

/// A reward model checkpoint of its own (qwen2_rm: Qwen2ForSequenceClassification of one label, tied, bf16,
/// with its tokenizer) as GRPO's reward: TRL's `GRPOTrainer._calculate_rewards` with the folder's path as the
/// reward function, on two prompts' two completions (one empty), as text and as messages: the same rows, the
/// same rewards.
#[test]
fn a_reward_model_checkpoint_rewards_grpo_completions_as_trl() {
    use webpeft::train::reward::reward_model_scores;
    let gpu = gpu();
    let rm = fixture_model(gpu, "qwen2_rm");
    let file = |p: &str| std::fs::read(fixture(p)).unwrap();
    // (Its chat template is in chat_template.jinja, as transformers 4.57 saves it.)
    let tok = block_on(Tokenizer::load(&webpeft::model::DirFiles::new(fixture("qwen2_rm")).unwrap())).unwrap();
    let want: Value = serde_json::from_slice(&file("classification/grpo_rewards.json")).unwrap();
    let completions: Vec<String> =
        want["completions"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    for shape in ["text", "conversational"] {
        let prompts = want[shape]["prompts"].as_array().unwrap();
        let each: Vec<&Value> = (0..completions.len()).map(|i| &prompts[i / 2]).collect();
        let got = block_on(reward_model_scores((gpu, &rm, None), &tok, &each, &completions)).unwrap();
        let d = max_abs_diff(&got, &floats(&want[shape]["rewards"]));
        eprintln!("{shape}: the reward model checkpoint's rewards within {d:e} of TRL's");
        assert!(d <= 2e-5, "{shape}: {got:?} vs {}", want[shape]["rewards"]);
    }
}

/// A SEQ_CLS adapter merged (`merge_lora`, `merge_score_head`, the classifier's config.json) is the
/// classifier PEFT's `merge_and_unload` makes: written as a folder and loaded back as a base, it has the
/// class's architecture, `LABEL_i` names and the pad id, and its own head's logits of the eight texts are
/// PEFT's merged model's.
#[test]
fn a_merged_classifier_is_pefts_merge_and_unload() {
    use webpeft::peft::lora::merge::{classifier_config_json, export_safetensors, merge_lora, merge_score_head};
    let gpu = gpu();
    let mut model = fixture_model(gpu, "llama_gqa");
    let adapter = fixture_adapter(gpu, &model, "classification/single_label/initial_adapter", "lora");
    let webpeft::peft::Adapter::Lora(lora) = &adapter else { unreachable!("a LoRA") };
    merge_lora(gpu, &mut model, lora).unwrap();
    merge_score_head(gpu, &mut model, lora).unwrap();
    let dir = std::env::temp_dir().join(format!("webpeft-merged-classifier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.safetensors"), block_on(export_safetensors(gpu, &model)).unwrap()).unwrap();
    let config = classifier_config_json(&std::fs::read(fixture("llama_gqa/config.json")).unwrap(), 3, 383).unwrap();
    std::fs::write(dir.join("config.json"), &config).unwrap();
    let merged = block_on(webpeft::model::Model::load(
        gpu,
        &webpeft::model::DirFiles::new(&dir).unwrap(),
        webpeft::quant::QuantFormat::F32,
    ))
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let want: Value = serde_json::from_slice(&std::fs::read(fixture("classification/merged.json")).unwrap()).unwrap();
    let written: Value = serde_json::from_slice(&config).unwrap();
    assert_eq!(written["architectures"], serde_json::json!([want["class"]]));
    for key in ["id2label", "label2id", "pad_token_id"] {
        assert_eq!(written[key], want["config"][key], "{key}");
    }
    let c = cases();
    let rows: Vec<Vec<u32>> = serde_json::from_value(c["cases"]["single_label"]["rows"].clone()).unwrap();
    let got = block_on(score_sequences(gpu, &merged, None, &rows, 383)).unwrap();
    let d = max_abs_diff(&got, &floats(&want["logits"]));
    eprintln!("the merged classifier's logits within {d:e} of PEFT's merge_and_unload");
    assert!(d <= 2e-5, "{d:e}");
}
