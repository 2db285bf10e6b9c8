//! Evaluating a preference objective against TRL 0.24's `evaluate()`
//! (tests/fixtures/preference_eval, `make_fixtures.py preference_eval`): DPO
//! (label smoothing 0.1), ORPO, CPO and KTO (undesirable weight 1.5) with a
//! random LoRA on all seven projections of the fixture Llama, batches of 2:
//! five pairs (2, 2 and 1: `eval_loss` weights batches by their pairs, the
//! metrics do not) and six KTO examples with their KL rows: every metric TRL
//! reports but ORPO's, CPO's and KTO's `logits/*`.

mod common;

use common::{block_on, fixture, gpu};
use serde_json::Value;
use webpeft::kernels::preference::{CpoLoss, DpoLoss, KtoLoss, KtoLossType, PreferenceLoss};
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::LoraAdapter;
use webpeft::quant::QuantFormat;
use webpeft::train::data::DataOptions;
use webpeft::train::kto::kto_dataset;
use webpeft::train::preference::{preference_dataset, Objective};
use webpeft::train::trainer::{OptimizerConfig, Trainer};

const PAD: u32 = 383;

#[test]
fn dpo_orpo_cpo_and_kto_evaluate_as_trl() {
    let gpu = gpu();
    let model = block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap();
    let tok = block_on(Tokenizer::load(&DirFiles::new(fixture("llama_gqa")).unwrap())).unwrap();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(fixture("preference_eval/expected.json")).unwrap()).unwrap();
    let opts = DataOptions { seq_len: 512, batch_size: 2, shuffle: false, ..Default::default() };
    let kto = KtoLoss { beta: 0.1, desirable_weight: 1.0, undesirable_weight: 1.5, loss_type: KtoLossType::Kto };
    let cases = [
        ("dpo", PreferenceLoss::Dpo(DpoLoss { label_smoothing: 0.1, ..DpoLoss::TRL })),
        ("orpo", PreferenceLoss::Orpo { beta: 0.1 }),
        ("cpo", PreferenceLoss::Cpo(CpoLoss::TRL)),
        ("kto", PreferenceLoss::Kto(kto)),
    ];
    for (name, loss) in cases {
        let data = match loss {
            PreferenceLoss::Kto(_) => {
                let text = std::fs::read(fixture("kto/examples.jsonl")).unwrap();
                kto_dataset("examples.jsonl", &text, Some(&tok), &opts, PAD, true).unwrap()
            }
            _ => {
                let text = std::fs::read(fixture("preference_eval/pairs.jsonl")).unwrap();
                preference_dataset("pairs.jsonl", &text, Some(&tok), &opts, PAD, loss.tokenization()).unwrap()
            }
        };
        let files = DirFiles::new(fixture("preference_eval/adapter")).unwrap();
        let adapter = Adapter::Lora(block_on(LoraAdapter::load(gpu, &files, &model.config)).unwrap());
        let mut trainer = Trainer::new(gpu, adapter, OptimizerConfig::default(), 0).unwrap();
        trainer.objective = Objective::Preference(loss);
        let batches = data.epoch(0);
        let e = block_on(trainer.evaluate_preference(gpu, &model, &batches)).unwrap();
        let want = &expected[name];
        let close = |what: &str, got: f64, want: f64| {
            let tol = 2e-5 * want.abs().max(1.0);
            assert!((got - want).abs() <= tol, "{name} {what}: {got} vs TRL's {want}");
        };
        close("eval_loss", e.loss, want["eval_loss"].as_f64().unwrap());
        for (metric, got) in &e.metrics {
            let key = format!("eval_{metric}");
            let w = want[&key].as_f64().unwrap_or_else(|| panic!("{name}: TRL reports no {key}"));
            close(&key, *got, w);
            if key.starts_with("eval_logits/") {
                eprintln!("{name} {key}: {got} vs TRL's {w}");
                assert!((got - w).abs() <= 1e-7, "{name} {key}: {got} vs {w}");
            }
        }
        let ours = e.metrics.len() + 1;
        // logits/* are DPO's only here (the others' means take in the padding's positions).
        let theirs =
            want.as_object().unwrap().keys().filter(|k| name == "dpo" || !k.starts_with("eval_logits/")).count();
        assert_eq!(ours, theirs, "{name}: {:?} vs {want}", e.metrics);
        eprintln!(
            "{name}: {} batches, eval_loss {} (TRL {}), {} metrics",
            e.batches,
            e.loss,
            want["eval_loss"],
            ours - 1
        );
    }
}
