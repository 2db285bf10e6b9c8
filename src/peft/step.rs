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

use super::adalora::Allocator;
use super::adapter::Adapter;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder, Tensor};

/// What [`Adapter::record_after_update`] sees of the step just taken.
#[derive(Clone, Copy, Debug)]
pub struct StepDone<'a> {
    /// The gradients of this step (before clipping).
    pub grads: &'a Adapter,
    /// `[‖g‖, clipping coefficient]` (2 elements) as AdamW applied it, when clipping is on.
    pub clip: Option<&'a Tensor>,
    /// 1-based: optimizer steps done, this one included.
    pub step: u64,
}

impl Adapter {
    /// After every micro-batch's backward, before the gradient norm: adds the
    /// gradients (into `grads`) and the loss (into `loss`, 1 element) of terms
    /// the model does not see.
    pub fn record_after_backward(&self, rec: &mut Recorder, grads: &Adapter, loss: &Tensor) -> Result<()> {
        match (self, grads) {
            // AdaLoRA's orthogonality regulariser on every A and B.
            (Adapter::AdaLora(a), Adapter::AdaLora(g)) => a.record_regularizer(rec, g, loss),
            // The prompt's gradient through the encoder, into the trained tensors'.
            (Adapter::PrefixTuning(p), Adapter::PrefixTuning(g)) => p.record_backprop(rec, g),
            (Adapter::PTuning(p), Adapter::PTuning(g)) => p.record_backprop(rec, g),
            (Adapter::AdaLora(_) | Adapter::PrefixTuning(_) | Adapter::PTuning(_), g) => Err(self.grads_mismatch(g)),
            (
                Adapter::Lora(_)
                | Adapter::Bottleneck(_)
                | Adapter::Ia3(_)
                | Adapter::PromptTuning(_)
                | Adapter::TrainableTokens(_),
                _,
            ) => Ok(()),
        }
    }

    /// After AdamW updated the parameters: state the method keeps from the
    /// new parameters and this step's gradients.
    pub fn record_after_update(&self, rec: &mut Recorder, done: StepDone<'_>) -> Result<()> {
        match (self, done.grads) {
            // AdaLoRA's rank allocator (PEFT's update_and_allocate).
            (Adapter::AdaLora(a), Adapter::AdaLora(g)) => a.record_allocation(rec, g, done),
            (Adapter::AdaLora(_), g) => Err(self.grads_mismatch(g)),
            // The prompt from the updated encoder.
            (Adapter::PrefixTuning(_) | Adapter::PTuning(_), _) => self.record_derive(rec),
            (
                Adapter::Lora(_)
                | Adapter::Bottleneck(_)
                | Adapter::Ia3(_)
                | Adapter::PromptTuning(_)
                | Adapter::TrainableTokens(_),
                _,
            ) => Ok(()),
        }
    }

    /// Makes what the hooks read from the trained tensors (a
    /// reparametrisation's prompt); nothing for the other methods.
    pub fn record_derive(&self, rec: &mut Recorder) -> Result<()> {
        match self {
            Adapter::PrefixTuning(p) => p.record_derive(rec),
            Adapter::PTuning(p) => p.record_derive(rec),
            Adapter::Lora(_)
            | Adapter::Bottleneck(_)
            | Adapter::Ia3(_)
            | Adapter::PromptTuning(_)
            | Adapter::AdaLora(_)
            | Adapter::TrainableTokens(_) => Ok(()),
        }
    }

    fn grads_mismatch(&self, g: &Adapter) -> Error {
        Error::invalid(
            "Trainer::step",
            format!("gradients of a {} adapter for a {} adapter", g.method(), self.method()),
        )
    }

    /// Creates what the method keeps across training steps (AdaLoRA's rank
    /// allocator), zeroed, if it is not there yet.
    pub fn init_training_state(&mut self, gpu: &Gpu) -> Result<()> {
        if let Adapter::AdaLora(a) = self {
            if a.allocator.is_none() {
                a.allocator = Some(Box::new(Allocator::new(gpu, a)?));
            }
        }
        Ok(())
    }

    /// That state's tensors by name, as checkpoints save them (none for most methods).
    pub fn state_tensors(&self) -> Vec<(String, &Tensor)> {
        match self {
            Adapter::AdaLora(a) => match &a.allocator {
                Some(state) => state.tensors(&a.tensors().into_iter().map(|(k, _)| k).collect::<Vec<_>>()),
                None => vec![],
            },
            _ => vec![],
        }
    }
}
