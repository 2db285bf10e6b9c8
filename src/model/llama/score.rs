//! `LlamaForSequenceClassification`'s head (transformers'
//! `GenericForSequenceClassification`), what a reward model scores and a classifier labels with:
//!
//! ```text
//! logits = score(norm(h))                 score: Linear(hidden, num_labels, bias=False)
//! pooled[b] = logits[b, last[b]]          last[b]: the rightmost token of row b that is not the pad id
//! ```
//!
//! Only the pooled rows matter, so only they are scored: their normed
//! hidden states are gathered (one copy a row), multiplied by the weight,
//! and in the backward dx = dscores·W goes back to those rows alone. The
//! weight is the hooks' trained copy ([`Hooks::score_weight`]): a causal-LM
//! checkpoint has no `score`, and a reward model trains the one PEFT's
//! SEQ_CLS task adds to `modules_to_save`; without one, a classifier
//! checkpoint's own (`…ForSequenceClassification`, [`Model::score`]).
//!
//! [`Hooks::score_weight`]: super::hooks::Hooks::score_weight

use super::hooks::Hooks;
use super::Model;
use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::qmatmul::{qlinear, qlinear_accumulate, QWeight};

/// transformers' pooling: each row's rightmost position whose token is not
/// `pad_id` (`(arange(T) · (ids != pad)).argmax(-1)`: 0 for a row of pads).
/// With the pad id the eos id (a tokenizer without a pad token), a row's
/// trailing eos counts as padding and the token before it is scored.
pub fn last_non_pad(input_ids: &[Vec<u32>], pad_id: u32) -> Vec<usize> {
    input_ids.iter().map(|row| row.iter().rposition(|&t| t != pad_id).unwrap_or(0)).collect()
}

/// The rows of a (B·T, D) view of rows `input_ids` (B of T tokens each)
/// that [`last_non_pad`] pools: `b·T + last[b]`.
pub fn pooled_rows(input_ids: &[Vec<u32>], pad_id: u32) -> Vec<usize> {
    let t = input_ids.first().map_or(0, Vec::len);
    last_non_pad(input_ids, pad_id).iter().enumerate().map(|(b, &p)| b * t + p).collect()
}

pub struct ScoreHead<'a> {
    /// `score.weight` (num_labels, D) f32.
    pub weight: QWeight,
    pub hooks: &'a dyn Hooks,
}

impl<'a> ScoreHead<'a> {
    /// The hooks' trained score weight, else a classifier checkpoint's own
    /// (`model.score`), or an error naming what gives one.
    pub fn of(model: &Model, hooks: &'a dyn Hooks) -> Result<ScoreHead<'a>> {
        let weight = hooks.score_weight().or_else(|| model.score.clone()).ok_or_else(|| {
            Error::invalid(
                "score head",
                "no `score` head: neither the adapter (a reward model or classifier is a LoRA with task_type \
                 SEQ_CLS, whose modules_to_save train the head) nor the model (a …ForSequenceClassification \
                 checkpoint) has one",
            )
        })?;
        Ok(ScoreHead { weight, hooks })
    }

    /// num_labels.
    pub fn labels(&self) -> usize {
        self.weight.rows
    }

    /// `(x, scores)`: the rows `rows` of xn (M, D) gathered, (n, D), and
    /// their scores x·Wᵀ, (n, num_labels).
    pub fn forward(&self, rec: &mut Recorder, xn: &Tensor, rows: &[usize]) -> Result<(Tensor, Tensor)> {
        let d = self.weight.cols;
        let m = xn.numel() / d.max(1);
        if xn.shape().last() != Some(&d) || rows.is_empty() || rows.iter().any(|&r| r >= m) {
            return Err(Error::shape(
                "score head",
                format!("rows {rows:?} of xn {:?} for a ({}, {d}) score", xn.shape(), self.labels()),
            ));
        }
        let x = rec.alloc(&[rows.len(), d], DType::F32)?;
        let row = d as u64 * 4;
        for (i, &r) in rows.iter().enumerate() {
            rec.copy(xn, r as u64 * row, &x, i as u64 * row, row)?;
        }
        let scores = qlinear(rec, &x, &self.weight)?;
        Ok((x, scores))
    }

    /// dxn (M, D): dscores (n, num_labels)·W at the pooled `rows` (zeros
    /// elsewhere), after the hook's gradient of the weight from x, the
    /// forward's gathered rows.
    pub fn backward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        dscores: &Tensor,
        rows: &[usize],
        m: usize,
    ) -> Result<Tensor> {
        let d = self.weight.cols;
        if dscores.numel() != rows.len() * self.labels() || x.shape() != [rows.len(), d] {
            return Err(Error::shape(
                "score head backward",
                format!("dscores {:?} and x {:?} for {} rows", dscores.shape(), x.shape(), rows.len()),
            ));
        }
        let dscores = dscores.reshape(&[rows.len(), self.labels()])?;
        self.hooks.score_backward(rec, x, &dscores)?;
        let dx = rec.zeros(&[rows.len(), d], DType::F32)?;
        qlinear_accumulate(rec, &dscores, &self.weight, &dx, true)?; // dx = dscores·W
        let dxn = rec.zeros(&[m, d], DType::F32)?;
        let row = d as u64 * 4;
        for (i, &r) in rows.iter().enumerate() {
            rec.copy(&dx, i as u64 * row, &dxn, r as u64 * row, row)?;
        }
        Ok(dxn)
    }
}
