//! Streaming a checkpoint onto the GPU, one tensor at a time: each is read as
//! f32 on the CPU (the only host copy: one tensor), uploaded, and — for the
//! Linears of the blocks — quantized on the GPU chunk by chunk
//! ([`QWeight::from_f32`]), after which the host copy is dropped.

use super::block::{Attention, Block, Linear, Mlp, RmsNorm};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Tensor};
use crate::kernels::qmatmul::QWeight;
use crate::model::source::ByteSource;
use crate::model::{quantized, Checkpoint, Config};
use crate::quant::{quantize_4bit, FourBitOptions, QuantFormat};
use ::safetensors::Dtype;

/// How far loading is: after each tensor, its name and the bytes read so far
/// out of the checkpoint's total.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LoadProgress {
    pub tensor: String,
    pub loaded_bytes: u64,
    pub total_bytes: u64,
    /// Said of this tensor: it was stored in another format than the model's
    /// (Q8_0 rows not a multiple of 32 stay f16).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Loading progress: (bytes so far, the checkpoint's total, the callback).
pub(super) type Progress<'a> = std::cell::RefCell<(u64, u64, &'a mut dyn FnMut(LoadProgress))>;

/// Reads named tensors of an opened, checked checkpoint onto the GPU.
pub(super) struct Loader<'a, S> {
    /// Called after each tensor (or packed pair) is on the GPU: (bytes so far,
    /// the checkpoint's total, the callback).
    pub progress: Progress<'a>,
    pub gpu: &'a Gpu,
    pub config: &'a Config,
    pub checkpoint: &'a Checkpoint<S>,
    /// How the blocks' Linear weights are stored.
    pub format: QuantFormat,
    /// The packed format of a pre-quantized checkpoint (then `format` equals it).
    pub stored: Option<QuantFormat>,
    /// How NF4 quantizing on load stores the weights: NF4 plain is quantized
    /// on the GPU, FP4 and double quantization on the CPU (`quantize_4bit`).
    pub four_bit: FourBitOptions,
}

impl<S: ByteSource> Loader<'_, S> {
    /// Reports `name` (and every stored tensor it is packed into) as loaded.
    fn report(&self, name: &str) {
        self.report_with(name, None)
    }

    /// [`report`](Self::report) with a note on the tensor.
    fn report_with(&self, name: &str, note: Option<String>) {
        let bytes: u64 = self
            .checkpoint
            .shards()
            .iter()
            .flat_map(|s| s.tensors())
            .filter(|t| t.name == name || t.name.strip_prefix(name).is_some_and(|rest| rest.starts_with('.')))
            .map(|t| t.len)
            .sum();
        let mut p = self.progress.borrow_mut();
        let total = p.1;
        p.0 = (p.0 + bytes).min(total);
        let loaded = p.0;
        (p.2)(LoadProgress { tensor: name.to_string(), loaded_bytes: loaded, total_bytes: total, note });
    }

    /// A weight with a NaN or an infinity would train on garbage: refuse it,
    /// naming the tensor and the first bad index.
    fn check_finite(&self, name: &str, data: &[f32]) -> Result<()> {
        match data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(Error::Checkpoint {
                tensor: name.to_string(),
                file: self.checkpoint.shard_name(name).unwrap_or_default().to_string(),
                detail: format!("holds {} at flat index {i}: the weights are corrupt", data[i]),
            }),
        }
    }

    /// The tensor `name` as f32, with its checkpoint shape.
    async fn tensor(&self, name: &str) -> Result<Tensor> {
        let data = self.checkpoint.read_f32(name).await?;
        self.check_finite(name, &data)?;
        let t = Tensor::from_slice(self.gpu, &self.shape(name)?, &data)?;
        self.report(name);
        Ok(t)
    }

    fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.checkpoint.get(name).map(|info| info.shape.clone()).ok_or_else(|| Error::Checkpoint {
            tensor: name.to_string(),
            file: self.checkpoint.location().to_string(),
            detail: "not in the checkpoint".into(),
        })
    }

    /// A (rows, cols) weight as a [`QWeight`] in `format`, in row chunks that
    /// fit one binding each.
    pub async fn qweight(&self, name: &str, format: QuantFormat) -> Result<QWeight> {
        if let Some(stored) = self.stored.filter(|_| quantized::is_packed(self.checkpoint, name, self.stored)) {
            let spec = self.config.tensor_names().into_iter().find(|t| t.name == name);
            let [rows, cols] = spec.map(|t| t.shape).unwrap_or_default()[..] else {
                return Err(Error::Checkpoint {
                    tensor: name.to_string(),
                    file: self.checkpoint.location().to_string(),
                    detail: "not a weight of this config".into(),
                });
            };
            let w = match quantized::read_packed(self.checkpoint, name, rows, cols, stored).await? {
                quantized::Packed::Nf4(q) => QWeight::from_nf4(self.gpu, &q, rows, cols),
                quantized::Packed::Q8_0(q) => QWeight::from_q8_0(self.gpu, &q),
            }?;
            self.report(name);
            return Ok(w);
        }
        let shape = self.shape(name)?;
        let [rows, cols] = shape[..] else {
            return Err(Error::Checkpoint {
                tensor: name.to_string(),
                file: self.checkpoint.shard_name(name).unwrap_or_default().to_string(),
                detail: format!("shape {shape:?} is not a matrix"),
            });
        };
        let data = self.checkpoint.read_f32(name).await?;
        self.check_finite(name, &data)?;
        let asked = format;
        let format = asked.storage_for(cols);
        if format == QuantFormat::Nf4 && self.four_bit != FourBitOptions::default() {
            let q = quantize_4bit(&data, self.four_bit.kind, self.four_bit.double_quant);
            let w = QWeight::from_nf4(self.gpu, &q, rows, cols)?;
            self.report(name);
            return Ok(w);
        }
        let w = QWeight::from_f32(self.gpu, &data, rows, cols, format).map_err(|e| match e {
            // Say which tensor a format cannot hold (Q8_0 needs rows of 32·k).
            Error::Quant(q) => Error::Checkpoint {
                tensor: name.to_string(),
                file: self.checkpoint.shard_name(name).unwrap_or_default().to_string(),
                detail: format!("cannot be stored as {}: {q}", format.name()),
            },
            other => other,
        })?;
        let note = (format != asked).then(|| {
            format!("kept in {format}: its rows of {cols} are not a multiple of {}'s blocks of 32", asked.name())
        });
        self.report_with(name, note);
        Ok(w)
    }

    /// How a frozen float weight outside the blocks (the embedding, the head)
    /// is kept: f32 under an f32 base; under any other base in the
    /// checkpoint's own 16-bit dtype when it has one. bf16 and f16 widen to
    /// f32 exactly, so no value changes, in half the memory and half the
    /// bytes a decoding step reads (a QLoRA model keeps its head in its torch
    /// dtype too).
    pub fn float_format(&self, name: &str) -> QuantFormat {
        if self.format == QuantFormat::F32 {
            return QuantFormat::F32;
        }
        match self.checkpoint.get(name).map(|info| info.dtype) {
            Some(Dtype::BF16) => QuantFormat::Bf16,
            Some(Dtype::F16) => QuantFormat::F16,
            _ => QuantFormat::F32,
        }
    }

    /// `{prefix}.weight` in the model's format, and `{prefix}.bias` if `bias`.
    async fn linear(&self, prefix: &str, bias: bool) -> Result<Linear> {
        let weight = self.qweight(&format!("{prefix}.weight"), self.format).await?;
        let bias = match bias {
            true => Some(self.tensor(&format!("{prefix}.bias")).await?),
            false => None,
        };
        Ok(Linear { weight, bias })
    }

    /// An RMSNorm's `{prefix}.weight` (D, or hd for q_norm and k_norm).
    pub async fn norm(&self, prefix: &str) -> Result<RmsNorm> {
        Ok(RmsNorm { weight: self.tensor(&format!("{prefix}.weight")).await?, eps: self.config.rms_norm_eps as f32 })
    }

    /// `model.layers.{i}`.
    pub async fn block(&self, i: usize) -> Result<Block> {
        let c = self.config;
        let p = format!("model.layers.{i}");
        let input_layernorm = self.norm(&format!("{p}.input_layernorm")).await?;
        let self_attn = Attention {
            q_proj: self.linear(&format!("{p}.self_attn.q_proj"), c.qkv_bias).await?,
            k_proj: self.linear(&format!("{p}.self_attn.k_proj"), c.qkv_bias).await?,
            v_proj: self.linear(&format!("{p}.self_attn.v_proj"), c.qkv_bias).await?,
            o_proj: self.linear(&format!("{p}.self_attn.o_proj"), c.o_bias).await?,
            q_norm: match c.qk_norm {
                true => Some(self.norm(&format!("{p}.self_attn.q_norm")).await?),
                false => None,
            },
            k_norm: match c.qk_norm {
                true => Some(self.norm(&format!("{p}.self_attn.k_norm")).await?),
                false => None,
            },
            num_heads: c.num_attention_heads,
            num_key_value_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            // transformers: `self.scaling = head_dim ** -0.5` (a Python float).
            scaling: (c.head_dim as f64).powf(-0.5) as f32,
            sliding_window: c.attention_window(i),
            use_rope: c.rope_layers.get(i).copied().unwrap_or(true),
        };
        let post_attention_layernorm = self.norm(&format!("{p}.post_attention_layernorm")).await?;
        let mlp = Mlp {
            gate_proj: self.linear(&format!("{p}.mlp.gate_proj"), false).await?,
            up_proj: self.linear(&format!("{p}.mlp.up_proj"), false).await?,
            down_proj: self.linear(&format!("{p}.mlp.down_proj"), false).await?,
        };
        Ok(Block { input_layernorm, self_attn, post_attention_layernorm, mlp })
    }
}
