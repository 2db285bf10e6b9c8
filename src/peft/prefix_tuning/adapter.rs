//! A prefix-tuning adapter on the GPU: every layer's P keys and P values,
//! (P, KV·hd) each. PEFT keeps them as one embedding, `prompt_embeddings`
//! (P, layers × 2 × token_dim), row p holding layer 0's key, layer 0's value,
//! layer 1's key, … (its `view(P, layers·2, KV, hd)`); the files are read and
//! written in that layout, the GPU holds one tensor per layer and side. Like
//! every method's, its gradients and AdamW moments are values of the same type.
//!
//! With `prefix_projection`, a fresh adapter trains PEFT's `PrefixEncoder`
//! (an [`Encoder`]: Embedding(P, token_dim) → Linear(token_dim, hidden) →
//! Tanh → Linear(hidden, layers·2·token_dim)) and the keys and values are
//! its output, kept current by [`PrefixTuningAdapter::record_derive`]; the
//! file still holds the prefix (PEFT saves the MLP's output).

use std::collections::HashMap;

use ::safetensors::tensor::TensorView;
use ::safetensors::Dtype;

use super::config::PrefixTuningConfig;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::elementwise::fill;
use crate::kernels::swiglu::Activation;
use crate::model::safetensors::SafetensorsFile;
use crate::model::{Config, ModelFiles};
use crate::peft::encoder::Encoder;
use crate::peft::ADAPTER_WEIGHTS_FILE;
use crate::util::rng::Rng;

/// The one key of PEFT's file.
pub const PREFIX_KEY: &str = "prompt_embeddings";

#[derive(Clone, Debug)]
pub struct PrefixTuningAdapter {
    pub config: PrefixTuningConfig,
    /// Per layer, the prefix keys, (P, KV·hd).
    pub keys: Vec<Tensor>,
    /// Per layer, the prefix values, (P, KV·hd).
    pub values: Vec<Tensor>,
    /// The MLP the keys and values come from, when it is what is trained (a
    /// fresh adapter with `prefix_projection`); `None` trains the prefix
    /// itself (also a PEFT folder saved with `prefix_projection`: it holds
    /// only the prefix).
    pub encoder: Option<Encoder>,
}

fn file_error(detail: impl Into<String>) -> Error {
    Error::AdapterTensor { tensor: PREFIX_KEY.into(), file: ADAPTER_WEIGHTS_FILE.into(), detail: detail.into() }
}

impl PrefixTuningAdapter {
    /// The adapter holding PEFT's embedding `values` (P × layers·2·token_dim).
    pub fn upload(gpu: &Gpu, config: PrefixTuningConfig, values: &[f32]) -> Result<Self> {
        let (p, layers, td) = (config.num_virtual_tokens, config.num_layers, config.token_dim);
        if values.len() != config.numel() {
            return Err(file_error(format!("{} values, expected {:?}", values.len(), [p, layers * 2 * td])));
        }
        // Row r's block (2l + side) is layer l's key (side 0) or value (side 1).
        let part = |l: usize, side: usize| -> Vec<f32> {
            (0..p).flat_map(|r| values[r * layers * 2 * td + (2 * l + side) * td..][..td].to_vec()).collect()
        };
        let mut keys = Vec::with_capacity(layers);
        let mut vals = Vec::with_capacity(layers);
        for l in 0..layers {
            keys.push(Tensor::from_slice(gpu, &[p, td], &part(l, 0))?);
            vals.push(Tensor::from_slice(gpu, &[p, td], &part(l, 1))?);
        }
        Ok(PrefixTuningAdapter { config, keys, values: vals, encoder: None })
    }

    /// A fresh adapter from `seed`: the prefix N(0, 1), as PEFT's
    /// `nn.Embedding`; with `prefix_projection`, PEFT's `PrefixEncoder`
    /// initialised as torch does, and the prefix it makes.
    pub fn init(gpu: &Gpu, config: PrefixTuningConfig, seed: u64) -> Result<Self> {
        let mut rng = Rng::new(seed);
        if !config.prefix_projection {
            let values = rng.normal_vec(config.numel(), 1.0);
            return Self::upload(gpu, config, &values);
        }
        let (p, td) = (config.num_virtual_tokens, config.token_dim);
        let sizes = [td, config.encoder_hidden_size, config.num_layers * 2 * td];
        let encoder = Encoder::init(gpu, p, &sizes, "transform", Activation::Tanh, &mut rng)?;
        let mut adapter = Self::upload(gpu, config, &vec![0.0; p * sizes[2]])?;
        adapter.encoder = Some(encoder);
        let mut rec = Recorder::new(gpu);
        adapter.record_derive(&mut rec)?;
        rec.submit()?;
        Ok(adapter)
    }

    /// The keys and values as column blocks of the encoder's output
    /// (P, layers·2·token_dim): layer l's key at column 2l·token_dim, its
    /// value next.
    fn blocks(&self) -> Vec<(&Tensor, usize)> {
        let td = self.config.token_dim;
        let sides = self.keys.iter().zip(&self.values).enumerate();
        sides.flat_map(|(l, (k, v))| [(k, 2 * l * td), (v, (2 * l + 1) * td)]).collect()
    }

    /// Records the keys and values from the encoder (nothing without one).
    pub fn record_derive(&self, rec: &mut Recorder) -> Result<()> {
        match &self.encoder {
            Some(e) => e.record_forward(rec, &self.blocks()),
            None => Ok(()),
        }
    }

    /// Records the encoder's gradients (added into `grads`) from the keys' and
    /// values' (which the hooks added into `grads`, and which are zeroed
    /// after, for the next step). Nothing without an encoder.
    pub fn record_backprop(&self, rec: &mut Recorder, grads: &PrefixTuningAdapter) -> Result<()> {
        let (Some(e), Some(g)) = (&self.encoder, &grads.encoder) else { return Ok(()) };
        e.record_backward(rec, g, &grads.blocks())?;
        for t in grads.keys.iter().chain(&grads.values) {
            fill(rec, t, 0.0)?;
        }
        Ok(())
    }

    /// PEFT's embedding (P × layers·2·token_dim), read back from the GPU.
    pub async fn embedding(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let (p, layers, td) = (self.config.num_virtual_tokens, self.config.num_layers, self.config.token_dim);
        let mut out = vec![0.0f32; self.config.numel()];
        for l in 0..layers {
            for (side, t) in [(0, &self.keys[l]), (1, &self.values[l])] {
                let part = t.to_vec::<f32>(gpu).await?;
                for r in 0..p {
                    out[r * layers * 2 * td + (2 * l + side) * td..][..td].copy_from_slice(&part[r * td..][..td]);
                }
            }
        }
        Ok(out)
    }

    /// Loads a PEFT prefix-tuning folder for `model`.
    pub async fn load<F: ModelFiles>(gpu: &Gpu, files: &F, model: &Config) -> Result<Self> {
        let config = PrefixTuningConfig::load(files).await?;
        config.check(model)?;
        let file = SafetensorsFile::open(files.open(ADAPTER_WEIGHTS_FILE).await?).await?;
        if let Some(t) = file.tensors().iter().find(|t| t.name != PREFIX_KEY) {
            return Err(Error::AdapterTensor {
                tensor: t.name.clone(),
                file: ADAPTER_WEIGHTS_FILE.into(),
                detail: "unexpected tensor in a prefix-tuning adapter".into(),
            });
        }
        let shape = vec![config.num_virtual_tokens, config.numel() / config.num_virtual_tokens];
        let info = file.get(PREFIX_KEY).ok_or_else(|| file_error("missing"))?;
        if info.shape != shape {
            return Err(file_error(format!(
                "shape {:?}, expected {shape:?} (num_virtual_tokens, num_layers × 2 × token_dim)",
                info.shape
            )));
        }
        if !matches!(info.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
            return Err(file_error(format!("dtype {}, expected F32, F16 or BF16", info.dtype)));
        }
        let values = file.read_f32(PREFIX_KEY).await?;
        Self::upload(gpu, config, &values)
    }

    /// PEFT's `adapter_model.safetensors`: `prompt_embeddings` f32.
    pub async fn to_safetensors_bytes(&self, gpu: &Gpu) -> Result<Vec<u8>> {
        let values = self.embedding(gpu).await?;
        let shape = vec![self.config.num_virtual_tokens, values.len() / self.config.num_virtual_tokens];
        let view =
            TensorView::new(Dtype::F32, shape, bytemuck::cast_slice(&values)).map_err(|e| file_error(e.to_string()))?;
        let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
        ::safetensors::serialize([(PREFIX_KEY, view)], Some(metadata)).map_err(|e| file_error(e.to_string()))
    }

    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Self> {
        let z =
            |ts: &[Tensor]| ts.iter().map(|t| Tensor::zeros(gpu, t.shape(), DType::F32)).collect::<Result<Vec<_>>>();
        let encoder = self.encoder.as_ref().map(|e| e.zeros_like(gpu)).transpose()?;
        Ok(PrefixTuningAdapter { config: self.config.clone(), keys: z(&self.keys)?, values: z(&self.values)?, encoder })
    }

    /// Every trainable tensor with its checkpoint key: the encoder's under
    /// PEFT's names, or else the prefix in layer order (key before value).
    /// The PEFT file holds the prefix as one embedding ([`PrefixTuningAdapter::embedding`]).
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        if let Some(e) = &self.encoder {
            return e.tensors();
        }
        self.keys
            .iter()
            .zip(&self.values)
            .enumerate()
            .flat_map(|(l, (k, v))| [(format!("prefix.{l}.key"), k), (format!("prefix.{l}.value"), v)])
            .collect()
    }
}
