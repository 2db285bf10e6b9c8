//! An (IA)³ adapter on the GPU: one vector per targeted Linear, in the
//! model's layer order. Like LoRA's, its gradients and AdamW moments are
//! values of the same type.

use super::config::{Ia3Config, Ia3Module};
use super::file::{key, Ia3Weights};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::model::llama::Proj;
use crate::model::Config;

/// One learned vector: its module and the tensor, of PEFT's shape ((1, in)
/// feed-forward, (out, 1) otherwise).
#[derive(Clone, Debug)]
pub struct Ia3Vector {
    pub module: Ia3Module,
    pub l: Tensor,
}

#[derive(Clone, Debug)]
pub struct Ia3Adapter {
    pub config: Ia3Config,
    /// `model.layers[i]`'s vectors, indexed by [`Proj::index`].
    pub layers: Vec<[Option<Ia3Vector>; 7]>,
}

impl Ia3Adapter {
    /// Uploads CPU vectors (checked against `config` by whoever made them).
    pub fn upload(gpu: &Gpu, config: Ia3Config, w: &Ia3Weights, model: &Config) -> Result<Ia3Adapter> {
        let mut layers: Vec<[Option<Ia3Vector>; 7]> =
            (0..model.num_hidden_layers).map(|_| Default::default()).collect();
        for (m, v) in &w.vectors {
            let slot = layers
                .get_mut(m.layer)
                .ok_or_else(|| Error::invalid("Ia3Adapter", format!("layer {} is not in this model", m.layer)))?;
            slot[m.proj.index()] = Some(Ia3Vector { module: *m, l: Tensor::from_slice(gpu, &m.shape(model), v)? });
        }
        Ok(Ia3Adapter { config, layers })
    }

    /// Loads a PEFT (IA)³ folder (`adapter_config.json` + `adapter_model.safetensors`).
    pub async fn load<F: crate::model::ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<Ia3Adapter> {
        let config = Ia3Config::load(files).await?;
        let weights = Ia3Weights::load(files, &config, model).await?;
        Self::upload(gpu, config, &weights, model)
    }

    /// Reads the vectors back (for saving).
    pub async fn download(&self, gpu: &Gpu) -> Result<Ia3Weights> {
        let mut vectors = Vec::new();
        for v in self.vectors() {
            vectors.push((v.module, v.l.to_vec::<f32>(gpu).await?));
        }
        Ok(Ia3Weights { vectors })
    }

    fn vectors(&self) -> impl Iterator<Item = &Ia3Vector> {
        self.layers.iter().flat_map(|l| l.iter().flatten())
    }

    /// Layer `layer`'s vector on `proj`, when that Linear is adapted.
    pub fn vector(&self, layer: usize, proj: Proj) -> Option<&Ia3Vector> {
        self.layers.get(layer).and_then(|l| l[proj.index()].as_ref())
    }

    /// Zeros of the same shapes: gradients, AdamW moments.
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Ia3Adapter> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let mut out: [Option<Ia3Vector>; 7] = Default::default();
                for (o, v) in out.iter_mut().zip(layer) {
                    *o = v
                        .as_ref()
                        .map(|v| {
                            Ok::<_, Error>(Ia3Vector {
                                module: v.module,
                                l: Tensor::zeros(gpu, v.l.shape(), DType::F32)?,
                            })
                        })
                        .transpose()?;
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        Ok(Ia3Adapter { config: self.config.clone(), layers })
    }

    /// Every vector with its PEFT key, in layer then module order.
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        self.vectors().map(|v| (key(&v.module), &v.l)).collect()
    }
}
