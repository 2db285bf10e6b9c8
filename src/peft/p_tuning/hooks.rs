//! Where P-tuning meets the model: prompt tuning's `prepend` hook point,
//! with the encoder's output as the prompt. The prompt's gradient is summed
//! over the batch as prompt tuning's; the trainer takes it back through the
//! encoder after the backward (`peft::step`).

use super::adapter::PTuningAdapter;
use crate::error::Result;
use crate::gpu::{Recorder, Tensor};
use crate::model::llama::hooks::{Hooks, Proj, Sublayer};
use crate::peft::pass::Pass;
use crate::peft::prompt_tuning::hooks::{add_batch_sum, prepend};

impl Hooks for Pass<'_, PTuningAdapter> {
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
        prepend(rec, &self.params.prompt, batch).map(Some)
    }

    fn prepend_backward(&self, rec: &mut Recorder, d: &Tensor) -> Result<()> {
        add_batch_sum(rec, d, &self.grads("p_tuning_backward")?.prompt)
    }
}
