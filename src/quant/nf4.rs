//! NF4 (4-bit NormalFloat), as bitsandbytes packs it for QLoRA, and its
//! sibling FP4 (bitsandbytes' `bnb_4bit_quant_type="fp4"`), which differs only
//! in its 16 levels ([`FourBit`]).
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

use super::double_quant::DoubleQuant;

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

/// The 16 FP4 levels in code order, as bitsandbytes' `get_4bit_type("fp4")`
/// makes them: the values of a 1-sign, 2-exponent, 1-mantissa float (bit
/// patterns 0b000..0b111 are 0, 0.0625, 8, 12, 4, 6, 2, 3; the sign bit
/// negates) divided by their largest, 12, in f32. Code 8 is +0.0, as there.
pub const FP4_LEVELS: [f32; 16] = {
    const MAGNITUDES: [f32; 8] = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0];
    let mut t = [0.0f32; 16];
    let mut i = 0;
    while i < 8 {
        t[i] = MAGNITUDES[i] / 12.0;
        t[i + 8] = if i == 0 { 0.0 } else { -MAGNITUDES[i] / 12.0 };
        i += 1;
    }
    t
};

/// Which 4-bit data type a weight uses (`bnb_4bit_quant_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FourBit {
    /// NormalFloat: levels at the quantiles of N(0, 1), the QLoRA default.
    #[default]
    Nf4,
    /// A 4-bit float (1 sign, 2 exponent, 1 mantissa bits).
    Fp4,
}

impl FourBit {
    /// The levels of the 16 codes.
    pub fn levels(self) -> &'static [f32; 16] {
        match self {
            FourBit::Nf4 => &NF4_LEVELS,
            FourBit::Fp4 => &FP4_LEVELS,
        }
    }

    /// bitsandbytes' name: "nf4" or "fp4".
    pub fn name(self) -> &'static str {
        match self {
            FourBit::Nf4 => "nf4",
            FourBit::Fp4 => "fp4",
        }
    }

    /// The code of a value scaled into [-1, 1]: bitsandbytes' quantizer sorts
    /// the levels, counts the f32 midpoints of adjacent sorted levels that lie
    /// strictly below the value (`torch.bucketize`), and maps that rank back
    /// to the code. For NF4 the levels are sorted and the rank is the code.
    /// For FP4 the two zeros (+0.0, code 0; and code 8, also +0.0) sort as
    /// codes 0 then 8, so values in (0, 0.0026] take code 8: both are zero.
    fn encode(self, scaled: f32) -> u8 {
        match self {
            FourBit::Nf4 => encode(scaled),
            FourBit::Fp4 => {
                const ORDER: [u8; 16] = [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3];
                let rank = ORDER
                    .windows(2)
                    .filter(|w| (FP4_LEVELS[w[0] as usize] + FP4_LEVELS[w[1] as usize]) * 0.5 < scaled)
                    .count();
                ORDER[rank]
            }
        }
    }

    /// The code padding an odd count and filling an all-zero block: the one
    /// the scaled value 0 takes (NF4 7, FP4 0), which dequantizes to zero.
    fn zero_code(self) -> u8 {
        self.encode(0.0)
    }
}

/// How quantizing to 4 bits on load stores a weight (bitsandbytes'
/// `bnb_4bit_quant_type` and `bnb_4bit_use_double_quant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FourBitOptions {
    pub kind: FourBit,
    pub double_quant: bool,
}

impl FourBitOptions {
    /// Storage bytes of a (rows, cols) weight: `ceil(n / 2)` code bytes and,
    /// per 64 values, a 4-byte absmax or with double quantization one byte,
    /// plus 4 bytes per 256 absmaxes and the 1,036-byte header of the layout
    /// the kernels read (the offset, two indices and the 256-level map).
    pub fn bytes_for(self, rows: usize, cols: usize) -> usize {
        let n = rows * cols;
        let blocks = n.div_ceil(NF4_BLOCK);
        n.div_ceil(2)
            + match self.double_quant {
                false => blocks * 4,
                true => blocks + blocks.div_ceil(super::NESTED_BLOCK) * 4 + (3 + 256) * 4,
            }
    }
}

/// The code of the padding nibble: level 0.0.
const PAD_CODE: u8 = 7;

/// A 4-bit packed weight (NF4 or FP4), the layout of bitsandbytes' `Params4bit`.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4 {
    /// Number of values (rows * cols of the original weight).
    pub len: usize,
    /// (ceil(len / 2)) bytes; value 2i in the high nibble of byte i, value 2i+1 in the low.
    pub codes: Vec<u8>,
    /// (ceil(len / 64)) f32 absmaxes, one per block of 64 consecutive values:
    /// with double quantization, the values its 8-bit form dequantizes to.
    pub absmax: Vec<f32>,
    /// The levels the codes index.
    pub kind: FourBit,
    /// The absmaxes' 8-bit form (`bnb_4bit_use_double_quant`), if stored so.
    pub double: Option<DoubleQuant>,
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
    quantize_4bit(x, FourBit::Nf4, false)
}

/// Packs `x` (the flattened row-major weight, any length) into `kind`, and
/// with `double_quant` stores the absmaxes in 8 bits as well
/// ([`DoubleQuant::quantize`]); the codes are then taken against the f32
/// absmaxes, as bitsandbytes does, and [`Nf4::absmax`] holds what the 8-bit
/// form dequantizes to.
///
/// - x: (len)
pub fn quantize_4bit(x: &[f32], kind: FourBit, double_quant: bool) -> Nf4 {
    let mut q = quantize_codes(x, kind);
    if double_quant {
        let dq = DoubleQuant::quantize(&q.absmax);
        q.absmax = dq.dequantize();
        q.double = Some(dq);
    }
    q
}

fn quantize_codes(x: &[f32], kind: FourBit) -> Nf4 {
    if kind == FourBit::Fp4 {
        return quantize_fp4(x);
    }
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
    Nf4 { len: x.len(), codes, absmax, kind: FourBit::Nf4, double: None }
}

/// FP4 as bitsandbytes' quantizer (`quantize_4bit` on the CPU) codes it:
/// `clamp(x * (1 / max(absmax, 1e-38)), -1, 1)` for whole blocks and
/// `x / absmax` (a division) for a last partial one, then [`FourBit::encode`].
fn quantize_fp4(x: &[f32]) -> Nf4 {
    let kind = FourBit::Fp4;
    let whole = x.len() / NF4_BLOCK * NF4_BLOCK;
    let mut codes = vec![0u8; x.len().div_ceil(2)];
    let mut absmax = Vec::with_capacity(x.len().div_ceil(NF4_BLOCK));
    for (b, block) in x.chunks(NF4_BLOCK).enumerate() {
        let amax = block.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
        absmax.push(amax);
        let a = amax.max(1e-38);
        let inv = 1.0 / a;
        for (j, &v) in block.iter().enumerate() {
            let i = b * NF4_BLOCK + j;
            let scaled = if i < whole { v * inv } else { v / a };
            let code = kind.encode(scaled.clamp(-1.0, 1.0));
            codes[i / 2] |= if i % 2 == 0 { code << 4 } else { code };
        }
    }
    if x.len() % 2 == 1 {
        *codes.last_mut().expect("odd length means at least one byte") |= kind.zero_code();
    }
    Nf4 { len: x.len(), codes, absmax, kind, double: None }
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
        let levels = self.kind.levels();
        (0..self.len).map(|i| levels[self.code(i) as usize] * self.absmax[i / NF4_BLOCK]).collect()
    }

    /// Values `[e0, e1)` (e0 on a block boundary) as their own packed weight:
    /// one chunk of rows of a weight too large for one GPU binding.
    pub fn slice(&self, e0: usize, e1: usize) -> Nf4 {
        assert!(e0 % NF4_BLOCK == 0 && e0 <= e1 && e1 <= self.len, "Nf4::slice [{e0}, {e1}) of {}", self.len);
        let (b0, b1) = (e0 / NF4_BLOCK, e1.div_ceil(NF4_BLOCK));
        Nf4 {
            len: e1 - e0,
            codes: self.codes[e0 / 2..e1.div_ceil(2)].to_vec(),
            absmax: self.absmax[b0..b1].to_vec(),
            kind: self.kind,
            double: self.double.as_ref().map(|d| d.slice(b0, b1)),
        }
    }

    /// Bytes of the packed form: the codes, and the absmaxes in f32 or, with
    /// double quantization, in 8 bits plus one f32 per 256 of them.
    pub fn bytes(&self) -> usize {
        self.codes.len()
            + match &self.double {
                None => self.absmax.len() * 4,
                Some(d) => d.codes.len() + d.nested_absmax.len() * 4,
            }
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
