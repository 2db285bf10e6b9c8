//! Inverted dropout (`dropout` in `shaders/elementwise.wgsl`), bit for bit:
//! element i is kept when the top 24 bits of `pcg(i ^ pcg(seed))` are at
//! least `threshold(p)`, and a kept element is multiplied by `scale(p)`.
//!
//! The mask depends only on (seed, index), so the GPU regenerates it in the
//! backward instead of storing it. It is not PyTorch's mask (no shared bits
//! with `torch.nn.Dropout`); it has the same distribution.

/// The PCG-style hash of Jarzynski and Olano (JCGT 2020), as in the shader.
pub fn pcg_hash(x: u32) -> u32 {
    let state = x.wrapping_mul(747_796_405).wrapping_add(2_891_336_453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277_803_737);
    (word >> 22) ^ word
}

/// The 24-bit drop threshold for probability p: an element is dropped with
/// probability threshold / 2²⁴ ≈ p. None unless 0 ≤ p < 1.
pub fn threshold(p: f32) -> Option<u32> {
    if !(0.0..1.0).contains(&p) {
        return None;
    }
    Some((p as f64 * (1u64 << 24) as f64).round() as u32)
}

/// What a kept element is multiplied by: 1 / (1 − p), in f32.
pub fn scale(p: f32) -> f32 {
    1.0 / (1.0 - p)
}

/// Whether element `i` survives.
pub fn keep(seed: u32, threshold: u32, i: u32) -> bool {
    (pcg_hash(i ^ pcg_hash(seed)) >> 8) >= threshold
}

/// out = x · keep · scale.
pub fn dropout(x: &[f32], p: f32, seed: u32) -> Vec<f32> {
    let t = threshold(p).expect("0 <= p < 1");
    let s = scale(p);
    x.iter().enumerate().map(|(i, &v)| if keep(seed, t, i as u32) { v * s } else { 0.0 }).collect()
}
