//! Where AdaLoRA meets the model: the `linear_low_rank` hook point, giving
//! every adapted Linear the term `scaling·(drop(x)·(A∘E)ᵀ)·Bᵀ` to add
//! (PEFT's `SVDLinear.forward`, scaling = lora_alpha / (ranknum + 1e-5)).
//! It is LoRA's term with A' = A∘E (row i of A times E[i]); the backward
//! takes LoRA's gradient of A' back to A and E.

use super::adapter::{AdaLoraAdapter, SvdFactors};
use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::adalora::{scale_rows, scale_rows_backward};
use crate::kernels::low_rank::LowRank;
use crate::model::llama::block::Linear;
use crate::model::llama::hooks::{Hooks, Proj, Saved, Sublayer};
use crate::peft::lora::hooks::lora_dropout;
use crate::peft::lora::layer::{lora_backward, lora_backward_term, lora_term, LoraFactors, LoraSaved};
use crate::peft::pass::{mismatch, Pass};
use crate::peft::shared_input::shared_term;

impl Hooks for Pass<'_, AdaLoraAdapter> {
    fn plain_residual(&self, _layer: usize, _site: Sublayer) -> bool {
        true // a low-rank term only
    }

    fn plain_output(&self, _layer: usize, _proj: Proj) -> bool {
        true
    }

    fn linear_low_rank(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        x: &Tensor,
    ) -> Result<Option<(LowRank, Saved)>> {
        let Some(f) = self.params.factors(layer, proj.index()) else { return Ok(None) };
        if let Some(memo) = self.memo {
            // A generation: A∘E once, and q, k, v's (gate, up's) x·(A∘E)ᵀ in one product.
            let mut factors = |rec: &mut Recorder, p: Proj| -> Result<Option<LoraFactors>> {
                let Some(f) = self.params.factors(layer, p.index()) else { return Ok(None) };
                let scaled = memo.get_or_make((layer, p, "A∘E"), || Ok(vec![scale_rows(rec, &f.a, &f.e)?]))?;
                Ok(Some(LoraFactors::new(scaled[0].clone(), f.b.clone())))
            };
            let s = self.params.scaling();
            let term = match shared_term(rec, memo, (layer, proj), x, s, &mut factors)? {
                Some(term) => term,
                None => match factors(rec, proj)? {
                    Some(own) => lora_term(rec, x, &own, s, None)?.0,
                    None => return Ok(None),
                },
            };
            return Ok(Some((term, Saved(Vec::new())))); // a memo pass has no backward
        }
        let scaled = scale_rows(rec, &f.a, &f.e)?; // A∘E (r, in)
        let factors = LoraFactors::new(scaled.clone(), f.b.clone());
        let drop = lora_dropout(self, self.params.config.lora.lora_dropout, layer, proj);
        let (term, LoraSaved { x, xa }) = lora_term(rec, x, &factors, self.params.scaling(), drop)?;
        Ok(Some((term, Saved(vec![x, xa, scaled]))))
    }

    fn linear_backward_low_rank(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        dy: &Tensor,
        saved: &Saved,
    ) -> Result<Option<LowRank>> {
        const OP: &str = "adalora_backward";
        // Dropout's mask on dx's share stays in `linear_backward`.
        if lora_dropout(self, self.params.config.lora.lora_dropout, layer, proj).is_some_and(|d| d.p > 0.0) {
            return Ok(None);
        }
        let (f, g, scaled) = self.backward_parts(OP, layer, proj, saved)?;
        let d_scaled = rec.zeros(scaled.shape(), DType::F32)?; // d(A∘E) (r, in)
        let lora_saved = LoraSaved::from_saved(OP, saved)?;
        let factors = LoraFactors::new(scaled.clone(), f.b.clone());
        let grads = LoraFactors::new(d_scaled.clone(), g.b.clone());
        let term = lora_backward_term(rec, dy, &lora_saved, &factors, self.params.scaling(), &grads)?;
        scale_rows_backward(rec, &d_scaled, &f.a, &f.e, &g.a, &g.e)?;
        Ok(Some(term))
    }

    fn linear_backward(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        _base: &Linear,
        dy: &Tensor,
        saved: &Saved,
        dx: &Tensor,
    ) -> Result<()> {
        const OP: &str = "adalora_backward";
        let (f, g, scaled) = self.backward_parts(OP, layer, proj, saved)?;
        let d_scaled = rec.zeros(scaled.shape(), DType::F32)?; // d(A∘E) (r, in)
        let lora_saved = LoraSaved::from_saved(OP, saved)?;
        let factors = LoraFactors::new(scaled.clone(), f.b.clone());
        let grads = LoraFactors::new(d_scaled.clone(), g.b.clone());
        let drop = lora_dropout(self, self.params.config.lora.lora_dropout, layer, proj);
        lora_backward(rec, dy, &lora_saved, &factors, self.params.scaling(), drop, &grads, dx)?;
        scale_rows_backward(rec, &d_scaled, &f.a, &f.e, &g.a, &g.e)
    }
}

impl Pass<'_, AdaLoraAdapter> {
    /// Layer `layer`'s factors on `proj`, their gradient accumulators, and
    /// the forward's A∘E.
    fn backward_parts<'s>(
        &'s self,
        op: &'static str,
        layer: usize,
        proj: Proj,
        saved: &'s Saved,
    ) -> Result<(&'s SvdFactors, &'s SvdFactors, &'s Tensor)> {
        let at = || mismatch(op, format!("layer {layer} {}", proj.name()));
        let f = self.params.factors(layer, proj.index()).ok_or_else(at)?;
        let g = self.grads(op)?.factors(layer, proj.index()).ok_or_else(at)?;
        Ok((f, g, saved.get(op, 2)?))
    }
}
