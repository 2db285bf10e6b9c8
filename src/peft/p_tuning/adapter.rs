//! A P-tuning adapter on the GPU: the prompt the model sees (V, D) and, when
//! it is what is trained, PEFT's `PromptEncoder` that makes it (an
//! [`Encoder`]: Embedding(V, D) → Linear(D, hidden) → ReLU → Linear(hidden,
//! hidden) → ReLU → Linear(hidden, D)). PEFT saves only the prompt
//! (`prompt_embeddings`, the encoder's output), so a loaded folder has no
//! encoder and trains its prompt directly, as prompt tuning. Like every
//! method's, its gradients and AdamW moments are values of the same type.

use super::config::PTuningConfig;
use crate::error::Result;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::elementwise::fill;
use crate::kernels::swiglu::Activation;
use crate::model::{Config, ModelFiles};
use crate::peft::encoder::Encoder;
use crate::peft::prompt_tuning::adapter::{prompt_file, read_prompt};
use crate::peft::prompt_tuning::PROMPT_KEY;
use crate::util::rng::Rng;

#[derive(Clone, Debug)]
pub struct PTuningAdapter {
    pub config: PTuningConfig,
    /// The virtual tokens' embeddings, (V, D): the encoder's output.
    pub prompt: Tensor,
    /// What is trained, when there is one (a fresh adapter); `None` trains
    /// `prompt` itself (a loaded folder).
    pub encoder: Option<Encoder>,
}

impl PTuningAdapter {
    /// A fresh adapter: PEFT's `PromptEncoder` initialised as torch does from
    /// `seed`, and the prompt it makes.
    pub fn init(gpu: &Gpu, config: PTuningConfig, model: &Config, seed: u64) -> Result<Self> {
        config.check(model)?;
        let (d, h) = (config.token_dim, config.encoder_hidden_size);
        let v = config.num_virtual_tokens;
        let encoder = Encoder::init(gpu, v, &[d, h, h, d], "mlp_head", Activation::Relu, &mut Rng::new(seed))?;
        let adapter =
            PTuningAdapter { prompt: Tensor::zeros(gpu, &[v, d], DType::F32)?, config, encoder: Some(encoder) };
        let mut rec = Recorder::new(gpu);
        adapter.record_derive(&mut rec)?;
        rec.submit()?;
        Ok(adapter)
    }

    /// Loads a PEFT P-tuning folder for `model`: its prompt, no encoder.
    pub async fn load<F: ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<Self> {
        let config = PTuningConfig::load(files).await?;
        config.check(model)?;
        let values = read_prompt(files, [config.num_virtual_tokens, config.token_dim], "a P-tuning").await?;
        Self::upload(gpu, config, &values)
    }

    /// The adapter with `values` (V·D, row-major) as its prompt, trained
    /// directly (no encoder).
    pub fn upload(gpu: &Gpu, config: PTuningConfig, values: &[f32]) -> Result<Self> {
        let prompt = Tensor::from_slice(gpu, &[config.num_virtual_tokens, config.token_dim], values)?;
        Ok(PTuningAdapter { prompt, config, encoder: None })
    }

    /// PEFT's `adapter_model.safetensors`: `prompt_embeddings` (V, D) f32.
    pub async fn to_safetensors_bytes(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        prompt_file(gpu, &self.prompt).await
    }

    /// Records the prompt from the encoder (nothing without one).
    pub fn record_derive(&self, rec: &mut Recorder) -> Result<()> {
        match &self.encoder {
            Some(e) => e.record_forward(rec, &[(&self.prompt, 0)]),
            None => Ok(()),
        }
    }

    /// Records the encoder's gradients (added into `grads`) from the
    /// prompt's (which the hooks added into `grads`, and which is zeroed
    /// after, for the next step). Nothing without an encoder.
    pub fn record_backprop(&self, rec: &mut Recorder, grads: &PTuningAdapter) -> Result<()> {
        let (Some(e), Some(g)) = (&self.encoder, &grads.encoder) else { return Ok(()) };
        e.record_backward(rec, g, &[(&grads.prompt, 0)])?;
        fill(rec, &grads.prompt, 0.0)
    }

    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Self> {
        Ok(PTuningAdapter {
            config: self.config.clone(),
            prompt: Tensor::zeros(gpu, self.prompt.shape(), DType::F32)?,
            encoder: self.encoder.as_ref().map(|e| e.zeros_like(gpu)).transpose()?,
        })
    }

    /// The trainable tensors with their checkpoint keys: the encoder's under
    /// PEFT's names, or else the prompt (`prompt_embeddings`).
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        match &self.encoder {
            Some(e) => e.tensors(),
            None => vec![(PROMPT_KEY.to_string(), &self.prompt)],
        }
    }
}
