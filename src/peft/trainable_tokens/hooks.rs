//! Trainable tokens at the model's embedding and head points
//! ([`Hooks::embedding_forward`](crate::model::llama::hooks::Hooks::embedding_forward)
//! and the rest): the method that carries them (LoRA) calls these from its
//! own hooks. The head points do nothing for embedding rows where `lm_head`
//! is not tied; an untied head's own rows work at the head points only.

use super::TrainableTokens;
use crate::error::Result;
use crate::gpu::{Recorder, Tensor};
use crate::kernels::token_rows::{
    token_columns_backward, token_columns_forward, token_rows_backward, token_rows_forward,
};

/// x (N, D), gathered for ids (N): the trainable ids' rows replaced.
pub(crate) fn embedding_forward(t: &TrainableTokens, rec: &mut Recorder, ids: &Tensor, x: &Tensor) -> Result<()> {
    token_rows_forward(rec, t.rows(), ids, x)
}

/// The rows' gradient from dx (N, D) at the embedding's output, into `grads`.
pub(crate) fn embedding_backward(
    t: &TrainableTokens,
    grads: &TrainableTokens,
    rec: &mut Recorder,
    ids: &Tensor,
    dx: &Tensor,
) -> Result<()> {
    token_rows_backward(rec, t.rows(), ids, dx, &grads.delta)
}

/// logits (n, V) from x (n, D): the trainable ids' columns from their rows.
pub(crate) fn head_forward(t: &TrainableTokens, rec: &mut Recorder, x: &Tensor, logits: &Tensor) -> Result<()> {
    if !t.in_head {
        return Ok(());
    }
    token_columns_forward(rec, t.rows(), x, logits)
}

/// Before the frozen head's dx = dlogits·W: the trainable columns taken out
/// of dlogits (n, V), their share added into dx (n, D) and `grads`.
pub(crate) fn head_backward(
    t: &TrainableTokens,
    grads: &TrainableTokens,
    rec: &mut Recorder,
    x: &Tensor,
    dlogits: &Tensor,
    dx: &Tensor,
) -> Result<()> {
    if !t.in_head {
        return Ok(());
    }
    token_columns_backward(rec, t.rows(), x, dlogits, dx, &grads.delta)
}

use super::TrainableTokensAdapter;
use crate::model::llama::hooks::Hooks;
use crate::peft::pass::{mismatch, Pass};

impl Pass<'_, TrainableTokensAdapter> {
    fn grads_rows(&self, op: &'static str) -> Result<&TrainableTokens> {
        Ok(&self.grads(op)?.tokens)
    }
}

/// The method by itself: the rows at the embedding and the tied head.
impl Hooks for Pass<'_, TrainableTokensAdapter> {
    fn embedding_forward(&self, rec: &mut Recorder, ids: &Tensor, x: &Tensor) -> Result<()> {
        embedding_forward(&self.params.tokens, rec, ids, x)
    }

    fn embedding_backward(&self, rec: &mut Recorder, ids: &Tensor, dx: &Tensor) -> Result<()> {
        embedding_backward(&self.params.tokens, self.grads_rows("embedding_backward")?, rec, ids, dx)
    }

    fn head_forward(&self, rec: &mut Recorder, x: &Tensor, logits: &Tensor) -> Result<()> {
        head_forward(&self.params.tokens, rec, x, logits)?;
        match &self.params.head {
            Some(h) => head_forward(h, rec, x, logits),
            None => Ok(()),
        }
    }

    fn head_backward(&self, rec: &mut Recorder, x: &Tensor, dlogits: &Tensor, dx: &Tensor) -> Result<()> {
        let grads = self.grads_rows("head_backward")?;
        if grads.delta.shape() != self.params.tokens.delta.shape() {
            return Err(mismatch("head_backward", "the trainable token rows".into()));
        }
        head_backward(&self.params.tokens, grads, rec, x, dlogits, dx)?;
        if let Some(h) = &self.params.head {
            let op = "head_backward";
            let g = self.grads(op)?.head.as_deref().ok_or_else(|| mismatch(op, "lm_head's trainable rows".into()))?;
            head_backward(h, g, rec, x, dlogits, dx)?;
        }
        Ok(())
    }

    fn plain_residual(&self, _layer: usize, _site: crate::model::llama::hooks::Sublayer) -> bool {
        true // the rows change the embedding and the head, never a layer
    }

    fn plain_output(&self, _layer: usize, _proj: crate::model::llama::hooks::Proj) -> bool {
        true
    }
}
