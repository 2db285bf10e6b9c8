//! Double quantization (`bnb_4bit_use_double_quant`): the f32 absmax of each
//! block of 64 weights is itself stored in 8 bits, as bitsandbytes'
//! `quantize_4bit(compress_statistics=True)` stores it.
//!
//! - offset = the mean of the absmaxes (f32);
//! - the absmaxes minus the offset are cut into blocks of 256; each block keeps
//!   its own f32 absmax (`nested_absmax`) and each value the index of the
//!   nearest of the 256 levels of the signed dynamic map ([`dynamic_map`],
//!   `nested_quant_map`) after dividing by that absmax;
//! - dequantized: `map[code] · nested_absmax[block] + offset`, a product and a
//!   sum rounded to f32 one after the other.
//!
//! That is 1 byte instead of 4 per 64 weights, plus 4 bytes per 16,384: 0.127
//! instead of 0.5 bits of scale per weight.
//!
//! Loading a bitsandbytes checkpoint uses its stored bytes as they are.
//! Quantizing here picks the nearest level (a tie takes the lower one) and
//! computes the mean in f64; bitsandbytes' CPU quantizer agrees on most codes
//! but not all (see tests/fixtures/README.md for the measured share).

/// Absmaxes per second-level block (`nested_blocksize`).
pub const NESTED_BLOCK: usize = 256;

/// The 8-bit form of a weight's absmaxes.
#[derive(Debug, Clone, PartialEq)]
pub struct DoubleQuant {
    /// (n) one code per absmax: an index into `map`.
    pub codes: Vec<u8>,
    /// (ceil((skew + n) / 256)) f32 absmax of each block of 256 codes.
    pub nested_absmax: Vec<f32>,
    /// (256) the levels the codes index (bitsandbytes' `nested_quant_map`).
    pub map: Vec<f32>,
    /// The mean subtracted before quantizing (`nested_offset`).
    pub offset: f32,
    /// How many codes of the first nested block come before `codes[0]`: 0 for
    /// a whole weight, the position of a slice of rows ([`DoubleQuant::slice`]).
    pub skew: usize,
}

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`,
/// the 8-bit approximation of Dettmers 2015): for exponents i = 0..6, 2^i
/// evenly spaced means of `linspace(0.1, 1, 2^i + 1)` scaled by 10^(i-6), with
/// both signs, then 0 and 1, sorted. In f32 as torch computes it.
pub fn dynamic_map() -> Vec<f32> {
    let mut data = Vec::with_capacity(256);
    for i in 0..7 {
        let steps = (1usize << i) + 1;
        let b = linspace_f32(0.1, 1.0, steps);
        let scale = 10f64.powi(i - 6) as f32;
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-scale * mean);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    data
}

/// `torch.linspace(start, end, steps, dtype=float32)` on the CPU: the first
/// half counted up from `start`, the second down from `end`, each value one
/// fused multiply-add in f32 (as torch's compiled kernel computes it; checked
/// against the maps bitsandbytes stores in tests/fixtures/bnb4).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| if i < half { step.mul_add(i as f32, start) } else { (-step).mul_add((steps - 1 - i) as f32, end) })
        .collect()
}

impl DoubleQuant {
    /// Quantizes f32 absmaxes (module doc).
    pub fn quantize(absmax: &[f32]) -> DoubleQuant {
        let map = dynamic_map();
        let offset = if absmax.is_empty() {
            0.0
        } else {
            (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len() as f64) as f32
        };
        let mut codes = Vec::with_capacity(absmax.len());
        let mut nested_absmax = Vec::with_capacity(absmax.len().div_ceil(NESTED_BLOCK));
        for block in absmax.chunks(NESTED_BLOCK) {
            let centred: Vec<f32> = block.iter().map(|&a| a - offset).collect();
            let amax = centred.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            nested_absmax.push(amax);
            codes.extend(centred.iter().map(|&v| nearest(&map, if amax == 0.0 { 0.0 } else { v / amax })));
        }
        DoubleQuant { codes, nested_absmax, map, offset, skew: 0 }
    }

    /// The f32 absmaxes: `map[code] · nested_absmax[block] + offset`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &c)| self.map[c as usize] * self.nested_absmax[(self.skew + i) / NESTED_BLOCK] + self.offset)
            .collect()
    }

    /// Absmaxes `[b0, b1)` with the nested blocks they need.
    pub fn slice(&self, b0: usize, b1: usize) -> DoubleQuant {
        let (g0, g1) = (self.skew + b0, self.skew + b1);
        DoubleQuant {
            codes: self.codes[b0..b1].to_vec(),
            nested_absmax: self.nested_absmax[g0 / NESTED_BLOCK..g1.div_ceil(NESTED_BLOCK).max(g0 / NESTED_BLOCK)]
                .to_vec(),
            map: self.map.clone(),
            offset: self.offset,
            skew: g0 % NESTED_BLOCK,
        }
    }
}

/// The index of the level of the ascending `map` nearest to `x` (the lower on a tie).
fn nearest(map: &[f32], x: f32) -> u8 {
    let above = map.partition_point(|&m| m <= x).clamp(1, map.len());
    let i = above - 1;
    if i + 1 < map.len() && (x - map[i + 1]).abs() < (x - map[i]).abs() {
        (i + 1) as u8
    } else {
        i as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    #[test]
    fn the_dynamic_map_is_256_ascending_levels_from_minus_one_to_one() {
        let m = dynamic_map();
        assert_eq!(m.len(), 256);
        assert!(m.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(m[255], 1.0);
        assert!(m.contains(&0.0));
        assert!((m[0] + 0.992_968_75).abs() < 1e-6, "{}", m[0]);
    }

    #[test]
    fn dequantized_absmax_is_within_half_a_level_of_the_input() {
        let mut rng = Rng::new(5);
        let absmax: Vec<f32> = rng.uniform_vec(700, 0.05, 0.15);
        let dq = DoubleQuant::quantize(&absmax);
        assert_eq!(dq.nested_absmax.len(), 3);
        let back = dq.dequantize();
        for (i, (&a, &b)) in absmax.iter().zip(&back).enumerate() {
            let m = dq.nested_absmax[i / NESTED_BLOCK];
            // The widest gap of the map is 0.0140625 (near ±1).
            assert!((a - b).abs() <= m * 0.0071 + 1e-7, "absmax {i}: {a} -> {b}");
        }
    }

    #[test]
    fn a_slice_dequantizes_to_the_same_values() {
        let mut rng = Rng::new(6);
        let absmax: Vec<f32> = rng.uniform_vec(600, 0.0, 1.0);
        let dq = DoubleQuant::quantize(&absmax);
        let all = dq.dequantize();
        for (b0, b1) in [(0, 600), (100, 300), (256, 512), (300, 301), (511, 600)] {
            assert_eq!(dq.slice(b0, b1).dequantize(), all[b0..b1], "slice [{b0}, {b1})");
        }
    }
}
