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

use super::adalora::{AdaLoraAdapter, Allocator};
use super::adapter::Adapter;
use crate::error::Result;
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
        match self.with_grads(grads)? {
            // AdaLoRA's orthogonality regulariser on every A and B.
            Some((a, g)) => a.record_regularizer(rec, g, loss),
            None => Ok(()),
        }
    }

    /// After AdamW updated the parameters: state the method keeps from the
    /// new parameters and this step's gradients.
    pub fn record_after_update(&self, rec: &mut Recorder, done: StepDone<'_>) -> Result<()> {
        match self.with_grads(done.grads)? {
            // AdaLoRA's rank allocator (PEFT's update_and_allocate).
            Some((a, g)) => a.record_allocation(rec, g, done),
            None => Ok(()),
        }
    }

    /// An AdaLoRA adapter with its gradients; `None` for the methods that add
    /// nothing to the step.
    fn with_grads<'a>(&'a self, grads: &'a Adapter) -> Result<Option<(&'a AdaLoraAdapter, &'a AdaLoraAdapter)>> {
        match (self, grads) {
            (Adapter::AdaLora(a), Adapter::AdaLora(g)) => Ok(Some((a, g))),
            (Adapter::AdaLora(_), g) => Err(crate::Error::invalid(
                "Trainer::step",
                format!("gradients of a {} adapter for an AdaLoRA adapter", g.method()),
            )),
            _ => Ok(None),
        }
    }
}

impl Adapter {
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
