//! Where (IA)³ meets the model. For a targeted Linear with vector l:
//!
//! ```text
//! feed-forward:  y = (x ⊙ l)·Wᵀ           the `linear_input` hook point;  dl = Σ_rows (dx' ⊙ x),  dx = dx' ⊙ l
//! otherwise:     y = (x·Wᵀ + b) ⊙ l       the `linear` hook point;        dl = Σ_rows (dy ⊙ y₀),  dy₀ = dy ⊙ l
//! ```
//!
//! with y₀ the Linear's own output and dx' the gradient at its (scaled)
//! input, as PEFT's `IA3Layer.forward`. l broadcasts over rows
//! ([`crate::peft::columns`]), so (IA)³ needs no kernel of its own.

use super::adapter::Ia3Adapter;
use crate::error::Result;
use crate::gpu::{Recorder, Tensor};
use crate::kernels::elementwise::{copy, mul_columns, scale_columns_inplace};
use crate::model::llama::block::Linear;
use crate::model::llama::hooks::{Hooks, Proj, Saved, Sublayer};
use crate::peft::columns::add_column_sums;
use crate::peft::pass::{mismatch, Pass};

impl Pass<'_, Ia3Adapter> {
    /// The vector on `proj` and its gradient accumulator, for a backward.
    fn with_grad(&self, op: &'static str, layer: usize, proj: Proj) -> Result<(&Tensor, &Tensor)> {
        let at = || mismatch(op, format!("layer {layer} {}", proj.name()));
        let l = self.params.vector(layer, proj).ok_or_else(at)?;
        let g = self.grads(op)?.vector(layer, proj).ok_or_else(at)?;
        Ok((&l.l, &g.l))
    }
}

impl Hooks for Pass<'_, Ia3Adapter> {
    fn plain_residual(&self, layer: usize, site: Sublayer) -> bool {
        // A vector on the output of the sub-layer's last Linear scales y.
        self.params.vector(layer, site.output_proj()).is_none_or(|v| v.module.feedforward)
    }

    fn plain_output(&self, layer: usize, proj: Proj) -> bool {
        // A vector on a Linear's output scales y; a feedforward one scales x.
        self.params.vector(layer, proj).is_none_or(|v| v.module.feedforward)
    }

    fn linear_input(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        x: &Tensor,
    ) -> Result<Option<(Tensor, Saved)>> {
        match self.params.vector(layer, proj) {
            Some(v) if v.module.feedforward => Ok(Some((mul_columns(rec, x, &v.l)?, Saved(vec![x.clone()])))),
            _ => Ok(None),
        }
    }

    fn linear_input_backward(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        dx_input: &Tensor,
        saved: &Saved,
    ) -> Result<Tensor> {
        const OP: &str = "ia3_input_backward";
        let (l, g) = self.with_grad(OP, layer, proj)?;
        add_column_sums(rec, dx_input, saved.get(OP, 0)?, g)?;
        mul_columns(rec, dx_input, l)
    }

    fn linear_forward(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        _base: &Linear,
        _x: &Tensor,
        y: &Tensor,
    ) -> Result<Option<Saved>> {
        match self.params.vector(layer, proj) {
            // A generation keeps nothing for a backward: y ⊙ l in place.
            Some(v) if !v.module.feedforward && self.memo.is_some() => {
                scale_columns_inplace(rec, y, &v.l, None)?;
                Ok(Some(Saved(Vec::new())))
            }
            Some(v) if !v.module.feedforward => {
                let own = rec.alloc(y.shape(), crate::gpu::DType::F32)?; // y₀, the Linear's own output
                copy(rec, y, &own)?;
                scale_columns_inplace(rec, y, &v.l, None)?;
                Ok(Some(Saved(vec![own])))
            }
            _ => Ok(None),
        }
    }

    fn linear_backward_dy(
        &self,
        rec: &mut Recorder,
        layer: usize,
        proj: Proj,
        dy: &Tensor,
        saved: &Saved,
    ) -> Result<Option<Tensor>> {
        const OP: &str = "ia3_backward";
        let (l, g) = self.with_grad(OP, layer, proj)?;
        add_column_sums(rec, dy, saved.get(OP, 0)?, g)?;
        Ok(Some(mul_columns(rec, dy, l)?))
    }
}
