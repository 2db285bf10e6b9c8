//! Training state: a checkpoint resumes bit for bit (with dropout on, so the
//! RNG matters), runs are deterministic for a seed, a non-finite step fails
//! with a typed error and leaves every tensor as it was, and adapters written
//! by `Adapter::to_files` load back with the same logits.

mod common;

use common::{block_on, fixture, gpu};
use webpeft::gpu::Recorder;
use webpeft::model::{DirFiles, MemoryFiles, Model};
use webpeft::peft::adapter::{hooks_of, Adapter};
use webpeft::peft::{BottleneckConfig, BottleneckKind, LoraConfig, TargetModules};
use webpeft::quant::QuantFormat;
use webpeft::train::checkpoint::{load_checkpoint, save_checkpoint};
use webpeft::train::data::Batch;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{Error, Gpu};

fn model(gpu: &Gpu) -> Model {
    block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap()
}

fn lora(gpu: &Gpu, model: &Model, dropout: f64) -> Adapter {
    let mut c = LoraConfig::new(4, 8.0, TargetModules::AllLinear).unwrap();
    c.lora_dropout = dropout;
    c.init_lora_weights = webpeft::peft::InitLoraWeights::Random; // B ≠ 0: every gradient is live
    Adapter::new_lora(gpu, c, &model.config, 11).unwrap()
}

fn batches() -> Vec<Batch> {
    let row = |seed: u32, n: usize| (0..n).map(|i| (seed * 31 + i as u32 * 17) % 380).collect::<Vec<u32>>();
    (0..3)
        .map(|k| {
            let ids = vec![row(k, 13), row(k + 7, 13)];
            let labels = ids.iter().map(|r| r.iter().map(|&v| v as i32).collect()).collect();
            Batch::new(ids, labels)
        })
        .collect()
}

fn snapshot(gpu: &Gpu, a: &Adapter) -> Vec<Vec<u32>> {
    a.tensors()
        .iter()
        .map(|(_, t)| block_on(t.to_vec::<f32>(gpu)).unwrap().iter().map(|v| v.to_bits()).collect())
        .collect()
}

fn run(gpu: &Gpu, model: &Model, t: &mut Trainer, steps: usize) -> Vec<u32> {
    let data = batches();
    (0..steps)
        .map(|i| {
            let b = &data[(t.step as usize) % data.len()];
            let s = block_on(t.step(gpu, model, std::slice::from_ref(b), 1e-2)).unwrap();
            assert!(s.loss.is_finite());
            let _ = i;
            s.loss.to_bits()
        })
        .collect()
}

#[test]
fn a_checkpoint_resumes_bit_for_bit_with_dropout() {
    let gpu = gpu();
    let model = model(gpu);
    let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 1.0, ..Default::default() };
    let mut a = Trainer::new(gpu, lora(gpu, &model, 0.1), opt.clone(), 5).unwrap();
    run(gpu, &model, &mut a, 3);
    let progress = serde_json::json!({"epoch": 0, "batch": 3});
    let bytes = block_on(save_checkpoint(gpu, &a, &model.config, &progress)).unwrap();
    let later_a = run(gpu, &model, &mut a, 3);

    let (mut b, got_progress) = load_checkpoint(gpu, &bytes, &model.config).unwrap();
    assert_eq!(got_progress, progress);
    assert_eq!(b.step, 3);
    assert_eq!(b.optimizer, opt);
    let later_b = run(gpu, &model, &mut b, 3);
    assert_eq!(later_a, later_b, "losses after resuming");
    assert_eq!(snapshot(gpu, &a.adapter), snapshot(gpu, &b.adapter), "parameters after resuming");
    let (ma, va) = a.moments();
    let (mb, vb) = b.moments();
    assert_eq!(snapshot(gpu, ma), snapshot(gpu, mb));
    assert_eq!(snapshot(gpu, va), snapshot(gpu, vb));
}

#[test]
fn same_seed_same_run_and_dropout_changes_it() {
    let gpu = gpu();
    let model = model(gpu);
    let opt = OptimizerConfig::default();
    let losses = |seed: u64, dropout: f64| {
        let mut t = Trainer::new(gpu, lora(gpu, &model, dropout), opt.clone(), seed).unwrap();
        run(gpu, &model, &mut t, 3)
    };
    assert_eq!(losses(1, 0.2), losses(1, 0.2));
    assert_ne!(losses(1, 0.2), losses(2, 0.2), "another dropout seed, other masks");
    assert_ne!(losses(1, 0.2), losses(1, 0.0));
}

#[test]
fn gradient_checkpointing_gives_the_same_run_bit_for_bit() {
    let gpu = gpu();
    let model = model(gpu);
    let opt = OptimizerConfig::default();
    let bn = |gpu: &Gpu| {
        let mut c = BottleneckConfig::new(BottleneckKind::DoubleSeqBn);
        c.dropout = 0.1;
        Adapter::new_bottleneck(gpu, c, &model.config, 3).unwrap()
    };
    for kind in ["lora", "double_seq_bn"] {
        // a fresh adapter each time (the same seed: the same initial values)
        let make = || if kind == "lora" { lora(gpu, &model, 0.1) } else { bn(gpu) };
        let adapter = make();
        let trained = |checkpointing: bool| {
            let mut t = Trainer::new(gpu, make(), opt.clone(), 9).unwrap();
            t.gradient_checkpointing = checkpointing;
            let losses = run(gpu, &model, &mut t, 3);
            (losses, snapshot(gpu, &t.adapter))
        };
        let (plain_losses, plain) = trained(false);
        let (ckpt_losses, ckpt) = trained(true);
        assert_eq!(plain_losses, ckpt_losses, "{} losses", adapter.method());
        assert_eq!(plain, ckpt, "{} parameters after 3 steps", adapter.method());
    }
    // That it keeps less memory is checked in tests/train_plan.rs, where the
    // peak counter is not shared with other tests.
}

#[test]
fn a_non_finite_step_is_a_typed_error_and_keeps_the_state() {
    let gpu = gpu();
    let model = model(gpu);
    let mut t = Trainer::new(gpu, lora(gpu, &model, 0.0), OptimizerConfig::default(), 0).unwrap();
    run(gpu, &model, &mut t, 2);
    // Poison one parameter: the next loss is NaN.
    let (_, first) = t.adapter.tensors()[1].clone();
    let mut values = block_on(first.to_vec::<f32>(gpu)).unwrap();
    values[0] = f32::NAN;
    first.write(gpu, &values).unwrap();
    let before = (snapshot(gpu, &t.adapter), snapshot(gpu, t.moments().0), snapshot(gpu, t.moments().1));
    let err = block_on(t.step(gpu, &model, &batches()[..1], 1e-2)).unwrap_err();
    assert!(matches!(err, Error::NonFinite { step: 3, .. }), "{err}");
    eprintln!("{err}");
    assert_eq!(t.step, 2);
    let after = (snapshot(gpu, &t.adapter), snapshot(gpu, t.moments().0), snapshot(gpu, t.moments().1));
    assert_eq!(before, after, "the failed step changed the state");
}

#[test]
fn saved_adapters_load_back_with_the_same_logits() {
    let gpu = gpu();
    let model = model(gpu);
    let mut bn = BottleneckConfig::new(BottleneckKind::DoubleSeqBn);
    bn.init_weights = webpeft::peft::BnInit::Bert;
    let adapters = [lora(gpu, &model, 0.0), Adapter::new_bottleneck(gpu, bn, &model.config, 3).unwrap()];
    let ids = model.input_ids(gpu, &batches()[0].input_ids).unwrap();
    for a in adapters {
        let mut files = MemoryFiles::new();
        for (name, bytes) in block_on(a.to_files(gpu, &model.config)).unwrap() {
            files.insert(name, bytes);
        }
        let b = block_on(Adapter::load(gpu, &files, &model.config)).unwrap();
        assert_eq!(b.method(), a.method());
        let logits = |ad: &Adapter| {
            let mut rec = Recorder::new(gpu);
            let (l, _) = model.forward_adapted(&mut rec, &ids, ad).unwrap();
            rec.submit().unwrap();
            block_on(l.to_vec::<f32>(gpu)).unwrap()
        };
        assert_eq!(logits(&a), logits(&b), "{}", a.method());
    }
    let err = block_on(Adapter::load(gpu, &MemoryFiles::new(), &model.config)).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err}");
}

#[test]
fn generation_runs_every_adapter_kind_through_the_kv_cache() {
    use webpeft::model::llama::KvCache;
    let gpu = gpu();
    let model = model(gpu);
    let ids = vec![vec![381u32, 40, 77, 120, 5, 300, 12, 9]];
    for dir in [
        "lora/initial_adapter",
        "bottleneck/seq_bn/initial_adapter",
        "bottleneck/double_seq_bn/initial_adapter",
        "bottleneck/par_bn/initial_adapter",
    ] {
        let ad = block_on(Adapter::load(gpu, &DirFiles::new(fixture(dir)).unwrap(), &model.config)).unwrap();
        let t = model.input_ids(gpu, &ids).unwrap();
        let mut rec = Recorder::new(gpu);
        let (full, _) = model.forward_adapted(&mut rec, &t, &ad).unwrap();
        let cache = KvCache::new(gpu, &model, 1, 8).unwrap();
        let prefix = model.input_ids(gpu, &[ids[0][..5].to_vec()]).unwrap();
        let rest = model.input_ids(gpu, &[ids[0][5..].to_vec()]).unwrap();
        let a = model.forward_cached_all(&mut rec, &prefix, &cache, 0, &ad).unwrap();
        let b = model.forward_cached_all(&mut rec, &rest, &cache, 5, &ad).unwrap();
        rec.submit().unwrap();
        let full = block_on(full.to_vec::<f32>(gpu)).unwrap();
        let mut cached = block_on(a.to_vec::<f32>(gpu)).unwrap();
        cached.extend(block_on(b.to_vec::<f32>(gpu)).unwrap());
        let d = full.iter().zip(&cached).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        eprintln!("{dir}: cached vs full max |diff| {d:e}");
        assert!(d <= 1e-5, "{dir}: {d:e}");
    }
}

#[test]
fn several_adapters_share_one_base_and_switch() {
    use webpeft::peft::adapter_set::AdapterSet;
    let gpu = gpu();
    let model = model(gpu);
    let ids = model.input_ids(gpu, &batches()[0].input_ids).unwrap();
    let logits = |ad: Option<&Adapter>| {
        let mut rec = Recorder::new(gpu);
        let (l, _) = model.forward_adapted(&mut rec, &ids, hooks_of(ad)).unwrap();
        rec.submit().unwrap();
        block_on(l.to_vec::<f32>(gpu)).unwrap()
    };
    let load = |dir: &str| block_on(Adapter::load(gpu, &DirFiles::new(fixture(dir)).unwrap(), &model.config)).unwrap();
    let (lora_alone, bn_alone, base) = (
        logits(Some(&load("lora/initial_adapter"))),
        logits(Some(&load("bottleneck/par_bn/initial_adapter"))),
        logits(None),
    );
    let mut set = AdapterSet::new();
    set.insert("chat", load("lora/initial_adapter")).unwrap();
    set.insert("style", load("bottleneck/par_bn/initial_adapter")).unwrap();
    assert_eq!(set.active_name(), Some("chat"));
    assert_eq!(logits(set.active()), lora_alone);
    set.set_active(Some("style")).unwrap();
    assert_eq!(logits(set.active()), bn_alone);
    set.set_active(None).unwrap();
    assert_eq!(logits(set.active()), base);
    set.set_active(Some("chat")).unwrap();
    assert_eq!(logits(set.active()), lora_alone, "switching back");
    assert!(matches!(set.set_active(Some("nope")), Err(Error::InvalidArgument { .. })));
    assert!(matches!(set.insert("chat", load("lora/initial_adapter")), Err(Error::InvalidArgument { .. })));
    set.remove("chat").unwrap();
    assert_eq!(set.active_name(), None);
    assert_eq!(set.names(), vec!["style".to_string()]);
}

#[test]
fn evaluation_weighs_each_batch_s_mean_by_its_rows_as_transformers() {
    use webpeft::model::llama::SftLoss;
    use webpeft::train::trainer::evaluate;
    let gpu = gpu();
    let model = model(gpu);
    let ad = lora(gpu, &model, 0.3); // dropout must be off in evaluation
    let data = batches();
    // Each batch alone, then both: transformers' evaluation loop repeats each batch's mean once a row,
    // and TRL averages the batches' entropies and accuracies.
    let mut masked: Vec<Batch> = data[..2].to_vec();
    masked.iter_mut().for_each(|b| b.labels[0][..5].iter_mut().for_each(|l| *l = -100)); // unequal counts
    masked[1].input_ids.truncate(1); // and unequal rows
    masked[1].labels.truncate(1);
    masked[1].lengths.truncate(1);
    let (mut weighted, mut rows, mut tokens, mut entropy, mut accuracy) = (0.0f64, 0, 0, 0.0f64, 0.0f64);
    for b in &masked {
        let e = block_on(evaluate(gpu, &model, Some(&ad), std::slice::from_ref(b), SftLoss::Nll)).unwrap();
        weighted += e.loss as f64 * b.input_ids.len() as f64;
        rows += b.input_ids.len();
        tokens += e.tokens;
        entropy += e.entropy as f64 / 2.0;
        accuracy += e.mean_token_accuracy as f64 / 2.0;
    }
    let e = block_on(evaluate(gpu, &model, Some(&ad), &masked, SftLoss::Nll)).unwrap();
    assert_eq!(e.tokens, tokens);
    assert!((e.loss as f64 - weighted / rows as f64).abs() < 1e-5, "{} vs {}", e.loss, weighted / rows as f64);
    assert!((e.entropy as f64 - entropy).abs() < 1e-5 && (e.mean_token_accuracy as f64 - accuracy).abs() < 1e-6);
    assert!((e.perplexity - (e.loss as f64).exp()).abs() < 1e-9);
    // Evaluation has no dropout: twice the same numbers.
    let again = block_on(evaluate(gpu, &model, Some(&ad), &masked, SftLoss::Nll)).unwrap();
    assert_eq!(e, again);
    let empty = vec![Batch::new(vec![vec![1, 2]], vec![vec![-100, -100]])];
    assert!(matches!(block_on(evaluate(gpu, &model, None, &empty, SftLoss::Nll)), Err(Error::InvalidArgument { .. })));
}

#[test]
fn an_adapter_zip_round_trips_and_loads() {
    use webpeft::peft::archive::{from_zip, to_zip};
    let gpu = gpu();
    let model = model(gpu);
    let a = lora(gpu, &model, 0.0);
    let files = block_on(a.to_files(gpu, &model.config)).unwrap();
    let zip = to_zip(&files).unwrap();
    assert_eq!(&zip[..4], b"PK\x03\x04");
    let back = from_zip(&zip).unwrap();
    assert_eq!(back, files);
    let mut mem = MemoryFiles::new();
    for (n, b) in back {
        mem.insert(n, b);
    }
    assert!(block_on(Adapter::load(gpu, &mem, &model.config)).is_ok());
    assert!(matches!(from_zip(b"not a zip"), Err(Error::File { .. })));
}
