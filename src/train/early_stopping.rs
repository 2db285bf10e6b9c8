//! Evaluation that steers a run, as transformers' `EarlyStoppingCallback`
//! with `load_best_model_at_end`: the held-out loss is measured every few
//! steps; an evaluation improves on the best so far when it is lower by more
//! than `threshold`; after `patience` evaluations in a row without an
//! improvement the run stops, and the best evaluation's adapter is the one
//! kept.

/// What one evaluation means for the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// This evaluation is the best so far (its adapter is the one to keep).
    pub improved: bool,
    /// Patience is spent: stop training.
    pub stop: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStopping {
    /// Evaluations without improvement before stopping (`None`: never stop).
    pub patience: Option<usize>,
    /// The least decrease of the loss that counts as an improvement
    /// (transformers' `early_stopping_threshold`, default 0).
    pub threshold: f32,
    /// The best loss so far and the step it was measured at.
    pub best: Option<(f32, u64)>,
    /// Evaluations since the last improvement.
    pub without_improvement: usize,
}

impl EarlyStopping {
    pub fn new(patience: Option<usize>, threshold: f32) -> EarlyStopping {
        EarlyStopping { patience, threshold, best: None, without_improvement: 0 }
    }

    /// Records the evaluation loss `loss` measured after step `step`.
    pub fn observe(&mut self, step: u64, loss: f32) -> Verdict {
        let improved = match self.best {
            None => loss.is_finite(),
            Some((best, _)) => loss < best && (best - loss).abs() > self.threshold,
        };
        if improved {
            self.best = Some((loss, step));
            self.without_improvement = 0;
        } else {
            self.without_improvement += 1;
        }
        Verdict { improved, stop: self.patience.is_some_and(|p| self.without_improvement >= p) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_after_patience_evaluations_without_improvement() {
        let mut e = EarlyStopping::new(Some(2), 0.0);
        let seen: Vec<Verdict> =
            [(10, 3.0), (20, 2.5), (30, 2.6), (40, 2.5), (50, 2.7)].iter().map(|&(s, l)| e.observe(s, l)).collect();
        let improved: Vec<bool> = seen.iter().map(|v| v.improved).collect();
        let stop: Vec<bool> = seen.iter().map(|v| v.stop).collect();
        // 2.5 at step 40 equals the best: not an improvement (transformers compares with `<`).
        assert_eq!(improved, [true, true, false, false, false]);
        assert_eq!(stop, [false, false, false, true, true]);
        assert_eq!(e.best, Some((2.5, 20)));
    }

    #[test]
    fn an_improvement_within_the_threshold_does_not_count_and_none_never_stops() {
        let mut e = EarlyStopping::new(Some(1), 0.1);
        assert!(e.observe(1, 2.0).improved);
        let v = e.observe(2, 1.95);
        assert!(!v.improved && v.stop);
        let mut never = EarlyStopping::new(None, 0.0);
        assert!((0..10).all(|s| !never.observe(s, 5.0).stop));
        let mut nan = EarlyStopping::new(Some(3), 0.0);
        assert!(!nan.observe(1, f32::NAN).improved);
        assert!(nan.observe(2, 4.0).improved);
    }
}
