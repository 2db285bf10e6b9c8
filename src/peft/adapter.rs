//! An adapter on the GPU, whatever its method, as the model and the trainer
//! see it: per-layer views for the forward and backward, and a flat list of
//! named tensors for the optimizer and the files.

use super::bottleneck::BottleneckAdapter;
use super::bottleneck_config::BottleneckConfig;
use super::bottleneck_file::{BottleneckWeights, BN_WEIGHTS_FILE};
use super::lora::LoraAdapter;
use super::{init_lora, LoraConfig, LoraWeights, ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::llama::block::{LayerAdapter, LayerBottleneck, LayerLora};
use crate::model::{Config, ModelFiles};
use crate::util::rng::pcg_hash;
use crate::util::rng::Rng;

/// A trainable adapter (or its gradients, or its AdamW moments: values of
/// the same shapes).
#[derive(Clone, Debug)]
pub enum Adapter {
    Lora(LoraAdapter),
    Bottleneck(BottleneckAdapter),
}

impl Adapter {
    /// What adapts layer `i`. `dropout_seed` is the seed of this forward's
    /// dropout masks (training); `None` runs without dropout (evaluation,
    /// generation, and gradient views).
    pub fn layer(&self, i: usize, dropout_seed: Option<u32>) -> LayerAdapter<'_> {
        match self {
            Adapter::Lora(l) => match l.layers.get(i) {
                Some(factors) => LayerAdapter::Lora(LayerLora {
                    factors,
                    scaling: l.scaling(),
                    dropout: dropout_seed.map_or(0.0, |_| l.config.lora_dropout as f32),
                    seed: dropout_seed.map_or(0, |s| pcg_hash(s ^ pcg_hash(i as u32))),
                }),
                None => LayerAdapter::None,
            },
            Adapter::Bottleneck(b) => match b.layers.get(i) {
                Some(units) => LayerAdapter::Bottleneck(LayerBottleneck {
                    kind: b.config.kind,
                    units,
                    act: b.config.non_linearity,
                    scaling: b.config.scaling as f32,
                    dropout: dropout_seed.map_or(0.0, |_| b.config.dropout as f32),
                    seed: dropout_seed.map_or(0, |s| pcg_hash(s ^ pcg_hash(i as u32))),
                }),
                None => LayerAdapter::None,
            },
        }
    }

    /// Zeros of the same shapes.
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Adapter> {
        Ok(match self {
            Adapter::Lora(l) => Adapter::Lora(l.zeros_like(gpu)?),
            Adapter::Bottleneck(b) => Adapter::Bottleneck(b.zeros_like(gpu)?),
        })
    }

    /// Every trainable tensor with the key it is saved under, in a fixed order.
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        match self {
            Adapter::Lora(l) => l.tensors(),
            Adapter::Bottleneck(b) => b.tensors(),
        }
    }

    /// Trainable parameters.
    pub fn num_params(&self) -> usize {
        self.tensors().iter().map(|(_, t)| t.numel()).sum()
    }

    /// GPU bytes of the tensors.
    pub fn bytes(&self) -> u64 {
        self.tensors().iter().map(|(_, t)| t.bytes()).sum()
    }

    /// The method's name as the CLI spells it (`lora`, `seq_bn`, …).
    pub fn method(&self) -> &'static str {
        match self {
            Adapter::Lora(_) => "lora",
            Adapter::Bottleneck(b) => b.config.kind.name(),
        }
    }
}

impl Adapter {
    /// Whether a training forward applies dropout.
    pub fn has_dropout(&self) -> bool {
        match self {
            Adapter::Lora(l) => l.config.lora_dropout > 0.0,
            Adapter::Bottleneck(b) => b.config.dropout > 0.0,
        }
    }
}

impl Adapter {
    /// A fresh LoRA adapter for `model`, initialised as PEFT does
    /// (`config.init_lora_weights`) from `seed`.
    pub fn new_lora(gpu: &Gpu, config: LoraConfig, model: &Config, seed: u64) -> Result<Adapter> {
        config.validate()?;
        let mut weights = LoraWeights::zeros(&config, model)?;
        // A rank above a layer's smaller side adds parameters and no capacity.
        if let Some((name, p)) = weights.modules.iter().find(|(_, p)| config.r > p.in_features.min(p.out_features)) {
            return Err(Error::AdapterConfig {
                field: "r".into(),
                detail: format!(
                    "r = {} is larger than {name} ({} × {}): B·A cannot have a rank above {}",
                    config.r,
                    p.out_features,
                    p.in_features,
                    p.in_features.min(p.out_features)
                ),
            });
        }
        init_lora(&mut weights, config.init_lora_weights, &mut Rng::new(seed));
        Ok(Adapter::Lora(LoraAdapter::upload(gpu, config, &weights, model)?))
    }

    /// A fresh bottleneck adapter for `model`, initialised as AdapterHub does
    /// (`config.init_weights`) from `seed`.
    pub fn new_bottleneck(gpu: &Gpu, config: BottleneckConfig, model: &Config, seed: u64) -> Result<Adapter> {
        let weights = BottleneckWeights::init(&config, model, &mut Rng::new(seed))?;
        Ok(Adapter::Bottleneck(BottleneckAdapter::upload(gpu, config, &weights, model)?))
    }

    /// Loads an adapter folder: PEFT's (`adapter_model.safetensors`) or
    /// AdapterHub's (`adapter.safetensors`), told apart by the weights file.
    pub async fn load<F: ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<Adapter> {
        if files.try_open(ADAPTER_WEIGHTS_FILE).await?.is_some() {
            return Ok(Adapter::Lora(LoraAdapter::load(gpu, files, model).await?));
        }
        if files.try_open(BN_WEIGHTS_FILE).await?.is_some() {
            return Ok(Adapter::Bottleneck(BottleneckAdapter::load(gpu, files, model).await?));
        }
        Err(Error::File {
            file: files.location().to_string(),
            detail: format!(
                "not an adapter folder: no {ADAPTER_WEIGHTS_FILE} (PEFT) or {BN_WEIGHTS_FILE} (AdapterHub) next to {ADAPTER_CONFIG_FILE}"
            ),
        })
    }

    /// The adapter's files, as the library it comes from writes them: PEFT's
    /// `adapter_config.json` + `adapter_model.safetensors`, or AdapterHub's
    /// `adapter_config.json` + `adapter.safetensors`. Reads the GPU once.
    pub async fn to_files(&self, gpu: &Gpu, model: &Config) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(match self {
            Adapter::Lora(l) => {
                let weights = l.download(gpu).await?;
                vec![
                    (ADAPTER_CONFIG_FILE.to_string(), l.config.to_json().into_bytes()),
                    (ADAPTER_WEIGHTS_FILE.to_string(), weights.to_safetensors_bytes()?),
                ]
            }
            Adapter::Bottleneck(b) => {
                let weights = b.download(gpu).await?;
                vec![
                    (ADAPTER_CONFIG_FILE.to_string(), b.config.to_json(model).into_bytes()),
                    (BN_WEIGHTS_FILE.to_string(), weights.to_safetensors_bytes(&b.config)?),
                ]
            }
        })
    }

    /// The `adapter_config.json` text.
    pub fn config_json(&self, model: &Config) -> String {
        match self {
            Adapter::Lora(l) => l.config.to_json(),
            Adapter::Bottleneck(b) => b.config.to_json(model),
        }
    }

    /// Builds an adapter of this one's method and config from named f32
    /// tensors (a training checkpoint), checking every name and shape.
    pub fn with_tensors(&self, gpu: &Gpu, tensors: &std::collections::BTreeMap<String, Vec<f32>>) -> Result<Adapter> {
        let fresh = self.zeros_like(gpu)?;
        let own = fresh.tensors();
        if own.len() != tensors.len() {
            return Err(Error::invalid(
                "Adapter::with_tensors",
                format!("{} tensors given, the adapter has {}", tensors.len(), own.len()),
            ));
        }
        for (key, t) in own {
            let data = tensors
                .get(&key)
                .ok_or_else(|| Error::invalid("Adapter::with_tensors", format!("tensor `{key}` is missing")))?;
            if data.len() != t.numel() {
                return Err(Error::shape(
                    "Adapter::with_tensors",
                    format!("`{key}` has {} values, the adapter's is {:?}", data.len(), t.shape()),
                ));
            }
            t.write(gpu, data)?;
        }
        Ok(fresh)
    }
}
