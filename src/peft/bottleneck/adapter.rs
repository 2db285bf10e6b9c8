//! A bottleneck adapter on the GPU: its config and every layer's units. Like
//! LoRA's, its gradients and AdamW moments are values of the same type.

use std::collections::BTreeMap;

use super::config::{BottleneckConfig, BottleneckKind};
use super::file::{key, BnPart, BnSite, BottleneckUnit, BottleneckWeights, LayerAdapters};
use super::layer::BnUnit;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::Config;

/// One layer's units: attention-side (double_seq_bn) and output-side.
#[derive(Clone, Debug, Default)]
pub struct BnLayer {
    pub attention: Option<BnUnit>,
    pub output: Option<BnUnit>,
}

/// A bottleneck adapter on the GPU: its config and every layer's units.
#[derive(Clone, Debug)]
pub struct BottleneckAdapter {
    pub config: BottleneckConfig,
    /// `model.layers[i]`'s units (empty where `leave_out` skips the layer).
    pub layers: Vec<BnLayer>,
}

impl BottleneckAdapter {
    /// Uploads CPU weights (checked against `config` by whoever made them).
    pub fn upload(gpu: &Gpu, config: BottleneckConfig, w: &BottleneckWeights, model: &Config) -> Result<Self> {
        let mut layers: Vec<BnLayer> = (0..model.num_hidden_layers).map(|_| BnLayer::default()).collect();
        for (&i, l) in &w.layers {
            let Some(slot) = layers.get_mut(i) else {
                return Err(Error::invalid("BottleneckAdapter", format!("layer {i} is not in this model")));
            };
            let up =
                |u: &Option<BottleneckUnit>| u.as_ref().map(|u| BnUnit::upload(gpu, u, w.hidden, w.size)).transpose();
            *slot = BnLayer { attention: up(&l.attention)?, output: up(&l.output)? };
        }
        Ok(BottleneckAdapter { config, layers })
    }

    /// Loads an AdapterHub folder (`adapter_config.json` + `adapter.safetensors`).
    pub async fn load<F: crate::model::ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<Self> {
        let config = BottleneckConfig::load(files).await?;
        config.check(model)?;
        let weights = BottleneckWeights::load(files, &config, model).await?;
        Self::upload(gpu, config, &weights, model)
    }

    /// Reads the units back into CPU weights (for saving).
    pub async fn download(&self, gpu: &Gpu) -> Result<BottleneckWeights> {
        let mut layers = BTreeMap::new();
        let (mut hidden, mut size) = (0, 0);
        for (i, l) in self.layers.iter().enumerate() {
            if l.attention.is_none() && l.output.is_none() {
                continue;
            }
            let mut out = LayerAdapters { attention: None, output: None };
            if let Some(u) = &l.attention {
                out.attention = Some(u.download(gpu).await?);
            }
            if let Some(u) = &l.output {
                (hidden, size) = u.dims()?;
                out.output = Some(u.download(gpu).await?);
            }
            layers.insert(i, out);
        }
        Ok(BottleneckWeights { hidden, size, layers })
    }

    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Self> {
        let z = |u: &Option<BnUnit>| u.as_ref().map(|u| u.zeros_like(gpu)).transpose();
        let layers = self
            .layers
            .iter()
            .map(|l| Ok(BnLayer { attention: z(&l.attention)?, output: z(&l.output)? }))
            .collect::<Result<_>>()?;
        Ok(BottleneckAdapter { config: self.config.clone(), layers })
    }

    /// Every tensor with its AdapterHub key, layer by layer, attention before output.
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let name = &self.config.name;
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (site, unit) in [(BnSite::Attention, &l.attention), (BnSite::Output, &l.output)] {
                if let Some(u) = unit {
                    for part in BnPart::ALL {
                        out.push((key(i, site, name, part), u.part(part)));
                    }
                }
            }
        }
        out
    }

    pub fn kind(&self) -> BottleneckKind {
        self.config.kind
    }
}
