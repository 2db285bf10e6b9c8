//! Inverted dropout (`dropout` in `shaders/elementwise.wgsl`), bit for bit:
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
