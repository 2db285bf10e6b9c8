//! Where a bottleneck adapter meets the model: the `residual` hook point.
//! With s a sub-layer's output and r the residual stream it joins:
//!
//! ```text
//! seq_bn:         out = (r + s) + ad(r + s)       after the MLP
//! double_seq_bn:  out = r + s + ad(s)             after attention and after the MLP
//! par_bn:         out = r + s + ad(r)             after the MLP (the un-normed residual feeds it)
//! ```

use super::adapter::BottleneckAdapter;
use super::config::BottleneckKind;
use super::layer::{bn_backward, bn_forward, BnCall, BnSaved, BnUnit};
use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::elementwise::{add, copy};
use crate::model::llama::hooks::{Hooks, Proj, Saved, Sublayer};
use crate::peft::pass::{mismatch, Pass};
use crate::util::rng::pcg_hash;

impl BottleneckAdapter {
    /// Layer `layer`'s unit after `site`, when it has one.
    pub fn unit(&self, layer: usize, site: Sublayer) -> Option<&BnUnit> {
        let l = self.layers.get(layer)?;
        match site {
            Sublayer::Attention => l.attention.as_ref(),
            Sublayer::Mlp => l.output.as_ref(),
        }
    }
}

impl Pass<'_, BottleneckAdapter> {
    /// How the unit after `site` runs in this pass (its dropout mask's seed
    /// derives from the layer's).
    fn call(&self, layer: usize, site: Sublayer) -> BnCall {
        let c = &self.params.config;
        let p = c.dropout as f32;
        let dropout = self
            .layer_seed(layer)
            .filter(|_| p > 0.0)
            .map(|seed| (p, pcg_hash(seed ^ (site == Sublayer::Attention) as u32)));
        BnCall { act: c.non_linearity, scaling: c.scaling as f32, dropout }
    }
}

impl Hooks for Pass<'_, BottleneckAdapter> {
    fn plain_residual(&self, layer: usize, site: Sublayer) -> bool {
        self.params.unit(layer, site).is_none()
    }

    fn plain_output(&self, _layer: usize, _proj: Proj) -> bool {
        true // the adapters join the residual stream, never a Linear's output
    }

    fn residual_forward(
        &self,
        rec: &mut Recorder,
        layer: usize,
        site: Sublayer,
        r: &Tensor,
        s: &Tensor,
        out: &Tensor,
    ) -> Result<Option<Saved>> {
        let Some(unit) = self.params.unit(layer, site) else { return Ok(None) };
        let input = match (site, self.params.config.kind) {
            (Sublayer::Mlp, BottleneckKind::SeqBn) => add(rec, r, s)?, // r + s, before the adapter adds to it
            (Sublayer::Mlp, BottleneckKind::ParBn) => r.clone(),
            _ => s.clone(),
        };
        let BnSaved { s, a, z } = bn_forward(rec, &input, unit, self.call(layer, site), out)?;
        Ok(Some(Saved(vec![s, a, z])))
    }

    fn residual_backward(
        &self,
        rec: &mut Recorder,
        layer: usize,
        site: Sublayer,
        dout: &Tensor,
        saved: &Saved,
    ) -> Result<(Tensor, Tensor)> {
        const OP: &str = "bn_backward";
        let at = || mismatch(OP, format!("layer {layer} {site:?}"));
        let unit = self.params.unit(layer, site).ok_or_else(at)?;
        let g = self.grads(OP)?.unit(layer, site).ok_or_else(at)?;
        let bs = BnSaved { s: saved.get(OP, 0)?.clone(), a: saved.get(OP, 1)?.clone(), z: saved.get(OP, 2)?.clone() };
        let acc = rec.alloc(dout.shape(), DType::F32)?;
        copy(rec, dout, &acc)?;
        bn_backward(rec, dout, &bs, unit, self.call(layer, site), g, &acc)?; // acc = dout + adᵀ(dout)
                                                                             // (∂/∂s, ∂/∂r): the adapter's share goes to whichever it saw.
        Ok(match (site, self.params.config.kind) {
            (Sublayer::Mlp, BottleneckKind::SeqBn) => (acc.clone(), acc),
            (Sublayer::Mlp, BottleneckKind::ParBn) => (dout.clone(), acc),
            _ => (acc, dout.clone()),
        })
    }
}
