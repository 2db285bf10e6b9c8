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
    /// A pass with these gradient accumulators (a backward) and dropout seed,
    /// keeping nothing across forwards.
    pub fn new(params: &'a M, grads: Option<&'a M>, dropout_seed: Option<u32>) -> Self {
        Pass { params, grads, dropout_seed, memo: None }
    }

    /// An evaluation pass: no dropout, no gradients.
    pub fn eval(params: &'a M) -> Self {
        Self::new(params, None, None)
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
/// parameters do not change (a generation's prefill and steps), by (layer,
/// Linear, what): DoRA's weight norms, LoRA's stacked A's. A memo lives as
/// long as the generation (`Hooks::frozen`), never across a change of the
/// adapter. It also holds the last product that Linears on one input share
/// ([`Memo::share`]).
#[derive(Debug, Default)]
pub struct Memo {
    kept: Mutex<HashMap<MemoKey, Vec<Tensor>>>,
    shared: Mutex<Option<Shared>>,
}

/// (layer, Linear, what is kept).
pub type MemoKey = (usize, Proj, &'static str);

/// A product of one input that several Linears of a layer read their
/// columns of: LoRA's h = x·[A_q; A_k; A_v]ᵀ.
#[derive(Debug)]
struct Shared {
    layer: usize,
    /// The input, kept alive, so no later tensor can take its buffer.
    x: Tensor,
    h: Tensor,
    /// Each Linear's first column of h.
    columns: Vec<(Proj, usize)>,
}

impl Memo {
    /// The tensors kept for `key`, made by `make` the first time.
    pub fn get_or_make(&self, key: MemoKey, make: impl FnOnce() -> Result<Vec<Tensor>>) -> Result<Vec<Tensor>> {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = kept.get(&key) {
            return Ok(t.clone());
        }
        let made = make()?;
        kept.insert(key, made.clone());
        Ok(made)
    }

    /// Keeps h, computed from x for the Linears `columns` names of layer
    /// `layer` (each with its first column of h), in place of the last.
    pub fn share(&self, layer: usize, x: &Tensor, h: &Tensor, columns: Vec<(Proj, usize)>) {
        let shared = Shared { layer, x: x.clone(), h: h.clone(), columns };
        *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(shared);
    }

    /// h and `proj`'s first column of it, where the last shared product is
    /// layer `layer`'s, covers `proj`, and was computed from x itself (the
    /// same buffer and shape: the forward does not write a Linear's input
    /// between its Linears).
    pub fn shared(&self, layer: usize, proj: Proj, x: &Tensor) -> Option<(Tensor, usize)> {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let s = shared.as_ref().filter(|s| s.layer == layer && s.x.same_buffer(x) && s.x.shape() == x.shape())?;
        let col = s.columns.iter().find(|(p, _)| *p == proj)?.1;
        Some((s.h.clone(), col))
    }
}
