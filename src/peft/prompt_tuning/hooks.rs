//! Where prompt tuning meets the model: the `prepend` hook point, putting
//! the V learned embeddings before every row's (PEFT's
//! `inputs_embeds = cat(prompts, inputs_embeds)`). Their gradient is the
//! sum over the batch of the gradient at the virtual positions.

use super::adapter::PromptTuningAdapter;
use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::matmul::{gemm, Gemm};
use crate::model::llama::hooks::Hooks;
use crate::peft::pass::Pass;

impl Hooks for Pass<'_, PromptTuningAdapter> {
    fn virtual_tokens(&self) -> usize {
        self.params.config.num_virtual_tokens
    }

    fn prepend_forward(&self, rec: &mut Recorder, batch: usize) -> Result<Option<Tensor>> {
        let e = &self.params.embedding; // (V, D)
        let (v, d) = (e.shape()[0], e.shape()[1]);
        let out = rec.alloc(&[batch, v, d], DType::F32)?; // every row the same prompt
        for i in 0..batch {
            rec.copy(e, 0, &out, (i * v * d * 4) as u64, e.bytes())?;
        }
        Ok(Some(out))
    }

    fn prepend_backward(&self, rec: &mut Recorder, d: &Tensor) -> Result<()> {
        let g = &self.grads("prompt_tuning_backward")?.embedding; // (V, D)
        let (b, n) = (d.shape()[0], g.numel());
        let ones = rec.gpu().ones(b)?.reshape(&[1, b])?;
        let g = g.reshape(&[1, n])?;
        gemm(rec, &Gemm::new(1, n, b, false, false).accumulate(true), &ones, &d.reshape(&[b, n])?, &g)
        // g += Σ_b d[b]
    }
}
