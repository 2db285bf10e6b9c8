//! PEFT's TRAINABLE_TOKENS method by itself: the rows, with its config, as
//! an adapter of their own. Saved as PEFT saves it:
//! `base_model.model.model.embed_tokens.trainable_tokens_delta` (k, D), and
//! on a model with tied embeddings the same rows again under
//! `base_model.model.lm_head.trainable_tokens_delta`.

use std::collections::HashMap;

use ::safetensors::tensor::TensorView;
use ::safetensors::Dtype;

use super::{TrainableTokens, TrainableTokensConfig};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::model::safetensors::SafetensorsFile;
use crate::model::{Config, ModelFiles};
use crate::peft::ADAPTER_WEIGHTS_FILE;
use crate::util::rng::Rng;

/// The rows' key in a TRAINABLE_TOKENS adapter's file.
pub const EMBED_KEY: &str = "base_model.model.model.embed_tokens.trainable_tokens_delta";
/// The same rows under the tied head's key (written where the model ties them).
pub const HEAD_KEY: &str = "base_model.model.lm_head.trainable_tokens_delta";

#[derive(Clone, Debug)]
pub struct TrainableTokensAdapter {
    pub config: TrainableTokensConfig,
    pub tokens: TrainableTokens,
    /// An untied head's own rows (`target_modules` with `lm_head`).
    pub head: Option<Box<TrainableTokens>>,
}

fn tensor_error(tensor: &str, detail: impl Into<String>) -> Error {
    Error::AdapterTensor { tensor: tensor.into(), file: ADAPTER_WEIGHTS_FILE.into(), detail: detail.into() }
}

impl TrainableTokensAdapter {
    /// Rows `values` for a model of `model`: the embedding's (k·D), then an
    /// untied head's own (k·D) where the config names it
    /// ([`TrainableTokensConfig::values_len`]).
    pub fn upload(gpu: &Gpu, config: TrainableTokensConfig, values: &[f32], model: &Config) -> Result<Self> {
        if values.len() != config.values_len(model) {
            return Err(tensor_error(
                EMBED_KEY,
                format!(
                    "{} values, expected {} for the config's token_indices",
                    values.len(),
                    config.values_len(model)
                ),
            ));
        }
        let k = config.token_indices.len() * model.hidden_size;
        let tokens = TrainableTokens::upload(gpu, &config.token_indices, &values[..k], model)?;
        let head = match config.head_rows(model) {
            true => Some(Box::new(TrainableTokens::upload_head(gpu, &config.token_indices, &values[k..], model)?)),
            false => None,
        };
        Ok(TrainableTokensAdapter { config, tokens, head })
    }

    /// A fresh adapter for `model`, as PEFT makes it: the embedding's own
    /// rows (`init_weights`), or N(0, 1) from `seed`.
    pub fn init(gpu: &Gpu, config: TrainableTokensConfig, model: &crate::model::Model, seed: u64) -> Result<Self> {
        let n = config.values_len(&model.config);
        let values = if config.init_weights { vec![0.0; n] } else { Rng::new(seed).normal_vec(n, 1.0) };
        let init = config.init_weights;
        let adapter = Self::upload(gpu, config, &values, &model.config)?;
        if init {
            adapter.tokens.start_from_embedding(gpu, model)?;
            if let Some(h) = &adapter.head {
                h.start_from_head(gpu, model)?;
            }
        }
        Ok(adapter)
    }

    /// Loads a PEFT TRAINABLE_TOKENS folder for a model of `model`.
    pub async fn load<F: ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<Self> {
        let config = TrainableTokensConfig::load(files).await?;
        let file = SafetensorsFile::open(files.open(ADAPTER_WEIGHTS_FILE).await?).await?;
        let shape = vec![config.token_indices.len(), model.hidden_size];
        for t in file.tensors() {
            let head = t.name == HEAD_KEY;
            if t.name != EMBED_KEY && !head {
                return Err(tensor_error(&t.name, "unexpected tensor in a TRAINABLE_TOKENS adapter"));
            }
            if head && !model.tie_word_embeddings && !config.lm_head {
                return Err(tensor_error(
                    &t.name,
                    "lm_head's rows, but this model's lm_head is not tied to the embedding and target_modules \
                     does not name it",
                ));
            }
            if t.shape != shape {
                return Err(tensor_error(
                    &t.name,
                    format!("shape {:?}, expected {shape:?} for the config's token_indices and hidden_size", t.shape),
                ));
            }
            if !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
                return Err(tensor_error(&t.name, format!("dtype {}, expected F32, F16 or BF16", t.dtype)));
            }
        }
        let mut keys = vec![EMBED_KEY];
        if config.head_rows(model) {
            keys.push(HEAD_KEY);
        }
        let mut values = Vec::new();
        for key in keys {
            if file.get(key).is_none() {
                return Err(tensor_error(key, "missing"));
            }
            values.extend(file.read_f32(key).await?);
        }
        Self::upload(gpu, config, &values, model)
    }

    /// Zeros of the same shape: gradients, AdamW moments.
    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Self> {
        let head = self.head.as_ref().map(|h| h.zeros_like(gpu).map(Box::new)).transpose()?;
        Ok(TrainableTokensAdapter { config: self.config.clone(), tokens: self.tokens.zeros_like(gpu)?, head })
    }

    /// The rows with their key.
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![(EMBED_KEY.to_string(), &self.tokens.delta)];
        if let Some(h) = &self.head {
            out.push((HEAD_KEY.to_string(), &h.delta));
        }
        out
    }

    /// `adapter_model.safetensors` as PEFT writes it: f32, the tied head's
    /// copy where the model ties it (an untied head's own rows where it has
    /// them), `{"format":"pt"}`.
    pub async fn to_safetensors_bytes(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        let rows = self.tokens.delta.to_vec::<f32>(gpu).await?;
        let head = match &self.head {
            Some(h) => h.delta.to_vec::<f32>(gpu).await?,
            None => rows.clone(),
        };
        let shape = self.tokens.delta.shape().to_vec();
        let mut keys = vec![(EMBED_KEY, &rows)];
        if self.tokens.in_head || self.head.is_some() {
            keys.push((HEAD_KEY, &head));
        }
        let views = keys
            .into_iter()
            .map(|(k, values)| {
                TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(values))
                    .map(|v| (k, v))
                    .map_err(|e| tensor_error(k, e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        ::safetensors::serialize(views, Some(metadata)).map_err(|e| tensor_error("*", e.to_string()))
    }
}
