//! Q8_0, llama.cpp's 8-bit block format (`quantize_row_q8_0_ref` in ggml).
//!
//! Blocks of 32 consecutive values along each row. Per block, in f32:
//! `d = absmax / 127`, `id = d ? 1 / d : 0`, `q = roundf(x * id)` (halves away
//! from zero, using the unrounded d), and d is stored as f16 rounded to nearest
//! even. Dequantisation multiplies by the stored f16 d. In a GGUF file a block
//! is 34 bytes: d (f16, little-endian), then the 32 i8 values.

use half::f16;

use super::QuantError;

/// Values per block.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes per block in GGUF: a 2-byte f16 scale and 32 i8 values.
pub const Q8_0_BLOCK_BYTES: usize = 2 + Q8_0_BLOCK;

/// A Q8_0-quantised (rows, cols) weight.
#[allow(non_camel_case_types)] // the format's own name
#[derive(Debug, Clone, PartialEq)]
pub struct Q8_0 {
    pub rows: usize,
    /// A multiple of 32.
    pub cols: usize,
    /// (rows, cols / 32): one scale per block, row-major.
    pub scales: Vec<f16>,
    /// (rows, cols): the quantised values.
    pub qs: Vec<i8>,
}

/// Quantises the (rows, cols) row-major matrix `x`.
///
/// - x: (rows, cols), with `cols % 32 == 0`
pub fn quantize_q8_0(x: &[f32], rows: usize, cols: usize) -> Result<Q8_0, QuantError> {
    check_cols(cols)?;
    if x.len() != rows * cols {
        return Err(QuantError::Length { format: "Q8_0", rows, cols, expected: rows * cols, got: x.len() });
    }
    let mut scales = Vec::with_capacity(x.len() / Q8_0_BLOCK);
    let mut qs = Vec::with_capacity(x.len());
    // Rows are whole blocks, so blocks of the flat slice never straddle rows.
    for block in x.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        scales.push(f16::from_f32(d));
        // f32::round rounds halves away from zero, like C's roundf.
        qs.extend(block.iter().map(|&v| (v * id).round() as i8));
    }
    Ok(Q8_0 { rows, cols, scales, qs })
}

impl Q8_0 {
    /// `q * f32(d)` with the stored f16 d, (rows, cols).
    pub fn dequantize(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(Q8_0_BLOCK)
            .zip(&self.scales)
            .flat_map(|(block, d)| {
                let d = d.to_f32();
                block.iter().map(move |&q| q as f32 * d)
            })
            .collect()
    }

    /// The GGUF tensor data: for each block, d as f16 little-endian then 32 i8.
    pub fn to_gguf_blocks(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.scales.len() * Q8_0_BLOCK_BYTES);
        for (block, d) in self.qs.chunks_exact(Q8_0_BLOCK).zip(&self.scales) {
            out.extend_from_slice(&d.to_le_bytes());
            out.extend(block.iter().map(|&q| q as u8));
        }
        out
    }

    /// Reads GGUF Q8_0 tensor data for a (rows, cols) weight.
    pub fn from_gguf_blocks(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, QuantError> {
        check_cols(cols)?;
        let blocks = rows * cols / Q8_0_BLOCK;
        let expected = blocks * Q8_0_BLOCK_BYTES;
        if bytes.len() != expected {
            return Err(QuantError::Q8Bytes { rows, cols, expected, got: bytes.len() });
        }
        let mut scales = Vec::with_capacity(blocks);
        let mut qs = Vec::with_capacity(rows * cols);
        for block in bytes.chunks_exact(Q8_0_BLOCK_BYTES) {
            scales.push(f16::from_le_bytes([block[0], block[1]]));
            qs.extend(block[2..].iter().map(|&b| b as i8));
        }
        Ok(Self { rows, cols, scales, qs })
    }
}

fn check_cols(cols: usize) -> Result<(), QuantError> {
    if cols % Q8_0_BLOCK != 0 {
        return Err(QuantError::Q8RowLength { cols });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    /// One block: `values` padded with zeros to 32 values.
    fn block(values: &[f32]) -> Vec<f32> {
        let mut b = values.to_vec();
        b.resize(Q8_0_BLOCK, 0.0);
        b
    }

    #[test]
    fn halves_round_away_from_zero() {
        // absmax 127 gives d = 1 exactly, so x * id = x.
        let x = block(&[127.0, 2.5, -2.5, 0.5, -0.5, 3.5, -3.5, 126.5, -1.49]);
        let q = quantize_q8_0(&x, 1, 32).unwrap();
        assert_eq!(q.scales, [f16::ONE]);
        assert_eq!(&q.qs[..9], &[127, 3, -3, 1, -1, 4, -4, 127, -1]);
    }

    #[test]
    fn uses_the_reciprocal_multiply() {
        // bf16 inputs where x * (1/d) and x / d round to different integers:
        // absmax 1.125: 0.5625 * id = 63.5 exactly -> 64 (x / d = 63.499996 -> 63);
        // absmax 1.171875: 0.5859375 * id = 63.499996 -> 63 (x / d = 63.5 -> 64).
        let mut x = block(&[1.125, 0.5625, -0.5625]);
        x.extend(block(&[1.171875, 0.5859375]));
        let q = quantize_q8_0(&x, 1, 64).unwrap();
        assert_eq!(&q.qs[..3], &[127, 64, -64]);
        assert_eq!(&q.qs[32..34], &[127, 63]);
    }

    #[test]
    fn scale_is_stored_as_f16_and_used_unrounded() {
        // d = 1/127 is not an f16; the stored scale is its RNE rounding, while q used
        // the exact f32 d (so the absmax codes to 127, not 126 or 128).
        let x = block(&[1.0, -1.0, 0.25]);
        let q = quantize_q8_0(&x, 1, 32).unwrap();
        let d = 1.0f32 / 127.0;
        assert_eq!(q.scales[0], f16::from_f32(d));
        assert_eq!(&q.qs[..3], &[127, -127, 32]); // 0.25 * 127 = 31.75 -> 32
        let y = q.dequantize();
        assert_eq!(y[0], 127.0 * f16::from_f32(d).to_f32());
        assert_eq!(y[2], 32.0 * f16::from_f32(d).to_f32());
    }

    #[test]
    fn zero_block() {
        let q = quantize_q8_0(&[0.0; 64], 2, 32).unwrap();
        assert_eq!(q.scales, [f16::ZERO, f16::ZERO]);
        assert!(q.qs.iter().all(|&v| v == 0));
        assert!(q.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert_eq!(quantize_q8_0(&[0.0; 40], 1, 40), Err(QuantError::Q8RowLength { cols: 40 }));
        assert!(matches!(quantize_q8_0(&[0.0; 32], 2, 32), Err(QuantError::Length { expected: 64, got: 32, .. })));
        assert!(matches!(Q8_0::from_gguf_blocks(&[0; 33], 1, 32), Err(QuantError::Q8Bytes { expected: 34, .. })));
        assert_eq!(Q8_0::from_gguf_blocks(&[0; 34], 1, 33), Err(QuantError::Q8RowLength { cols: 33 }));
    }

    #[test]
    fn gguf_block_layout_and_roundtrip() {
        let mut rng = Rng::new(91);
        let (rows, cols) = (3, 64);
        let x = rng.normal_vec(rows * cols, 1.0);
        let q = quantize_q8_0(&x, rows, cols).unwrap();
        let bytes = q.to_gguf_blocks();
        assert_eq!(bytes.len(), 6 * 34);
        // Block 4 (row 2, second half): scale in bytes 136..138, values after.
        assert_eq!(f16::from_le_bytes([bytes[136], bytes[137]]), q.scales[4]);
        assert_eq!(bytes[138] as i8, q.qs[4 * 32]);
        assert_eq!(Q8_0::from_gguf_blocks(&bytes, rows, cols).unwrap(), q);
    }

    #[test]
    fn roundtrip_error_bound() {
        let mut rng = Rng::new(92);
        let (rows, cols) = (7, 96);
        let x = rng.normal_vec(rows * cols, 0.05);
        let q = quantize_q8_0(&x, rows, cols).unwrap();
        let y = q.dequantize();
        for (b, (xs, ys)) in x.chunks(32).zip(y.chunks(32)).enumerate() {
            let d = xs.iter().fold(0.0f32, |a, &v| a.max(v.abs())) / 127.0;
            // Half a step from rounding, plus up to 127 steps' worth of the f16
            // scale's relative error (2^-11).
            let bound = d * (0.5 + 127.0 / 2048.0) * (1.0 + 1e-5);
            for (&a, &c) in xs.iter().zip(ys) {
                assert!((a - c).abs() <= bound, "block {b}: {a} -> {c}, bound {bound}");
            }
        }
    }
}
