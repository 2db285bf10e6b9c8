//! Where prompt tuning meets the model: the `prepend` hook point, putting
//! the V learned embeddings before every row's (PEFT's
//! `inputs_embeds = cat(prompts, inputs_embeds)`). Their gradient is the
//! sum over the batch of the gradient at the virtual positions.

use super::adapter::PromptTuningAdapter;
use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::matmul::{gemm, Gemm};
use crate::model::llama::hooks::{Hooks, Proj, Sublayer};
use crate::peft::pass::Pass;

impl Hooks for Pass<'_, PromptTuningAdapter> {
    fn plain_residual(&self, _layer: usize, _site: Sublayer) -> bool {
        true
    }

    fn plain_output(&self, _layer: usize, _proj: Proj) -> bool {
        true
    }

    fn virtual_tokens(&self) -> usize {
        self.params.config.num_virtual_tokens
    }

    fn prepend_forward(&self, rec: &mut Recorder, batch: usize) -> Result<Option<Tensor>> {
        prepend(rec, &self.params.embedding, batch).map(Some)
    }

    fn prepend_backward(&self, rec: &mut Recorder, d: &Tensor) -> Result<()> {
        add_batch_sum(rec, d, &self.grads("prompt_tuning_backward")?.embedding)
    }
}

/// `e` (V, D) for every row: (B, V, D).
pub(crate) fn prepend(rec: &mut Recorder, e: &Tensor, batch: usize) -> Result<Tensor> {
    let out = rec.alloc(&[batch, e.shape()[0], e.shape()[1]], DType::F32)?; // every row the same prompt
    for i in 0..batch as u64 {
        rec.copy(e, 0, &out, i * e.bytes(), e.bytes())?;
    }
    Ok(out)
}

/// g (V, D) += Σ_b d[b] for d (B, V, D) (also prefix tuning's (B, P, KV, hd)
/// into (P, KV·hd)).
pub(crate) fn add_batch_sum(rec: &mut Recorder, d: &Tensor, g: &Tensor) -> Result<()> {
    let (b, n) = (d.shape()[0], g.numel());
    let ones = rec.gpu().ones(b)?.reshape(&[1, b])?;
    gemm(rec, &Gemm::new(1, n, b, false, false).accumulate(true), &ones, &d.reshape(&[b, n])?, &g.reshape(&[1, n])?)
}
