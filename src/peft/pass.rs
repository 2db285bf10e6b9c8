//! One pass of an adapter through the model: its tensors, this pass's
//! dropout seed, and (when training) the gradient accumulators its backward
//! adds into. Each method implements the model's hook points
//! ([`crate::model::llama::hooks`]) on `Pass<'_, ItsAdapter>`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gpu::Tensor;
use crate::model::llama::hooks::Proj;
use crate::util::rng::pcg_hash;

#[derive(Debug)]
pub struct Pass<'a, M> {
    /// The trainable tensors.
    pub params: &'a M,
    /// Gradients of the same shapes, for a backward; `None` evaluates.
    pub grads: Option<&'a M>,
    /// The seed of this forward's dropout masks; `None` runs without dropout
    /// (evaluation and generation).
    pub dropout_seed: Option<u32>,
    /// Where an evaluation pass that runs many forwards with unchanging
    /// parameters (one generation) keeps what each would recompute.
    pub memo: Option<&'a Memo>,
}

impl<'a, M> Pass<'a, M> {
    /// An evaluation pass: no dropout, no gradients.
    pub fn eval(params: &'a M) -> Self {
        Pass { params, grads: None, dropout_seed: None, memo: None }
    }

    /// The gradient accumulators, or a typed error naming `op` when this pass
    /// evaluates only.
    pub fn grads(&self, op: &'static str) -> Result<&'a M> {
        self.grads.ok_or_else(|| {
            Error::invalid(op, "a backward through an adapter needs its gradients: this pass was made without them")
        })
    }

    /// Layer `layer`'s dropout seed, when this pass drops out.
    pub fn layer_seed(&self, layer: usize) -> Option<u32> {
        self.dropout_seed.map(|s| pcg_hash(s ^ pcg_hash(layer as u32)))
    }
}

/// The error for a backward whose forward ran with a different adapter.
pub(crate) fn mismatch(op: &'static str, at: String) -> Error {
    Error::invalid(
        op,
        format!("{at}: the adapter, its saved activations and its gradients do not match (forward and backward with different adapters?)"),
    )
}

/// Tensors an evaluation pass computes once for many forwards whose
/// parameters do not change (a generation's prefill and steps): DoRA's
/// weight norms, by (layer, Linear). A memo lives as long as the
/// generation (`Hooks::frozen`), never across a change of the adapter.
#[derive(Debug, Default)]
pub struct Memo(Mutex<HashMap<(usize, Proj), Vec<Tensor>>>);

impl Memo {
    /// The tensors kept for `key`, made by `make` the first time.
    pub fn get_or_make(&self, key: (usize, Proj), make: impl FnOnce() -> Result<Vec<Tensor>>) -> Result<Vec<Tensor>> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = kept.get(&key) {
            return Ok(t.clone());
        }
        let made = make()?;
        kept.insert(key, made.clone());
        Ok(made)
    }
}
