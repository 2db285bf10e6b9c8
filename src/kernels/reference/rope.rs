//! Rotary position embedding, the reference for `shaders/rope.wgsl`. The
//! frequency tables are the model's own (`model::llama::rope`).
//!
//! As Hugging Face transformers (4.57) computes it for Llama:
//! - `inv_freq` from `_compute_default_rope_parameters`, adjusted by
//!   `_compute_llama3_parameters` when `rope_scaling.rope_type == "llama3"`
//!   (src/transformers/modeling_rope_utils.py);
//! - `cos`, `sin` from `LlamaRotaryEmbedding.forward`: `freqs = pos · inv_freq`,
//!   `emb = cat(freqs, freqs)`;
//! - `apply_rotary_pos_emb`: `x * cos + rotate_half(x) * sin` with
//!   `rotate_half(x) = cat(-x2, x1)` on the two halves of each head (not
//!   interleaved pairs).
//!
//! Frequencies are computed in f32 in torch's operation order, so they match
//! torch's CPU results except where torch's vectorised `pow`/`cos`/`sin`
//! (SLEEF, ≤ 1 ulp) round differently from the correctly rounded values used
//! here: compare with a tolerance of about 1 ulp, not bit for bit.

/// Rotates `x` in place: `x = x * cos + rotate_half(x) * sin`.
///
/// - x: (batch, seq, heads, head_dim)
/// - cos, sin: (seq, head_dim), shared by every batch row and head
///
/// For `i < half`: `x[i] * cos[i] + (-x[i + half]) * sin[i]`;
/// for `i ≥ half`: `x[i] * cos[i] + x[i - half] * sin[i]`
/// (two f32 products, then the sum, as torch evaluates it).
pub fn rope_forward(x: &mut [f32], cos: &[f32], sin: &[f32], batch: usize, seq: usize, heads: usize, head_dim: usize) {
    check_shapes("rope_forward", x, cos, sin, batch, seq, heads, head_dim);
    let half = head_dim / 2;
    let mut out = vec![0.0f32; head_dim];
    // Row `index` of x is head h of position s in batch row b: index = (b * seq + s) * heads + h.
    for (index, v) in x.chunks_exact_mut(head_dim).enumerate() {
        let s = (index / heads) % seq;
        let (c, sn) = (&cos[s * head_dim..][..head_dim], &sin[s * head_dim..][..head_dim]);
        for i in 0..head_dim {
            let rotated = if i < half { -v[i + half] } else { v[i - half] };
            out[i] = v[i] * c[i] + rotated * sn[i];
        }
        v.copy_from_slice(&out);
    }
}

/// The gradient of [`rope_forward`], in place on `dy`: the transpose rotation.
///
/// - dy: (batch, seq, heads, head_dim), becomes dx
/// - cos, sin: (seq, head_dim)
///
/// `dx = dy * cos + rotate_halfᵀ(dy * sin)` with `rotate_halfᵀ(u) = cat(u2, -u1)`:
/// for `i < half`: `dy[i] * cos[i] + dy[i + half] * sin[i + half]`;
/// for `i ≥ half`: `dy[i] * cos[i] - dy[i - half] * sin[i - half]`.
pub fn rope_backward(
    dy: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) {
    check_shapes("rope_backward", dy, cos, sin, batch, seq, heads, head_dim);
    let half = head_dim / 2;
    let mut out = vec![0.0f32; head_dim];
    for (index, g) in dy.chunks_exact_mut(head_dim).enumerate() {
        let s = (index / heads) % seq;
        let (c, sn) = (&cos[s * head_dim..][..head_dim], &sin[s * head_dim..][..head_dim]);
        for i in 0..head_dim {
            out[i] = if i < half {
                g[i] * c[i] + g[i + half] * sn[i + half]
            } else {
                g[i] * c[i] - g[i - half] * sn[i - half]
            };
        }
        g.copy_from_slice(&out);
    }
}

#[allow(clippy::too_many_arguments)]
fn check_shapes(
    op: &str,
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) {
    assert!(head_dim % 2 == 0, "{op}: head_dim must be even, got {head_dim}");
    assert_eq!(x.len(), batch * seq * heads * head_dim, "{op}: x must be (batch, seq, heads, head_dim)");
    assert_eq!(cos.len(), seq * head_dim, "{op}: cos must be (seq, head_dim)");
    assert_eq!(sin.len(), seq * head_dim, "{op}: sin must be (seq, head_dim)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::assert_close;
    // The model's tables (the oracle rotates by them; they are tested there).
    use crate::kernels::reference::testing::{dot64, numeric_grad};
    use crate::model::llama::rope::{rope_cos_sin, rope_inv_freq, Llama3Scaling, RopeScaling};
    use crate::util::rng::Rng;

    const LLAMA3: RopeScaling = RopeScaling::Llama3(Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    });

    #[test]
    fn rotates_halves_not_pairs() {
        // head_dim 4, one position with angle π/2 on frequency 0 and 0 on frequency 1.
        let cos = [0.0, 1.0, 0.0, 1.0];
        let sin = [1.0, 0.0, 1.0, 0.0];
        let mut x = [1.0, 2.0, 3.0, 4.0];
        rope_forward(&mut x, &cos, &sin, 1, 1, 1, 4);
        // Pair (x0, x2) rotates by 90°: (1, 3) -> (-3, 1); pair (x1, x3) is unchanged.
        assert_eq!(x, [-3.0, 2.0, 1.0, 4.0]);
    }

    #[test]
    fn forward_preserves_norm_and_backward_inverts() {
        let mut rng = Rng::new(21);
        let (batch, seq, heads, head_dim) = (2, 5, 3, 10);
        let inv = rope_inv_freq(head_dim, 10000.0, Some(&LLAMA3));
        let positions: Vec<u32> = (0..seq as u32).map(|p| p * 7 + 2).collect();
        let (cos, sin) = rope_cos_sin(&inv, &positions, 1.0);
        let x = rng.normal_vec(batch * seq * heads * head_dim, 1.0);
        let mut y = x.clone();
        rope_forward(&mut y, &cos, &sin, batch, seq, heads, head_dim);
        for (a, b) in x.chunks(head_dim).zip(y.chunks(head_dim)) {
            let na: f32 = a.iter().map(|v| v * v).sum();
            let nb: f32 = b.iter().map(|v| v * v).sum();
            assert_close("norm", &[nb], &[na], 1e-5, 1e-5);
        }
        // A rotation's transpose is its inverse.
        rope_backward(&mut y, &cos, &sin, batch, seq, heads, head_dim);
        assert_close("roundtrip", &y, &x, 1e-6, 1e-5);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(22);
        let (batch, seq, heads, head_dim) = (2, 3, 2, 6);
        let inv = rope_inv_freq(head_dim, 10000.0, None);
        let (cos, sin) = rope_cos_sin(&inv, &[4, 9, 1], 1.0);
        let x = rng.normal_vec(batch * seq * heads * head_dim, 1.0);
        let dy = rng.normal_vec(x.len(), 1.0);
        let mut dx = dy.clone();
        rope_backward(&mut dx, &cos, &sin, batch, seq, heads, head_dim);
        let num = numeric_grad(&x, 1e-2, |x| {
            let mut y = x.to_vec();
            rope_forward(&mut y, &cos, &sin, batch, seq, heads, head_dim);
            dot64(&y, &dy)
        });
        assert_close("dx", &dx, &num, 1e-3, 1e-3);
    }
}
