//! Learning-rate schedules, as transformers 4.57 defines them
//! (`transformers/optimization.py`): a linear warmup from 0 over
//! `warmup_steps`, then constant, linear decay to 0, or half a cosine to 0.
//!
//! The lr for optimizer step `step` (0-based) is `base_lr * lambda(step)`, as
//! torch's `LambdaLR` computes it; `lambda` is evaluated in f64 with the same
//! operations in the same order as transformers' Python, so the values are
//! bit-for-bit those of `scheduler.get_last_lr()` before step `step`.

use crate::{Error, Result};

/// The shape of the schedule after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schedule {
    /// `get_constant_schedule_with_warmup` (with no warmup, plain constant).
    Constant,
    /// `get_linear_schedule_with_warmup`: down to 0 at `total_steps`.
    Linear,
    /// `get_cosine_schedule_with_warmup` with `num_cycles = 0.5`: half a cosine down to 0 at `total_steps`.
    Cosine,
}

impl Schedule {
    /// `"constant"`, `"linear"` or `"cosine"` (transformers' `lr_scheduler_type` names).
    pub fn from_name(name: &str) -> Result<Schedule> {
        match name {
            "constant" => Ok(Schedule::Constant),
            "linear" => Ok(Schedule::Linear),
            "cosine" => Ok(Schedule::Cosine),
            other => Err(Error::invalid(
                "Schedule::from_name",
                format!("unknown schedule \"{other}\" (expected \"constant\", \"linear\" or \"cosine\")"),
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::Linear => "linear",
            Schedule::Cosine => "cosine",
        }
    }
}

/// A schedule with its base lr and step counts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub schedule: Schedule,
    /// The optimizer's lr (`LambdaLR`'s `base_lr`), finite and ≥ 0.
    pub base_lr: f64,
    /// Steps of linear warmup from 0 (`num_warmup_steps`), at most `total_steps`.
    pub warmup_steps: u64,
    /// `num_training_steps`, at least 1 (unused by `Constant`, but checked alike).
    pub total_steps: u64,
}

impl LrSchedule {
    /// A validated schedule.
    pub fn new(schedule: Schedule, base_lr: f64, warmup_steps: u64, total_steps: u64) -> Result<LrSchedule> {
        let s = LrSchedule { schedule, base_lr, warmup_steps, total_steps };
        s.validate()?;
        Ok(s)
    }

    /// base_lr finite and ≥ 0, total_steps ≥ 1, warmup_steps ≤ total_steps.
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
        Ok(())
    }

    /// The factor on `base_lr` at optimizer step `step` (transformers' `lr_lambda`).
    /// Past `total_steps`: linear stays at 0; cosine follows the formula (it
    /// rises again, as transformers' does), clamped at 0.
    pub fn lambda(&self, step: u64) -> f64 {
        let (step_f, warmup, total) = (step as f64, self.warmup_steps, self.total_steps);
        if step < warmup {
            // float(current_step) / float(max(1, num_warmup_steps))
            return step_f / (warmup.max(1) as f64);
        }
        // Signed, as Python ints: `num_training_steps - current_step` may be negative.
        let after_warmup = (total as f64 - warmup as f64).max(1.0);
        match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear => (0.0f64).max((total as i128 - step as i128) as f64 / after_warmup),
            Schedule::Cosine => {
                let num_cycles = 0.5f64;
                let progress = (step - warmup) as f64 / after_warmup;
                let factor = 0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos());
                (0.0f64).max(factor)
            }
        }
    }

    /// The lr used for optimizer step `step` (0-based): `base_lr * lambda(step)`.
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.lambda(step)
    }
}
