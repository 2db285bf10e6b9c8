//! What a method adds to the training step beyond the model's hook points.
//! The trainer records, into the step's one submission:
//!
//! ```text
//! for each micro-batch: forward, loss, backward          (the model's hooks)
//! adapter.record_after_backward(grads, loss, …)          terms outside the model
//! ‖g‖, clipping, AdamW
//! adapter.record_after_update(grads, clip, step)         state updated from the new θ and g
//! ```
//!
//! Most methods add nothing; each arm says what its method adds.

use super::adapter::Adapter;
use crate::error::Result;
use crate::gpu::{Recorder, Tensor};

/// What [`Adapter::record_after_update`] sees of the step just taken.
#[derive(Clone, Copy, Debug)]
pub struct StepDone<'a> {
    /// The gradients of this step (before clipping).
    pub grads: &'a Adapter,
    /// The clipping coefficient (1 element) AdamW applied to them, when clipping is on.
    pub clip: Option<&'a Tensor>,
    /// 1-based: optimizer steps done, this one included.
    pub step: u64,
}

impl Adapter {
    /// After every micro-batch's backward, before the gradient norm: adds the
    /// gradients (into `grads`) and the loss (into `loss`, 1 element) of terms
    /// the model does not see.
    pub fn record_after_backward(&self, _rec: &mut Recorder, _grads: &Adapter, _loss: &Tensor) -> Result<()> {
        match self {
            Adapter::Lora(_)
            | Adapter::Bottleneck(_)
            | Adapter::Ia3(_)
            | Adapter::PromptTuning(_)
            | Adapter::PrefixTuning(_) => Ok(()),
        }
    }

    /// After AdamW updated the parameters: state the method keeps from the
    /// new parameters and this step's gradients.
    pub fn record_after_update(&self, _rec: &mut Recorder, _done: StepDone<'_>) -> Result<()> {
        match self {
            Adapter::Lora(_)
            | Adapter::Bottleneck(_)
            | Adapter::Ia3(_)
            | Adapter::PromptTuning(_)
            | Adapter::PrefixTuning(_) => Ok(()),
        }
    }
}
