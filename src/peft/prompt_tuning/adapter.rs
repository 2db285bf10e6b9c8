//! A prompt-tuning adapter on the GPU: the virtual tokens' embeddings
//! (`prompt_embeddings`, (V, D)), initialised as PEFT's `PromptEmbedding`,
//! read and written as PEFT's `adapter_model.safetensors`. Like every
//! method's, its gradients and AdamW moments are values of the same type.

use std::collections::HashMap;

use ::safetensors::tensor::TensorView;
use ::safetensors::Dtype;

use super::config::{PromptTuningConfig, PromptTuningInit};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::model::safetensors::SafetensorsFile;
use crate::model::tokenizer::Tokenizer;
use crate::model::{Config, Model, ModelFiles};
use crate::peft::ADAPTER_WEIGHTS_FILE;
use crate::util::rng::Rng;

/// The one key of PEFT's file.
pub const PROMPT_KEY: &str = "prompt_embeddings";

#[derive(Clone, Debug)]
pub struct PromptTuningAdapter {
    pub config: PromptTuningConfig,
    /// (V, D)
    pub embedding: Tensor,
}

fn file_error(detail: impl Into<String>) -> Error {
    Error::AdapterTensor { tensor: PROMPT_KEY.into(), file: ADAPTER_WEIGHTS_FILE.into(), detail: detail.into() }
}

impl PromptTuningAdapter {
    /// The adapter with `values` (V·D, row-major) as its embeddings.
    pub fn upload(gpu: &Gpu, config: PromptTuningConfig, values: &[f32]) -> Result<Self> {
        let shape = [config.num_virtual_tokens, config.token_dim];
        if values.len() != shape[0] * shape[1] {
            return Err(file_error(format!("{} values, expected {shape:?}", values.len())));
        }
        Ok(PromptTuningAdapter { embedding: Tensor::from_slice(gpu, &shape, values)?, config })
    }

    /// A fresh adapter initialised as PEFT does: N(0, 1) from `seed`
    /// (`RANDOM`), or rows of the model's embedding table — at token ids
    /// drawn from `seed` (`SAMPLE_VOCAB`), or of the init text's tokens
    /// through `tokenizer` (`TEXT`), copied on the GPU.
    pub fn init(
        gpu: &Gpu,
        config: PromptTuningConfig,
        model: &Model,
        tokenizer: Option<&Tokenizer>,
        seed: u64,
    ) -> Result<Self> {
        config.check(&model.config)?;
        let v = config.num_virtual_tokens;
        let mut rng = Rng::new(seed);
        let ids: Vec<u32> = match &config.init {
            PromptTuningInit::Random => {
                let values = rng.normal_vec(v * config.token_dim, 1.0);
                return Self::upload(gpu, config, &values);
            }
            PromptTuningInit::SampleVocab => (0..v).map(|_| rng.below(model.config.vocab_size) as u32).collect(),
            PromptTuningInit::Text(text) => {
                let tokenizer = tokenizer.ok_or_else(|| {
                    Error::invalid("prompt tuning", "TEXT initialisation needs the model's tokenizer (tokenizer.json)")
                })?;
                let ids = tokenizer.encode(text, true)?;
                if ids.is_empty() {
                    return Err(Error::AdapterConfig {
                        field: "prompt_tuning_init_text".into(),
                        detail: format!("{text:?} has no tokens"),
                    });
                }
                ids.iter().copied().cycle().take(v).collect() // repeated, then cut, as PEFT
            }
        };
        let ids = Tensor::from_slice(gpu, &[v], &ids)?;
        let mut rec = Recorder::new(gpu);
        let rows = model.embed(&mut rec, &ids)?; // (V, D)
        let embedding = Tensor::zeros(gpu, &[v, config.token_dim], DType::F32)?;
        rec.copy(&rows, 0, &embedding, 0, embedding.bytes())?;
        rec.submit()?;
        Ok(PromptTuningAdapter { config, embedding })
    }

    /// Zeros of a config's shape (a training checkpoint's skeleton).
    pub fn zeros(gpu: &Gpu, config: PromptTuningConfig) -> Result<Self> {
        let embedding = Tensor::zeros(gpu, &[config.num_virtual_tokens, config.token_dim], DType::F32)?;
        Ok(PromptTuningAdapter { config, embedding })
    }

    /// Loads a PEFT prompt-tuning folder for `model`.
    pub async fn load<F: ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<Self> {
        let config = PromptTuningConfig::load(files).await?;
        config.check(model)?;
        let values = read_prompt(files, [config.num_virtual_tokens, config.token_dim], "a prompt-tuning").await?;
        Self::upload(gpu, config, &values)
    }

    /// PEFT's `adapter_model.safetensors`: `prompt_embeddings` (V, D) f32.
    pub async fn to_safetensors_bytes(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        prompt_file(gpu, &self.embedding).await
    }

    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Self> {
        Self::zeros(gpu, self.config.clone())
    }

    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        vec![(PROMPT_KEY.to_string(), &self.embedding)]
    }
}

/// The (V, D) `prompt_embeddings` of a PEFT folder's weights file (its one
/// tensor: `method` names the adapter in the error for any other).
pub(crate) async fn read_prompt<F: ModelFiles>(files: &F, shape: [usize; 2], method: &str) -> Result<Vec<f32>> {
    let file = SafetensorsFile::open(files.open(ADAPTER_WEIGHTS_FILE).await?).await?;
    if let Some(t) = file.tensors().iter().find(|t| t.name != PROMPT_KEY) {
        return Err(Error::AdapterTensor {
            tensor: t.name.clone(),
            file: ADAPTER_WEIGHTS_FILE.into(),
            detail: format!("unexpected tensor in {method} adapter"),
        });
    }
    let info = file.get(PROMPT_KEY).ok_or_else(|| file_error("missing"))?;
    if info.shape != shape {
        return Err(file_error(format!("shape {:?}, expected {shape:?} (num_virtual_tokens, token_dim)", info.shape)));
    }
    if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(file_error(format!("dtype {}, expected F32, F16 or BF16", info.dtype)));
    }
    file.read_f32(PROMPT_KEY).await
}

/// PEFT's `adapter_model.safetensors` holding `prompt` (V, D) as
/// `prompt_embeddings`, f32.
pub(crate) async fn prompt_file(gpu: &Gpu, prompt: &Tensor) -> Result<Vec<u8>> {
    let values = prompt.to_vec::<f32>(gpu).await?;
    let view = TensorView::new(Dtype::F32, prompt.shape().to_vec(), bytemuck::cast_slice(&values))
        .map_err(|e| file_error(e.to_string()))?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    ::safetensors::serialize([(PROMPT_KEY, view)], Some(metadata)).map_err(|e| file_error(e.to_string()))
}
