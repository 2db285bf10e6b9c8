//! Learning-rate schedules, as transformers 4.57 defines them
//! (`transformers/optimization.py`, `get_scheduler`): each `lr_scheduler_type`
//! but `reduce_lr_on_plateau`, with its `lr_scheduler_kwargs`.
//!
//! The lr for optimizer step `step` (0-based) is `base_lr * lambda(step)`, as
//! torch's `LambdaLR` computes it; `lambda` is evaluated in f64 with the same
//! operations in the same order as transformers' Python, so the values are
//! bit-for-bit those of `scheduler.get_last_lr()` before step `step`.
//!
//! As transformers' `get_scheduler`: `"constant"` has no warmup (it is
//! `get_constant_schedule`; a warmup asked of it is refused here, not dropped:
//! `"constant_with_warmup"` has one), and `"inverse_sqrt"` takes no kwargs
//! (its timescale is the warmup's steps, or 10,000 without warmup).

use serde_json::{json, Map, Value};

use crate::{Error, Result};

fn bad_kwargs(detail: impl Into<String>) -> Error {
    Error::TrainOption { option: "schedule_kwargs", detail: detail.into() }
}

/// How `warmup_stable_decay` ramps over a phase's progress p ∈ [0, 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ramp {
    /// p (warmup) or 1 − p (decay).
    Linear,
    /// ½(1 − cos πp) (warmup) or ½(1 + cos 2π·num_cycles·p) (decay).
    Cosine,
    /// 1 − √(1 − p) (warmup) or 1 − √p (decay).
    OneMinusSqrt,
}

impl Ramp {
    fn from_name(key: &str, name: &str) -> Result<Ramp> {
        match name {
            "linear" => Ok(Ramp::Linear),
            "cosine" => Ok(Ramp::Cosine),
            "1-sqrt" => Ok(Ramp::OneMinusSqrt),
            other => {
                Err(bad_kwargs(format!("{key}: unknown \"{other}\" (expected \"linear\", \"cosine\" or \"1-sqrt\")")))
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Ramp::Linear => "linear",
            Ramp::Cosine => "cosine",
            Ramp::OneMinusSqrt => "1-sqrt",
        }
    }
}

/// The floor of the `cosine_with_min_lr` schedules: `min_lr`, or `min_lr_rate`
/// (a fraction of the base lr).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinLr {
    Lr(f64),
    Rate(f64),
}

/// The shape of the schedule (transformers' `SchedulerType` and its kwargs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Schedule {
    /// `get_constant_schedule`: the base lr throughout, no warmup.
    Constant,
    /// `get_constant_schedule_with_warmup`.
    ConstantWithWarmup,
    /// `get_linear_schedule_with_warmup`: down to 0 at `total_steps`.
    Linear,
    /// `get_cosine_schedule_with_warmup`: `num_cycles` (0.5: half a cosine, down to 0 at `total_steps`).
    Cosine { num_cycles: f64 },
    /// `get_cosine_with_hard_restarts_schedule_with_warmup`: `num_cycles` (1) cosines from the base lr to 0.
    CosineWithRestarts { num_cycles: f64 },
    /// `get_polynomial_decay_schedule_with_warmup`: from the base lr to `lr_end` (1e-7) as (1 − p)^`power` (1).
    Polynomial { lr_end: f64, power: f64 },
    /// `get_inverse_sqrt_schedule`: 1/√((step + timescale − warmup) / timescale), timescale = warmup or 10,000.
    InverseSqrt,
    /// `get_cosine_with_min_lr_schedule_with_warmup`: `cosine` lifted to end at `min_lr`.
    CosineWithMinLr { num_cycles: f64, min_lr: MinLr },
    /// `get_cosine_with_min_lr_schedule_with_warmup_lr_rate`: as `CosineWithMinLr`, one step ahead, its warmup
    /// from `warmup_lr_rate` (none: from 1/warmup).
    CosineWarmupWithMinLr { num_cycles: f64, min_lr: MinLr, warmup_lr_rate: Option<f64> },
    /// `get_wsd_schedule`: warmup from `min_lr_ratio` (`warmup_type`), a stable phase at the base lr of
    /// `num_stable_steps` (none: the steps the other two leave), a decay over `num_decay_steps` to
    /// `min_lr_ratio` (`decay_type`, cosine with `num_cycles`), then `min_lr_ratio`.
    WarmupStableDecay(Wsd),
}

/// `warmup_stable_decay`'s kwargs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wsd {
    pub num_decay_steps: u64,
    pub num_stable_steps: Option<u64>,
    pub warmup_type: Ramp,
    pub decay_type: Ramp,
    pub min_lr_ratio: f64,
    pub num_cycles: f64,
}

/// The names `Schedule::from_name` takes, in transformers' order.
pub const SCHEDULE_NAMES: [&str; 10] = [
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
];

/// A kwargs object's fields, each taken once; what is left over is refused.
struct Kwargs<'a> {
    map: Map<String, Value>,
    schedule: &'a str,
}

impl Kwargs<'_> {
    fn number(&mut self, key: &str) -> Result<Option<f64>> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64().filter(|x| x.is_finite()) {
                Some(x) => Ok(Some(x)),
                None => Err(bad_kwargs(format!("{key}: expected a finite number, got {v}"))),
            },
        }
    }

    fn steps(&mut self, key: &str) -> Result<Option<u64>> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(x) => Ok(Some(x)),
                None => Err(bad_kwargs(format!("{key}: expected a whole number of steps ≥ 0, got {v}"))),
            },
        }
    }

    fn ramp(&mut self, key: &str, default: Ramp) -> Result<Ramp> {
        match self.map.remove(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::String(s)) => Ramp::from_name(key, &s),
            Some(v) => Err(bad_kwargs(format!("{key}: expected \"linear\", \"cosine\" or \"1-sqrt\", got {v}"))),
        }
    }

    fn cycles(&mut self, default: f64) -> Result<f64> {
        let n = self.number("num_cycles")?.unwrap_or(default);
        if n <= 0.0 {
            return Err(bad_kwargs(format!("num_cycles: must be > 0, got {n}")));
        }
        Ok(n)
    }

    fn min_lr(&mut self) -> Result<MinLr> {
        match (self.number("min_lr")?, self.number("min_lr_rate")?) {
            (Some(_), Some(_)) => Err(bad_kwargs("give one of min_lr or min_lr_rate, not both")),
            (Some(lr), None) if lr >= 0.0 => Ok(MinLr::Lr(lr)),
            (None, Some(rate)) if (0.0..=1.0).contains(&rate) => Ok(MinLr::Rate(rate)),
            (Some(lr), None) => Err(bad_kwargs(format!("min_lr: must be ≥ 0, got {lr}"))),
            (None, Some(rate)) => Err(bad_kwargs(format!("min_lr_rate: must be in [0, 1], got {rate}"))),
            (None, None) => Err(bad_kwargs(format!("{} needs min_lr or min_lr_rate", self.schedule))),
        }
    }

    fn finish(self) -> Result<()> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(k) => Err(bad_kwargs(format!(
                "{}: no kwarg \"{k}\"{}",
                self.schedule,
                match self.schedule {
                    "inverse_sqrt" | "constant" | "constant_with_warmup" => {
                        " (transformers' Trainer passes it none)".to_string()
                    }
                    _ => String::new(),
                }
            ))),
        }
    }
}

impl Schedule {
    /// transformers' cosine (half a cosine to 0).
    pub const COSINE: Schedule = Schedule::Cosine { num_cycles: 0.5 };

    /// A `lr_scheduler_type` name with its kwargs left at their defaults.
    pub fn from_name(name: &str) -> Result<Schedule> {
        Schedule::with_kwargs(name, &Value::Object(Map::new()))
    }

    /// A `lr_scheduler_type` name with its `lr_scheduler_kwargs` (a JSON object;
    /// `null` is `{}`). An unknown name is a `schedule` error; a kwarg the
    /// schedule does not take, or out of range, a `schedule_kwargs` error.
    pub fn with_kwargs(name: &str, kwargs: &Value) -> Result<Schedule> {
        let map = match kwargs {
            Value::Null => Map::new(),
            Value::Object(m) => m.clone(),
            other => return Err(bad_kwargs(format!("expected a JSON object, got {other}"))),
        };
        let mut k = Kwargs { map, schedule: name };
        let schedule = match name {
            "constant" => Schedule::Constant,
            "constant_with_warmup" => Schedule::ConstantWithWarmup,
            "linear" => Schedule::Linear,
            "cosine" => Schedule::Cosine { num_cycles: k.cycles(0.5)? },
            "cosine_with_restarts" => Schedule::CosineWithRestarts { num_cycles: k.cycles(1.0)? },
            "polynomial" => {
                let lr_end = k.number("lr_end")?.unwrap_or(1e-7);
                let power = k.number("power")?.unwrap_or(1.0);
                if lr_end < 0.0 {
                    return Err(bad_kwargs(format!("lr_end: must be ≥ 0, got {lr_end}")));
                }
                Schedule::Polynomial { lr_end, power }
            }
            "inverse_sqrt" => Schedule::InverseSqrt,
            "cosine_with_min_lr" => Schedule::CosineWithMinLr { num_cycles: k.cycles(0.5)?, min_lr: k.min_lr()? },
            "cosine_warmup_with_min_lr" => {
                let (num_cycles, min_lr) = (k.cycles(0.5)?, k.min_lr()?);
                let warmup_lr_rate = k.number("warmup_lr_rate")?;
                if let Some(r) = warmup_lr_rate.filter(|r| !(0.0..=1.0).contains(r)) {
                    return Err(bad_kwargs(format!("warmup_lr_rate: must be in [0, 1], got {r}")));
                }
                Schedule::CosineWarmupWithMinLr { num_cycles, min_lr, warmup_lr_rate }
            }
            "warmup_stable_decay" => {
                let Some(num_decay_steps) = k.steps("num_decay_steps")? else {
                    return Err(bad_kwargs("warmup_stable_decay needs num_decay_steps"));
                };
                let wsd = Wsd {
                    num_decay_steps,
                    num_stable_steps: k.steps("num_stable_steps")?,
                    warmup_type: k.ramp("warmup_type", Ramp::Linear)?,
                    decay_type: k.ramp("decay_type", Ramp::Cosine)?,
                    min_lr_ratio: k.number("min_lr_ratio")?.unwrap_or(0.0),
                    num_cycles: k.cycles(0.5)?,
                };
                if !(0.0..=1.0).contains(&wsd.min_lr_ratio) {
                    return Err(bad_kwargs(format!("min_lr_ratio: must be in [0, 1], got {}", wsd.min_lr_ratio)));
                }
                Schedule::WarmupStableDecay(wsd)
            }
            "reduce_lr_on_plateau" => {
                return Err(Error::TrainOption {
                    option: "schedule",
                    detail: "reduce_lr_on_plateau follows an evaluation metric, which webpeft's runs do not step \
                             the schedule on: pick another"
                        .into(),
                })
            }
            other => {
                return Err(Error::TrainOption {
                    option: "schedule",
                    detail: format!("unknown schedule \"{other}\" (expected one of {})", SCHEDULE_NAMES.join(", ")),
                })
            }
        };
        k.finish()?;
        Ok(schedule)
    }

    /// Its `lr_scheduler_type` name.
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::ConstantWithWarmup => "constant_with_warmup",
            Schedule::Linear => "linear",
            Schedule::Cosine { .. } => "cosine",
            Schedule::CosineWithRestarts { .. } => "cosine_with_restarts",
            Schedule::Polynomial { .. } => "polynomial",
            Schedule::InverseSqrt => "inverse_sqrt",
            Schedule::CosineWithMinLr { .. } => "cosine_with_min_lr",
            Schedule::CosineWarmupWithMinLr { .. } => "cosine_warmup_with_min_lr",
            Schedule::WarmupStableDecay(_) => "warmup_stable_decay",
        }
    }

    /// Its `lr_scheduler_kwargs`, every one spelled out (`with_kwargs` reads them back).
    pub fn kwargs(self) -> Value {
        let min = |m: MinLr| match m {
            MinLr::Lr(lr) => ("min_lr", lr),
            MinLr::Rate(r) => ("min_lr_rate", r),
        };
        match self {
            Schedule::Constant | Schedule::ConstantWithWarmup | Schedule::Linear | Schedule::InverseSqrt => json!({}),
            Schedule::Cosine { num_cycles } | Schedule::CosineWithRestarts { num_cycles } => {
                json!({ "num_cycles": num_cycles })
            }
            Schedule::Polynomial { lr_end, power } => json!({ "lr_end": lr_end, "power": power }),
            Schedule::CosineWithMinLr { num_cycles, min_lr } => {
                let (key, v) = min(min_lr);
                json!({ "num_cycles": num_cycles, key: v })
            }
            Schedule::CosineWarmupWithMinLr { num_cycles, min_lr, warmup_lr_rate } => {
                let (key, v) = min(min_lr);
                json!({ "num_cycles": num_cycles, key: v, "warmup_lr_rate": warmup_lr_rate })
            }
            Schedule::WarmupStableDecay(w) => json!({
                "num_decay_steps": w.num_decay_steps,
                "num_stable_steps": w.num_stable_steps,
                "warmup_type": w.warmup_type.name(),
                "decay_type": w.decay_type.name(),
                "min_lr_ratio": w.min_lr_ratio,
                "num_cycles": w.num_cycles,
            }),
        }
    }

    /// Whether it has a warmup phase (all but `constant`).
    pub fn has_warmup(self) -> bool {
        self != Schedule::Constant
    }

    /// What the schedule asks of a run at peak lr `lr` that `warms_up` (or
    /// not): `constant` no warmup (transformers' drops it: refused here),
    /// `polynomial` an `lr_end` below the lr.
    pub fn check_run(self, lr: f64, warms_up: bool) -> Result<()> {
        if warms_up && !self.has_warmup() {
            return Err(Error::TrainOption {
                option: "schedule",
                detail: "\"constant\" has no warmup (transformers' get_constant_schedule drops it): use \
                         \"constant_with_warmup\""
                    .into(),
            });
        }
        match self {
            Schedule::Polynomial { lr_end, .. } if lr <= lr_end => {
                Err(bad_kwargs(format!("polynomial: lr_end ({lr_end:e}) must be smaller than the lr ({lr:e})")))
            }
            _ => Ok(()),
        }
    }
}

impl Wsd {
    /// transformers' `_get_wsd_scheduler_lambda` at `step` of a run of `total`
    /// steps, `warmup` of them warming up.
    fn lambda(&self, step: u64, warmup: u64, total: u64) -> f64 {
        let lift = |factor: f64| (0.0f64).max(factor * (1.0 - self.min_lr_ratio) + self.min_lr_ratio);
        let pi = std::f64::consts::PI;
        if step < warmup {
            let progress = step as f64 / (warmup.max(1) as f64);
            return lift(match self.warmup_type {
                Ramp::Linear => progress,
                Ramp::Cosine => 0.5 * (1.0 - (pi * progress).cos()),
                Ramp::OneMinusSqrt => 1.0 - (1.0 - progress).sqrt(),
            });
        }
        let stable = self.num_stable_steps.unwrap_or(total.saturating_sub(warmup.saturating_add(self.num_decay_steps)));
        if step < warmup.saturating_add(stable) {
            return 1.0;
        }
        if step < warmup.saturating_add(stable).saturating_add(self.num_decay_steps) {
            let progress = (step - warmup - stable) as f64 / (self.num_decay_steps.max(1) as f64);
            return lift(match self.decay_type {
                Ramp::Linear => 1.0 - progress,
                Ramp::Cosine => 0.5 * (1.0 + (pi * self.num_cycles * 2.0 * progress).cos()),
                Ramp::OneMinusSqrt => 1.0 - progress.sqrt(),
            });
        }
        self.min_lr_ratio
    }
}

/// A schedule with its base lr and step counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub schedule: Schedule,
    /// The optimizer's lr (`LambdaLR`'s `base_lr`), finite and ≥ 0.
    pub base_lr: f64,
    /// Steps of warmup (`num_warmup_steps`), at most `total_steps`.
    pub warmup_steps: u64,
    /// `num_training_steps`, at least 1 (unused by the constant schedules and
    /// `inverse_sqrt`, but checked alike).
    pub total_steps: u64,
}

impl LrSchedule {
    /// A validated schedule.
    pub fn new(schedule: Schedule, base_lr: f64, warmup_steps: u64, total_steps: u64) -> Result<LrSchedule> {
        let s = LrSchedule { schedule, base_lr, warmup_steps, total_steps };
        s.validate()?;
        Ok(s)
    }

    /// base_lr finite and ≥ 0, total_steps ≥ 1, warmup_steps ≤ total_steps;
    /// no warmup on `constant`; what the schedule's own kwargs need of the
    /// lr and the steps.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "LrSchedule";
        if !(self.base_lr.is_finite() && self.base_lr >= 0.0) {
            return Err(Error::invalid(OP, format!("base_lr must be finite and ≥ 0, got {}", self.base_lr)));
        }
        if self.total_steps == 0 {
            return Err(Error::invalid(OP, "total_steps must be at least 1, got 0"));
        }
        if self.warmup_steps > self.total_steps {
            return Err(Error::invalid(
                OP,
                format!("warmup_steps ({}) must not exceed total_steps ({})", self.warmup_steps, self.total_steps),
            ));
        }
        self.schedule.check_run(self.base_lr, self.warmup_steps > 0)?;
        match self.schedule {
            Schedule::CosineWithMinLr { min_lr: MinLr::Lr(_), .. }
            | Schedule::CosineWarmupWithMinLr { min_lr: MinLr::Lr(_), .. }
                if self.base_lr == 0.0 =>
            {
                Err(bad_kwargs("min_lr is a fraction of the lr, which is 0: give min_lr_rate"))
            }
            Schedule::WarmupStableDecay(Wsd { num_decay_steps, num_stable_steps: None, .. })
                if self.warmup_steps.saturating_add(num_decay_steps) > self.total_steps =>
            {
                Err(bad_kwargs(format!(
                    "warmup_stable_decay: {} warmup and {num_decay_steps} decay steps are more than the run's {} \
                     (give fewer num_decay_steps)",
                    self.warmup_steps, self.total_steps
                )))
            }
            _ => Ok(()),
        }
    }

    fn min_lr_rate(&self, m: MinLr) -> f64 {
        match m {
            // min_lr / optimizer.defaults["lr"]
            MinLr::Lr(lr) => lr / self.base_lr,
            MinLr::Rate(r) => r,
        }
    }

    /// The factor on `base_lr` at optimizer step `step` (transformers' `lr_lambda`),
    /// past `total_steps` too, as transformers computes it (linear stays at
    /// 0; cosine follows the formula, clamped at 0).
    pub fn lambda(&self, step: u64) -> f64 {
        let (step_f, warmup, total) = (step as f64, self.warmup_steps, self.total_steps);
        let warmup_f = warmup as f64;
        // float(max(1, num_training_steps - num_warmup_steps)), signed as Python's ints.
        let after_warmup = (total as f64 - warmup_f).max(1.0);
        let linear_warmup = || step_f / (warmup.max(1) as f64);
        let cosine =
            |num_cycles: f64, progress: f64| 0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos());
        match self.schedule {
            Schedule::Constant => 1.0,
            _ if step < warmup
                && !matches!(
                    self.schedule,
                    Schedule::CosineWarmupWithMinLr { .. } | Schedule::WarmupStableDecay { .. }
                ) =>
            {
                linear_warmup()
            }
            Schedule::ConstantWithWarmup => 1.0,
            Schedule::Linear => (0.0f64).max((total as i128 - step as i128) as f64 / after_warmup),
            Schedule::Cosine { num_cycles } => (0.0f64).max(cosine(num_cycles, (step - warmup) as f64 / after_warmup)),
            Schedule::CosineWithRestarts { num_cycles } => {
                let progress = (step - warmup) as f64 / after_warmup;
                if progress >= 1.0 {
                    return 0.0;
                }
                (0.0f64).max(0.5 * (1.0 + (std::f64::consts::PI * ((num_cycles * progress) % 1.0)).cos()))
            }
            Schedule::Polynomial { lr_end, power } => {
                let lr_init = self.base_lr;
                if step > total {
                    return lr_end / lr_init;
                }
                let decay_steps = total - warmup;
                if decay_steps == 0 {
                    // Only at step == total == warmup, where Python divides by zero.
                    return lr_end / lr_init;
                }
                let pct_remaining = 1.0 - (step - warmup) as f64 / decay_steps as f64;
                let decay = (lr_init - lr_end) * pct_remaining.powf(power) + lr_end;
                decay / lr_init
            }
            Schedule::InverseSqrt => {
                let timescale = if warmup > 0 { warmup } else { 10_000 };
                let shift = timescale - warmup;
                1.0 / ((step + shift) as f64 / timescale as f64).sqrt()
            }
            Schedule::CosineWithMinLr { num_cycles, min_lr } => {
                let rate = self.min_lr_rate(min_lr);
                let factor = cosine(num_cycles, (step - warmup) as f64 / after_warmup);
                (0.0f64).max(factor * (1.0 - rate) + rate)
            }
            Schedule::CosineWarmupWithMinLr { num_cycles, min_lr, warmup_lr_rate } => {
                if step_f < warmup_f {
                    return match warmup_lr_rate {
                        None => (step_f + 1.0) / warmup_f.max(1.0),
                        // max(1, num_warmup_steps - 1) on floats
                        Some(r) => r + (1.0 - r) * step_f / (warmup_f - 1.0).max(1.0),
                    };
                }
                let rate = self.min_lr_rate(min_lr);
                let progress = (step_f - warmup_f + 1.0) / (total as f64 - warmup_f).max(1.0);
                (0.0f64).max(cosine(num_cycles, progress) * (1.0 - rate) + rate)
            }
            Schedule::WarmupStableDecay(w) => w.lambda(step, warmup, total),
        }
    }

    /// The lr used for optimizer step `step` (0-based): `base_lr * lambda(step)`.
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.lambda(step)
    }
}
