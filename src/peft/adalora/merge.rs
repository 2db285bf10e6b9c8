//! Merging an AdaLoRA adapter into the frozen base, as PEFT's
//! `SVDLinear.merge` / `unmerge`: `W ← W ± B·(A∘E)·scaling` for every adapted
//! Linear, through LoRA's merge with A' = A∘E.

use super::adapter::AdaLoraAdapter;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder};
use crate::kernels::adalora::scale_rows;
use crate::model::llama::Model;
use crate::peft::lora::merge::{add_delta, linear_weights};
use crate::peft::lora::LoraFactors;

fn apply(gpu: &Gpu, model: &mut Model, adapter: &AdaLoraAdapter, sign: f32) -> Result<()> {
    if adapter.layers.len() != model.layers.len() {
        return Err(Error::invalid(
            "merge",
            format!("the adapter has {} layers, the model {}", adapter.layers.len(), model.layers.len()),
        ));
    }
    let alpha = sign * adapter.scaling();
    for (layer, triplets) in model.layers.iter_mut().zip(&adapter.layers) {
        for (w, t) in linear_weights(layer).into_iter().zip(triplets) {
            let Some(t) = t else { continue };
            let mut rec = Recorder::new(gpu);
            let scaled = scale_rows(&mut rec, &t.a, &t.e)?;
            rec.submit()?;
            add_delta(gpu, w, &LoraFactors::new(scaled, t.b.clone()), alpha)?;
        }
    }
    gpu.check("merge")
}

/// PEFT's `merge_adapter`: the base now computes what base + adapter did.
pub fn merge_adalora(gpu: &Gpu, model: &mut Model, adapter: &AdaLoraAdapter) -> Result<()> {
    apply(gpu, model, adapter, 1.0)
}

/// PEFT's `unmerge_adapter` (exact up to f32 rounding on an f32 base).
pub fn unmerge_adalora(gpu: &Gpu, model: &mut Model, adapter: &AdaLoraAdapter) -> Result<()> {
    apply(gpu, model, adapter, -1.0)
}
