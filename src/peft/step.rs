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
//!
//! Prefix tuning with `prefix_projection` and P-tuning are
//! reparametrisations: the hooks read a prompt (prefix keys and values, or
//! virtual-token embeddings) that an MLP makes from the trained tensors. After
//! the backward the prompt's gradient goes back through the MLP into the
//! trained tensors' ([`Adapter::record_after_backward`]); after AdamW, and
//! whenever the trained tensors are written otherwise (a fresh adapter, a
//! checkpoint, a failed step put back), the prompt is made again from them
//! ([`Adapter::record_derive`]).

use super::adapter::Adapter;
use crate::error::{Error, Result};
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
    pub fn record_after_backward(&self, rec: &mut Recorder, grads: &Adapter, _loss: &Tensor) -> Result<()> {
        match (self, grads) {
            // The prompt's gradient through the encoder, into the trained tensors'.
            (Adapter::PrefixTuning(p), Adapter::PrefixTuning(g)) => p.record_backprop(rec, g),
            (Adapter::PTuning(p), Adapter::PTuning(g)) => p.record_backprop(rec, g),
            (Adapter::PrefixTuning(_) | Adapter::PTuning(_), g) => Err(Error::invalid(
                "Adapter::record_after_backward",
                format!("gradients of a {} adapter for a {} adapter", g.method(), self.method()),
            )),
            (Adapter::Lora(_) | Adapter::Bottleneck(_) | Adapter::Ia3(_) | Adapter::PromptTuning(_), _) => Ok(()),
        }
    }

    /// After AdamW updated the parameters: state the method keeps from the
    /// new parameters and this step's gradients.
    pub fn record_after_update(&self, rec: &mut Recorder, _done: StepDone<'_>) -> Result<()> {
        match self {
            // The prompt from the updated encoder.
            Adapter::PrefixTuning(_) | Adapter::PTuning(_) => self.record_derive(rec),
            Adapter::Lora(_) | Adapter::Bottleneck(_) | Adapter::Ia3(_) | Adapter::PromptTuning(_) => Ok(()),
        }
    }

    /// Makes what the hooks read from the trained tensors (a
    /// reparametrisation's prompt); nothing for the other methods.
    pub fn record_derive(&self, rec: &mut Recorder) -> Result<()> {
        match self {
            Adapter::PrefixTuning(p) => p.record_derive(rec),
            Adapter::PTuning(p) => p.record_derive(rec),
            Adapter::Lora(_) | Adapter::Bottleneck(_) | Adapter::Ia3(_) | Adapter::PromptTuning(_) => Ok(()),
        }
    }
}
