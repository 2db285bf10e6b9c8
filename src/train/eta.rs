//! The time a run has left, from the steps this run object has taken.
//!
//! Two things made the first estimate wrong: a resumed run divided this
//! session's seconds by the absolute step number (step 9 after resuming at 8
//! counted nine steps' worth of time where one was timed), and the first step
//! of a session also compiles every GPU program, which no later step repeats.
//! So the mean is over the steps timed here, without the first once there are
//! others.

/// Seconds per step seen by one run object.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepClock {
    first: f64,
    rest: f64,
    steps: u64,
}

impl StepClock {
    /// Count one step that took `seconds`.
    pub fn record(&mut self, seconds: f64) {
        if self.steps == 0 {
            self.first = seconds;
        } else {
            self.rest += seconds;
        }
        self.steps += 1;
    }

    /// Mean seconds of a step from here on: the first step's until there is
    /// a second one, then the later steps' mean.
    pub fn mean(&self) -> f64 {
        match self.steps {
            0 => 0.0,
            1 => self.first,
            n => self.rest / (n - 1) as f64,
        }
    }

    /// Seconds for `remaining` more steps.
    pub fn eta(&self, remaining: u64) -> f64 {
        self.mean() * remaining as f64
    }
}

#[cfg(test)]
mod tests {
    use super::StepClock;

    #[test]
    fn the_estimate_uses_this_runs_steps_without_the_compiling_one() {
        let mut c = StepClock::default();
        assert_eq!(c.eta(10), 0.0);
        c.record(9.0); // the first step compiles
        assert_eq!(c.eta(4), 36.0);
        c.record(1.0);
        c.record(2.0);
        assert_eq!(c.mean(), 1.5);
        assert_eq!(c.eta(4), 6.0);
        // A resumed run at step 8 with one step timed here: one step's time, not a ninth of it.
        let mut resumed = StepClock::default();
        resumed.record(1.5);
        resumed.record(1.5);
        assert_eq!(resumed.eta(3), 4.5);
    }
}
