//! NF4, Q8_0, f16 and bf16 quantize / dequantize on the GPU (`shaders/quant.wgsl`),
//! bit-exact with the CPU formats in `crate::quant`, and the dequantization of
//! bitsandbytes' other 4-bit layouts (FP4, double-quantized absmaxes) that
//! loading a `-bnb-4bit` checkpoint or quantizing on the CPU produces.

use bytemuck::{Pod, Zeroable};

use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::Const;
use crate::gpu::{DType, Kernel, PipelineKey, Recorder, Tensor};
use crate::quant::{FourBit, QuantError, QuantFormat, Q8_0_BLOCK};

/// How a chunk's codes and scales are laid out on the GPU: the FORMAT
/// constant of `shaders/qmatmul.wgsl` and `shaders/quant.wgsl` (the 4-bit
/// layouts are described in `shaders/four_bit.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// NF4 codes, f32 absmax per 64 values.
    Nf4,
    /// Q8_0: int8 values, f16 scale per 32.
    Q8_0,
    /// f16 values, no scales.
    F16,
    /// FP4 codes, f32 absmax per 64 values.
    Fp4,
    /// NF4 codes with double-quantized absmaxes.
    Nf4Double,
    /// FP4 codes with double-quantized absmaxes.
    Fp4Double,
    /// bf16 values, no scales.
    Bf16,
}

impl Layout {
    /// The FORMAT constant.
    pub fn constant(self) -> Const {
        Const::U32(match self {
            Layout::Nf4 => 0,
            Layout::Q8_0 => 1,
            Layout::F16 => 2,
            Layout::Fp4 => 3,
            Layout::Nf4Double => 4,
            Layout::Fp4Double => 5,
            Layout::Bf16 => 6,
        })
    }

    /// The layout quantizing into `format` on the GPU produces.
    pub fn of(format: QuantFormat) -> Layout {
        match format {
            QuantFormat::Q8_0 => Layout::Q8_0,
            QuantFormat::F16 => Layout::F16,
            QuantFormat::Bf16 => Layout::Bf16,
            _ => Layout::Nf4,
        }
    }

    /// A 4-bit layout.
    pub fn four_bit(kind: FourBit, double: bool) -> Layout {
        match (kind, double) {
            (FourBit::Nf4, false) => Layout::Nf4,
            (FourBit::Fp4, false) => Layout::Fp4,
            (FourBit::Nf4, true) => Layout::Nf4Double,
            (FourBit::Fp4, true) => Layout::Fp4Double,
        }
    }

    /// Every layout, for listing pipelines.
    pub const ALL: [Layout; 7] =
        [Layout::Nf4, Layout::Q8_0, Layout::F16, Layout::Fp4, Layout::Nf4Double, Layout::Fp4Double, Layout::Bf16];
}

/// Words of the header of a double-quantized scales buffer
/// (`shaders/four_bit.wgsl`): offset, skew, where the codes start, the map.
const DOUBLE_QUANT_HEADER: usize = 3 + 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    len: u32,
    _pad: [u32; 3],
}

/// The packed parts of a quantized tensor on the GPU.
#[derive(Clone, Debug)]
pub struct Packed {
    pub format: QuantFormat,
    /// How `codes` and `scales` are laid out.
    pub layout: Layout,
    pub len: usize,
    /// NF4: (ceil(len/2)) bytes of nibbles. Q8_0: (len) int8 values. f16, bf16: (len) halves.
    pub codes: Tensor,
    /// NF4: (ceil(len/64)) f32 absmax, or double-quantized as
    /// `shaders/four_bit.wgsl` lays them out. Q8_0: (len/32) f16 scales. f16
    /// and bf16 have no scales: this is `codes` again (the kernels bind both
    /// slots), counted once.
    pub scales: Tensor,
}

fn key(entry: &'static str) -> PipelineKey {
    key_for(entry, Layout::Nf4)
}

fn key_for(entry: &'static str, layout: Layout) -> PipelineKey {
    PipelineKey::new(Kernel::Quant, entry).with("FORMAT", layout.constant())
}

/// Quantize a flat f32 tensor. Q8_0 needs a length that is a multiple of 32
/// (rows of a multiple of 32).
pub fn quantize(rec: &mut Recorder, x: &Tensor, format: QuantFormat) -> Result<Packed> {
    x.expect_dtype("quantize", "x", DType::F32)?;
    let gpu = rec.gpu();
    let len = x.numel();
    let params = Params { len: len as u32, _pad: [0; 3] };
    match format {
        QuantFormat::Nf4 => {
            let codes = Tensor::zeros(gpu, &[len.div_ceil(2)], DType::U8)?;
            let scales = Tensor::zeros(gpu, &[len.div_ceil(64)], DType::F32)?;
            let blocks = len.div_ceil(64);
            rec.dispatch_bound(
                &key("nf4_quantize"),
                &params,
                &[(1, x), (2, &codes), (3, &scales)],
                grid_1d(blocks.div_ceil(64)),
            )?;
            Ok(Packed { format, layout: Layout::of(format), len, codes, scales })
        }
        QuantFormat::Q8_0 => {
            if len % Q8_0_BLOCK != 0 {
                return Err(QuantError::Q8RowLength { cols: len }.into());
            }
            let codes = Tensor::zeros(gpu, &[len], DType::U8)?;
            let scales = Tensor::zeros(gpu, &[len / Q8_0_BLOCK], DType::F16)?;
            let pairs = len.div_ceil(64);
            rec.dispatch_bound(
                &key("q8_quantize"),
                &params,
                &[(1, x), (2, &codes), (3, &scales)],
                grid_1d(pairs.div_ceil(64)),
            )?;
            Ok(Packed { format, layout: Layout::of(format), len, codes, scales })
        }
        QuantFormat::F16 | QuantFormat::Bf16 => {
            let dtype = if format == QuantFormat::F16 { DType::F16 } else { DType::BF16 };
            let codes = Tensor::zeros(gpu, &[len], dtype)?;
            let words = len.div_ceil(2);
            let key = key_for("half_quantize", Layout::of(format));
            rec.dispatch_bound(&key, &params, &[(1, x), (2, &codes)], grid_1d(words.div_ceil(256)))?;
            Ok(Packed { format, layout: Layout::of(format), len, scales: codes.clone(), codes })
        }
        QuantFormat::F32 => Err(Error::invalid("quantize", "f32 is not a quantized format")),
    }
}

/// Dequantize to a flat f32 tensor of `len` values: a pooled buffer the
/// kernel writes whole, so a step that dequantizes weight after weight (DoRA's
/// norms) reuses one buffer instead of holding every copy until it submits.
pub fn dequantize(rec: &mut Recorder, packed: &Packed) -> Result<Tensor> {
    let len = packed.len;
    let y = rec.alloc(&[len], DType::F32)?;
    let params = Params { len: len as u32, _pad: [0; 3] };
    let entry = match packed.format {
        QuantFormat::Nf4 => "nf4_dequantize",
        QuantFormat::Q8_0 => "q8_dequantize",
        QuantFormat::F16 | QuantFormat::Bf16 => "half_dequantize",
        QuantFormat::F32 => return Err(Error::invalid("dequantize", "f32 is not a quantized format")),
    };
    let bound = [(4, &y), (5, &packed.codes), (6, &packed.scales)];
    let bound = if packed.has_scales() { &bound[..] } else { &bound[..2] };
    rec.dispatch_bound(&key_for(entry, packed.layout), &params, bound, grid_1d(len.div_ceil(256)))?;
    Ok(y)
}

impl Packed {
    /// Upload CPU-packed NF4 or FP4, with its absmaxes as stored: f32, or
    /// double-quantized in the layout of `shaders/four_bit.wgsl`.
    pub fn from_nf4(gpu: &crate::Gpu, q: &crate::quant::Nf4) -> Result<Packed> {
        let scales = match &q.double {
            None => Tensor::from_slice(gpu, &[q.absmax.len()], &q.absmax)?,
            Some(d) => {
                let codes_at = DOUBLE_QUANT_HEADER + d.nested_absmax.len();
                let mut words = Vec::with_capacity(codes_at + d.codes.len().div_ceil(4));
                words.extend([d.offset.to_bits(), d.skew as u32, codes_at as u32]);
                words.extend(d.map.iter().map(|v| v.to_bits()));
                words.extend(d.nested_absmax.iter().map(|v| v.to_bits()));
                words.extend(d.codes.chunks(4).map(|c| c.iter().rev().fold(0u32, |w, &b| (w << 8) | b as u32)));
                Tensor::from_slice(gpu, &[words.len()], &words)?
            }
        };
        Ok(Packed {
            format: QuantFormat::Nf4,
            layout: Layout::four_bit(q.kind, q.double.is_some()),
            len: q.len,
            codes: Tensor::from_slice(gpu, &[q.codes.len()], &q.codes)?,
            scales,
        })
    }

    /// Upload CPU-packed Q8_0.
    pub fn from_q8_0(gpu: &crate::Gpu, q: &crate::quant::Q8_0) -> Result<Packed> {
        let qs: &[u8] = bytemuck::cast_slice(&q.qs);
        Ok(Packed {
            format: QuantFormat::Q8_0,
            layout: Layout::Q8_0,
            len: q.qs.len(),
            codes: Tensor::from_slice(gpu, &[qs.len()], qs)?,
            scales: Tensor::from_slice(gpu, &[q.scales.len()], &q.scales)?,
        })
    }

    /// Upload CPU-rounded f16 (see [`crate::quant::to_f16`]).
    pub fn from_f16(gpu: &crate::Gpu, h: &[half::f16]) -> Result<Packed> {
        let codes = Tensor::from_slice(gpu, &[h.len()], h)?;
        Ok(Packed { format: QuantFormat::F16, layout: Layout::F16, len: h.len(), scales: codes.clone(), codes })
    }

    /// Whether `scales` is a buffer of its own (not `codes` again, as for
    /// the 16-bit floats).
    pub fn has_scales(&self) -> bool {
        !matches!(self.format, QuantFormat::F16 | QuantFormat::Bf16)
    }

    /// GPU bytes of the packed form.
    pub fn bytes(&self) -> u64 {
        match self.has_scales() {
            true => self.codes.bytes() + self.scales.bytes(),
            false => self.codes.bytes(),
        }
    }
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    let mut keys: Vec<PipelineKey> = ["nf4_quantize", "q8_quantize"].map(key).to_vec();
    for layout in [Layout::F16, Layout::Bf16] {
        keys.extend(["half_quantize", "half_dequantize"].map(|e| key_for(e, layout)));
    }
    keys.push(key_for("q8_dequantize", Layout::Q8_0));
    let four_bit = [Layout::Nf4, Layout::Fp4, Layout::Nf4Double, Layout::Fp4Double];
    keys.extend(four_bit.map(|l| key_for("nf4_dequantize", l)));
    keys
}
