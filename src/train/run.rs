//! A training run: a [`Trainer`] fed from a [`Dataset`] epoch after epoch,
//! `grad_accum` micro-batches per optimizer step, at the schedule's learning
//! rate, for a number of steps or epochs. This is the loop the CLI and the
//! browser drive, one awaited [`Run::step`] at a time.

use serde_json::{json, Value};

use super::data::{Batch, Dataset};
use super::preference::Objective;
use super::preference_loss::precompute_reference;
use super::schedule::{LrSchedule, Schedule};
use super::trainer::{EvalStats, StepStats, Trainer};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::model::llama::Model;

/// How long and how fast a run trains.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    /// Optimizer steps; `None` takes them from `epochs`.
    pub steps: Option<u64>,
    /// Passes over the dataset (may be fractional) when `steps` is `None`.
    pub epochs: f64,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    pub lr: f64,
    pub schedule: Schedule,
    /// Steps of warmup; 0 takes them from `warmup_ratio`.
    pub warmup_steps: u64,
    /// The fraction of the run's steps that warm up, when `warmup_steps` is 0
    /// (transformers' `warmup_ratio`: `ceil(total · ratio)` steps).
    pub warmup_ratio: f64,
    /// Preference objectives with a reference: score the reference once for
    /// every row before the first step (TRL's `precompute_ref_log_probs`).
    pub precompute_ref_log_probs: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            steps: None,
            epochs: 1.0,
            grad_accum: 1,
            lr: 2e-4,
            schedule: Schedule::Linear,
            warmup_steps: 0,
            warmup_ratio: 0.0,
            precompute_ref_log_probs: false,
        }
    }
}

impl RunConfig {
    /// The run's optimizer steps over `batches_per_epoch` micro-batches an
    /// epoch: `steps`, or `ceil(epochs · batches_per_epoch / grad_accum)`.
    pub fn total_steps(&self, batches_per_epoch: usize) -> Result<u64> {
        const OP: &str = "Run::new";
        let total = match self.steps {
            Some(s) => s,
            None => {
                if !(self.epochs.is_finite() && self.epochs > 0.0) {
                    return Err(Error::invalid(OP, format!("epochs must be positive, got {}", self.epochs)));
                }
                ((self.epochs * batches_per_epoch as f64) / self.grad_accum.max(1) as f64).ceil() as u64
            }
        };
        if total == 0 {
            return Err(Error::invalid(OP, "the run has no step: give steps ≥ 1 or more epochs"));
        }
        Ok(total)
    }

    /// The warmup's steps in a run of `total` steps: `warmup_steps`, or
    /// `ceil(total · warmup_ratio)` (transformers' `get_warmup_steps`).
    pub fn warmup_steps_for(&self, total: u64) -> Result<u64> {
        const OP: &str = "Run::new";
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(Error::invalid(OP, format!("warmup_ratio must be in [0, 1], got {}", self.warmup_ratio)));
        }
        if self.warmup_steps > 0 {
            return Ok(self.warmup_steps);
        }
        Ok((total as f64 * self.warmup_ratio).ceil() as u64)
    }
}

/// The run's place in the data, saved in checkpoints (`progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    /// Micro-batches of `epoch` already used.
    pub batch: usize,
}

#[derive(Debug)]
pub struct Run {
    pub dataset: Dataset,
    pub trainer: Trainer,
    pub schedule: LrSchedule,
    pub grad_accum: usize,
    position: Position,
    /// The current epoch's batches (recomputed when the epoch changes).
    batches: Vec<Batch>,
    /// The reference log-probabilities are still to be precomputed (at the first step).
    precompute: bool,
}

impl Run {
    /// Starts (or, with `position`, resumes) a run. The total step count is
    /// `steps`, or `ceil(epochs · batches_per_epoch / grad_accum)`.
    pub fn new(dataset: Dataset, trainer: Trainer, config: &RunConfig) -> Result<Run> {
        const OP: &str = "Run::new";
        if config.grad_accum == 0 {
            return Err(Error::invalid(OP, "grad_accum must be at least 1"));
        }
        if !(config.lr.is_finite() && config.lr > 0.0) {
            return Err(Error::invalid(
                OP,
                format!("the learning rate must be positive, got {} (with 0 the adapter never changes)", config.lr),
            ));
        }
        if dataset.len() < dataset.batch_size() {
            return Err(Error::invalid(
                OP,
                format!(
                    "the batch size {} is larger than the dataset's {} rows: lower it, or add data",
                    dataset.batch_size(),
                    dataset.len()
                ),
            ));
        }
        let per_epoch = dataset.batches_per_epoch();
        if per_epoch == 0 {
            return Err(Error::EmptyDataset {
                source_name: "training data".into(),
                detail: "no batch to train on".into(),
            });
        }
        let total = config.total_steps(per_epoch)?;
        let schedule = LrSchedule::new(config.schedule, config.lr, config.warmup_steps_for(total)?, total)?;
        let mut trainer = trainer;
        trainer.base_lr = Some(config.lr);
        let batches = dataset.epoch(0);
        Ok(Run {
            dataset,
            trainer,
            schedule,
            grad_accum: config.grad_accum,
            position: Position { epoch: 0, batch: 0 },
            batches,
            precompute: config.precompute_ref_log_probs,
        })
    }

    /// Optimizer steps in the whole run.
    pub fn total_steps(&self) -> u64 {
        self.schedule.total_steps
    }

    pub fn is_done(&self) -> bool {
        self.trainer.step >= self.total_steps()
    }

    pub fn position(&self) -> Position {
        self.position
    }

    /// Moves to a saved position (resuming from a checkpoint).
    pub fn seek(&mut self, position: Position) -> Result<()> {
        if position.batch > self.dataset.batches_per_epoch() {
            return Err(Error::invalid("Run::seek", format!("batch {} is past the epoch's end", position.batch)));
        }
        self.batches = self.dataset.epoch(position.epoch);
        self.position = position;
        Ok(())
    }

    /// The position and schedule as checkpoint `progress`.
    pub fn progress(&self) -> Value {
        json!({
            "epoch": self.position.epoch,
            "batch": self.position.batch,
            "total_steps": self.total_steps(),
            "lr": self.schedule.base_lr,
            "schedule": self.schedule.schedule.name(),
            "schedule_kwargs": self.schedule.schedule.kwargs(),
            "warmup_steps": self.schedule.warmup_steps,
            "grad_accum": self.grad_accum,
        })
    }

    /// The position a checkpoint's `progress` holds.
    pub fn position_from(progress: &Value) -> Result<Position> {
        let get = |k: &str| progress.get(k).and_then(Value::as_u64);
        match (get("epoch"), get("batch")) {
            (Some(epoch), Some(batch)) => Ok(Position { epoch, batch: batch as usize }),
            _ => Err(Error::invalid("Run::position_from", "the checkpoint's progress has no epoch/batch")),
        }
    }

    /// The run a checkpoint's `progress` holds: its steps, lr, schedule (with
    /// its kwargs), warmup and accumulation. A checkpoint from before the
    /// schedules took kwargs has none (theirs were the defaults), and its
    /// `"constant"` with warmup steps was `"constant_with_warmup"`.
    pub fn config_from(progress: &Value) -> Result<RunConfig> {
        const OP: &str = "Run::config_from";
        let u = |k: &str| {
            progress
                .get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::invalid(OP, format!("progress.{k} is missing")))
        };
        let name = progress
            .get("schedule")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::invalid(OP, "progress.schedule is missing"))?;
        let warmup_steps = u("warmup_steps")?;
        let kwargs = progress.get("schedule_kwargs").cloned().unwrap_or(Value::Null);
        let schedule = match Schedule::with_kwargs(name, &kwargs)? {
            Schedule::Constant if warmup_steps > 0 => Schedule::ConstantWithWarmup,
            s => s,
        };
        Ok(RunConfig {
            steps: Some(u("total_steps")?),
            epochs: 1.0,
            grad_accum: u("grad_accum")? as usize,
            lr: progress
                .get("lr")
                .and_then(Value::as_f64)
                .ok_or_else(|| Error::invalid(OP, "progress.lr is missing"))?,
            schedule,
            warmup_steps,
            warmup_ratio: 0.0,
            precompute_ref_log_probs: false,
        })
    }

    fn next_micro(&mut self) -> Batch {
        if self.position.batch >= self.batches.len() {
            self.position = Position { epoch: self.position.epoch + 1, batch: 0 };
            self.batches = self.dataset.epoch(self.position.epoch);
        }
        let b = self.batches[self.position.batch].clone();
        self.position.batch += 1;
        b
    }

    /// One optimizer step, or `None` when the run is done. On an error the
    /// data position is left where the failed step started.
    pub async fn step(&mut self, gpu: &Gpu, model: &Model) -> Result<Option<StepStats>> {
        if self.is_done() {
            return Ok(None);
        }
        if self.precompute {
            let Objective::Preference(loss) = self.trainer.objective else {
                return Err(Error::invalid("Run::step", "precompute_ref_log_probs is for the preference objectives"));
            };
            precompute_reference(gpu, model, &mut self.dataset, loss).await?;
            self.batches = self.dataset.epoch(self.position.epoch);
            self.precompute = false;
        }
        let (saved_position, saved_batches) = (self.position, self.batches.len());
        let micro: Vec<Batch> = (0..self.grad_accum).map(|_| self.next_micro()).collect();
        let lr = self.schedule.lr(self.trainer.step);
        match self.trainer.step(gpu, model, &micro, lr).await {
            Ok(stats) => Ok(Some(stats)),
            Err(e) => {
                if saved_position.epoch != self.position.epoch || saved_batches != self.batches.len() {
                    self.batches = self.dataset.epoch(saved_position.epoch);
                }
                self.position = saved_position;
                Err(e)
            }
        }
    }

    /// Loss, perplexity and TRL's metrics of the current adapter on `eval`
    /// (under the run's SFT loss).
    pub async fn evaluate(&self, gpu: &Gpu, model: &Model, eval: &Dataset) -> Result<EvalStats> {
        self.trainer.evaluate(gpu, model, &eval.epoch(0)).await
    }
}
