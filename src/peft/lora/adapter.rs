//! A LoRA adapter on the GPU: every adapted module's factors, in the model's
//! layer order, with the config that made them. Gradients and AdamW moments
//! are values of the same type ([`LoraAdapter::zeros_like`]), so one walk over
//! [`LoraAdapter::tensors`] pairs a parameter with its gradient and moments.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::config::{OuterModule, LORA_MODULES};
use super::file::{key_a, key_b};
use super::file::{LoraPair, LoraWeights};
use super::layer::LoraFactors;
use super::LoraConfig;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::llama::hooks::Proj;
use crate::model::Config;
use crate::peft::modules_to_save::{self, ModulesToSave};
use crate::peft::trainable_tokens::{TokenWeights, TrainableTokens, DELTA_KEY, HEAD_DELTA_KEY};

/// PEFT's prefix on saved keys.
const KEY_PREFIX: &str = "base_model.model.";

/// The factors of one layer, indexed like [`LORA_MODULES`] (q, k, v, o, gate,
/// up, down); `None` where the module is not adapted.
pub type LoraLayer = [Option<LoraFactors>; 7];

#[derive(Clone, Debug)]
pub struct LoraAdapter {
    pub config: LoraConfig,
    /// `model.layers[i]`'s factors.
    pub layers: Vec<LoraLayer>,
    /// PiSSA's and OLoRA's initial factors A₀, B₀: the adapter is saved
    /// converted to a LoRA on the original base (see [`super::convert`]).
    /// `None` for every other adapter.
    pub initial: Option<Arc<LoraWeights>>,
    /// PEFT's trainable tokens (`trainable_token_indices`): embedding rows
    /// trained beside the factors.
    pub tokens: Option<TrainableTokens>,
    /// An untied `lm_head`'s own trainable rows (the dict form's `"lm_head"`).
    pub head_tokens: Option<Box<TrainableTokens>>,
    /// LoRA on `model.embed_tokens` (A (r, vocab), B (hidden, r)) and on
    /// `lm_head` (A (r, hidden), B (vocab, r)), where targeted.
    pub embed: Option<Box<LoraFactors>>,
    pub head: Option<Box<LoraFactors>>,
    /// `modules_to_save`: whole copies of `embed_tokens` and `lm_head`
    /// trained beside the factors.
    pub modules_to_save: Option<Box<ModulesToSave>>,
    /// Each module's factor on its LoRA term, from the config.
    pub scalings: Scalings,
}

/// Each adapted module's factor on its LoRA term: alpha/r (or alpha/√r with
/// rsLoRA) from its own rank and alpha (`rank_pattern`, `alpha_pattern`),
/// in f32 as PEFT's `scaling` meets the f32 product.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scalings {
    layers: Vec<[f32; 7]>,
    embed: f32,
    head: f32,
}

impl Scalings {
    /// Every module's of a `layers`-layer model under `config`.
    pub fn of(config: &LoraConfig, layers: usize) -> Scalings {
        let s = |name: &str| config.scaling_of(name) as f32;
        Scalings {
            layers: (0..layers).map(|i| std::array::from_fn(|j| s(&module_name(i, j)))).collect(),
            embed: s(OuterModule::Embedding.name()),
            head: s(OuterModule::Head.name()),
        }
    }

    /// Layer `layer`'s module `proj` (an index into [`LORA_MODULES`]).
    pub fn at(&self, layer: usize, proj: usize) -> f32 {
        self.layers[layer][proj]
    }

    /// The embedding's or the head's.
    pub fn outer(&self, m: OuterModule) -> f32 {
        match m {
            OuterModule::Embedding => self.embed,
            OuterModule::Head => self.head,
        }
    }
}

/// `model.layers.{i}.self_attn.q_proj` for layer i and module index j.
pub fn module_name(layer: usize, proj: usize) -> String {
    super::config::module_name(layer, LORA_MODULES[proj])
}

fn split_name(name: &str) -> Option<(usize, usize)> {
    let layer = super::config::layer_of(name)?;
    let proj = LORA_MODULES.iter().position(|p| name.ends_with(&format!(".{p}")))?;
    Some((layer, proj))
}

/// The factors of `weights` on the GPU: each layer's, then the embedding's
/// and the head's; a module name the model has no Linear for, or a DoRA
/// magnitude where `use_dora` says otherwise, is an error naming the tensor.
#[allow(clippy::type_complexity)] // the three places factors go
fn upload_factors(
    gpu: &Gpu,
    config: &LoraConfig,
    weights: &LoraWeights,
    model: &Config,
) -> Result<(Vec<LoraLayer>, Option<Box<LoraFactors>>, Option<Box<LoraFactors>>)> {
    let mut layers: Vec<LoraLayer> = (0..model.num_hidden_layers).map(|_| Default::default()).collect();
    let (mut embed, mut head) = (None, None);
    for (name, pair) in &weights.modules {
        let a = Tensor::from_slice(gpu, &[pair.r, pair.in_features], &pair.a)?;
        let b = Tensor::from_slice(gpu, &[pair.out_features, pair.r], &pair.b)?;
        let outer = match name.as_str() {
            n if n == OuterModule::Embedding.name() => Some(&mut embed),
            n if n == OuterModule::Head.name() => Some(&mut head),
            _ => None,
        };
        if let Some(slot) = outer {
            *slot = Some(Box::new(LoraFactors { a, b, m: None }));
            continue;
        }
        let Some((layer, proj)) = split_name(name).filter(|(l, _)| *l < layers.len()) else {
            return Err(Error::AdapterTensor {
                tensor: name.clone(),
                file: super::ADAPTER_WEIGHTS_FILE.into(),
                detail: format!("not a module of this {}-layer model", layers.len()),
            });
        };
        let m = pair.m.as_ref().map(|m| Tensor::from_slice(gpu, &[pair.out_features], m)).transpose()?;
        if m.is_some() != config.use_dora {
            return Err(Error::AdapterTensor {
                tensor: format!("{KEY_PREFIX}{name}.lora_magnitude_vector"),
                file: super::ADAPTER_WEIGHTS_FILE.into(),
                detail: format!("present: {}, but use_dora is {}", m.is_some(), config.use_dora),
            });
        }
        layers[layer][proj] = Some(LoraFactors { a, b, m });
    }
    Ok((layers, embed, head))
}

impl LoraAdapter {
    /// Uploads CPU weights (checked against `config` by whoever read them).
    pub fn upload(gpu: &Gpu, config: LoraConfig, weights: &LoraWeights, model: &Config) -> Result<LoraAdapter> {
        if let Some((name, pair)) = weights.modules.iter().find(|(n, p)| p.r != config.rank_of(n)) {
            return Err(Error::AdapterConfig {
                field: if config.rank_pattern.is_empty() { "r" } else { "rank_pattern" }.into(),
                detail: format!("{name}'s weights have rank {}, the config gives it {}", pair.r, config.rank_of(name)),
            });
        }
        let (layers, embed, head) = upload_factors(gpu, &config, weights, model)?;
        let rows = |ids: &Option<Vec<u32>>, rows: &Option<TokenWeights>, key: &str| match (ids, rows) {
            (Some(ids), Some(rows)) => Ok(Some((ids.clone(), rows.values.clone()))),
            (None, None) => Ok(None),
            (ids, _) => Err(Error::AdapterTensor {
                tensor: key.into(),
                file: super::ADAPTER_WEIGHTS_FILE.into(),
                detail: format!(
                    "present: {}, but trainable_token_indices names {}",
                    rows.is_some(),
                    if ids.is_some() { "it" } else { "no such module" }
                ),
            }),
        };
        let tokens = match rows(&config.trainable_token_indices, &weights.tokens, DELTA_KEY)? {
            Some((ids, values)) => Some(TrainableTokens::upload(gpu, &ids, &values, model)?),
            None => None,
        };
        let head_tokens = match rows(&config.trainable_head_token_indices, &weights.head_tokens, HEAD_DELTA_KEY)? {
            Some((ids, values)) => Some(Box::new(TrainableTokens::upload_head(gpu, &ids, &values, model)?)),
            None => None,
        };
        let mut config = config;
        if let Some(([labels, _], _)) = weights.saved.get(modules_to_save::SCORE_KEY) {
            config.num_labels = *labels; // the file's score head says how many
            config.validate()?;
            if let Some(own) = model.head.num_labels().filter(|&own| own != *labels) {
                return Err(Error::AdapterTensor {
                    tensor: modules_to_save::SCORE_KEY.into(),
                    file: super::ADAPTER_WEIGHTS_FILE.into(),
                    detail: format!("{labels} labels, but the model is a classifier of {own} (its score head's rows)"),
                });
            }
        }
        let modules_to_save = match config.modules_to_save.clone() {
            Some(list) => {
                let copies = ModulesToSave::zeros(gpu, &list, config.ensure_weight_tying, model, config.num_labels)?;
                for (key, module) in modules_to_save::file_keys(&list, config.ensure_weight_tying, model) {
                    if let Some((_, values)) = weights.saved.get(key) {
                        copies.write(gpu, module, values)?;
                    }
                }
                if let Some((_, values)) = weights.saved.get(modules_to_save::SCORE_KEY) {
                    copies.write_score(gpu, values)?;
                }
                if copies.head_is_embed {
                    config.modules_to_save = Some(modules_to_save::tied_list(&list));
                    // as PEFT keeps it
                }
                Some(Box::new(copies))
            }
            None => None,
        };
        let scalings = Scalings::of(&config, layers.len());
        let adapter =
            LoraAdapter { config, layers, initial: None, tokens, head_tokens, embed, head, modules_to_save, scalings };
        adapter.refuse_two_ways_of_training_the_head(model)?;
        Ok(adapter)
    }

    /// On a model whose head is its embedding, a table trained two ways at
    /// once is refused: token rows replacing the embedding's beside a LoRA on
    /// the head or a copy of it, or a LoRA on either kept tied to the other.
    fn refuse_two_ways_of_training_the_head(&self, model: &Config) -> Result<()> {
        let rows_in_head = self.tokens.as_ref().is_some_and(|t| t.in_head);
        let other = if !rows_in_head {
            None
        } else if self.head.is_some() {
            Some("a LoRA target")
        } else if self.modules_to_save.as_ref().is_some_and(|m| m.head_weight().is_some()) {
            Some("in modules_to_save")
        } else {
            None
        };
        if let Some(other) = other {
            return Err(Error::AdapterConfig {
                field: "trainable_token_indices".into(),
                detail: format!(
                    "lm_head is {other}, and on this model it is the embedding whose rows the tokens replace: \
                     train the head either way, not both"
                ),
            });
        }
        if self.config.ensure_weight_tying && model.tie_word_embeddings && (self.embed.is_some() || self.head.is_some())
        {
            return Err(Error::AdapterUnsupported {
                field: "ensure_weight_tying".into(),
                detail: "a LoRA on the embedding or the head of a tied model, tied to each other, is not supported \
                         (use modules_to_save, or ensure_weight_tying: false)"
                    .into(),
            });
        }
        Ok(())
    }

    /// Loads a PEFT LoRA folder (`adapter_config.json` +
    /// `adapter_model.safetensors`, f32/f16/bf16) for `model` onto the GPU.
    pub async fn load<F: crate::model::ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<LoraAdapter> {
        let config = LoraConfig::load(files).await?;
        let weights = LoraWeights::load(files, &config, model).await?;
        LoraAdapter::upload(gpu, config, &weights, model)
    }

    /// Reads the factors back into CPU weights (for saving).
    pub async fn download(&self, gpu: &Gpu) -> Result<LoraWeights> {
        let mut modules = BTreeMap::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (j, f) in layer.iter().enumerate() {
                let Some(f) = f else { continue };
                let (r, in_features, out_features) = f.dims("LoraAdapter::download")?;
                let a = f.a.to_vec::<f32>(gpu).await?;
                let b = f.b.to_vec::<f32>(gpu).await?;
                let m = match &f.m {
                    Some(m) => Some(m.to_vec::<f32>(gpu).await?),
                    None => None,
                };
                modules.insert(module_name(i, j), LoraPair { r, a, b, m, in_features, out_features });
            }
        }
        for (m, f) in self.outer() {
            let (r, in_features, out_features) = f.dims("LoraAdapter::download")?;
            let (a, b) = (f.a.to_vec::<f32>(gpu).await?, f.b.to_vec::<f32>(gpu).await?);
            modules.insert(m.name().to_string(), LoraPair { r, a, b, m: None, in_features, out_features });
        }
        let mut rows = Vec::new();
        for t in [self.tokens.as_ref(), self.head_tokens.as_deref()] {
            rows.push(match t {
                Some(t) => Some(TokenWeights {
                    shape: [t.indices.len(), t.delta.shape()[1]],
                    values: t.delta.to_vec::<f32>(gpu).await?,
                }),
                None => None,
            });
        }
        let (head_tokens, tokens) = (rows.pop().flatten(), rows.pop().flatten());
        let mut saved = BTreeMap::new();
        for (key, w) in self.modules_to_save.iter().flat_map(|m| m.saved()) {
            saved.insert(key.to_string(), ([w.rows, w.cols], w.to_f32(gpu).await?));
        }
        Ok(LoraWeights { modules, tokens, head_tokens, saved })
    }

    /// Zeros of the same shapes: gradients, AdamW moments.
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<LoraAdapter> {
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let mut out: LoraLayer = Default::default();
                for (o, f) in out.iter_mut().zip(layer) {
                    *o = f.as_ref().map(|f| f.zeros_like(gpu)).transpose()?;
                }
                Ok(out)
            })
            .collect::<Result<_>>()?;
        let tokens = self.tokens.as_ref().map(|t| t.zeros_like(gpu)).transpose()?;
        let head_tokens = self.head_tokens.as_ref().map(|t| t.zeros_like(gpu).map(Box::new)).transpose()?;
        let embed = self.embed.as_ref().map(|f| f.zeros_like(gpu).map(Box::new)).transpose()?;
        let head = self.head.as_ref().map(|f| f.zeros_like(gpu).map(Box::new)).transpose()?;
        let modules_to_save = self.modules_to_save.as_ref().map(|m| m.zeros_like(gpu).map(Box::new)).transpose()?;
        Ok(LoraAdapter {
            config: self.config.clone(),
            layers,
            initial: None,
            tokens,
            head_tokens,
            embed,
            head,
            modules_to_save,
            scalings: self.scalings.clone(),
        })
    }

    /// Every tensor with its PEFT key (`base_model.model.….lora_A.weight`), in
    /// layer then module order (A, B, then DoRA's `lora_magnitude_vector`),
    /// then the embedding's and the head's A and B, then the trainable token
    /// rows, then `modules_to_save`'s copies (by chunk).
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (j, f) in layer.iter().enumerate() {
                if let Some(f) = f {
                    let name = module_name(i, j);
                    out.push((format!("{KEY_PREFIX}{name}.lora_A.weight"), &f.a));
                    out.push((format!("{KEY_PREFIX}{name}.lora_B.weight"), &f.b));
                    if let Some(m) = &f.m {
                        out.push((format!("{KEY_PREFIX}{name}.lora_magnitude_vector"), m));
                    }
                }
            }
        }
        for (m, f) in self.outer() {
            out.push((key_a(m.name()), &f.a));
            out.push((key_b(m.name()), &f.b));
        }
        if let Some(t) = &self.tokens {
            out.push((DELTA_KEY.to_string(), &t.delta));
        }
        if let Some(t) = &self.head_tokens {
            out.push((HEAD_DELTA_KEY.to_string(), &t.delta));
        }
        if let Some(m) = &self.modules_to_save {
            out.extend(m.tensors());
        }
        out
    }

    /// The factors on the embedding and the head, where they are adapted.
    pub fn outer(&self) -> impl Iterator<Item = (OuterModule, &LoraFactors)> {
        [(OuterModule::Embedding, &self.embed), (OuterModule::Head, &self.head)]
            .into_iter()
            .filter_map(|(m, f)| f.as_deref().map(|f| (m, f)))
    }

    /// Sets what starts from `model`'s weights: DoRA's magnitudes, the
    /// trainable token rows (the embedding's own, as PEFT starts them) and
    /// `modules_to_save`'s copies.
    pub fn init_from_model(&self, gpu: &Gpu, model: &crate::model::Model) -> Result<()> {
        if self.config.use_dora {
            self.init_magnitudes(gpu, model)?;
        }
        if let Some(t) = &self.tokens {
            t.start_from_embedding(gpu, model)?;
        }
        if let Some(t) = &self.head_tokens {
            t.start_from_head(gpu, model)?;
        }
        if let Some(m) = &self.modules_to_save {
            m.start_from_model(gpu, model)?;
        }
        Ok(())
    }

    /// The factor on layer `layer`'s `proj` term.
    pub fn scaling(&self, layer: usize, proj: Proj) -> f32 {
        self.scalings.at(layer, proj.index())
    }
}
