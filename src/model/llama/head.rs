//! `lm_head` as the adapter's hooks see it: the product (through the
//! hooks' trained copy of the weight where they hold one,
//! [`Hooks::head_weight`], else the frozen weight), then the
//! hooks' head point ([`Hooks::head_forward`]); in the backward the hook's
//! point first ([`Hooks::head_backward`], which may take columns out of
//! dlogits), then the frozen dx += dlogits·W. Every place that applies the
//! head (the loss chunks, generation, the plain forward) goes through here.

use super::hooks::Hooks;
use crate::error::{Error, Result};
use crate::gpu::{Recorder, Tensor};
use crate::kernels::qmatmul::{qlinear, qlinear_accumulate, QWeight};

#[derive(Clone)]
pub struct Head<'a> {
    /// `lm_head.weight` (V, D): the frozen weight, or the hooks' trained copy
    /// (a cheap clone: its chunks share their buffers).
    pub weight: QWeight,
    pub hooks: &'a dyn Hooks,
}

impl Head<'_> {
    /// (V, D).
    pub fn vocab(&self) -> usize {
        self.weight.rows
    }

    pub fn dim(&self) -> usize {
        self.weight.cols
    }

    /// logits (…, V) of x (…, D).
    pub fn logits(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        let logits = qlinear(rec, x, &self.weight)?;
        let n = x.numel() / self.dim().max(1);
        self.hooks.head_forward(rec, &x.reshape(&[n, self.dim()])?, &logits.reshape(&[n, self.vocab()])?)?;
        Ok(logits)
    }

    /// logits (n, V), which must hold zeros, += x (n, D)·Wᵀ, then the hook's point.
    pub fn logits_into(&self, rec: &mut Recorder, x: &Tensor, logits: &Tensor) -> Result<()> {
        qlinear_accumulate(rec, x, &self.weight, logits, false)?;
        self.hooks.head_forward(rec, x, logits)
    }

    /// dx (n, D) += the gradient at x (n, D) for dlogits (n, V): the hook's
    /// share first (it may zero columns of dlogits), then dlogits·W.
    pub fn backward_into(&self, rec: &mut Recorder, x: &Tensor, dlogits: &Tensor, dx: &Tensor) -> Result<()> {
        if dx.shape() != x.shape() {
            return Err(Error::shape("lm_head backward", format!("dx {:?} for x {:?}", dx.shape(), x.shape())));
        }
        self.hooks.head_backward(rec, x, dlogits, dx)?;
        qlinear_accumulate(rec, dlogits, &self.weight, dx, true)
    }
}
