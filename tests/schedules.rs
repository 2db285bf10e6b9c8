//! Learning-rate schedules against transformers' (tests/fixtures/schedules.json:
//! base lr 1e-2, warmup 3, 10 steps; and the lrs of the lora_sched run).

mod common;

use common::fixture;
use serde_json::Value;
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
    for (key, schedule) in
        [("linear", Schedule::Linear), ("cosine", Schedule::Cosine), ("constant_with_warmup", Schedule::Constant)]
    {
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
    let s = LrSchedule::new(Schedule::Cosine, 1e-2, 3, 10).unwrap();
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
    let c = LrSchedule::new(Schedule::Cosine, 1.0, 2, 6).unwrap();
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
    for s in [Schedule::Constant, Schedule::Linear, Schedule::Cosine] {
        assert_eq!(Schedule::from_name(s.name()).unwrap(), s);
    }
    assert!(matches!(Schedule::from_name("cosine_with_restarts"), Err(Error::InvalidArgument { .. })));
    assert!(matches!(Schedule::from_name("Linear"), Err(Error::InvalidArgument { .. })));
}

#[test]
fn bad_arguments_are_typed_errors() {
    let bad = [
        (Schedule::Linear, f64::NAN, 0, 10),
        (Schedule::Linear, f64::INFINITY, 0, 10),
        (Schedule::Linear, -1e-3, 0, 10),
        (Schedule::Cosine, 1e-3, 0, 0),
        (Schedule::Constant, 1e-3, 11, 10),
    ];
    for (s, lr, w, t) in bad {
        let r = LrSchedule::new(s, lr, w, t);
        assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{s:?} {lr} {w} {t}: {r:?}");
    }
    let s = LrSchedule { schedule: Schedule::Linear, base_lr: 1.0, warmup_steps: 5, total_steps: 3 };
    assert!(s.validate().is_err());
}
