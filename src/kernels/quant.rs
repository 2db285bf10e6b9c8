//! NF4, Q8_0 and f16 quantize / dequantize on the GPU (`shaders/quant.wgsl`),
//! bit-exact with the CPU formats in `crate::quant`.

use bytemuck::{Pod, Zeroable};

use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{DType, Kernel, PipelineKey, Recorder, Tensor};
use crate::quant::{QuantError, QuantFormat, Q8_0_BLOCK};

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
    pub len: usize,
    /// NF4: (ceil(len/2)) bytes of nibbles. Q8_0: (len) int8 values. f16: (len) halves.
    pub codes: Tensor,
    /// NF4: (ceil(len/64)) f32 absmax. Q8_0: (len/32) f16 scales. f16 has no
    /// scales: this is `codes` again (the kernels bind both slots), counted once.
    pub scales: Tensor,
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Quant, entry)
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
            Ok(Packed { format, len, codes, scales })
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
            Ok(Packed { format, len, codes, scales })
        }
        QuantFormat::F16 => {
            let codes = Tensor::zeros(gpu, &[len], DType::F16)?;
            let words = len.div_ceil(2);
            rec.dispatch_bound(&key("f16_quantize"), &params, &[(1, x), (2, &codes)], grid_1d(words.div_ceil(256)))?;
            Ok(Packed { format, len, scales: codes.clone(), codes })
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
        QuantFormat::F16 => "f16_dequantize",
        QuantFormat::F32 => return Err(Error::invalid("dequantize", "f32 is not a quantized format")),
    };
    let bound = [(4, &y), (5, &packed.codes), (6, &packed.scales)];
    let bound = if packed.format == QuantFormat::F16 { &bound[..2] } else { &bound[..] };
    rec.dispatch_bound(&key(entry), &params, bound, grid_1d(len.div_ceil(256)))?;
    Ok(y)
}

impl Packed {
    /// Upload CPU-packed NF4.
    pub fn from_nf4(gpu: &crate::Gpu, q: &crate::quant::Nf4) -> Result<Packed> {
        Ok(Packed {
            format: QuantFormat::Nf4,
            len: q.len,
            codes: Tensor::from_slice(gpu, &[q.codes.len()], &q.codes)?,
            scales: Tensor::from_slice(gpu, &[q.absmax.len()], &q.absmax)?,
        })
    }

    /// Upload CPU-packed Q8_0.
    pub fn from_q8_0(gpu: &crate::Gpu, q: &crate::quant::Q8_0) -> Result<Packed> {
        let qs: &[u8] = bytemuck::cast_slice(&q.qs);
        Ok(Packed {
            format: QuantFormat::Q8_0,
            len: q.qs.len(),
            codes: Tensor::from_slice(gpu, &[qs.len()], qs)?,
            scales: Tensor::from_slice(gpu, &[q.scales.len()], &q.scales)?,
        })
    }

    /// Upload CPU-rounded f16 (see [`crate::quant::to_f16`]).
    pub fn from_f16(gpu: &crate::Gpu, h: &[half::f16]) -> Result<Packed> {
        let codes = Tensor::from_slice(gpu, &[h.len()], h)?;
        Ok(Packed { format: QuantFormat::F16, len: h.len(), scales: codes.clone(), codes })
    }

    /// GPU bytes of the packed form.
    pub fn bytes(&self) -> u64 {
        match self.format {
            QuantFormat::F16 => self.codes.bytes(),
            _ => self.codes.bytes() + self.scales.bytes(),
        }
    }
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["nf4_quantize", "nf4_dequantize", "q8_quantize", "q8_dequantize", "f16_quantize", "f16_dequantize"]
        .map(key)
        .to_vec()
}
