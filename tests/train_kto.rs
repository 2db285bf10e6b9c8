//! KTO against TRL 0.24's `KTOTrainer` (tests/fixtures/kto, made by
//! `make_fixtures.py kto`): the rows its data preparation makes (unpaired
//! text, unpaired conversational pairs, the KL rows of runs of 6 and of 4
//! and 2 examples, truncation at max_length 24), the policy's and the
//! reference's log-probabilities of the examples and their KL rows, the loss
//! and TRL's metrics, all 28 LoRA gradients and 10 AdamW steps from the same
//! initial adapter (β 0.1, desirable_weight 1, undesirable_weight 1.5).

mod common;

use common::{block_on, fixture, gpu, max_abs_diff, Fixture};
use webpeft::kernels::preference::{KtoLoss, KtoLossType, PreferenceLoss};
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::LoraAdapter;
use webpeft::quant::QuantFormat;
use webpeft::train::data::{Batch, DataOptions};
use webpeft::train::kto::kto_dataset;
use webpeft::train::preference::{Objective, PreferenceOptions};
use webpeft::train::preference_loss::preference_logps;
use webpeft::train::recipe::TrainRecipe;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::Error;

const TOL: f32 = 1e-4;
const PAD: u32 = 383;
const KTO: PreferenceLoss = PreferenceLoss::Kto(KtoLoss {
    beta: 0.1,
    desirable_weight: 1.0,
    undesirable_weight: 1.5,
    loss_type: KtoLossType::Kto,
});
/// TRL's loss_type "apo_zero_unpaired": no KL rows, no KL estimate.
const APO: PreferenceLoss = PreferenceLoss::Kto(KtoLoss {
    beta: 0.1,
    desirable_weight: 1.0,
    undesirable_weight: 1.5,
    loss_type: KtoLossType::ApoZeroUnpaired,
});

fn tokenizer() -> Tokenizer {
    block_on(Tokenizer::load(&DirFiles::new(fixture("llama_gqa")).unwrap())).unwrap()
}

/// Every batch of `file` in file order, `batch_size` examples each, rows of at most `seq_len`.
fn batches(file: &str, batch_size: usize, seq_len: usize) -> Vec<Batch> {
    batches_kl(file, batch_size, seq_len, true)
}

/// [`batches`], with each example's KL row or without (apo_zero_unpaired).
fn batches_kl(file: &str, batch_size: usize, seq_len: usize, kl: bool) -> Vec<Batch> {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    let opts = DataOptions { seq_len, batch_size, shuffle: false, ..Default::default() };
    kto_dataset(file, text.as_bytes(), Some(&tokenizer()), &opts, PAD, kl).unwrap().epoch(0)
}

/// A row without its padding (pad ids under −100 labels at the end).
fn trimmed(ids: &[u32], labels: &[i32]) -> (Vec<u32>, Vec<i32>) {
    let mut n = ids.len();
    while n > 0 && ids[n - 1] == PAD && labels[n - 1] == -100 {
        n -= 1;
    }
    (ids[..n].to_vec(), labels[..n].to_vec())
}

fn fixture_rows(fx: &Fixture, key: &str) -> Vec<(Vec<u32>, Vec<i32>)> {
    let (ids, labels) = (fx.i64(&format!("{key}.input_ids")), fx.i64(&format!("{key}.labels")));
    let width = fx.shape(&format!("{key}.input_ids"))[1];
    (0..ids.len() / width)
        .map(|r| {
            let row = |v: &[i64]| v[r * width..(r + 1) * width].to_vec();
            let ids: Vec<u32> = row(&ids).iter().map(|&v| v as u32).collect();
            let labels: Vec<i32> = row(&labels).iter().map(|&v| v as i32).collect();
            trimmed(&ids, &labels)
        })
        .collect()
}

#[test]
fn examples_and_their_kl_rows_tokenize_as_trl() {
    let fx = Fixture::open("kto/reference.safetensors");
    let cases = [
        ("kto/examples.jsonl", "rows6", 6, 512),
        ("kto/examples.jsonl", "rows4", 4, 512),
        ("kto/chat_pairs.jsonl", "chat", 4, 512),
        ("kto/long.jsonl", "long", 2, 24),
    ];
    for (file, key, batch_size, seq_len) in cases {
        let (mut own, mut kl, mut desirable) = (Vec::new(), Vec::new(), Vec::new());
        for b in batches(file, batch_size, seq_len) {
            let n = b.input_ids.len() / 2;
            let rows: Vec<_> = b.input_ids.iter().zip(&b.labels).map(|(i, l)| trimmed(i, l)).collect();
            own.extend_from_slice(&rows[..n]);
            kl.extend_from_slice(&rows[n..]);
            desirable.extend(b.desirable.unwrap());
        }
        let want: Vec<bool> = fx.i64(&format!("{key}.desirable")).iter().map(|&v| v == 1).collect();
        assert_eq!(desirable, want, "{key}: labels");
        assert_eq!(own, fixture_rows(&fx, &format!("{key}.own")), "{key}: the examples' rows");
        assert_eq!(kl, fixture_rows(&fx, &format!("{key}.kl")), "{key}: the KL rows");
    }
}

fn close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    common::close_to(what, got, want, TOL, rel);
}

#[test]
fn kto_matches_trl() {
    check_against_trl("kto", KTO);
}

/// apo_zero_unpaired: 1 − σ(β·c) for a desirable example, σ(β·c) for an undesirable one, no KL rows
/// (six rows a batch of six, not twelve) and kl logged as 0, as TRL's `kto_loss` with `calculate_KL` off.
#[test]
fn apo_zero_unpaired_matches_trl() {
    let b = batches_kl("kto/examples.jsonl", 6, 512, false).remove(0);
    assert_eq!((b.input_ids.len(), b.desirable.as_ref().map(Vec::len)), (6, Some(6)));
    check_against_trl("apo", APO);
}

/// The fixture's case `name` (`kto`, `apo`) on examples.jsonl as one batch of six: the log-probabilities,
/// loss, metrics, gradients, 10 AdamW losses and the factors after them.
fn check_against_trl(name: &str, loss: PreferenceLoss) {
    let PreferenceLoss::Kto(k) = loss else { unreachable!("a KTO loss") };
    let (gpu, fx) = (gpu(), Fixture::open("kto/reference.safetensors"));
    let b = batches_kl("kto/examples.jsonl", 6, 512, k.loss_type.uses_kl()).remove(0);
    let model = block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap();
    let files = DirFiles::new(fixture("lora/initial_adapter")).unwrap();
    let adapter = Adapter::Lora(block_on(LoraAdapter::load(gpu, &files, &model.config)).unwrap());
    let opt = OptimizerConfig { weight_decay: 0.01, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter, opt, 0).unwrap();
    trainer.objective = Objective::Preference(loss);

    let (policy, reference) = block_on(preference_logps(gpu, &model, &trainer.adapter, &b, loss)).unwrap();
    close(&format!("{name} policy log-probs"), &policy, &fx.f32(&format!("{name}.logps")), TOL);
    close(&format!("{name} reference log-probs"), &reference.unwrap(), &fx.f32(&format!("{name}.ref_logps")), TOL);
    let mut losses = Vec::new();
    for step in 0..10 {
        let s = block_on(trainer.step(gpu, &model, std::slice::from_ref(&b), 1e-2)).unwrap();
        losses.push(s.loss);
        if step == 0 {
            close(&format!("{name} loss"), &[s.loss], &[fx.f32(&format!("{name}.loss"))[0]], 0.0);
            let k = s.kto.unwrap();
            let got = [
                k.rewards_chosen_sum,
                k.rewards_rejected_sum,
                k.kl,
                k.logps_chosen_sum,
                k.logps_rejected_sum,
                k.count_chosen,
                k.count_rejected,
            ];
            close(&format!("{name} metrics"), &got, &fx.f32(&format!("{name}.metrics")), 1e-6);
            let mut worst = 0.0f32;
            for (key, g) in trainer.gradients().tensors() {
                let got = block_on(g.to_vec::<f32>(gpu)).unwrap();
                worst = worst.max(max_abs_diff(&got, &fx.f32(&format!("{name}.{key}.grad"))));
            }
            eprintln!("{name}: 28 gradients, max |diff| {worst:e}");
            assert!(worst <= TOL, "{name} gradients: {worst:e}");
        }
    }
    close(&format!("{name} 10 AdamW losses"), &losses, &fx.f32(&format!("{name}.losses")), 0.0);
    // An element whose step-1 gradient is near AdamW's ε (1e-8) takes a first update lr·g/(|g| + ε) that turns
    // the gradients' f32 roundings (6e-8) into ~1e-4 of the factor (one here: layer 1's down_proj A, 1.7e-8),
    // and through the later steps' gradients nudges the rest: those are held to 1e-3, every other element to
    // 2e-4 (3.4e-5 with the CPU-family kernels, 1.1e-4 with the real-GPU ones); the 10 losses agree within 1.4e-6.
    let (mut worst, mut worst_sensitive) = (0.0f32, 0.0f32);
    for (key, t) in trainer.adapter.tensors() {
        let got = block_on(t.to_vec::<f32>(gpu)).unwrap();
        let (want, grad) = (fx.f32(&format!("{name}.final.{key}")), fx.f32(&format!("{name}.{key}.grad")));
        for ((g, w), step1) in got.iter().zip(&want).zip(&grad) {
            let d = (g - w).abs();
            if step1.abs() < 1e-6 {
                worst_sensitive = worst_sensitive.max(d);
            } else {
                worst = worst.max(d);
            }
        }
    }
    eprintln!("{name}: final factors max |diff| {worst:e} ({worst_sensitive:e} where the step-1 gradient is < 1e-6)");
    assert!(worst <= 2e-4 && worst_sensitive <= 1e-3, "{name} final factors: {worst:e}, {worst_sensitive:e}");
}

#[test]
fn bad_kto_data_and_options_are_typed_errors() {
    let opts = DataOptions { seq_len: 64, batch_size: 2, shuffle: false, ..Default::default() };
    let data_error = |text: &str, line: usize, needle: &str| match kto_dataset(
        "kto.jsonl",
        text.as_bytes(),
        Some(&tokenizer()),
        &opts,
        PAD,
        true,
    ) {
        Err(Error::Data { line: l, detail, .. }) => {
            assert_eq!(l, line, "{detail}");
            assert!(detail.contains(needle), "{detail}");
        }
        other => panic!("expected a Data error at line {line}, got {other:?}"),
    };
    let good = r#"{"prompt": "Hi", "completion": " there.", "label": true}"#;
    data_error(&format!("{good}\n{}\n", r#"{"prompt": "Hi", "completion": " x"}"#), 2, "`label`");
    data_error(&format!("{good}\n{}\n", r#"{"prompt": "Hi", "completion": " x", "label": 1}"#), 2, "true");
    data_error(&format!("{good}\n{}\n", r#"{"prompt": "a", "chosen": " b", "rejected": " c"}"#), 2, "mixes");
    data_error(r#"{"prompt": "a", "completion": "", "label": false}"#, 1, "empty");
    let o = |f: fn(&mut PreferenceOptions)| {
        let mut o = PreferenceOptions::default();
        f(&mut o);
        o
    };
    let e = Objective::from_options("dpo", &o(|o| o.desirable_weight = Some(2.0))).unwrap_err();
    assert!(matches!(&e, Error::TrainOption { option: "desirable_weight", detail } if detail.contains("kto only")));
    let e = Objective::from_options("kto", &o(|o| o.loss_type = Some("ipo".into()))).unwrap_err();
    assert!(matches!(&e, Error::TrainOption { option: "loss_type", .. }), "{e}");
    let kto = Objective::from_options("kto", &o(|o| o.undesirable_weight = Some(1.5))).unwrap();
    assert_eq!(kto, Objective::Preference(KTO));
    // TRL refuses a batch of one: the KL term would pair each prompt with its own completion.
    let r = TrainRecipe { objective: kto, batch_size: 1, ..TrainRecipe::default() };
    assert!(matches!(r.validate(), Err(Error::TrainOption { option: "batch_size", .. })));
}

/// TRL's `precompute_ref_log_probs` with KTO: the examples' and their KL rows' reference scored once;
/// a shuffled run takes the same steps as one that scores it every step.
#[test]
fn precomputed_reference_log_probs_change_no_step() {
    let gpu = gpu();
    let model = block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap();
    let text = std::fs::read_to_string(fixture("kto/examples.jsonl")).unwrap();
    let opts = DataOptions { seq_len: 512, batch_size: 2, shuffle: true, seed: 4, ..Default::default() };
    let data = kto_dataset("examples.jsonl", text.as_bytes(), Some(&tokenizer()), &opts, PAD, true).unwrap();
    let adapter = || {
        let files = DirFiles::new(fixture("lora/initial_adapter")).unwrap();
        Adapter::Lora(block_on(LoraAdapter::load(gpu, &files, &model.config)).unwrap())
    };
    common::check_precomputed_reference(gpu, &model, data, adapter, Objective::Preference(KTO));
}
