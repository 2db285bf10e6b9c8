//! The causal-LM loss of `LlamaForCausalLM`: logits[:, :-1] predict
//! labels[:, 1:], labels of −100 are ignored, and the loss is the mean over
//! every non-ignored token of the batch.
//!
//! The shift happens on the CPU, where the labels come from (the data loader):
//! it must also count the non-ignored tokens there, because that count scales
//! the gradient (and, with gradient accumulation, must be the whole
//! accumulated batch's).

use super::head::Head;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::cross_entropy::{
    cross_entropy_backward_inplace, cross_entropy_backward_rows_inplace, cross_entropy_dft, cross_entropy_forward,
    cross_entropy_metrics,
};
use crate::kernels::elementwise::fill;
use crate::kernels::matmul::{gemm, Gemm};

/// The label transformers ignores (`ignore_index`).
pub const IGNORE_INDEX: i32 = -100;

/// The token loss of SFT, TRL's `SFTConfig.loss_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SftLoss {
    /// The cross-entropy, −log p of each label (`"nll"`).
    #[default]
    Nll,
    /// Dynamic Fine-Tuning (`"dft"`, Wu et al. 2025, "On the Generalization
    /// of SFT"): −sg(p)·log p, each token's cross-entropy weighted by its
    /// probability, held constant in the backward.
    Dft,
}

impl SftLoss {
    pub const ALL: [SftLoss; 2] = [SftLoss::Nll, SftLoss::Dft];

    /// TRL's name: "nll" or "dft".
    pub fn name(self) -> &'static str {
        match self {
            SftLoss::Nll => "nll",
            SftLoss::Dft => "dft",
        }
    }
}

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
    shift_labels_after(labels, vocab, 0)
}

/// [`shift_labels`] for rows that come after `virtual_tokens` virtual tokens
/// (prompt tuning): the last virtual position predicts each row's first
/// label too, as PEFT's loss counts it (its labels are −100 for the virtual
/// tokens, then the row's), so every row gets one more target first:
/// (B·(1+T)), the layout of [`Model::hidden_checkpointed`](super::Model::hidden_checkpointed)'s output.
pub fn shift_labels_after(labels: &[Vec<i32>], vocab: usize, virtual_tokens: usize) -> Result<(Vec<i32>, usize)> {
    const OP: &str = "causal_lm_loss";
    let seq = labels.first().map_or(0, Vec::len);
    if seq == 0 {
        return Err(Error::shape(OP, "labels are empty: need at least one row of one token"));
    }
    let mut targets = Vec::with_capacity(labels.len() * (seq + 1));
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
        if virtual_tokens > 0 {
            targets.push(row[0]);
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
    let ones = rec.gpu().ones(rows)?.reshape(&[rows, 1])?;
    let loss = rec.zeros(&[1], DType::F32)?;
    gemm(rec, &Gemm::new(1, 1, rows, false, false).alpha(1.0 / targets.count as f32), &token_loss, &ones, &loss)?;
    Ok(loss)
}

/// Bytes one chunk of training logits may take: the full (B·T, V) logits
/// are never built in training (Llama 3's V = 128,256 at 512 tokens would be
/// 262 MB, over a browser's 128 MiB binding).
pub const LOGITS_CHUNK_BYTES: u64 = 16 << 20;

/// Rows per logits chunk for a vocabulary of `vocab` (at least 1).
pub fn logits_chunk_rows(vocab: usize, max_binding: u64) -> usize {
    let budget = LOGITS_CHUNK_BYTES.min(max_binding);
    ((budget / (vocab.max(1) as u64 * 4)) as usize).max(1)
}

/// The causal-LM loss and its gradient at the lm_head's input, in row
/// chunks that reuse one logits buffer:
///
/// ```text
/// for each chunk c of rows:  logits_c = xn_c · lm_headᵀ          (rows_c, V)
///                            loss    += Σ CE(logits_c, targets_c) · scale
///                            dxn_c    = (softmax − onehot)(logits_c) · scale · lm_head
/// ```
///
/// - xn: (M, D), the normed hidden states; targets: (M) i32 on the CPU, −100 ignored
/// - scale: 1 / (non-ignored targets of the whole accumulated batch)
/// - loss: (1), added to; returns dxn (M, D) when `grad`, nothing (and no
///   backward work) for evaluation
/// - metrics: `(weights (M), sums (2))`: adds Σ weights[r][0]·entropy(row r)
///   and Σ weights[r][1]·[target r is the row's argmax] into `sums`, SFT's
///   `entropy` and `mean_token_accuracy` ([`cross_entropy_metrics`])
/// - kind: the token loss; [`SftLoss::Dft`] weighs each CE and its gradient
///   by the target's probability ([`cross_entropy_dft`])
pub fn chunked_lm_loss(
    rec: &mut Recorder,
    xn: &Tensor,
    head: Head,
    (targets, scale, kind): (&[i32], f32, SftLoss),
    loss: &Tensor,
    metrics: Option<(&[[f32; 2]], &Tensor)>,
    grad: bool,
) -> Result<Option<Tensor>> {
    const OP: &str = "chunked_lm_loss";
    let d = head.dim();
    let v = head.vocab();
    let m = xn.numel() / d.max(1);
    if xn.shape().last() != Some(&d) || targets.len() != m {
        return Err(Error::shape(
            OP,
            format!("xn {:?} and {} targets for a ({v}, {d}) head", xn.shape(), targets.len()),
        ));
    }
    if let Some((weights, sums)) = metrics {
        if weights.len() != m || sums.shape() != [2] {
            return Err(Error::shape(
                OP,
                format!(
                    "{} metric weights and sums {:?} for {m} rows: need ({m}) and (2)",
                    weights.len(),
                    sums.shape()
                ),
            ));
        }
    }
    let gpu = rec.gpu();
    let chunk = logits_chunk_rows(v, gpu.max_binding_bytes()).min(m.max(1));
    // Every chunk overwrites its rows of each: no clearing needed.
    let dxn = if grad { Some(rec.alloc(&[m, d], DType::F32)?) } else { None };
    let x_c = rec.alloc(&[chunk, d], DType::F32)?;
    let logits = rec.alloc(&[chunk, v], DType::F32)?;
    let dx_c = if grad { Some(rec.alloc(&[chunk, d], DType::F32)?) } else { None };
    let ones = gpu.ones(chunk)?.reshape(&[chunk, 1])?;
    let row = d as u64 * 4;
    let mut start = 0;
    while start < m {
        let n = chunk.min(m - start);
        // The last chunk may be shorter: views of the first n rows of each buffer.
        let (x_n, logits_n) = (x_c.reshape_prefix(&[n, d])?, logits.reshape_prefix(&[n, v])?);
        rec.copy(xn, start as u64 * row, &x_c, 0, n as u64 * row)?;
        fill(rec, &logits_n, 0.0)?;
        head.logits_into(rec, &x_n, &logits_n)?; // logits_c = x_c·Wᵀ
        let t = Tensor::from_slice(gpu, &[n], &targets[start..start + n])?;
        let (token_loss, lse) = cross_entropy_forward(rec, &logits_n, &t)?;
        // DFT: token_loss ← p·CE in place, and the backward's row scales p·scale.
        let dft_scales = match kind {
            SftLoss::Dft => Some(cross_entropy_dft(rec, &token_loss, scale)?),
            SftLoss::Nll => None,
        };
        let ones_n = ones.reshape_prefix(&[n, 1])?;
        gemm(rec, &Gemm::new(1, 1, n, false, false).alpha(scale).accumulate(true), &token_loss, &ones_n, loss)?;
        if let Some((weights, sums)) = metrics {
            // Before the backward turns the logits into dlogits.
            let w =
                Tensor::from_slice(gpu, &[n, 2], bytemuck::cast_slice::<[f32; 2], f32>(&weights[start..start + n]))?;
            let per_row = cross_entropy_metrics(rec, &logits_n, &t, &lse, &w)?; // (n, 2)
            let sum = Gemm::new(1, 2, n, false, false).accumulate(true);
            gemm(rec, &sum, &ones_n.reshape(&[1, n])?, &per_row, &sums.reshape(&[1, 2])?)?;
            // sums += 1ᵀ·per_row
        }
        if let (Some(dxn), Some(dx_c)) = (&dxn, &dx_c) {
            match &dft_scales {
                Some(rows) => cross_entropy_backward_rows_inplace(rec, &logits_n, &t, &lse, rows)?,
                None => cross_entropy_backward_inplace(rec, &logits_n, &t, &lse, scale)?, // logits_c become dlogits_c
            }
            let dx_n = dx_c.reshape_prefix(&[n, d])?;
            fill(rec, &dx_n, 0.0)?;
            head.backward_into(rec, &x_n, &logits_n, &dx_n)?; // dxn_c = dlogits_c·W
            rec.copy(dx_c, 0, dxn, start as u64 * row, n as u64 * row)?;
        }
        start += n;
    }
    Ok(dxn)
}
