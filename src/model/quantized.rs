//! webpeft's pre-quantized checkpoint layout, so a page downloads the base
//! model about 4× (Q8_0) or 7× (NF4) smaller than f32 and skips quantizing.
//!
//! A folder like a Hugging Face one (`config.json`, tokenizer files) whose
//! `model.safetensors` carries `"webpeft.quant": "nf4" | "q8_0"` and
//! `"webpeft.layout": "1"` in its `__metadata__`. Every Linear weight of the
//! blocks, `model.layers.{i}.{self_attn,mlp}.*_proj.weight` of shape
//! (out, in), is stored packed instead of as floats:
//!
//! | format | tensors | contents |
//! |---|---|---|
//! | NF4  | `<name>.nf4_codes` U8 (ceil(out·in/2)), `<name>.nf4_absmax` F32 (ceil(out·in/64)) | bitsandbytes' packing: blocks of 64 of the flattened weight, high nibble first |
//! | Q8_0 | `<name>.q8_0` U8 (out, in/32·34) | GGUF blocks per row: f16 d then 32 int8 |
//!
//! The logical shape comes from `config.json`. Every other tensor (embedding,
//! norms, biases, lm_head) is kept as it was, in its own dtype. The packed
//! bytes are exactly what quantizing on load produces, so a model loaded from
//! this layout gives bit-identical logits.

use std::collections::HashMap;

use ::safetensors::tensor::TensorView;
use ::safetensors::Dtype;

use super::bnb;
use super::checkpoint::Checkpoint;
use super::config::Config;
use super::source::ByteSource;
use crate::error::{Error, Result};
use crate::quant::{quantize_nf4, quantize_q8_0, FourBit, Nf4, QuantFormat, Q8_0};

/// `__metadata__` key naming the packed format.
pub const QUANT_KEY: &str = "webpeft.quant";
/// `__metadata__` key with the layout version.
pub const LAYOUT_KEY: &str = "webpeft.layout";
/// The layout version this code writes and reads.
pub const LAYOUT_VERSION: &str = "1";

/// Whether `name` is a Linear weight of the blocks (what gets packed).
pub fn is_block_linear(name: &str) -> bool {
    name.starts_with("model.layers.") && name.ends_with("_proj.weight")
}

/// The stored tensors that replace the block Linear `name` (out, in) in `format`.
pub fn packed_tensors(name: &str, out: usize, inp: usize, format: QuantFormat) -> Vec<(String, Dtype, Vec<usize>)> {
    let n = out * inp;
    match format {
        QuantFormat::Nf4 => vec![
            (format!("{name}.nf4_codes"), Dtype::U8, vec![n.div_ceil(2)]),
            (format!("{name}.nf4_absmax"), Dtype::F32, vec![n.div_ceil(64)]),
        ],
        QuantFormat::Q8_0 => vec![(format!("{name}.q8_0"), Dtype::U8, vec![out, inp / 32 * 34])],
        QuantFormat::F32 => vec![(name.to_string(), Dtype::F32, vec![out, inp])],
        QuantFormat::F16 => vec![(name.to_string(), Dtype::F16, vec![out, inp])],
        QuantFormat::Bf16 => vec![(name.to_string(), Dtype::BF16, vec![out, inp])],
    }
}

/// The packed format a checkpoint declares, if any. Every shard must agree.
/// A bitsandbytes 4-bit checkpoint ([`super::bnb`]) is NF4 here, whichever of
/// its 4-bit types (NF4, FP4) and absmax forms each weight has.
pub fn stored_format<S: ByteSource>(checkpoint: &Checkpoint<S>) -> Result<Option<QuantFormat>> {
    if let Some(name) = bnb::int8_weight(checkpoint) {
        return Err(Error::Checkpoint {
            tensor: name.to_string(),
            file: checkpoint.shard_name(name).unwrap_or(checkpoint.location()).to_string(),
            detail: "bitsandbytes 8-bit (LLM.int8()) checkpoints are not supported: load the original model with \
                     --quant q8 (or nf4)"
                .into(),
        });
    }
    if bnb::is_bnb_4bit(checkpoint) {
        return Ok(Some(QuantFormat::Nf4));
    }
    let mut found: Option<QuantFormat> = None;
    for shard in checkpoint.shards() {
        let Some(quant) = shard.metadata().get(QUANT_KEY) else { continue };
        let layout = shard.metadata().get(LAYOUT_KEY).map(String::as_str).unwrap_or("");
        if layout != LAYOUT_VERSION {
            return Err(Error::File {
                file: shard.name().to_string(),
                detail: format!("webpeft layout {layout:?} is not supported (this version reads {LAYOUT_VERSION:?})"),
            });
        }
        let format: QuantFormat = quant
            .parse()
            .map_err(|e| Error::File { file: shard.name().to_string(), detail: format!("`{QUANT_KEY}`: {e}") })?;
        if matches!(format, QuantFormat::F32 | QuantFormat::F16 | QuantFormat::Bf16)
            || found.is_some_and(|f| f != format)
        {
            return Err(Error::File {
                file: shard.name().to_string(),
                detail: format!("`{QUANT_KEY}` {quant:?} is not usable here"),
            });
        }
        found = Some(format);
    }
    Ok(found)
}

/// Whether the block weight `name` of a checkpoint stored in `stored` is
/// packed (a bitsandbytes checkpoint may keep skipped modules in float).
pub fn is_packed<S: ByteSource>(checkpoint: &Checkpoint<S>, name: &str, stored: Option<QuantFormat>) -> bool {
    stored.is_some()
        && is_block_linear(name)
        && (!bnb::is_bnb_4bit(checkpoint) || checkpoint.get(name).is_some_and(|i| i.dtype == Dtype::U8))
}

/// A packed block weight read back from the checkpoint.
pub enum Packed {
    Nf4(Nf4),
    Q8_0(Q8_0),
}

/// Read the packed weight `name` (out, in) stored in `format`.
pub async fn read_packed<S: ByteSource>(
    checkpoint: &Checkpoint<S>,
    name: &str,
    out: usize,
    inp: usize,
    format: QuantFormat,
) -> Result<Packed> {
    let err = |detail: String| Error::Checkpoint {
        tensor: name.to_string(),
        file: checkpoint.shard_name(name).unwrap_or(checkpoint.location()).to_string(),
        detail,
    };
    match format {
        QuantFormat::Nf4 if bnb::is_bnb_4bit(checkpoint) => {
            Ok(Packed::Nf4(bnb::read_4bit(checkpoint, name, out, inp).await?))
        }
        QuantFormat::Nf4 => {
            let codes = checkpoint.read_bytes(&format!("{name}.nf4_codes")).await?;
            let absmax = checkpoint.read_f32(&format!("{name}.nf4_absmax")).await?;
            if codes.len() != (out * inp).div_ceil(2) || absmax.len() != (out * inp).div_ceil(64) {
                return Err(err(format!("packed NF4 sizes do not match a ({out}, {inp}) weight")));
            }
            Ok(Packed::Nf4(Nf4 { len: out * inp, codes, absmax, kind: FourBit::Nf4, double: None }))
        }
        QuantFormat::Q8_0 => {
            let blocks = checkpoint.read_bytes(&format!("{name}.q8_0")).await?;
            Ok(Packed::Q8_0(Q8_0::from_gguf_blocks(&blocks, out, inp).map_err(|e| err(e.to_string()))?))
        }
        QuantFormat::F32 | QuantFormat::F16 | QuantFormat::Bf16 => Err(err(format!("{format} is not a packed format"))),
    }
}

/// Re-encode a Hugging Face checkpoint in the pre-quantized layout: one
/// safetensors file, returned as bytes. Quantizes on the CPU (bit-identical
/// to the GPU kernels); holds the packed output and one input tensor at a time.
pub async fn quantize_checkpoint<S: ByteSource>(
    checkpoint: &Checkpoint<S>,
    config: &Config,
    format: QuantFormat,
) -> Result<Vec<u8>> {
    if matches!(format, QuantFormat::F32 | QuantFormat::F16 | QuantFormat::Bf16) {
        return Err(Error::invalid(
            "quantize",
            format!(
                "choose q8_0 or nf4: {format} is not a packed format (an {format} base loads from the checkpoint itself)"
            ),
        ));
    }
    checkpoint.check(config)?;
    if stored_format(checkpoint)?.is_some() {
        return Err(Error::invalid("quantize", format!("{} is already quantized", checkpoint.location())));
    }
    // Each entry: (name, dtype, shape, bytes).
    let mut stored: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for spec in config.tensor_names() {
        let name = spec.name;
        if is_block_linear(&name) {
            let (out, inp) = (spec.shape[0], spec.shape[1]);
            let w = checkpoint.read_f32(&name).await?;
            let mut tensors = packed_tensors(&name, out, inp, format).into_iter();
            match format {
                QuantFormat::Nf4 => {
                    let q = quantize_nf4(&w);
                    let (c, a) = (tensors.next(), tensors.next());
                    if let (Some((cn, cd, cs)), Some((an, ad, ashape))) = (c, a) {
                        stored.push((cn, cd, cs, q.codes));
                        stored.push((an, ad, ashape, bytemuck::cast_slice(&q.absmax).to_vec()));
                    }
                }
                _ => {
                    let q = quantize_q8_0(&w, out, inp).map_err(|e| Error::Checkpoint {
                        tensor: name.clone(),
                        file: checkpoint.location().to_string(),
                        detail: format!("cannot be stored as q8_0: {e}"),
                    })?;
                    if let Some((n, d, s)) = tensors.next() {
                        stored.push((n, d, s, q.to_gguf_blocks()));
                    }
                }
            }
        } else {
            let info = checkpoint.get(&name).map(|i| (i.dtype, i.shape.clone()));
            let Some((dtype, shape)) = info else { continue };
            stored.push((name.clone(), dtype, shape, checkpoint.read_bytes(&name).await?));
        }
    }
    let views = stored
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::invalid("quantize", format!("{name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata: HashMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        (QUANT_KEY.to_string(), format.name().to_string()),
        (LAYOUT_KEY.to_string(), LAYOUT_VERSION.to_string()),
    ]
    .into();
    ::safetensors::serialize(views, Some(metadata)).map_err(|e| Error::invalid("quantize", e.to_string()))
}
