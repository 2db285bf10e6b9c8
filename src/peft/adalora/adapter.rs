//! An AdaLoRA adapter on the GPU: every adapted module's triplet
//! (A (r, in), E (r, 1), B (out, r)) in the model's layer order, the config
//! that made them, and, while it trains, the rank allocator's state. Its
//! gradients and AdamW moments are values of the same type without that state.

use std::collections::BTreeMap;

use super::allocator::Allocator;
use super::config::{pattern_key, AdaLoraConfig};
use super::file::{AdaLoraWeights, SvdTriplet};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Tensor};
use crate::model::{Config, ModelFiles};
use crate::peft::lora::{lora_modules, InitLoraWeights, LORA_MODULES};
use crate::util::rng::Rng;

const KEY_PREFIX: &str = "base_model.model.";

/// One module's triplet (or its gradients, or its moments).
#[derive(Clone, Debug)]
pub struct SvdFactors {
    /// lora_A (r, in): the right singular vectors.
    pub a: Tensor,
    /// lora_E (r, 1): the singular values.
    pub e: Tensor,
    /// lora_B (out, r): the left singular vectors.
    pub b: Tensor,
}

impl SvdFactors {
    /// The rank r.
    pub fn rank(&self) -> usize {
        self.e.shape()[0]
    }

    fn zeros_like(&self, gpu: &Gpu) -> Result<SvdFactors> {
        let z = |t: &Tensor| Tensor::zeros(gpu, t.shape(), DType::F32);
        Ok(SvdFactors { a: z(&self.a)?, e: z(&self.e)?, b: z(&self.b)? })
    }
}

/// One layer's triplets, indexed like [`LORA_MODULES`]; `None` where the
/// module is not adapted (or keeps no rank).
pub type AdaLoraLayer = [Option<SvdFactors>; 7];

#[derive(Clone, Debug)]
pub struct AdaLoraAdapter {
    pub config: AdaLoraConfig,
    /// `model.layers[i]`'s triplets.
    pub layers: Vec<AdaLoraLayer>,
    /// The rank allocator's state while training (see [`Allocator`]).
    pub allocator: Option<Box<Allocator>>,
}

fn module_name(layer: usize, proj: usize) -> String {
    let block = if proj >= 4 { "mlp" } else { "self_attn" };
    format!("model.layers.{layer}.{block}.{}", LORA_MODULES[proj])
}

fn split_name(name: &str) -> Option<(usize, usize)> {
    let layer = name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()?;
    let proj = LORA_MODULES.iter().position(|p| name.ends_with(&format!(".{p}")))?;
    Some((layer, proj))
}

impl AdaLoraAdapter {
    /// Uploads CPU weights (modules of rank 0 adapt nothing and stay `None`).
    pub fn upload(gpu: &Gpu, config: AdaLoraConfig, weights: &AdaLoraWeights, model: &Config) -> Result<Self> {
        let mut layers: Vec<AdaLoraLayer> = (0..model.num_hidden_layers).map(|_| Default::default()).collect();
        for (name, t) in &weights.modules {
            let Some((layer, proj)) = split_name(name).filter(|(l, _)| *l < layers.len()) else {
                return Err(Error::AdapterTensor {
                    tensor: name.clone(),
                    file: crate::peft::ADAPTER_WEIGHTS_FILE.into(),
                    detail: format!("not a module of this {}-layer model", layers.len()),
                });
            };
            if t.r == 0 {
                continue;
            }
            layers[layer][proj] = Some(SvdFactors {
                a: Tensor::from_slice(gpu, &[t.r, t.in_features], &t.a)?,
                e: Tensor::from_slice(gpu, &[t.r, 1], &t.e)?,
                b: Tensor::from_slice(gpu, &[t.out_features, t.r], &t.b)?,
            });
        }
        Ok(AdaLoraAdapter { config, layers, allocator: None })
    }

    /// A fresh adapter as PEFT initialises one: E zeros, A and B N(0, 0.02²)
    /// (`init_lora_weights` false: all three N(0, 1)), every module at `init_r`
    /// (or at the rank `rank_pattern` gives it).
    pub fn init(gpu: &Gpu, config: AdaLoraConfig, model: &Config, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = Rng::new(seed);
        let std = if config.lora.init_lora_weights == InitLoraWeights::Random { 1.0 } else { 0.02 };
        let mut weights = AdaLoraWeights::default();
        for m in lora_modules(&config.lora, model)? {
            let r = config.rank_of(&m.name);
            let a = rng.normal_vec(r * m.in_features, std);
            let e = if std == 1.0 { rng.normal_vec(r, 1.0) } else { vec![0.0; r] };
            let b = rng.normal_vec(m.out_features * r, std);
            let t = SvdTriplet { a, e, b, r, in_features: m.in_features, out_features: m.out_features };
            weights.modules.insert(m.name, t);
        }
        Self::upload(gpu, config, &weights, model)
    }

    /// Loads a PEFT AdaLoRA folder for `model`.
    pub async fn load<F: ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<Self> {
        let config = AdaLoraConfig::from_json(&crate::peft::peft_config::read_config(files).await?)?;
        let weights = AdaLoraWeights::load(files, &config, model).await?;
        Self::upload(gpu, config, &weights, model)
    }

    /// Layer `layer`'s triplet on projection index `proj`.
    pub fn factors(&self, layer: usize, proj: usize) -> Option<&SvdFactors> {
        self.layers.get(layer).and_then(|l| l[proj].as_ref())
    }

    /// Every module's triplet with its module name, in model order.
    pub fn modules(&self) -> Vec<(String, &SvdFactors)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (j, f) in layer.iter().enumerate() {
                if let Some(f) = f {
                    out.push((module_name(i, j), f));
                }
            }
        }
        out
    }

    /// Every tensor with its PEFT key (`base_model.model.….lora_A`), module by
    /// module, A, E then B.
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        self.modules()
            .into_iter()
            .flat_map(|(name, f)| {
                [("lora_A", &f.a), ("lora_E", &f.e), ("lora_B", &f.b)]
                    .map(|(part, t)| (format!("{KEY_PREFIX}{name}.{part}"), t))
            })
            .collect()
    }

    /// Zeros of the same shapes (gradients, moments), without allocator state.
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let mut out: AdaLoraLayer = Default::default();
                for (o, f) in out.iter_mut().zip(layer) {
                    *o = f.as_ref().map(|f| f.zeros_like(gpu)).transpose()?;
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        Ok(AdaLoraAdapter { config: self.config.clone(), layers, allocator: None })
    }

    /// The factor on every module's term.
    pub fn scaling(&self) -> f32 {
        self.config.scaling()
    }

    /// The weights as PEFT saves them, with the config: after an allocation,
    /// `rank_pattern` holds the ranks it kept and only those are saved.
    pub async fn download(&self, gpu: &Gpu, model: &Config) -> Result<(AdaLoraConfig, AdaLoraWeights)> {
        let mut config = self.config.clone();
        let keep = match &self.allocator {
            Some(a) => a.kept_ranks(gpu).await?,
            None => None,
        };
        let mut weights = AdaLoraWeights::default();
        let mut pattern = BTreeMap::new();
        let mut offset = 0;
        for (name, f) in self.modules() {
            let (r, inp, out) = (f.rank(), f.a.shape()[1], f.b.shape()[0]);
            let t = SvdTriplet {
                a: f.a.to_vec(gpu).await?,
                e: f.e.to_vec(gpu).await?,
                b: f.b.to_vec(gpu).await?,
                r,
                in_features: inp,
                out_features: out,
            };
            let t = match &keep {
                Some(keep) => {
                    let flags = keep[offset..offset + r].to_vec();
                    let kept = t.keep(&flags);
                    pattern.insert(pattern_key(&name), flags);
                    kept
                }
                None => t,
            };
            offset += r;
            weights.modules.insert(name, t);
        }
        // Modules that keep no rank are saved with r = 0, as PEFT saves them.
        for m in lora_modules(&config.lora, model)? {
            weights.modules.entry(m.name.clone()).or_insert_with(|| SvdTriplet {
                a: vec![],
                e: vec![],
                b: vec![],
                r: 0,
                in_features: m.in_features,
                out_features: m.out_features,
            });
        }
        if keep.is_some() {
            config.rank_pattern = Some(pattern);
        }
        Ok((config, weights))
    }
}
