//! bitsandbytes' serialized 4-bit checkpoints: what `model.save_pretrained`
//! writes for a model loaded with `BitsAndBytesConfig(load_in_4bit=True)`
//! (the `…-bnb-4bit` repositories on the Hub). Each quantized Linear weight
//! `<name>` (out, in) is stored as
//!
//! | tensor | dtype, shape | holds |
//! |---|---|---|
//! | `<name>` | U8 (ceil(out·in/2), 1) | the 4-bit codes, two a byte, the even value in the high nibble |
//! | `<name>.absmax` | F32 (blocks), or U8 with double quantization | one scale per 64 values |
//! | `<name>.quant_map` | F32 (16) | the levels of the codes (NF4 or FP4) |
//! | `<name>.quant_state.bitsandbytes__nf4` (or `__fp4`) | U8 | JSON: `quant_type`, `blocksize`, `shape`, `dtype`, and with double quantization `nested_blocksize`, `nested_offset` |
//! | `<name>.nested_absmax` | F32 (ceil(blocks/256)) | double quantization: the absmaxes' own scales |
//! | `<name>.nested_quant_map` | F32 (256) | double quantization: the 8-bit levels |
//!
//! The bytes are uploaded as they are ([`crate::kernels::quant::Packed::from_nf4`]):
//! no dequantize-and-requantize round trip. Modules bitsandbytes skipped
//! (`llm_int8_skip_modules`, the head) stay ordinary float tensors.

use serde_json::Value;

use super::checkpoint::Checkpoint;
use super::source::ByteSource;
use crate::error::{Error, Result};
use crate::quant::{DoubleQuant, FourBit, Nf4, NESTED_BLOCK, NF4_BLOCK};

/// The prefix of the quant-state tensor's suffix; the quant type follows.
const QUANT_STATE: &str = "quant_state.bitsandbytes__";

/// Whether any tensor of the checkpoint is a bitsandbytes 4-bit weight.
pub fn is_bnb_4bit<S: ByteSource>(checkpoint: &Checkpoint<S>) -> bool {
    checkpoint.names().any(|n| n.contains(&format!(".{QUANT_STATE}")))
}

/// A weight of bitsandbytes' 8-bit format (LLM.int8(): `<name>.SCB`), which
/// webpeft does not read.
pub fn int8_weight<S: ByteSource>(checkpoint: &Checkpoint<S>) -> Option<&str> {
    checkpoint.names().find(|n| n.ends_with(".SCB"))
}

/// The quant-state tensor of weight `name`, if it is stored 4-bit.
pub fn quant_state_name<S: ByteSource>(checkpoint: &Checkpoint<S>, name: &str) -> Option<String> {
    let prefix = format!("{name}.{QUANT_STATE}");
    checkpoint.names().find(|n| n.starts_with(&prefix)).map(str::to_string)
}

/// How a bitsandbytes 4-bit checkpoint stores its weights, for `info`: the
/// 4-bit type of its first quantized weight and whether its absmaxes are
/// double-quantized; None for other checkpoints.
pub fn describe<S: ByteSource>(checkpoint: &Checkpoint<S>) -> Option<String> {
    let state = checkpoint.names().find(|n| n.contains(&format!(".{QUANT_STATE}")))?;
    let kind = state.rsplit("__").next().unwrap_or_default();
    let double = checkpoint.names().any(|n| n.ends_with(".nested_absmax"));
    Some(format!("bitsandbytes 4-bit {kind}{}", if double { ", double-quantized" } else { "" }))
}

/// The tensors weight `name` is stored in: itself and its `<name>.*` parts.
pub fn stored_names<S: ByteSource>(checkpoint: &Checkpoint<S>, name: &str) -> Vec<String> {
    let prefix = format!("{name}.");
    checkpoint.names().filter(|n| *n == name || n.starts_with(&prefix)).map(str::to_string).collect()
}

/// What the quant-state JSON says.
struct QuantState {
    kind: FourBit,
    /// `nested_offset` with double quantization.
    nested_offset: Option<f32>,
}

fn parse_state(json: &[u8], type_in_name: &str, out: usize, inp: usize) -> std::result::Result<QuantState, String> {
    let v: Value = serde_json::from_slice(json).map_err(|e| format!("is not JSON: {e}"))?;
    let quant_type = v.get("quant_type").and_then(Value::as_str).ok_or("has no `quant_type`")?;
    let kind = match quant_type {
        "nf4" => FourBit::Nf4,
        "fp4" => FourBit::Fp4,
        other => return Err(format!("`quant_type` {other:?} is not a 4-bit type webpeft reads (nf4, fp4)")),
    };
    if quant_type != type_in_name {
        return Err(format!("`quant_type` {quant_type:?} disagrees with the tensor's name ({type_in_name})"));
    }
    let blocksize = v.get("blocksize").and_then(Value::as_u64);
    if blocksize != Some(NF4_BLOCK as u64) {
        return Err(format!("`blocksize` {blocksize:?}: webpeft's kernels read blocks of {NF4_BLOCK} (the default)"));
    }
    let shape: Option<Vec<u64>> =
        v.get("shape").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_u64).collect());
    if shape != Some(vec![out as u64, inp as u64]) {
        return Err(format!("`shape` {shape:?} is not the config's ({out}, {inp})"));
    }
    let nested_offset = match v.get("nested_offset") {
        None => None,
        Some(o) => {
            let nested = v.get("nested_blocksize").and_then(Value::as_u64);
            if nested != Some(NESTED_BLOCK as u64) {
                return Err(format!(
                    "`nested_blocksize` {nested:?}: double quantization reads blocks of {NESTED_BLOCK}"
                ));
            }
            Some(o.as_f64().ok_or("`nested_offset` is not a number")? as f32)
        }
    };
    Ok(QuantState { kind, nested_offset })
}

/// Reads the 4-bit weight `name` (out, in): its codes and scales as stored.
/// Every inconsistency (a missing part, a length that does not fit the
/// shape, an unknown quant type, a level table that is not bitsandbytes')
/// is an [`Error::Checkpoint`] naming the tensor at fault.
pub async fn read_4bit<S: ByteSource>(checkpoint: &Checkpoint<S>, name: &str, out: usize, inp: usize) -> Result<Nf4> {
    let file = |tensor: &str| checkpoint.shard_name(tensor).unwrap_or(checkpoint.location()).to_string();
    let err =
        |tensor: &str, detail: String| Error::Checkpoint { tensor: tensor.to_string(), file: file(tensor), detail };
    let missing = |tensor: &str| err(tensor, format!("missing: the bitsandbytes 4-bit weight {name} needs it"));
    let state_name = quant_state_name(checkpoint, name).ok_or_else(|| {
        err(name, format!("is stored as bitsandbytes bytes but `{name}.{QUANT_STATE}nf4` (or fp4) is missing"))
    })?;
    let type_in_name = state_name.rsplit("__").next().unwrap_or_default().to_string();
    let state = parse_state(&checkpoint.read_bytes(&state_name).await?, &type_in_name, out, inp)
        .map_err(|d| err(&state_name, d))?;
    let (n, blocks) = (out * inp, (out * inp).div_ceil(NF4_BLOCK));

    let codes = checkpoint.read_bytes(name).await?;
    if codes.len() != n.div_ceil(2) {
        return Err(err(
            name,
            format!("{} bytes, but a ({out}, {inp}) weight packs into {}", codes.len(), n.div_ceil(2)),
        ));
    }
    let map_name = format!("{name}.quant_map");
    checkpoint.get(&map_name).ok_or_else(|| missing(&map_name))?;
    let map = checkpoint.read_f32(&map_name).await?;
    if map.iter().map(|v| v.to_bits()).ne(state.kind.levels().iter().map(|v| v.to_bits())) {
        return Err(err(&map_name, format!("is not bitsandbytes' {} levels", state.kind.name())));
    }

    let absmax_name = format!("{name}.absmax");
    let info = checkpoint.get(&absmax_name).ok_or_else(|| missing(&absmax_name))?;
    if info.numel() != blocks {
        return Err(err(
            &absmax_name,
            format!("{} values, but a ({out}, {inp}) weight has {blocks} blocks of 64", info.numel()),
        ));
    }
    let (absmax, double) = match state.nested_offset {
        None => (checkpoint.read_f32(&absmax_name).await?, None),
        Some(offset) => {
            if info.dtype != ::safetensors::Dtype::U8 {
                return Err(err(&absmax_name, format!("{}: double quantization stores U8 codes", info.dtype)));
            }
            let nested_name = format!("{name}.nested_absmax");
            let nested_map_name = format!("{name}.nested_quant_map");
            checkpoint.get(&nested_name).ok_or_else(|| missing(&nested_name))?;
            checkpoint.get(&nested_map_name).ok_or_else(|| missing(&nested_map_name))?;
            let nested_absmax = checkpoint.read_f32(&nested_name).await?;
            if nested_absmax.len() != blocks.div_ceil(NESTED_BLOCK) {
                return Err(err(
                    &nested_name,
                    format!("{} values for {blocks} absmaxes in blocks of {NESTED_BLOCK}", nested_absmax.len()),
                ));
            }
            let map = checkpoint.read_f32(&nested_map_name).await?;
            if map.len() != 256 {
                return Err(err(&nested_map_name, format!("{} levels, not 256", map.len())));
            }
            let dq =
                DoubleQuant { codes: checkpoint.read_bytes(&absmax_name).await?, nested_absmax, map, offset, skew: 0 };
            (dq.dequantize(), Some(dq))
        }
    };
    Ok(Nf4 { len: n, codes, absmax, kind: state.kind, double })
}
