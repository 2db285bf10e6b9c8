//! Inverted dropout (`dropout` in `shaders/elementwise.wgsl`) and NEFTune's
//! uniform noise (`uniform_noise`), bit for bit. Dropout:
//! element i is kept when the top 24 bits of `pcg(i ^ pcg(seed))` are at
//! least `threshold(p)`, and a kept element is multiplied by `scale(p)`.
//!
//! The mask depends only on (seed, index), so the GPU regenerates it in the
//! backward instead of storing it. It is not PyTorch's mask (no shared bits
//! with `torch.nn.Dropout`); it has the same distribution.

pub use crate::kernels::elementwise::{dropout_scale as scale, dropout_threshold as threshold};
pub use crate::util::rng::pcg_hash;

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

/// Element `i`'s 2u − 1 in [−1, 1): u from the top 24 bits of `pcg(i ^ pcg(seed))`, exact in f32.
pub fn unit_noise(seed: u32, i: u32) -> f32 {
    (pcg_hash(i ^ pcg_hash(seed)) >> 8) as f32 * (1.0 / 8_388_608.0) - 1.0
}

/// x + magnitude · (2u − 1) for every element (`uniform_noise`).
pub fn uniform_noise(x: &[f32], magnitude: f32, seed: u32) -> Vec<f32> {
    x.iter().enumerate().map(|(i, &v)| v + magnitude * unit_noise(seed, i as u32)).collect()
}
