//! The causal-LM loss of `LlamaForCausalLM`: logits[:, :-1] predict
//! labels[:, 1:], labels of −100 are ignored, and the loss is the mean over
//! every non-ignored token of the batch.
//!
//! The shift happens on the CPU, where the labels come from (the data loader):
//! it must also count the non-ignored tokens there, because that count scales
//! the gradient (and, with gradient accumulation, must be the whole
//! accumulated batch's).

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::cross_entropy::cross_entropy_forward;
use crate::kernels::matmul::{gemm, Gemm};

/// The label transformers ignores (`ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// Next-token targets of a batch, on the GPU: `targets[b·T + t] = labels[b][t + 1]`,
/// and −100 at each row's last position (nothing follows it).
#[derive(Clone, Debug)]
pub struct CausalTargets {
    /// (B·T) i32, each in 0..V or −100.
    pub targets: Tensor,
    pub batch: usize,
    pub seq: usize,
    /// Targets that are not −100: the loss is their mean.
    pub count: usize,
}

impl CausalTargets {
    /// Shift `labels` (B rows of T, each in 0..vocab or −100) and upload them.
    pub fn new(gpu: &Gpu, labels: &[Vec<i32>], vocab: usize) -> Result<CausalTargets> {
        let (targets, count) = shift_labels(labels, vocab)?;
        let (batch, seq) = (labels.len(), labels[0].len());
        Ok(CausalTargets { targets: Tensor::from_slice(gpu, &[batch * seq], &targets)?, batch, seq, count })
    }
}

/// `(targets (B·T), non-ignored count)` from labels (B, T), checked: every row
/// of one length, every label −100 or in 0..vocab.
pub fn shift_labels(labels: &[Vec<i32>], vocab: usize) -> Result<(Vec<i32>, usize)> {
    const OP: &str = "causal_lm_loss";
    let seq = labels.first().map_or(0, Vec::len);
    if seq == 0 {
        return Err(Error::shape(OP, "labels are empty: need at least one row of one token"));
    }
    let mut targets = Vec::with_capacity(labels.len() * seq);
    for (b, row) in labels.iter().enumerate() {
        if row.len() != seq {
            return Err(Error::shape(OP, format!("labels row {b} has {} tokens, row 0 has {seq}", row.len())));
        }
        for (t, &label) in row.iter().enumerate() {
            if label != IGNORE_INDEX && !(0..vocab as i64).contains(&(label as i64)) {
                return Err(Error::invalid(
                    OP,
                    format!("label {label} at [{b}, {t}] is neither -100 nor a token id below vocab_size {vocab}"),
                ));
            }
        }
        targets.extend_from_slice(&row[1..]);
        targets.push(IGNORE_INDEX);
    }
    let count = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
    Ok((targets, count))
}

/// The mean next-token cross-entropy, (1), of logits (B, T, V) against
/// `targets` of the same B and T. With no counted token it is NaN (0/0), as
/// in transformers.
pub fn causal_lm_loss(rec: &mut Recorder, logits: &Tensor, targets: &CausalTargets) -> Result<Tensor> {
    const OP: &str = "causal_lm_loss";
    let &[b, t, v] = logits.shape() else {
        return Err(Error::shape(OP, format!("logits {:?} must be (batch, seq, vocab)", logits.shape())));
    };
    if (b, t) != (targets.batch, targets.seq) {
        return Err(Error::shape(
            OP,
            format!("logits {:?} do not match labels ({}, {})", logits.shape(), targets.batch, targets.seq),
        ));
    }
    let rows = b * t;
    let (token_loss, _lse) = cross_entropy_forward(rec, &logits.reshape(&[rows, v])?, &targets.targets)?; // (B·T), 0 where ignored
                                                                                                          // loss (1, 1) = token_loss (1, B·T) · ones (B·T, 1) / count.
    let ones = Tensor::from_slice(rec.gpu(), &[rows, 1], &vec![1.0f32; rows])?;
    let loss = Tensor::zeros(rec.gpu(), &[1], DType::F32)?;
    gemm(rec, &Gemm::new(1, 1, rows, false, false).alpha(1.0 / targets.count as f32), &token_loss, &ones, &loss)?;
    Ok(loss)
}
