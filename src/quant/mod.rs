//! Quantised weight formats, packed and unpacked on the CPU.
//!
//! - [`Nf4`]: QLoRA / bitsandbytes 4-bit NormalFloat, blocks of 64 values of the
//!   flattened weight, one f32 absmax per block.
//! - [`Q8_0`]: llama.cpp / GGUF 8-bit, blocks of 32 along each row, one f16
//!   scale per block.
//! - f16: IEEE half precision, as `torch.float16` (round to nearest even);
//!   [`to_f16`] refuses values past its range rather than storing infinities.
//! - bf16: bfloat16, as `torch.bfloat16` ([`to_bf16`]): the top half of an
//!   f32, so a bf16 checkpoint's weights are held exactly.
//!
//! Both are bit-exact with their reference libraries (see `docs/formats.md`): the
//! GPU dequantisation kernels are tested against [`Nf4::dequantize`] and
//! [`Q8_0::dequantize`].

mod bf16;
mod double_quant;
mod f16;
mod nf4;
mod q8_0;

pub use bf16::to_bf16;
pub use double_quant::{dynamic_map, torch_mean, DoubleQuant, LevelTable, NESTED_BLOCK};
pub use f16::{check_f16_range, to_f16};
pub use nf4::{
    quantize_4bit, quantize_nf4, FourBit, FourBitOptions, Nf4, FP4_LEVELS, NF4_BLOCK, NF4_LEVELS, NF4_THRESHOLDS,
};
pub use q8_0::{quantize_q8_0, Q8_0, Q8_0_BLOCK, Q8_0_BLOCK_BYTES};

use std::fmt;
use std::str::FromStr;

/// What a caller can get wrong when quantising or loading quantised data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("{format}: expected {expected} values for a {rows}x{cols} matrix, got {got}")]
    Length { format: &'static str, rows: usize, cols: usize, expected: usize, got: usize },

    #[error("Q8_0 needs rows whose length is a multiple of {Q8_0_BLOCK}, got {cols} columns")]
    Q8RowLength { cols: usize },

    #[error("Q8_0: expected {expected} bytes of {Q8_0_BLOCK_BYTES}-byte blocks for a {rows}x{cols} matrix, got {got}")]
    Q8Bytes { rows: usize, cols: usize, expected: usize, got: usize },

    #[error("unknown weight format {0:?} (expected \"f32\", \"f16\", \"bf16\", \"q8\", \"q8_0\" or \"nf4\")")]
    UnknownFormat(String),

    #[error("value {value} at index {index} is beyond half precision's range (±65504); keep this weight in f32, q8_0 or nf4")]
    F16Range { index: usize, value: f32 },

    #[error("unknown compute dtype {0:?} (expected \"f32\" or \"f16\")")]
    UnknownComputeDtype(String),

    #[error("a weight of magnitude {max_abs} is past f16 compute's range (±{F16_COMPUTE_MAX_ABS}); compute in f32")]
    F16ComputeRange { max_abs: f32 },
}

/// The largest |weight| f16 compute takes: a run of 32 f16 products of a row
/// scaled into [-2, 2) then stays under f16's 65504 (see `shaders/qmatmul.wgsl`).
pub const F16_COMPUTE_MAX_ABS: f32 = 1000.0;

/// The arithmetic of the frozen base's matmuls, as bitsandbytes'
/// `bnb_4bit_compute_dtype`: f32 (the default), or f16 where the device has
/// SHADER_F16 (f16 operands and products, runs of 32 products summed in f16,
/// f32 beyond). Adapters, norms, attention and the loss are f32 either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum ComputeDtype {
    #[default]
    F32,
    F16,
}

impl ComputeDtype {
    /// "f32" or "f16", as accepted by `from_str`.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        }
    }
}

impl fmt::Display for ComputeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ComputeDtype {
    type Err = QuantError;

    /// "f32" (or "fp32", "float32"), "f16" (or "fp16", "float16"), case-insensitive.
    fn from_str(s: &str) -> Result<Self, QuantError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            _ => Err(QuantError::UnknownComputeDtype(s.to_string())),
        }
    }
}

/// How the frozen base weights are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// Plain f32, 4 bytes a value.
    F32,
    /// IEEE half precision, 2 bytes a value: the weights exactly as a
    /// `torch_dtype=float16` checkpoint holds them. The matmuls read them as
    /// f16 and multiply and sum in f32.
    F16,
    /// bfloat16, 2 bytes a value: the weights exactly as a `torch_dtype=bfloat16`
    /// checkpoint (most Llama 3, Qwen2.5 and SmolLM2 ones) holds them. Widened
    /// to f32 exactly, so the products are f32's.
    Bf16,
    /// GGUF Q8_0: 34 bytes per 32 values.
    Q8_0,
    /// NF4: half a byte a value plus one f32 absmax per 64 values (no double
    /// quantisation of the absmaxes).
    Nf4,
}

impl QuantFormat {
    /// The canonical name, as accepted by `from_str`: "f32", "f16", "bf16", "q8_0" or "nf4".
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Nf4 => "nf4",
        }
    }

    /// The format a (rows, cols) weight asked for in this format is stored in:
    /// itself, except Q8_0 for rows whose length is not a multiple of 32,
    /// which stay in f16, as llama.cpp's quantizer keeps them.
    pub fn storage_for(self, cols: usize) -> QuantFormat {
        match self {
            Self::Q8_0 if cols % Q8_0_BLOCK != 0 => Self::F16,
            f => f,
        }
    }

    /// Storage bytes of a (rows, cols) weight in this format.
    ///
    /// Q8_0 counts whole blocks per row (`ceil(cols / 32)` each; quantising
    /// requires `cols % 32 == 0`). NF4 counts the flattened length: `ceil(n / 2)`
    /// code bytes plus 4 bytes for each of the `ceil(n / 64)` absmaxes.
    pub fn bytes_for(self, rows: usize, cols: usize) -> usize {
        let n = rows * cols;
        match self {
            Self::F32 => n * 4,
            Self::F16 | Self::Bf16 => n * 2,
            Self::Q8_0 => rows * cols.div_ceil(Q8_0_BLOCK) * Q8_0_BLOCK_BYTES,
            Self::Nf4 => n.div_ceil(2) + n.div_ceil(NF4_BLOCK) * 4,
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantFormat {
    type Err = QuantError;

    /// "f32", "f16" (or "fp16", "float16"), "bf16" (or "bfloat16"), "q8" or
    /// "q8_0", "nf4" (case-insensitive).
    fn from_str(s: &str) -> Result<Self, QuantError> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "q8" | "q8_0" => Ok(Self::Q8_0),
            "nf4" => Ok(Self::Nf4),
            _ => Err(QuantError::UnknownFormat(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_parse_and_sizes() {
        for f in [QuantFormat::F32, QuantFormat::F16, QuantFormat::Bf16, QuantFormat::Q8_0, QuantFormat::Nf4] {
            assert_eq!(f.name().parse::<QuantFormat>(), Ok(f));
        }
        assert_eq!("q8".parse::<QuantFormat>(), Ok(QuantFormat::Q8_0));
        assert_eq!("NF4".parse::<QuantFormat>(), Ok(QuantFormat::Nf4));
        assert!(matches!("q4_0".parse::<QuantFormat>(), Err(QuantError::UnknownFormat(_))));

        assert_eq!("FP16".parse::<QuantFormat>(), Ok(QuantFormat::F16));
        assert_eq!("float16".parse::<ComputeDtype>(), Ok(ComputeDtype::F16));
        assert_eq!("F32".parse::<ComputeDtype>(), Ok(ComputeDtype::F32));
        assert!(matches!("bf16".parse::<ComputeDtype>(), Err(QuantError::UnknownComputeDtype(_))));
        assert_eq!(QuantFormat::F32.bytes_for(3, 5), 60);
        assert_eq!(QuantFormat::F16.bytes_for(3, 5), 30);
        assert_eq!(QuantFormat::Bf16.bytes_for(3, 5), 30);
        assert_eq!("BFloat16".parse::<QuantFormat>(), Ok(QuantFormat::Bf16));
        // 4096 x 4096: 524288 blocks of 34 bytes; 8 Mi nibbles + 262144 absmaxes.
        assert_eq!(QuantFormat::Q8_0.bytes_for(4096, 4096), 524_288 * 34);
        assert_eq!(QuantFormat::Nf4.bytes_for(4096, 4096), 8_388_608 + 262_144 * 4);
        // Odd length: 3 x 7 = 21 values -> 11 code bytes + 1 absmax.
        assert_eq!(QuantFormat::Nf4.bytes_for(3, 7), 11 + 4);
    }

    #[test]
    fn sizes_match_the_packed_data() {
        let x: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let q8 = quantize_q8_0(&x, 3, 64).unwrap();
        assert_eq!(q8.to_gguf_blocks().len(), QuantFormat::Q8_0.bytes_for(3, 64));
        let nf4 = quantize_nf4(&x[..3 * 61]);
        assert_eq!(nf4.codes.len() + 4 * nf4.absmax.len(), QuantFormat::Nf4.bytes_for(3, 61));
    }
}
