//! Softmax cross-entropy over the vocabulary (`shaders/cross_entropy.wgsl`).
//!
//! The forward returns the per-row loss and saves the per-row logsumexp
//! (`4·rows` bytes), from which the backward recomputes the softmax; the
//! logits themselves are needed by the backward, and
//! [`cross_entropy_backward_inplace`] turns them into dlogits without a second
//! (rows, vocab) buffer. Rows with target −100 are ignored (loss 0, zero
//! gradient). Targets live on the GPU and can't be checked here: one outside
//! `0..vocab` gives a NaN loss and a zero gradient row; callers should check
//! them on the CPU.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, dims, u32_count};
use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

/// Invocations per row (a power of two): rows are up to 128k long.
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
    _pad: u32,
}

fn check(op: &'static str, logits: &Tensor, targets: &Tensor, lse: Option<&Tensor>) -> Result<(usize, usize)> {
    all_f32(op, &[("logits", logits)])?;
    targets.expect_dtype(op, "targets", DType::I32)?;
    let [rows, vocab] = dims(op, "logits", "(rows, vocab)", logits)?;
    if targets.shape() != [rows] {
        return Err(Error::shape(
            op,
            format!("targets {:?} must be ({rows}) for logits {:?}", targets.shape(), logits.shape()),
        ));
    }
    if let Some(lse) = lse {
        lse.expect_dtype(op, "lse", DType::F32)?;
        if lse.shape() != [rows] {
            return Err(Error::shape(
                op,
                format!("lse {:?} must be ({rows}) for logits {:?}", lse.shape(), logits.shape()),
            ));
        }
    }
    u32_count(op, "logits' element count", rows * vocab)?;
    Ok((rows, vocab))
}

fn launch(
    rec: &mut Recorder,
    entry: &'static str,
    rows: usize,
    vocab: usize,
    scale: f32,
    bound: &[(u32, &Tensor)],
) -> Result<()> {
    let p = Params { rows: rows as u32, vocab: vocab as u32, scale, _pad: 0 };
    rec.dispatch_bound(&key(entry), &p, bound, grid_1d(rows))
}

/// Returns `(loss, lse)`, both (rows).
///
/// - logits: (rows, vocab)
/// - targets: (rows) i32, each in 0..vocab or −100 (ignored: loss 0)
/// - loss[r] = lse[r] − logits[r, target]; lse[r] = logsumexp(logits[r]), saved for backward
pub fn cross_entropy_forward(rec: &mut Recorder, logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "cross_entropy_forward";
    let (rows, vocab) = check(OP, logits, targets, None)?;
    if vocab == 0 {
        return Err(Error::shape(OP, "logits have no columns"));
    }
    let loss = rec.alloc(&[rows], DType::F32)?;
    let lse = rec.alloc(&[rows], DType::F32)?;
    launch(rec, OP, rows, vocab, 0.0, &[(1, logits), (2, targets), (3, &loss), (4, &lse)])?;
    Ok((loss, lse))
}

/// Each row's softmax entropy, (rows): `lse − Σ_i softmax_i·logits_i`
/// from the forward's `lse`; 0 where the target is ignored (−100).
pub fn cross_entropy_entropy(rec: &mut Recorder, logits: &Tensor, targets: &Tensor, lse: &Tensor) -> Result<Tensor> {
    const OP: &str = "cross_entropy_entropy";
    let (rows, vocab) = check(OP, logits, targets, Some(lse))?;
    if vocab == 0 {
        return Err(Error::shape(OP, "logits have no columns"));
    }
    let entropy = rec.alloc(&[rows], DType::F32)?;
    launch(rec, OP, rows, vocab, 0.0, &[(1, logits), (2, targets), (5, lse), (9, &entropy)])?;
    Ok(entropy)
}

/// DFT's weighting (TRL's SFT `loss_type="dft"`), in place on the
/// forward's `loss` (rows): each row's cross-entropy ℓ becomes p·ℓ, p = e^(−ℓ)
/// its target's probability; returns (rows) `p·scale`, the row scales
/// [`cross_entropy_backward_rows_inplace`] takes for the gradient p·∂ℓ
/// (p held constant). Ignored rows stay 0.
pub fn cross_entropy_dft(rec: &mut Recorder, loss: &Tensor, scale: f32) -> Result<Tensor> {
    const OP: &str = "cross_entropy_dft";
    all_f32(OP, &[("loss", loss)])?;
    let [rows] = dims(OP, "loss", "(rows)", loss)?;
    let row_scale = rec.alloc(&[rows], DType::F32)?;
    if rows > 0 {
        launch(rec, OP, rows, 1, scale, &[(3, loss), (12, &row_scale)])?;
    }
    Ok(row_scale)
}

/// SFT's metrics of each row, (rows, 2): `weights[r][0]` × its softmax
/// entropy (`lse − Σ_i softmax_i·logits_i`, from the forward's `lse`) and
/// `weights[r][1]` where its target is the first largest logit (the token
/// `torch.argmax` picks), 0 where not or where the target is ignored.
///
/// - logits: (rows, vocab); targets: (rows) i32; lse: (rows)
/// - weights: (rows, 2) f32: each row's share of the two means (0 leaves a row out)
pub fn cross_entropy_metrics(
    rec: &mut Recorder,
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    weights: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy_metrics";
    let (rows, vocab) = check(OP, logits, targets, Some(lse))?;
    weights.expect_dtype(OP, "weights", DType::F32)?;
    if weights.shape() != [rows, 2] {
        return Err(Error::shape(OP, format!("weights {:?} must be ({rows}, 2)", weights.shape())));
    }
    if vocab == 0 {
        return Err(Error::shape(OP, "logits have no columns"));
    }
    let metrics = rec.alloc(&[rows, 2], DType::F32)?;
    launch(rec, OP, rows, vocab, 0.0, &[(1, logits), (2, targets), (5, lse), (10, weights), (11, &metrics)])?;
    Ok(metrics)
}

/// dlogits (rows, vocab) = (softmax(logits) − onehot(target)) · scale, zero
/// rows where the target is ignored. `scale` is the upstream gradient of the
/// summed loss, usually 1 / (non-ignored rows of the whole accumulated batch).
pub fn cross_entropy_backward(
    rec: &mut Recorder,
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "cross_entropy_backward";
    let (rows, vocab) = check(OP, logits, targets, Some(lse))?;
    let dlogits = rec.alloc(&[rows, vocab], DType::F32)?;
    if vocab > 0 {
        launch(rec, OP, rows, vocab, scale, &[(1, logits), (2, targets), (5, lse), (6, &dlogits)])?;
    }
    Ok(dlogits)
}

/// [`cross_entropy_backward`] overwriting `logits` with dlogits.
pub fn cross_entropy_backward_inplace(
    rec: &mut Recorder,
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    scale: f32,
) -> Result<()> {
    const OP: &str = "cross_entropy_backward_inplace";
    let (rows, vocab) = check(OP, logits, targets, Some(lse))?;
    if vocab == 0 {
        return Ok(());
    }
    launch(rec, OP, rows, vocab, scale, &[(7, logits), (2, targets), (5, lse)])
}

/// [`cross_entropy_backward_inplace`] with a scale per row: dlogits[r] =
/// (softmax(logits[r]) − onehot(target[r])) · row_scale[r] (the preference
/// losses weigh each sequence's tokens by its own coefficient).
///
/// - row_scale: (rows) f32
pub fn cross_entropy_backward_rows_inplace(
    rec: &mut Recorder,
    logits: &Tensor,
    targets: &Tensor,
    lse: &Tensor,
    row_scale: &Tensor,
) -> Result<()> {
    const OP: &str = "cross_entropy_backward_rows_inplace";
    let (rows, vocab) = check(OP, logits, targets, Some(lse))?;
    row_scale.expect_dtype(OP, "row_scale", DType::F32)?;
    if row_scale.shape() != [rows] {
        return Err(Error::shape(OP, format!("row_scale {:?} must be ({rows})", row_scale.shape())));
    }
    if vocab == 0 {
        return Ok(());
    }
    launch(rec, OP, rows, vocab, 0.0, &[(7, logits), (2, targets), (5, lse), (8, row_scale)])
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::CrossEntropy, entry).with("WG", Const::U32(WG))
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    [
        "cross_entropy_forward",
        "cross_entropy_backward",
        "cross_entropy_backward_inplace",
        "cross_entropy_backward_rows_inplace",
        "cross_entropy_entropy",
        "cross_entropy_metrics",
        "cross_entropy_dft",
    ]
    .map(key)
    .to_vec()
}
