//! DPO and ORPO against TRL 0.24 (tests/fixtures/dpo, made by
//! `make_fixtures.py dpo`): the pairs tokenized as `DPOTrainer.tokenize_row`,
//! per-sequence policy and reference log-probabilities, the loss and TRL's
//! metrics, all 28 LoRA gradients, and 10 AdamW steps from the same initial
//! adapter (lr 1e-2, weight decay 0.01, clipping at 1). Each within 1e-4;
//! the log-probabilities (sums of up to 21 token log-probs, ~100 in size)
//! within 1e-4 relative as well.

mod common;

use common::{block_on, fixture, gpu, max_abs_diff, Fixture};
use webpeft::kernels::preference::{
    CpoLoss, CpoLossType, DpoLoss, DpoLossType, FDivergence, PairTokenization, PreferenceLoss,
};
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::LoraAdapter;
use webpeft::quant::QuantFormat;
use webpeft::train::data::{Batch, DataOptions, Dataset};
use webpeft::train::preference::{preference_dataset, Objective, PreferenceOptions};
use webpeft::train::preference_loss::preference_logps;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{Error, Gpu};

const TOL: f32 = 1e-4;
const DPO: PreferenceLoss = PreferenceLoss::Dpo(DpoLoss { label_smoothing: 0.1, ..DpoLoss::TRL });
const ORPO: PreferenceLoss = PreferenceLoss::Orpo { beta: 0.1 };

fn tokenizer() -> Tokenizer {
    block_on(Tokenizer::load(&DirFiles::new(fixture("llama_gqa")).unwrap())).unwrap()
}

fn options() -> DataOptions {
    DataOptions { seq_len: 512, batch_size: 8, shuffle: false, ..Default::default() }
}

fn pairs(text: &str) -> webpeft::Result<Dataset> {
    let (opts, tok) = (options(), Some(tokenizer()));
    preference_dataset("pairs.jsonl", text.as_bytes(), tok.as_ref(), &opts, 383, PairTokenization::Separate)
}

/// The four pairs of dpo/pairs.jsonl as one batch: chosen rows, then rejected rows.
fn batch() -> Batch {
    batch_of("dpo/pairs.jsonl", PairTokenization::Separate, 512)
}

/// The pairs of the fixture file `file` tokenized as `how` into rows of at most `seq_len`, as one batch.
fn batch_of(file: &str, how: PairTokenization, seq_len: usize) -> Batch {
    let text = std::fs::read_to_string(fixture(file)).unwrap();
    let (opts, tok) = (DataOptions { seq_len, ..options() }, Some(tokenizer()));
    let data = preference_dataset("pairs.jsonl", text.as_bytes(), tok.as_ref(), &opts, 383, how).unwrap();
    assert!(data.warnings().is_empty());
    data.epoch(0).remove(0)
}

fn close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    common::close_to(what, got, want, TOL, rel);
}

/// ORPO's and CPO's rows (`make_fixtures.py cpo`): TRL's shared `tokenize_row`, with a pair whose prompt and
/// answer merge across their boundary, and a pair cut to max_length 24 (max_prompt_length 12).
#[test]
fn pairs_tokenize_as_orpo_and_cpo_do() {
    let fx = Fixture::open("cpo/reference.safetensors");
    for (file, key, seq_len, rows) in [("cpo/pairs.jsonl", "", 512, 10), ("cpo/long_pair.jsonl", "long.", 24, 2)] {
        let b = batch_of(file, PairTokenization::Joined, seq_len);
        let width = fx.shape(&format!("{key}input_ids"))[1];
        let (ids, labels) = (fx.i64(&format!("{key}input_ids")), fx.i64(&format!("{key}labels")));
        assert_eq!(b.input_ids.len(), rows, "{file}");
        for (r, (row, got)) in b.input_ids.iter().zip(&b.labels).enumerate() {
            let want: Vec<u32> = ids[r * width..(r + 1) * width].iter().map(|&v| v as u32).collect();
            assert_eq!(row, &want, "{file} row {r} ids");
            let want: Vec<i32> = labels[r * width..(r + 1) * width].iter().map(|&v| v as i32).collect();
            assert_eq!(got, &want, "{file} row {r} labels");
        }
    }
}

#[test]
fn pairs_tokenize_as_trl() {
    let fx = Fixture::open("dpo/reference.safetensors");
    let b = batch();
    let width = fx.shape("input_ids")[1];
    let (ids, mask) = (fx.i64("input_ids"), fx.i64("loss_mask"));
    assert_eq!(b.input_ids.len(), 8);
    for (r, (row, labels)) in b.input_ids.iter().zip(&b.labels).enumerate() {
        assert_eq!(row.len(), width, "row {r}");
        let want: Vec<u32> = ids[r * width..(r + 1) * width].iter().map(|&v| v as u32).collect();
        assert_eq!(row, &want, "row {r} ids");
        let trained: Vec<bool> = labels.iter().map(|&l| l != -100).collect();
        let want: Vec<bool> = mask[r * width..(r + 1) * width].iter().map(|&m| m == 1).collect();
        assert_eq!(trained, want, "row {r}: the completion tokens");
    }
}

fn model(gpu: &Gpu) -> Model {
    block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap()
}

fn adapter(gpu: &Gpu, model: &Model) -> Adapter {
    let files = DirFiles::new(fixture("lora/initial_adapter")).unwrap();
    Adapter::Lora(block_on(LoraAdapter::load(gpu, &files, &model.config)).unwrap())
}

/// One step's loss, metrics and gradients, then nine more steps' losses and the final factors.
fn check_training(loss: PreferenceLoss, name: &str) {
    check_training_on("dpo", loss, name, "dpo.ref_logps", ALL_STEPS);
}

/// The fixtures' 10 AdamW steps, and the factors after them.
const ALL_STEPS: (usize, bool) = (10, true);
/// Two steps: the first's loss, metrics and gradients, and the loss after one update (a loss without
/// state across steps has nothing more to show on lavapipe's time).
const TWO_STEPS: (usize, bool) = (2, false);

/// `check_training` on `folder`'s pairs and references (`name`.*), the
/// reference log-probabilities under `ref_key`: the first `steps` of the fixture's
/// 10 steps, and the factors after all 10 where `finals`.
fn check_training_on(folder: &str, loss: PreferenceLoss, name: &str, ref_key: &str, (steps, finals): (usize, bool)) {
    let (gpu, b) = (gpu(), batch_of(&format!("{folder}/pairs.jsonl"), loss.tokenization(), 512));
    let fx = Fixture::open(&format!("{folder}/reference.safetensors"));
    let model = model(gpu);
    let opt = OptimizerConfig { weight_decay: 0.01, ..Default::default() };
    let mut trainer = Trainer::new(gpu, adapter(gpu, &model), opt, 0).unwrap();
    trainer.objective = Objective::Preference(loss);

    let (policy, reference) = block_on(preference_logps(gpu, &model, &trainer.adapter, &b, loss)).unwrap();
    close(&format!("{name} policy log-probs"), &policy, &fx.f32(&format!("{name}.logps")), TOL);
    if let Some(reference) = reference {
        close(&format!("{name} reference log-probs"), &reference, &fx.f32(ref_key), TOL);
    }

    let mut losses = Vec::new();
    for step in 0..steps {
        let s = block_on(trainer.step(gpu, &model, std::slice::from_ref(&b), 1e-2)).unwrap();
        losses.push(s.loss);
        if step == 0 {
            // (Losses reach ~75 (sppo_hard): f32 sums of log-probs of ~100 hold them to a few 1e-6 relative.)
            close(&format!("{name} loss"), &[s.loss], &[fx.f32(&format!("{name}.loss"))[0]], 1e-5);
            let p = s.preference.unwrap();
            let mut got = vec![p.rewards_chosen, p.rewards_rejected, p.rewards_accuracies, p.rewards_margins];
            got.extend(p.orpo.iter().flatten());
            got.extend(p.nll_loss);
            close(&format!("{name} metrics"), &got, &fx.f32(&format!("{name}.metrics")), 0.0);
            // TRL's logps/chosen and logps/rejected: the policy's log-probs, averaged over the pairs.
            let (logps, mean) = (fx.f32(&format!("{name}.logps")), |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32);
            let (chosen, rejected) = logps.split_at(logps.len() / 2);
            let want = [mean(chosen), mean(rejected)];
            close(&format!("{name} logps metrics"), &[p.logps_chosen, p.logps_rejected], &want, 1e-5);
            let mut worst = 0.0f32;
            for (key, g) in trainer.gradients().tensors() {
                let got = block_on(g.to_vec::<f32>(gpu)).unwrap();
                worst = worst.max(max_abs_diff(&got, &fx.f32(&format!("{name}.{key}.grad"))));
            }
            eprintln!("{name}: 28 gradients, max |diff| {worst:e}");
            assert!(worst <= TOL, "{name} gradients: {worst:e}");
        }
    }
    close(&format!("{name} {steps} AdamW losses"), &losses, &fx.f32(&format!("{name}.losses"))[..steps], 1e-5);
    if !finals {
        return;
    }
    let mut worst = 0.0f32;
    for (key, t) in trainer.adapter.tensors() {
        let got = block_on(t.to_vec::<f32>(gpu)).unwrap();
        worst = worst.max(max_abs_diff(&got, &fx.f32(&format!("{name}.final.{key}"))));
    }
    eprintln!("{name}: final factors max |diff| {worst:e}");
    assert!(worst <= TOL, "{name} final factors: {worst:e}");
}

#[test]
fn dpo_matches_trl() {
    check_training(DPO, "dpo");
}

#[test]
fn orpo_matches_trl() {
    check_training_on("cpo", ORPO, "orpo", "", ALL_STEPS);
}

/// CPO and SimPO against TRL 0.24's `CPOTrainer` (`make_fixtures.py cpo`): sigmoid with label smoothing, hinge,
/// IPO (means), SimPO without the NLL term and with it and smoothing, AlphaPO (simpo with TRL's alpha) and IPO
/// with a negative alpha; the rows ORPOTrainer's tokenization makes.
#[test]
fn cpo_matches_trl() {
    let cpo = |loss_type, beta, label_smoothing, cpo_alpha, simpo_gamma| {
        PreferenceLoss::Cpo(CpoLoss { beta, label_smoothing, loss_type, cpo_alpha, simpo_gamma, alpha: 0.0 })
    };
    let with_alpha = |loss: PreferenceLoss, alpha| match loss {
        PreferenceLoss::Cpo(c) => PreferenceLoss::Cpo(CpoLoss { alpha, ..c }),
        other => other,
    };
    for (name, loss) in [
        ("alphapo", with_alpha(cpo(CpoLossType::Simpo, 2.5, 0.0, 0.0, 0.5), 0.25)),
        ("ipo_alpha", with_alpha(cpo(CpoLossType::Ipo, 0.1, 0.0, 0.5, 0.5), -0.5)),
        ("sigmoid", cpo(CpoLossType::Sigmoid, 0.1, 0.1, 1.0, 0.5)),
        ("hinge", cpo(CpoLossType::Hinge, 0.5, 0.0, 1.0, 0.5)),
        ("ipo", cpo(CpoLossType::Ipo, 0.1, 0.0, 0.5, 0.5)),
        ("simpo", cpo(CpoLossType::Simpo, 2.0, 0.0, 0.0, 0.5)),
        ("cpo_simpo", cpo(CpoLossType::Simpo, 2.0, 0.1, 0.5, 1.0)),
    ] {
        check_training_on("cpo", loss, name, "", if name == "simpo" { ALL_STEPS } else { TWO_STEPS });
    }
}

/// DPOConfig's loss types and RPO term against TRL 0.24 (`make_fixtures.py dpo_losses`: five pairs, one with
/// token 0 in its chosen answer, which TRL's RPO NLL leaves out): log-probabilities (IPO's means, the reference's
/// too), loss, metrics (and nll_loss), 28 gradients, AdamW losses (10 where state or the factors after them are
/// checked, 2 for the rest);
/// the sorted losses (aot, aot_pair), bco_pair's running mean over the 10 steps, and lists of loss types with
/// loss_weights (MPO's sigmoid, bco_pair and sft). (MPO's factors are not compared: one lora_B element's first
/// gradient is 2e-8, where AdamW's first step m/(√v + ε) turns float rounding into a visible change.)
#[test]
fn dpo_loss_types_match_trl() {
    use DpoLossType::*;
    let d = |loss_type: DpoLossType, beta, label_smoothing, rpo_alpha, discopop_tau| DpoLoss {
        beta,
        label_smoothing,
        loss_type: loss_type.into(),
        rpo_alpha,
        discopop_tau,
        reference_free: false,
        f_divergence: FDivergence::ReverseKl,
    };
    let free = |d: DpoLoss| DpoLoss { reference_free: true, ..d };
    let divergence = |f: FDivergence, d: DpoLoss| DpoLoss { f_divergence: f, ..d };
    // TRL's loss_type list with loss_weights.
    let list = |types: &[DpoLossType], weights: Option<&[f32]>, beta| DpoLoss {
        beta,
        loss_type: webpeft::kernels::preference::DpoLossTypes::new(types, weights).unwrap(),
        ..DpoLoss::TRL
    };
    let cases = [
        ("robust", d(Robust, 0.1, 0.1, None, 0.05)),
        ("exo_pair", d(ExoPair, 0.1, 0.0, None, 0.05)),
        ("exo_pair_smoothed", d(ExoPair, 0.5, 0.2, None, 0.05)),
        ("hinge", d(Hinge, 0.5, 0.0, None, 0.05)),
        ("ipo", d(Ipo, 0.1, 0.0, None, 0.05)),
        ("sppo_hard", d(SppoHard, 0.1, 0.0, None, 0.05)),
        ("nca_pair", d(NcaPair, 0.1, 0.0, None, 0.05)),
        ("apo_zero", d(ApoZero, 0.1, 0.0, None, 0.05)),
        ("apo_down", d(ApoDown, 0.1, 0.0, None, 0.05)),
        ("discopop", d(Discopop, 0.1, 0.0, None, 0.05)),
        ("discopop_tau", d(Discopop, 0.5, 0.0, None, 0.5)),
        ("sigmoid_rpo", d(Sigmoid, 0.1, 0.0, Some(1.0), 0.05)),
        ("ipo_rpo", d(Ipo, 0.1, 0.0, Some(0.5), 0.05)),
        ("sigmoid_reference_free", free(d(Sigmoid, 0.1, 0.1, None, 0.05))),
        ("nca_pair_reference_free", free(d(NcaPair, 0.1, 0.0, None, 0.05))),
        ("aot", d(Aot, 0.1, 0.0, None, 0.05)),
        ("aot_pair", d(AotPair, 0.1, 0.1, None, 0.05)),
        ("bco_pair", d(BcoPair, 0.1, 0.0, None, 0.05)),
        ("mpo", list(&[Sigmoid, BcoPair, Sft], Some(&[0.8, 0.2, 1.0]), 0.1)),
        ("hinge_sft", list(&[Hinge, Sft], None, 0.5)),
        ("sigmoid_js", divergence(FDivergence::Js, d(Sigmoid, 0.1, 0.1, None, 0.05))),
        ("ipo_alpha_divergence", divergence(FDivergence::Alpha(0.5), d(Ipo, 0.1, 0.0, None, 0.05))),
        ("hinge_alpha_divergence", divergence(FDivergence::Alpha(1.0), d(Hinge, 0.5, 0.0, None, 0.05))),
    ];
    for (name, dpo) in cases {
        let loss = PreferenceLoss::Dpo(dpo);
        // All ten steps where a loss keeps state across them (bco_pair's running mean, in mpo too) and for
        // the factors after them; two for the rest.
        let steps = match name {
            "discopop" | "ipo_rpo" | "bco_pair" => ALL_STEPS,
            "mpo" => (10, false),
            _ => TWO_STEPS,
        };
        check_training_on("dpo_losses", loss, name, &format!("{name}.ref_logps"), steps);
    }
}

#[test]
fn dpo_options_are_checked() {
    let dpo = |o: PreferenceOptions| Objective::from_options("dpo", &o);
    let refused = |o: PreferenceOptions, option: &str, needle: &str| match dpo(o.clone()) {
        Err(Error::TrainOption { option: got, detail }) => {
            assert_eq!(got, option, "{o:?}: {detail}");
            assert!(detail.contains(needle), "{o:?}: {detail}");
        }
        other => panic!("{o:?}: expected a TrainOption error on {option}, got {other:?}"),
    };
    let typed = |t: &str| PreferenceOptions { loss_type: Some(t.into()), ..Default::default() };
    refused(typed("kto_pair"), "loss_type", "expected one of sigmoid, robust");
    refused(PreferenceOptions { label_smoothing: Some(0.1), ..typed("ipo") }, "label_smoothing", "not ipo");
    refused(PreferenceOptions { discopop_tau: Some(0.1), ..typed("hinge") }, "discopop_tau", "discopop");
    // Lists of loss types (TRL's loss_type list) and their loss_weights.
    let weighted = |t: &str, w: &[f32]| PreferenceOptions { loss_weights: Some(w.to_vec()), ..typed(t) };
    refused(weighted("sigmoid,bco_pair,sft", &[1.0, 2.0]), "loss_weights", "2 loss weights for 3 loss types");
    refused(typed("sigmoid,kto_pair"), "loss_type", "got \"kto_pair\"");
    refused(typed("sigmoid,ipo,hinge,sft,aot"), "loss_type", "1 to 4 loss types");
    refused(PreferenceOptions { loss_weights: Some(vec![1.0]), ..Default::default() }, "loss_weights", "loss_type");
    refused(weighted("sigmoid,sft", &[1.0, f32::NAN]), "loss_weights", "finite");
    refused(PreferenceOptions { label_smoothing: Some(0.1), ..typed("hinge,sft") }, "label_smoothing", "hinge,sft");
    // f_divergence_type and its coefficient: DPO's, on a loss of h alone, the coefficient alpha_divergence's.
    let f = |t: &str, coef: Option<f32>| PreferenceOptions {
        f_divergence_type: Some(t.into()),
        f_alpha_divergence_coef: coef,
        ..Default::default()
    };
    refused(f("kl", None), "f_divergence_type", "expected reverse_kl, js_divergence or alpha_divergence");
    let with = |o: PreferenceOptions, t: &str| PreferenceOptions { loss_type: Some(t.into()), ..o };
    refused(with(f("js_divergence", None), "nca_pair"), "f_divergence_type", "not nca_pair");
    refused(f("js_divergence", Some(0.5)), "f_alpha_divergence_coef", "not js_divergence");
    refused(f("alpha_divergence", Some(0.0)), "f_alpha_divergence_coef", "> 0");
    let Ok(Objective::Preference(PreferenceLoss::Dpo(d))) = dpo(with(f("alpha_divergence", None), "ipo,bco_pair"))
    else {
        panic!("alpha_divergence")
    };
    assert_eq!(d.f_divergence, FDivergence::Alpha(1.0));
    let e = Objective::from_options("cpo", &f("js_divergence", None)).unwrap_err();
    assert!(
        matches!(&e, Error::TrainOption { option: "f_divergence_type", detail } if detail == "applies to dpo only")
    );
    let Ok(Objective::Preference(PreferenceLoss::Dpo(d))) = dpo(weighted("sigmoid, bco_pair ,sft", &[0.8, 0.2, 1.0]))
    else {
        panic!("MPO")
    };
    let terms: Vec<_> = d.loss_type.terms().collect();
    use DpoLossType::*;
    assert_eq!(terms, [(Sigmoid, 0.8), (BcoPair, 0.2), (Sft, 1.0)]);
    assert_eq!((d.loss_type.names(), PreferenceLoss::Dpo(d).nll_alpha()), ("sigmoid,bco_pair,sft".into(), Some(1.0)));
    let o = PreferenceOptions { discopop_tau: Some(0.2), label_smoothing: Some(0.1), ..typed("discopop,aot") };
    assert!(dpo(o).is_ok());
    // The CPO losses are one; "alphapo" is simpo without the NLL term, its α given (TRL's CPOConfig sugar).
    let e = Objective::from_options("cpo", &typed("sigmoid,hinge")).unwrap_err();
    assert!(matches!(&e, Error::TrainOption { option: "loss_type", detail } if detail.contains("alphapo")), "{e}");
    let o = PreferenceOptions { alphapo_alpha: Some(0.25), cpo_alpha: Some(1.0), ..typed("alphapo") };
    let Ok(Objective::Preference(PreferenceLoss::Cpo(c))) = Objective::from_options("cpo", &o) else {
        panic!("alphapo")
    };
    assert_eq!((c.loss_type, c.cpo_alpha, c.alpha), (CpoLossType::Simpo, 0.0, 0.25));
    refused(PreferenceOptions { alphapo_alpha: Some(0.25), ..Default::default() }, "alphapo_alpha", "cpo only");
    let o = PreferenceOptions { rpo_alpha: Some(1.0), ..typed("ipo") };
    let Ok(Objective::Preference(PreferenceLoss::Dpo(d))) = dpo(o) else { panic!("ipo with rpo_alpha") };
    assert_eq!((d.loss_type.single(), d.rpo_alpha, d.beta), (Some(DpoLossType::Ipo), Some(1.0), 0.1));
    for option in ["label_smoothing", "loss_type", "rpo_alpha", "discopop_tau"] {
        let mut o = PreferenceOptions::default();
        match option {
            "label_smoothing" => o.label_smoothing = Some(0.1),
            "loss_type" => o.loss_type = Some("ipo".into()),
            "rpo_alpha" => o.rpo_alpha = Some(1.0),
            _ => o.discopop_tau = Some(0.1),
        }
        let owners = match option {
            "rpo_alpha" | "discopop_tau" => "dpo only",
            "loss_type" => "sft, dpo, cpo, kto and grpo",
            _ => "dpo and cpo",
        };
        // SFT has loss types of its own (nll, dft): DPO's is not one of them.
        let sft = if option == "loss_type" { "expected one of nll, dft for sft, got \"ipo\"" } else { owners };
        for (objective, needle) in [("orpo", owners), ("sft", sft)] {
            match Objective::from_options(objective, &o) {
                Err(Error::TrainOption { option: got, detail }) => {
                    assert_eq!((got, detail.contains(needle)), (option, true), "{objective} {option}: {detail}")
                }
                other => panic!("{objective} with {option}: {other:?}"),
            }
        }
    }
    // Ranges: the recipe's check.
    use webpeft::train::recipe::TrainRecipe;
    let range = |d: DpoLoss, option: &str| {
        let r = TrainRecipe { objective: Objective::Preference(PreferenceLoss::Dpo(d)), ..TrainRecipe::default() };
        match r.validate() {
            Err(Error::TrainOption { option: got, detail }) => assert_eq!(got, option, "{detail}"),
            other => panic!("{d:?}: expected {option} refused, got {other:?}"),
        }
    };
    range(DpoLoss { loss_type: DpoLossType::Robust.into(), label_smoothing: 0.5, ..DpoLoss::TRL }, "label_smoothing");
    range(DpoLoss { rpo_alpha: Some(f32::NAN), ..DpoLoss::TRL }, "rpo_alpha");
    range(DpoLoss { loss_type: DpoLossType::Discopop.into(), discopop_tau: 0.0, ..DpoLoss::TRL }, "discopop_tau");
}

#[test]
fn bad_preference_lines_are_typed_errors() {
    let good = r#"{"prompt": "Two plus two equals", "chosen": " four.", "rejected": " five."}"#;
    let data_error = |text: String, line: usize, needle: &str| match pairs(&text) {
        Err(Error::Data { line: l, detail, .. }) => {
            assert_eq!(l, line, "{detail}");
            assert!(detail.contains(needle), "{detail}");
        }
        other => panic!("expected a Data error at line {line}, got {other:?}"),
    };
    data_error(format!("{good}\n{}\n", r#"{"prompt": "a", "chosen": " b"}"#), 2, "`rejected`");
    data_error(format!("{good}\n\n{}\n", r#"{"prompt": "a", "chosen": "", "rejected": " c"}"#), 3, "`chosen` is empty");
    let chat = r#"{"prompt": [{"role": "user", "content": "hi"}], "chosen": [], "rejected": [{"role": "assistant", "content": "x"}]}"#;
    data_error(chat.to_string(), 1, "`chosen` is empty");
    data_error(r#"{"prompt": "a", "chosen": 3, "rejected": "b"}"#.to_string(), 1, "`chosen` must be a string");
    data_error("[1, 2]".to_string(), 1, "JSON object");
    // The same answer twice: kept, with a warning naming the line.
    let same = r#"{"prompt": "Two plus two equals", "chosen": " four.", "rejected": " four."}"#;
    let data = pairs(&format!("{good}\n{same}\n")).unwrap();
    assert_eq!((data.len(), data.warnings().len()), (2, 1));
    assert!(data.warnings()[0].contains("line 2"), "{:?}", data.warnings());
    // A row too short to keep a completion token to predict.
    let short = DataOptions { seq_len: 1, ..options() };
    let e = preference_dataset("p", good.as_bytes(), Some(&tokenizer()), &short, 0, PairTokenization::Separate);
    assert!(matches!(e, Err(Error::Data { line: 1, .. })), "{e:?}");
    let none = PreferenceOptions::default();
    assert!(matches!(Objective::from_options("ppo", &none), Err(Error::TrainOption { option: "objective", .. })));
}

/// Every kind of hook under DPO: (IA)³, prompt tuning (virtual tokens shift the rows), prefix tuning and a
/// bottleneck adapter take a step with a gradient, and their reference is the base's (TRL's, above).
#[test]
fn dpo_runs_with_every_kind_of_method() {
    use webpeft::peft::BottleneckKind;
    use webpeft::train::recipe::{AdapterRecipe, Method};
    let (gpu, fx, b) = (gpu(), Fixture::open("dpo/reference.safetensors"), batch());
    let model = model(gpu);
    let tok = tokenizer();
    for method in [Method::Ia3, Method::PromptTuning, Method::PrefixTuning, Method::Bottleneck(BottleneckKind::SeqBn)] {
        let adapter = AdapterRecipe::new(method).build(gpu, &model, Some(&tok), None, 7).unwrap();
        let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 0).unwrap();
        trainer.objective = Objective::Preference(DPO);
        let (_, reference) = block_on(preference_logps(gpu, &model, &trainer.adapter, &b, DPO)).unwrap();
        close(&format!("{method:?} reference log-probs"), &reference.unwrap(), &fx.f32("dpo.ref_logps"), TOL);
        let s = block_on(trainer.step(gpu, &model, std::slice::from_ref(&b), 1e-3)).unwrap();
        eprintln!("{method:?}: loss {}, grad norm {}", s.loss, s.grad_norm);
        assert!(s.loss.is_finite() && s.grad_norm > 0.0, "{method:?}: {s:?}");
    }
}

/// bco_pair's running reward mean lives in the trainer: each step moves it, a step that fails puts it
/// back with the adapter (nothing a user made is lost), and the checkpoint holds it.
#[test]
fn a_failed_step_keeps_bco_pair_s_running_mean() {
    use webpeft::train::checkpoint::{read_checkpoint, save_checkpoint};
    let gpu = gpu();
    let model = model(gpu);
    let mpo = webpeft::kernels::preference::DpoLossTypes::new(
        &[DpoLossType::Sigmoid, DpoLossType::BcoPair, DpoLossType::Sft],
        Some(&[0.8, 0.2, 1.0]),
    )
    .unwrap();
    let mut t = Trainer::new(gpu, adapter(gpu, &model), OptimizerConfig::default(), 0).unwrap();
    t.objective = Objective::Preference(PreferenceLoss::Dpo(DpoLoss { loss_type: mpo, ..DpoLoss::TRL }));
    let b = batch();
    let running = |t: &Trainer| {
        let bytes = block_on(save_checkpoint(gpu, t, &model.config, &serde_json::json!({}))).unwrap();
        read_checkpoint(&bytes).unwrap().bco_running
    };
    assert_eq!(running(&t), [0.0, 0.0]);
    for _ in 0..2 {
        block_on(t.step(gpu, &model, std::slice::from_ref(&b), 1e-2)).unwrap();
    }
    let kept = running(&t);
    assert_eq!(kept[1], 2.0, "{kept:?}");
    assert!(kept[0] != 0.0 && kept[0].is_finite(), "{kept:?}");
    // Poison one parameter: the next loss is NaN, and the step fails.
    let (_, first) = t.adapter.tensors()[1].clone();
    let mut values = block_on(first.to_vec::<f32>(gpu)).unwrap();
    values[0] = f32::NAN;
    first.write(gpu, &values).unwrap();
    let err = block_on(t.step(gpu, &model, std::slice::from_ref(&b), 1e-2)).unwrap_err();
    assert!(matches!(err, Error::NonFinite { step: 3, .. }), "{err}");
    assert_eq!(running(&t), kept, "the failed step moved the running mean");
}

/// TRL's `precompute_ref_log_probs`: the reference scored once, in file order, is TRL's reference
/// log-probabilities, and a shuffled run of one pair a micro-batch takes the same steps with it.
#[test]
fn precomputed_reference_log_probs_are_trl_s_and_change_no_step() {
    use webpeft::train::preference_loss::precompute_reference;
    let (gpu, fx) = (gpu(), Fixture::open("dpo/reference.safetensors"));
    let model = model(gpu);
    let text = std::fs::read_to_string(fixture("dpo/pairs.jsonl")).unwrap();
    let tok = Some(tokenizer());
    let read = |opts: &DataOptions| {
        preference_dataset("pairs.jsonl", text.as_bytes(), tok.as_ref(), opts, 383, PairTokenization::Separate).unwrap()
    };
    // Two pairs a batch in file order: batch 0 holds pairs 0 and 1, batch 1 pairs 2 and 3.
    let mut data = read(&DataOptions { batch_size: 2, ..options() });
    block_on(precompute_reference(gpu, &model, &mut data, DPO)).unwrap();
    let batches = data.epoch(0);
    let values = |b: &Batch| b.reference_logps.clone().unwrap();
    let (first, second) = (values(&batches[0]), values(&batches[1]));
    // TRL's order: the four chosen, then the four rejected.
    let got = [&first[..2], &second[..2], &first[2..], &second[2..]].concat();
    close("precomputed reference log-probs", &got, &fx.f32("dpo.ref_logps"), TOL);
    let e = block_on(precompute_reference(gpu, &model, &mut data, ORPO)).unwrap_err();
    assert!(e.to_string().contains("no reference model"), "{e}");

    let shuffled = read(&DataOptions { batch_size: 1, shuffle: true, seed: 9, ..options() });
    common::check_precomputed_reference(gpu, &model, shuffled, || adapter(gpu, &model), Objective::Preference(DPO));
}

/// TRL's DPOConfig (as ORPO's, CPO's, KTO's and the reward trainer's configs) disables dropout by
/// default (`disable_dropout=True` sets every Dropout's p to 0, LoRA's too): a DPO step of the fixture
/// adapter with lora_dropout 0.1 is the dropout-free step, bit for bit, unless dropout is kept; the
/// recipe's default follows the objective.
#[test]
fn dpo_disables_dropout_as_trl() {
    use webpeft::train::recipe::TrainRecipe;
    let gpu = gpu();
    let model = model(gpu);
    let batch = batch();
    let step = |dropout: f64, disable: bool| {
        let mut a = adapter(gpu, &model);
        if let Adapter::Lora(l) = &mut a {
            l.config.lora_dropout = dropout;
        }
        let mut t = Trainer::new(gpu, a, OptimizerConfig::default(), 3).unwrap();
        t.objective = Objective::Preference(DPO);
        t.disable_dropout = disable;
        let s = block_on(t.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
        let values: Vec<Vec<f32>> =
            t.adapter.tensors().iter().map(|(_, p)| block_on(p.to_vec::<f32>(gpu)).unwrap()).collect();
        (s.loss, values)
    };
    let plain = step(0.0, false);
    assert_eq!(step(0.1, true), plain, "dropout 0.1 disabled is the dropout-free step");
    assert_ne!(step(0.1, false), plain, "kept, dropout changes the step");
    let recipe = |objective| TrainRecipe { objective, ..Default::default() };
    assert!(recipe(Objective::Preference(DPO)).disables_dropout());
    assert!(!recipe(Objective::Sft(webpeft::model::llama::SftLoss::Nll)).disables_dropout());
    let kept = TrainRecipe { disable_dropout: Some(false), ..recipe(Objective::Preference(DPO)) };
    assert!(!kept.disables_dropout());
}
