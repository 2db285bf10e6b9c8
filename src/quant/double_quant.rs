//! Double quantization (`bnb_4bit_use_double_quant`): the f32 absmax of each
//! block of 64 weights is itself stored in 8 bits, as bitsandbytes'
//! `quantize_4bit(compress_statistics=True)` stores it.
//!
//! - offset = the mean of the absmaxes (f32, summed in torch's order: [`torch_mean`]);
//! - the absmaxes minus the offset are cut into blocks of 256; each block keeps
//!   its own f32 absmax (`nested_absmax`) and each value the code of one of the
//!   256 levels of the signed dynamic map ([`dynamic_map`], `nested_quant_map`)
//!   after multiplying by the block's f32 reciprocal, found as bitsandbytes'
//!   CPU quantizer finds it: through a 65,536-entry table of the nearest level
//!   to evenly spaced values in [-1, 1] ([`LevelTable`]), which is not always
//!   the nearest level to the value itself;
//! - dequantized: `map[code] · nested_absmax[block] + offset`, a product and a
//!   sum rounded to f32 one after the other.
//!
//! That is 1 byte instead of 4 per 64 weights, plus 4 bytes per 16,384: 0.127
//! instead of 0.5 bits of scale per weight.
//!
//! Loading a bitsandbytes checkpoint uses its stored bytes as they are.
//! Quantizing here gives bitsandbytes' bytes bit for bit where torch's mean is
//! itself deterministic: under 32,768 absmaxes torch sums on one thread; above,
//! it splits the sum over however many threads the machine has, and the
//! offset can then be an ulp apart (tests/bnb_checkpoint.rs).

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
        let table = LevelTable::new(&map);
        let offset = torch_mean(absmax);
        let mut codes = Vec::with_capacity(absmax.len());
        let mut nested_absmax = Vec::with_capacity(absmax.len().div_ceil(NESTED_BLOCK));
        for block in absmax.chunks(NESTED_BLOCK) {
            let centred: Vec<f32> = block.iter().map(|&a| a - offset).collect();
            let amax = centred.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
            nested_absmax.push(amax);
            if amax == 0.0 {
                codes.extend(std::iter::repeat_n(0, block.len())); // as bitsandbytes: code 0
                continue;
            }
            let inv = 1.0 / amax;
            codes.extend(centred.iter().map(|&v| table.code(v * inv)));
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

/// bitsandbytes' CPU quantizer for an ascending 256-level map: the code of
/// each of 65,536 evenly spaced values in [-1, 1] (the number of f32 level
/// midpoints strictly below it), looked up at the nearest of those values.
pub struct LevelTable {
    codes: Vec<u8>,
}

impl LevelTable {
    const SIZE: usize = 65536;

    pub fn new(map: &[f32]) -> LevelTable {
        let mids: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let mut code = 0;
        let codes = (0..Self::SIZE)
            .map(|i| {
                let v = -1.0f32 + (2.0 * i as f32) / (Self::SIZE - 1) as f32;
                while code < mids.len() && mids[code] < v {
                    code += 1;
                }
                code as u8
            })
            .collect();
        LevelTable { codes }
    }

    /// The code of a value scaled into [-1, 1] (clamped there first).
    pub fn code(&self, x: f32) -> u8 {
        let x = x.clamp(-1.0, 1.0);
        let index = ((x + 1.0) * 0.5 * (Self::SIZE - 1) as f32 + 0.5) as usize;
        self.codes[index.min(Self::SIZE - 1)]
    }
}

/// `torch.mean` of an f32 vector on the CPU, summed in torch's order on one
/// thread: vectors of 8 lanes into 4 interleaved accumulators (with torch's
/// cascade of 4 levels of 2^max(4, ⌈log2 n/32⌉/4) rows), the leftover vectors
/// into the first, the four added in order, then the scalar tail and the 8
/// lanes added one by one; the sum divided by n in f32.
pub fn torch_mean(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    const LANES: usize = 8;
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    type Row = [[f32; LANES]; ILP];
    fn add(a: &mut [f32; LANES], b: &[f32]) {
        a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
    fn add_rows(a: &mut Row, b: &Row) {
        a.iter_mut().zip(b).for_each(|(a, b)| add(a, b));
    }
    let vectors = x.len() / LANES;
    let vector = |i: usize| &x[i * LANES..(i + 1) * LANES];
    // Row r: vectors 4r .. 4r + 4, one into each accumulator.
    let add_row = |acc: &mut Row, r: usize| acc.iter_mut().enumerate().for_each(|(k, a)| add(a, vector(r * ILP + k)));
    let rows = vectors / ILP;
    let ceil_log2 = if rows <= 1 { 0 } else { (usize::BITS - (rows - 1).leading_zeros()) as usize };
    let level_power = (ceil_log2 / LEVELS).max(4);
    let step = 1usize << level_power;
    let mut acc: [Row; LEVELS] = [[[0.0; LANES]; ILP]; LEVELS];
    let mut i = 0;
    while i + step <= rows {
        for _ in 0..step {
            add_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            add_rows(&mut upper[0], &lower[j - 1]);
            lower[j - 1] = [[0.0; LANES]; ILP];
            if i & ((step - 1) << (j * level_power)) != 0 {
                break;
            }
        }
    }
    for r in i..rows {
        add_row(&mut acc[0], r);
    }
    let (first, rest) = acc.split_at_mut(1);
    rest.iter().for_each(|level| add_rows(&mut first[0], level));
    let [mut partial, others @ ..] = first[0];
    for r in rows * ILP..vectors {
        add(&mut partial, vector(r));
    }
    others.iter().for_each(|o| add(&mut partial, o));
    let sum = x[vectors * LANES..].iter().fold(0.0f32, |s, &v| s + v);
    partial.iter().fold(sum, |s, &v| s + v) / x.len() as f32
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
