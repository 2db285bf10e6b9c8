//! GGUF export for llama.cpp, written as llama.cpp's own converters write it
//! (`convert_hf_to_gguf.py` for a model, `convert_lora_to_gguf.py` for a
//! LoRA adapter; `tests/fixtures/make_fixtures.py gguf` runs both, and
//! `tests/gguf_export.rs` compares every field and tensor byte).
//!
//! - [`export_model`]: base + LoRA (W + scaling·B·A, folded in on the CPU in
//!   f32) as f16 or Q8_0, streamed tensor by tensor into a `Write`.
//! - [`export_lora`]: the adapter alone (`general.type = adapter`), which
//!   llama.cpp applies with `--lora`.

pub mod adapter;
pub mod model;
pub mod names;
pub mod vocab;
pub mod writer;

pub use adapter::export_lora;
pub use model::{export_model, GgufOptions};
pub use writer::{GgmlType, GgufWriter, TensorInfo, Value};

use half::f16;

use crate::quant::quantize_q8_0;
use crate::Error;

/// `general.quantization_version` (ggml's `GGML_QNT_VERSION`).
const QUANTIZATION_VERSION: u32 = 2;

/// A typed error for what llama.cpp's format or this export cannot take.
pub(crate) fn unsupported(what: &str, detail: impl Into<String>) -> Error {
    Error::GgufExport { what: what.to_string(), detail: detail.into() }
}

/// `general.file_type` (llama.cpp's `LlamaFileType`): ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q8_0 7.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
    }
}

/// The type the converter stores a tensor as: 1-D tensors, norms and
/// anything not named `.weight`/`.lora_a`/`.lora_b` (biases) stay F32; the
/// rest take the file's type, and a row llama.cpp cannot cut into 32-value
/// Q8_0 blocks falls back to F16 (as gguf-py's `QuantError` fallback).
pub(crate) fn tensor_type(name: &str, ne: &[u64], file: GgmlType) -> GgmlType {
    let matrix_suffix = [".weight", ".lora_a", ".lora_b"].iter().any(|s| name.ends_with(s));
    if ne.len() <= 1 || name.ends_with("_norm.weight") || !matrix_suffix {
        return GgmlType::F32;
    }
    if file == GgmlType::Q8_0 && ne[0] % 32 != 0 {
        return GgmlType::F16;
    }
    file
}

/// `x` (row-major, rows of `ne0` values) in `ty`'s bytes: f32 as is, f16
/// rounded to nearest even (numpy's `astype`), Q8_0 blocks as ggml's
/// `quantize_row_q8_0_ref`.
pub(crate) fn encode(x: &[f32], ne0: usize, ty: GgmlType) -> crate::Result<Vec<u8>> {
    Ok(match ty {
        GgmlType::F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => x.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::Q8_0 => quantize_q8_0(x, x.len() / ne0, ne0)?.to_gguf_blocks(),
    })
}

/// `general.size_label` from the parameter count (gguf-py's
/// `model_weight_count_rounded_notation`, 2 significant digits at least).
pub(crate) fn size_label(params: u64) -> String {
    let p = params as f64;
    let (scaled, suffix) = if p > 1e12 {
        (p * 1e-12, "T")
    } else if p > 1e9 {
        (p * 1e-9, "B")
    } else if p > 1e6 {
        (p * 1e-6, "M")
    } else {
        (p * 1e-3, "K")
    };
    let digits = format!("{}", scaled.round() as u64);
    let digits = digits.trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

/// PyTorch shape (out, in) → ggml ne (in, out).
pub(crate) fn ne_of(shape: &[usize]) -> Vec<u64> {
    shape.iter().rev().map(|&n| n as u64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_match_gguf_py() {
        // gguf-py: 136_000 -> "136K", 99_456 -> "99K", 1_500 -> "1.5K", 134_515_008 -> "135M".
        assert_eq!(size_label(136_000), "136K");
        assert_eq!(size_label(99_456), "99K");
        assert_eq!(size_label(1_500), "1.5K");
        assert_eq!(size_label(134_515_008), "135M");
        assert_eq!(size_label(1_235_814_400), "1.2B");
    }

    #[test]
    fn q8_0_falls_back_to_f16_on_short_rows() {
        assert_eq!(tensor_type("blk.0.attn_q.weight", &[64, 96], GgmlType::Q8_0), GgmlType::Q8_0);
        assert_eq!(tensor_type("blk.0.attn_q.weight.lora_b", &[4, 96], GgmlType::Q8_0), GgmlType::F16);
        assert_eq!(tensor_type("blk.0.attn_q.bias", &[96], GgmlType::Q8_0), GgmlType::F32);
        assert_eq!(tensor_type("blk.0.attn_norm.weight", &[64], GgmlType::F16), GgmlType::F32);
    }
}
