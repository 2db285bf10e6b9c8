//! Where LoRA meets the model: the `linear_low_rank` hook point, giving
//! every adapted Linear the term `scaling·(drop(x)·Aᵀ)·Bᵀ` to add to its
//! output, or, for a DoRA layer (one with a magnitude), the `linear` point
//! and its variant in [`super::dora`] (as PEFT's `LoraVariant`).

use super::adapter::LoraAdapter;
use super::dora::{
    dora_backward, dora_backward_dy, dora_forward, dora_generate, dora_generation_scales, magnitude_scales, DoraSaved,
};
use super::layer::{lora_backward, lora_backward_term, lora_term, LoraDropout, LoraFactors, LoraSaved};
use crate::error::Result;
use crate::gpu::{Recorder, Tensor};
use crate::kernels::low_rank::LowRank;
use crate::kernels::qmatmul::QWeight;
use crate::model::llama::block::Linear;
use crate::model::llama::hooks::{Hooks, Proj, Saved, Sublayer};
use crate::peft::modules_to_save::{hooks as saved_hooks, ModulesToSave};
use crate::peft::pass::{mismatch, Pass};
use crate::peft::shared_input::{any_shared, shared_term};
use crate::peft::trainable_tokens::{hooks as token_hooks, TrainableTokens};
use crate::util::rng::pcg_hash;

impl LoraAdapter {
    /// Layer `layer`'s factors on `proj`, when that Linear is adapted.
    pub fn factors(&self, layer: usize, proj: Proj) -> Option<&LoraFactors> {
        self.layers.get(layer).and_then(|l| l[proj.index()].as_ref())
    }
}

/// The dropout (probability `p`) on `proj`'s LoRA input in layer `layer`
/// during `pass`: each Linear's mask seed derives from the layer's.
pub(crate) fn lora_dropout<M>(pass: &Pass<'_, M>, p: f64, layer: usize, proj: Proj) -> Option<LoraDropout> {
    let p = p as f32;
    let seed = pass.layer_seed(layer).filter(|_| p > 0.0)?;
    Some(LoraDropout { p, seed: pcg_hash(seed ^ (proj.index() as u32).wrapping_mul(0x9E37_79B9)) })
}

impl LoraSaved {
    /// What a `linear_low_rank` hook saved with [`lora_term`]'s tensors first
    /// (x, xa).
    pub(crate) fn from_saved(op: &'static str, saved: &Saved) -> Result<LoraSaved> {
        Ok(LoraSaved { x: saved.get(op, 0)?.clone(), xa: saved.get(op, 1)?.clone() })
    }
}

impl Pass<'_, LoraAdapter> {
    fn dropout(&self, layer: usize, proj: Proj) -> Option<LoraDropout> {
        lora_dropout(self, self.params.config.lora_dropout, layer, proj)
    }

    /// The trainable token rows' gradient accumulator, for a backward.
    fn token_grads(&self, op: &'static str) -> Result<&TrainableTokens> {
        self.grads(op)?.tokens.as_ref().ok_or_else(|| mismatch(op, "the trainable token rows".into()))
    }

    /// `modules_to_save`'s gradient accumulators, for a backward.
    fn saved_grads(&self, op: &'static str) -> Result<&ModulesToSave> {
        self.grads(op)?.modules_to_save.as_deref().ok_or_else(|| mismatch(op, "modules_to_save's copies".into()))
    }

    /// The factors on `proj` and their gradient accumulators, for a backward.
    fn with_grads(&self, op: &'static str, layer: usize, proj: Proj) -> Result<(&LoraFactors, &LoraFactors)> {
        let at = || mismatch(op, format!("layer {layer} {}", proj.name()));
        let f = self.params.factors(layer, proj).ok_or_else(at)?;
        let g = self.grads(op)?.factors(layer, proj).ok_or_else(at)?;
        Ok((f, g))
    }
}

impl LoraAdapter {
    /// Whether a generation keeps something across its forwards: DoRA's
    /// weight norms, or stacked A's where two Linears on one input carry
    /// LoRA ([`Hooks::frozen`]).
    pub(crate) fn keeps_across_forwards(&self) -> bool {
        self.layers.iter().any(|l| l.iter().flatten().any(|f| f.m.is_some()) || any_shared(|p| l[p.index()].is_some()))
    }
}

impl Hooks for Pass<'_, LoraAdapter> {
    fn embedding_forward(&self, rec: &mut Recorder, ids: &Tensor, x: &Tensor) -> Result<()> {
        if let Some(t) = &self.params.tokens {
            token_hooks::embedding_forward(t, rec, ids, x)?;
        }
        self.embedding_term(rec, ids, x)
    }

    fn embedding_table(&self) -> Option<QWeight> {
        self.params.modules_to_save.as_ref()?.embed.clone()
    }

    fn head_weight(&self) -> Option<QWeight> {
        self.params.modules_to_save.as_ref()?.head_weight().cloned()
    }

    fn score_weight(&self) -> Option<QWeight> {
        self.params.modules_to_save.as_ref()?.score.clone()
    }

    fn score_backward(&self, rec: &mut Recorder, x: &Tensor, dscores: &Tensor) -> Result<()> {
        match &self.params.modules_to_save {
            Some(m) => saved_hooks::score_backward(m, self.saved_grads("score_backward")?, rec, x, dscores),
            None => Ok(()),
        }
    }

    fn embedding_backward(&self, rec: &mut Recorder, ids: &Tensor, dx: &Tensor) -> Result<()> {
        if let Some(m) = &self.params.modules_to_save {
            saved_hooks::embedding_backward(m, self.saved_grads("embedding_backward")?, rec, ids, dx)?;
        }
        if let Some(t) = &self.params.tokens {
            token_hooks::embedding_backward(t, self.token_grads("embedding_backward")?, rec, ids, dx)?;
        }
        self.embedding_term_backward(rec, ids, dx)
    }

    fn head_forward(&self, rec: &mut Recorder, x: &Tensor, logits: &Tensor) -> Result<()> {
        self.head_term(rec, x, logits)?;
        if let Some(t) = &self.params.head_tokens {
            token_hooks::head_forward(t, rec, x, logits)?;
        }
        match &self.params.tokens {
            Some(t) => token_hooks::head_forward(t, rec, x, logits),
            None => Ok(()),
        }
    }

    fn head_backward(&self, rec: &mut Recorder, x: &Tensor, dlogits: &Tensor, dx: &Tensor) -> Result<()> {
        if let Some(m) = &self.params.modules_to_save {
            saved_hooks::head_backward(m, self.saved_grads("head_backward")?, rec, x, dlogits)?;
        }
        if let Some(t) = &self.params.tokens {
            token_hooks::head_backward(t, self.token_grads("head_backward")?, rec, x, dlogits, dx)?;
        }
        if let Some(t) = &self.params.head_tokens {
            let op = "head_backward";
            let g =
                self.grads(op)?.head_tokens.as_ref().ok_or_else(|| mismatch(op, "lm_head's trainable rows".into()))?;
            token_hooks::head_backward(t, g, rec, x, dlogits, dx)?;
        }
        self.head_term_backward(rec, x, dlogits, dx)
    }

    fn plain_residual(&self, layer: usize, site: Sublayer) -> bool {
        // A DoRA layer rescales its Linear's output in `linear_forward`.
        self.params.factors(layer, site.output_proj()).is_none_or(|f| f.m.is_none())
    }

    fn plain_output(&self, layer: usize, proj: Proj) -> bool {
        self.params.factors(layer, proj).is_none_or(|f| f.m.is_none())
    }

    fn linear_low_rank(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        x: &Tensor,
    ) -> Result<Option<(LowRank, Saved)>> {
        // DoRA's term rescales W's output too: it stays in `linear_forward`,
        // but for a generation's (`dora_generate`, which then only rescales).
        let Some(f) = self.params.factors(layer, proj).filter(|f| f.m.is_none() || self.memo.is_some()) else {
            return Ok(None);
        };
        if let Some(memo) = self.memo.filter(|_| self.dropout(layer, proj).is_none_or(|d| d.p == 0.0)) {
            // A generation: DoRA layers too add their term as plain LoRA's.
            let factors = |_: &mut Recorder, p| {
                Ok(self.params.factors(layer, p).map(|f| LoraFactors::new(f.a.clone(), f.b.clone())))
            };
            if let Some(term) = shared_term(rec, memo, (layer, proj), x, self.params.scaling(layer, proj), factors)? {
                return Ok(Some((term, Saved(Vec::new())))); // a memo pass has no backward
            }
        }
        let (term, LoraSaved { x, xa }) =
            lora_term(rec, x, f, self.params.scaling(layer, proj), self.dropout(layer, proj))?;
        Ok(Some((term, Saved(vec![x, xa]))))
    }

    fn linear_forward(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        base: &Linear,
        x: &Tensor,
        y: &Tensor,
    ) -> Result<Option<Saved>> {
        // Plain LoRA's term went in through `linear_low_rank`.
        let Some(f) = self.params.factors(layer, proj).filter(|f| f.m.is_some()) else { return Ok(None) };
        let s = self.params.scaling(layer, proj);
        let Some(memo) = self.memo else {
            let scales = magnitude_scales(rec, &base.weight, f, s)?;
            let saved = dora_forward(rec, base, x, f, s, self.dropout(layer, proj), y, scales)?;
            return Ok(Some(Saved(saved.into_vec())));
        };
        // A generation: g and (1 − g) ⊙ b once, from its first forward; the
        // term went in through `linear_low_rank`.
        let kept = memo.get_or_make((layer, proj, "dora scales"), || dora_generation_scales(rec, base, f, s))?;
        dora_generate(rec, y, &kept)?;
        Ok(Some(Saved(Vec::new()))) // a memo pass has no backward
    }

    fn linear_backward_low_rank(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        dy: &Tensor,
        saved: &Saved,
    ) -> Result<Option<LowRank>> {
        const OP: &str = "lora_backward";
        // DoRA and dropout's mask on dx's share stay in `linear_backward`.
        let plain = self.params.factors(layer, proj).is_some_and(|f| f.m.is_none());
        if !plain || self.dropout(layer, proj).is_some_and(|d| d.p > 0.0) {
            return Ok(None);
        }
        let (f, g) = self.with_grads(OP, layer, proj)?;
        let saved = LoraSaved::from_saved(OP, saved)?;
        lora_backward_term(rec, dy, &saved, f, self.params.scaling(layer, proj), g).map(Some)
    }

    fn linear_backward(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        base: &Linear,
        dy: &Tensor,
        saved: &Saved,
        dx: &Tensor,
    ) -> Result<()> {
        const OP: &str = "lora_backward";
        let (f, g) = self.with_grads(OP, layer, proj)?;
        let (s, drop) = (self.params.scaling(layer, proj), self.dropout(layer, proj));
        if f.m.is_some() {
            return dora_backward(rec, base, dy, &DoraSaved::from_slice(OP, &saved.0)?, f, s, drop, g, dx);
        }
        let saved = LoraSaved::from_saved(OP, saved)?;
        lora_backward(rec, dy, &saved, f, s, drop, g, dx)
    }

    fn linear_backward_dy(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        dy: &Tensor,
        saved: &Saved,
    ) -> Result<Option<Tensor>> {
        const OP: &str = "dora_backward";
        match self.params.factors(layer, proj) {
            Some(f) if f.m.is_some() => {
                let dropped = self.dropout(layer, proj).is_some_and(|d| d.p > 0.0);
                dora_backward_dy(rec, dy, &DoraSaved::from_slice(OP, &saved.0)?, dropped)
            }
            _ => Ok(None),
        }
    }
}
