//! The trained copies at the model's embedding and head points: the method
//! that carries them (LoRA) answers [`Hooks::embedding_table`] and
//! [`Hooks::head_weight`] with them and calls these from its backward points.
//!
//! [`Hooks::embedding_table`]: crate::model::llama::hooks::Hooks::embedding_table
//! [`Hooks::head_weight`]: crate::model::llama::hooks::Hooks::head_weight

use super::ModulesToSave;
use crate::error::{Error, Result};
use crate::gpu::{Recorder, Tensor};
use crate::kernels::embedding::embedding_weight_backward;
use crate::kernels::qmatmul::weight_grad_accumulate;

fn missing(op: &'static str) -> Error {
    Error::invalid(
        op,
        "the gradients hold no copy where the parameters do (forward and backward with different adapters?)",
    )
}

/// The embedding copy's gradient from dx (N, D) at the rows of ids (N).
pub(crate) fn embedding_backward(
    m: &ModulesToSave,
    grads: &ModulesToSave,
    rec: &mut Recorder,
    ids: &Tensor,
    dx: &Tensor,
) -> Result<()> {
    if m.embed.is_none() {
        return Ok(());
    }
    let g = grads.embed.as_ref().ok_or_else(|| missing("embedding backward"))?;
    embedding_weight_backward(rec, g, ids, dx)
}

/// The head copy's gradient, dlogitsᵀ·x for dlogits (n, V) and x (n, D)
/// (the head's dx = dlogits·W' is the model's, through the copy).
pub(crate) fn head_backward(
    m: &ModulesToSave,
    grads: &ModulesToSave,
    rec: &mut Recorder,
    x: &Tensor,
    dlogits: &Tensor,
) -> Result<()> {
    if m.head_weight().is_none() {
        return Ok(());
    }
    let g = grads.head_weight().ok_or_else(|| missing("head backward"))?;
    weight_grad_accumulate(rec, dlogits, x, g)
}

/// The score copy's gradient, dscoresᵀ·x for dscores (n, 1) and the pooled
/// rows x (n, D) (a SEQ_CLS model's head; its dx is the model's).
pub(crate) fn score_backward(
    m: &ModulesToSave,
    grads: &ModulesToSave,
    rec: &mut Recorder,
    x: &Tensor,
    dscores: &Tensor,
) -> Result<()> {
    if m.score.is_none() {
        return Ok(());
    }
    let g = grads.score.as_ref().ok_or_else(|| missing("score backward"))?;
    weight_grad_accumulate(rec, dscores, x, g)
}
