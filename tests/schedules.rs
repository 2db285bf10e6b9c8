//! Learning-rate schedules against transformers' (tests/fixtures/schedules.json:
//! base lr 1e-2, warmup 3, 10 steps; the lrs of the lora_sched run; and
//! lr_schedules/cases.json: every lr_scheduler_type but reduce_lr_on_plateau,
//! with kwargs and warmup ratios, as the Trainer builds them).

mod common;

use common::fixture;
use serde_json::Value;
use webpeft::train::run::RunConfig;
use webpeft::train::schedule::{LrSchedule, Schedule};
use webpeft::Error;

fn json(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(path)).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_close(what: &str, got: f64, want: f64) {
    let tol = 1e-15 * want.abs().max(f64::MIN_POSITIVE);
    assert!((got - want).abs() <= tol, "{what}: got {got:e}, want {want:e}");
}

#[test]
fn schedules_match_transformers() {
    let fx = json("schedules.json");
    let base_lr = fx["base_lr"].as_f64().unwrap();
    let warmup = fx["num_warmup_steps"].as_u64().unwrap();
    let total = fx["num_training_steps"].as_u64().unwrap();
    for (key, schedule) in [
        ("linear", Schedule::Linear),
        ("cosine", Schedule::COSINE),
        ("constant_with_warmup", Schedule::ConstantWithWarmup),
    ] {
        let s = LrSchedule::new(schedule, base_lr, warmup, total).unwrap();
        let want = floats(&fx[key]);
        assert_eq!(want.len() as u64, total);
        for (step, &w) in want.iter().enumerate() {
            assert_close(&format!("{key} step {step}"), s.lr(step as u64), w);
        }
    }
}

#[test]
fn lora_sched_run_lrs() {
    let fx = json("lora_sched/steps.json");
    let s = LrSchedule::new(Schedule::COSINE, 1e-2, 3, 10).unwrap();
    for (step, w) in floats(&fx["lr"]).into_iter().enumerate() {
        assert_close(&format!("step {step}"), s.lr(step as u64), w);
    }
}

#[test]
fn no_warmup_and_past_the_end() {
    let c = LrSchedule::new(Schedule::Constant, 0.5, 0, 4).unwrap();
    assert!((0..20).all(|i| c.lr(i) == 0.5));

    let l = LrSchedule::new(Schedule::Linear, 1.0, 0, 4).unwrap();
    assert_eq!((0..6).map(|i| l.lr(i)).collect::<Vec<_>>(), [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
    assert_eq!(l.lr(u64::MAX), 0.0);

    // transformers' cosine past num_training_steps: max(0, 0.5 (1 + cos(π p))) with p > 1 rises again.
    let c = LrSchedule::new(Schedule::COSINE, 1.0, 2, 6).unwrap();
    assert_eq!(c.lr(0), 0.0);
    assert_eq!(c.lr(1), 0.5);
    assert_eq!(c.lr(2), 1.0);
    assert!(c.lr(6).abs() < 1e-16);
    let p = 5.0 / 4.0;
    assert_eq!(c.lr(7), 0.5 * (1.0 + (std::f64::consts::PI * p).cos()));
    assert!((7..40).all(|i| c.lr(i) >= 0.0));

    // Warmup over every step.
    let w = LrSchedule::new(Schedule::Linear, 2.0, 4, 4).unwrap();
    assert_eq!((0..5).map(|i| w.lr(i)).collect::<Vec<_>>(), [0.0, 0.5, 1.0, 1.5, 0.0]);
}

#[test]
fn names() {
    for s in [Schedule::Constant, Schedule::ConstantWithWarmup, Schedule::Linear, Schedule::COSINE] {
        assert_eq!(Schedule::from_name(s.name()).unwrap(), s);
        assert_eq!(Schedule::with_kwargs(s.name(), &s.kwargs()).unwrap(), s);
    }
    for name in ["Linear", "reduce_lr_on_plateau", "cosine_schedule"] {
        let e = Schedule::from_name(name).unwrap_err();
        assert!(matches!(e, Error::TrainOption { option: "schedule", .. }), "{name}: {e}");
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let bad = [
        (Schedule::Linear, f64::NAN, 0, 10),
        (Schedule::Linear, f64::INFINITY, 0, 10),
        (Schedule::Linear, -1e-3, 0, 10),
        (Schedule::COSINE, 1e-3, 0, 0),
        (Schedule::Constant, 1e-3, 11, 10),
    ];
    for (s, lr, w, t) in bad {
        let r = LrSchedule::new(s, lr, w, t);
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{s:?} {lr} {w} {t}: {r:?}");
    }
    let s = LrSchedule { schedule: Schedule::Linear, base_lr: 1.0, warmup_steps: 5, total_steps: 3 };
    assert!(s.validate().is_err());
}

#[test]
fn every_transformers_schedule_matches_the_trainer_s() {
    let fx = json("lr_schedules/cases.json");
    let cases = fx["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 18);
    for c in cases {
        let name = c["schedule"].as_str().unwrap();
        let what = format!("{name} {}", c["kwargs"]);
        let schedule = Schedule::with_kwargs(name, &c["kwargs"]).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(schedule.name(), name);
        // Spelled out, the kwargs read back as the same schedule (checkpoints keep them so).
        assert_eq!(Schedule::with_kwargs(name, &schedule.kwargs()).unwrap(), schedule, "{what}");
        let total = c["num_training_steps"].as_u64().unwrap();
        let config = RunConfig {
            warmup_steps: c["warmup_steps"].as_u64().unwrap(),
            warmup_ratio: c["warmup_ratio"].as_f64().unwrap(),
            ..RunConfig::default()
        };
        let warmup = config.warmup_steps_for(total).unwrap();
        assert_eq!(warmup, c["resolved_warmup_steps"].as_u64().unwrap(), "{what}: warmup steps");
        let s = LrSchedule::new(schedule, c["lr"].as_f64().unwrap(), warmup, total).unwrap();
        let want = floats(&c["lrs"]);
        assert_eq!(want.len() as u64, total + 3);
        for (step, &w) in want.iter().enumerate() {
            // The same f64 operations in the same order as transformers' Python: bit for bit.
            assert_eq!(s.lr(step as u64).to_bits(), w.to_bits(), "{what}: step {step}: {} vs {w}", s.lr(step as u64));
        }
    }
}

#[test]
fn bad_schedule_kwargs_are_named() {
    let kw = |text: &str| serde_json::from_str::<Value>(text).unwrap();
    let refused = [
        ("linear", r#"{"num_cycles": 2}"#, "no kwarg \"num_cycles\""),
        ("inverse_sqrt", r#"{"timescale": 5}"#, "Trainer passes it none"),
        ("cosine", r#"{"num_cycles": 0}"#, "num_cycles: must be > 0"),
        ("cosine", r#"{"num_cycles": "two"}"#, "expected a finite number"),
        ("cosine", "[1]", "expected a JSON object"),
        ("cosine_with_min_lr", "{}", "needs min_lr or min_lr_rate"),
        ("cosine_with_min_lr", r#"{"min_lr": 1e-5, "min_lr_rate": 0.1}"#, "not both"),
        ("cosine_with_min_lr", r#"{"min_lr_rate": 1.5}"#, "min_lr_rate: must be in [0, 1]"),
        ("warmup_stable_decay", "{}", "needs num_decay_steps"),
        ("warmup_stable_decay", r#"{"num_decay_steps": 2.5}"#, "whole number of steps"),
        ("warmup_stable_decay", r#"{"num_decay_steps": 2, "decay_type": "exp"}"#, "decay_type: unknown \"exp\""),
        ("polynomial", r#"{"lr_end": -1}"#, "lr_end: must be ≥ 0"),
    ];
    for (name, kwargs, says) in refused {
        let e = Schedule::with_kwargs(name, &kw(kwargs)).unwrap_err();
        assert!(matches!(e, Error::TrainOption { option: "schedule_kwargs", .. }), "{name} {kwargs}: {e}");
        assert!(e.to_string().contains(says), "{name} {kwargs}: {e}");
    }
    // What needs the lr or the steps is refused with them.
    let poly = Schedule::with_kwargs("polynomial", &kw(r#"{"lr_end": 0.1}"#)).unwrap();
    let e = LrSchedule::new(poly, 0.01, 0, 10).unwrap_err();
    assert!(e.to_string().contains("lr_end (1e-1) must be smaller than the lr (1e-2)"), "{e}");
    let wsd = Schedule::with_kwargs("warmup_stable_decay", &kw(r#"{"num_decay_steps": 8}"#)).unwrap();
    let e = LrSchedule::new(wsd, 0.01, 3, 10).unwrap_err();
    assert!(e.to_string().contains("3 warmup and 8 decay steps are more than the run's 10"), "{e}");
    // constant has no warmup in transformers: asking for one is refused, not dropped.
    let e = LrSchedule::new(Schedule::Constant, 0.01, 2, 10).unwrap_err();
    assert!(
        matches!(e, Error::TrainOption { option: "schedule", .. }) && e.to_string().contains("constant_with_warmup"),
        "{e}"
    );
    let ratio = |r: f64| RunConfig { warmup_ratio: r, ..RunConfig::default() }.warmup_steps_for(10);
    assert!(ratio(1.5).is_err() && ratio(-0.1).is_err() && ratio(f64::NAN).is_err());
    assert_eq!(ratio(0.25).unwrap(), 3);
}

/// The README's two schedule rows (Bad input), as the library prints them.
#[test]
fn the_readme_s_schedule_rows() {
    let e = Schedule::with_kwargs("inverse_sqrt", &serde_json::json!({"timescale": 5})).unwrap_err();
    assert_eq!(
        e.to_string(),
        "training option `schedule_kwargs`: inverse_sqrt: no kwarg \"timescale\" (transformers' Trainer passes it none)"
    );
    let recipe =
        webpeft::train::recipe::TrainRecipe { schedule: Schedule::Constant, warmup_steps: 2, ..Default::default() };
    assert_eq!(
        recipe.validate().unwrap_err().to_string(),
        "training option `schedule`: \"constant\" has no warmup (transformers' get_constant_schedule drops it): use \
         \"constant_with_warmup\""
    );
}
