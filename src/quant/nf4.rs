//! NF4 (4-bit NormalFloat), as bitsandbytes packs it for QLoRA.
//!
//! The weight is flattened row-major and cut into blocks of 64 consecutive
//! values (a block spans two rows when the row length is not a multiple of
//! 64). Each block stores its absmax in f32; each value is scaled by the f32
//! reciprocal, `x * (1 / absmax)`, and coded as the number of the 15
//! thresholds ([`NF4_THRESHOLDS`], the midpoints between adjacent levels) that
//! lie strictly below it, so a value exactly on a threshold takes the lower
//! code. That is bitsandbytes' `dQuantizeNF4` decision tree (csrc/kernels.cu),
//! whose tests are all `x > threshold`. Two codes a byte, the first in the high
//! nibble; an odd count pads the last low nibble with code 7 (the 0.0 level).
//!
//! An all-zero block has absmax 0, so the scaled values are `0 * inf = NaN`;
//! no threshold is below NaN and every code is 0 (level -1.0), which
//! dequantises to `-1.0 * 0 = -0.0`. bitsandbytes' kernel does the same.

/// Values per absmax block.
pub const NF4_BLOCK: usize = 64;

/// The 16 NF4 levels, in code order, as bitsandbytes' `get_4bit_type("nf4")` lists them.
#[allow(clippy::excessive_precision)] // digits as printed by bitsandbytes, rounded to f32 by the compiler
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230850219727,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// The code of the padding nibble: level 0.0.
const PAD_CODE: u8 = 7;

/// An NF4-packed weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4 {
    /// Number of values (rows * cols of the original weight).
    pub len: usize,
    /// (ceil(len / 2)) bytes; value 2i in the high nibble of byte i, value 2i+1 in the low.
    pub codes: Vec<u8>,
    /// (ceil(len / 64)) f32 absmaxes, one per block of 64 consecutive values.
    pub absmax: Vec<f32>,
}

/// The 15 decision thresholds, ascending: the midpoints of adjacent levels
/// computed in f32, `(a + b) * 0.5`. This is what bitsandbytes itself does
/// (verified against `bitsandbytes.functional.quantize_4bit` 0.50 on the CPU,
/// see tests/fixtures/README.md).
///
/// bitsandbytes' CUDA kernel (`dQuantizeNF4`) writes the same midpoints as
/// 16-digit C literals, which the compiler rounds straight to f32: for
/// thresholds 0, 8, 12 and 14 that lands one ulp away from these. Only a
/// scaled value exactly equal to one of those four f32 numbers can be coded
/// differently there; we follow the library output we can check.
pub const NF4_THRESHOLDS: [f32; 15] = {
    let mut t = [0.0f32; 15];
    let mut i = 0;
    while i < 15 {
        t[i] = (NF4_LEVELS[i] + NF4_LEVELS[i + 1]) * 0.5;
        i += 1;
    }
    t
};

/// The code of a scaled value: how many thresholds lie strictly below it.
fn encode(scaled: f32) -> u8 {
    NF4_THRESHOLDS.iter().filter(|&&t| t < scaled).count() as u8
}

/// Packs `x` (the flattened row-major weight, any length) into NF4.
///
/// - x: (len)
pub fn quantize_nf4(x: &[f32]) -> Nf4 {
    let mut codes = vec![0u8; x.len().div_ceil(2)];
    let mut absmax = Vec::with_capacity(x.len().div_ceil(NF4_BLOCK));
    for (b, block) in x.chunks(NF4_BLOCK).enumerate() {
        let amax = block.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
        absmax.push(amax);
        let inv = 1.0 / amax;
        for (j, &v) in block.iter().enumerate() {
            let i = b * NF4_BLOCK + j;
            // An all-zero block (0·∞ = NaN) is coded as the 0.0 level, as bitsandbytes does.
            let code = if amax == 0.0 { PAD_CODE } else { encode(v * inv) };
            codes[i / 2] |= if i % 2 == 0 { code << 4 } else { code };
        }
    }
    if x.len() % 2 == 1 {
        *codes.last_mut().expect("odd length means at least one byte") |= PAD_CODE;
    }
    Nf4 { len: x.len(), codes, absmax }
}

impl Nf4 {
    /// The 4-bit code of value `i`.
    pub fn code(&self, i: usize) -> u8 {
        assert!(i < self.len, "Nf4::code: index {i} out of range for {} values", self.len);
        let byte = self.codes[i / 2];
        if i % 2 == 0 {
            byte >> 4
        } else {
            byte & 0x0f
        }
    }

    /// `level[code] * absmax[block]` for every value, (len).
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.len).map(|i| NF4_LEVELS[self.code(i) as usize] * self.absmax[i / NF4_BLOCK]).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    /// The distance from |x| to the next f32 away from zero.
    fn ulp(x: f32) -> f32 {
        f32::from_bits(x.abs().to_bits() + 1) - x.abs()
    }

    /// The next f32 above a nonzero `x` (`f32::next_up` needs Rust 1.86).
    fn next_up(x: f32) -> f32 {
        assert!(x != 0.0 && x.is_finite());
        if x > 0.0 {
            f32::from_bits(x.to_bits() + 1)
        } else {
            f32::from_bits(x.to_bits() - 1)
        }
    }

    #[test]
    fn thresholds_are_level_midpoints_to_within_an_ulp() {
        let mut differ = vec![];
        for i in 0..15 {
            let exact = (NF4_LEVELS[i] as f64 + NF4_LEVELS[i + 1] as f64) / 2.0;
            let t = NF4_THRESHOLDS[i];
            // One of the two f32 values around the exact midpoint.
            assert!((t as f64 - exact).abs() <= 0.5 * ulp(t) as f64, "threshold {i}");
            if t != (NF4_LEVELS[i] + NF4_LEVELS[i + 1]) * 0.5 {
                differ.push(i);
            }
        }
        // f32 arithmetic, not the CUDA kernel's literals (which differ at 0, 8, 12, 14).
        assert!(differ.is_empty(), "{differ:?}");
        #[allow(clippy::excessive_precision)] // digits exactly as in bitsandbytes' CUDA source
        let cuda_literals: [f32; 4] = [-0.8480964004993439, 0.1202552504837513, 0.5016634166240692, 0.8614784181118011];
        for (t, lit) in [0, 8, 12, 14].into_iter().zip(cuda_literals) {
            assert_eq!((NF4_THRESHOLDS[t].to_bits() as i64 - lit.to_bits() as i64).abs(), 1, "threshold {t}");
        }
    }

    #[test]
    fn every_level_maps_to_its_own_code() {
        // The block contains ±1, so absmax is 1 and the values are the levels themselves.
        let q = quantize_nf4(&NF4_LEVELS);
        assert_eq!(q.absmax, [1.0]);
        for i in 0..16 {
            assert_eq!(q.code(i), i as u8);
        }
        assert_eq!(q.codes, [0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);
        assert_eq!(q.dequantize(), NF4_LEVELS);
        // Scaled by a block absmax of 3.5, they still round-trip to level * absmax.
        let scaled: Vec<f32> = NF4_LEVELS.iter().map(|l| l * 3.5).collect();
        let q = quantize_nf4(&scaled);
        assert_eq!(q.absmax, [3.5]);
        assert!((0..16).all(|i| q.code(i) == i as u8));
    }

    #[test]
    fn exact_midpoints_take_the_lower_code() {
        let mut x = vec![1.0]; // absmax 1: the values are not rescaled
        x.extend_from_slice(&NF4_THRESHOLDS);
        x.extend(NF4_THRESHOLDS.iter().map(|&t| next_up(t)));
        let q = quantize_nf4(&x);
        for (i, &t) in NF4_THRESHOLDS.iter().enumerate() {
            assert_eq!(q.code(1 + i), i as u8, "threshold {i} ({t}) must take the lower code");
            assert_eq!(q.code(16 + i), i as u8 + 1, "just above threshold {i} takes the upper code");
        }
    }

    #[test]
    fn uses_the_reciprocal_multiply() {
        // With absmax 3, these values sit next to a midpoint: x * f32(1/3) and x / 3
        // land on opposite sides of it. bitsandbytes multiplies by the reciprocal.
        // (-1.83189857 * (1/3) = -0.61063290 = threshold 1 exactly; x / 3 = -0.61063284.)
        let q = quantize_nf4(&[3.0, -1.831_898_6, 0.119_370_45]);
        assert_eq!(q.code(1), 1); // division would give 2
        assert_eq!(q.code(2), 8); // division would give 7 (x / 3 is exactly threshold 7)
    }

    #[test]
    fn block_spanning_two_rows() {
        // 3 rows of 50: block 0 is row 0 and the first 14 values of row 1.
        let (rows, cols) = (3, 50);
        let mut x = vec![0.1f32; rows * cols];
        x[cols + 13] = -8.0; // row 1, column 13: value 63, the end of block 0
        x[cols + 14] = 5.0; // row 1, column 14: value 64, the start of block 1
        let q = quantize_nf4(&x);
        assert_eq!(q.absmax.len(), 3);
        assert_eq!(q.absmax, [8.0, 5.0, 0.1]);
        assert_eq!(q.code(63), 0); // -8 / 8 = -1
        assert_eq!(q.code(64), 15); // 5 / 5 = 1
        assert_eq!(q.code(0), encode(0.1 * (1.0 / 8.0)));
    }

    #[test]
    fn odd_length_pads_with_code_7() {
        let q = quantize_nf4(&[1.0, -1.0, 0.5, 0.0, -0.25]);
        assert_eq!(q.len, 5);
        assert_eq!(q.codes.len(), 3);
        assert_eq!(q.codes[2] & 0x0f, 7);
        assert_eq!(q.code(4), encode(-0.25));
        assert_eq!(q.dequantize().len(), 5);
        assert_eq!(quantize_nf4(&[]).codes.len(), 0);
    }

    #[test]
    fn zero_block_codes_seven_and_dequantises_to_zero() {
        let q = quantize_nf4(&[0.0; 70]);
        assert_eq!(q.absmax, [0.0, 0.0]);
        assert!((0..70).all(|i| q.code(i) == 7));
        assert!(q.dequantize().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn roundtrip_error_is_at_most_half_a_level_gap() {
        let mut rng = Rng::new(82);
        let x = rng.normal_vec(64 * 20 + 17, 0.02);
        let q = quantize_nf4(&x);
        let y = q.dequantize();
        let max_half_gap = NF4_LEVELS.windows(2).map(|w| (w[1] - w[0]) / 2.0).fold(0.0, f32::max);
        for (i, (&a, &b)) in x.iter().zip(&y).enumerate() {
            let amax = q.absmax[i / NF4_BLOCK];
            assert!((a - b).abs() <= amax * max_half_gap * (1.0 + 1e-6), "value {i}: {a} -> {b} (absmax {amax})");
        }
        // Each block's absmax value itself is exact.
        for (blk, chunk) in x.chunks(NF4_BLOCK).enumerate() {
            let j = chunk.iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
            assert_eq!(y[blk * NF4_BLOCK + j], chunk[j]);
        }
    }
}
