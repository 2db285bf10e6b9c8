//! Rotary position embedding, the reference for `shaders/rope.wgsl`.
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

/// `rope_scaling` of type "llama3" (Llama 3.1 and later).
///
/// The factors are f64 because transformers holds them as Python floats; each
/// is rounded to f32 exactly where torch combines it with an f32 tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeScaling {
    /// `factor`, 8.0 for Llama 3.1, 32.0 for Llama 3.2.
    pub factor: f64,
    /// `low_freq_factor`, 1.0 in the released models.
    pub low_freq_factor: f64,
    /// `high_freq_factor`, 4.0 in the released models.
    pub high_freq_factor: f64,
    /// `original_max_position_embeddings`, 8192 in the released models.
    pub original_max_position_embeddings: u32,
}

/// Inverse frequencies, (head_dim / 2).
///
/// - head_dim: the rotated dimension (even)
/// - theta: `rope_theta`
/// - scaling: `Some` for `rope_type == "llama3"`, `None` for the default RoPE
///
/// Default, in torch's order (all f32):
/// `e = float(arange(0, dim, 2)) / dim; inv = 1.0 / (theta ** e)`,
/// where `1.0 / t` is `t.reciprocal() * 1.0`.
///
/// llama3 (all tensor arithmetic in f32; Python scalars rounded to f32 where
/// they meet a tensor):
/// ```text
/// low_wavelen  = old_ctx / low_freq_factor          (Python float)
/// high_wavelen = old_ctx / high_freq_factor
/// wavelen = 2π / inv            = inv.reciprocal() * f32(2π)
/// inv_l   = where(wavelen > low_wavelen, inv / factor, inv)
/// smooth  = (old_ctx / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
///           where old_ctx / wavelen = wavelen.reciprocal() * old_ctx
/// smoothed = (1 - smooth) * inv_l / factor + smooth * inv_l
/// medium  = !(wavelen < high_wavelen) && !(wavelen > low_wavelen)
/// inv     = where(medium, smoothed, inv_l)
/// ```
/// Divisions by a scalar are true f32 divisions (torch's CPU kernel; its CUDA
/// kernel multiplies by the reciprocal instead, which differs by an ulp when
/// the divisor is not a power of two).
pub fn rope_inv_freq(head_dim: usize, theta: f32, scaling: Option<&RopeScaling>) -> Vec<f32> {
    assert!(head_dim % 2 == 0 && head_dim > 0, "rope_inv_freq: head_dim must be even, got {head_dim}");
    let dim = head_dim as f32;
    let inv_freq: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| {
            let exponent = i as f32 / dim;
            // torch: pow(f32(theta), exponent) in f32; here correctly rounded via f64.
            let base_pow = (theta as f64).powf(exponent as f64) as f32;
            1.0 / base_pow
        })
        .collect();
    let Some(s) = scaling else {
        return inv_freq;
    };

    let old_ctx = s.original_max_position_embeddings as f64;
    let low_freq_wavelen = (old_ctx / s.low_freq_factor) as f32;
    let high_freq_wavelen = (old_ctx / s.high_freq_factor) as f32;
    let factor = s.factor as f32;
    let low_freq_factor = s.low_freq_factor as f32;
    let freq_factor_span = (s.high_freq_factor - s.low_freq_factor) as f32;
    let two_pi = (2.0 * std::f64::consts::PI) as f32;

    inv_freq
        .into_iter()
        .map(|inv| {
            let wavelen = (1.0 / inv) * two_pi;
            let inv_l = if wavelen > low_freq_wavelen { inv / factor } else { inv };
            let smooth = ((1.0 / wavelen) * old_ctx as f32 - low_freq_factor) / freq_factor_span;
            let smoothed = (1.0 - smooth) * inv_l / factor + smooth * inv_l;
            // torch's `~(wavelen < high) * ~(wavelen > low)`, kept literally.
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            let is_medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            if is_medium {
                smoothed
            } else {
                inv_l
            }
        })
        .collect()
}

/// Returns `(cos, sin)`, each (positions.len(), 2 * inv_freq.len()).
///
/// - inv_freq: (head_dim / 2), from [`rope_inv_freq`]
/// - positions: (seq), the absolute position of each row
///
/// `freqs = f32(pos) * inv_freq` (one f32 product, as torch's matmul with an
/// inner dimension of 1), `emb = cat(freqs, freqs)`, and cos/sin of `emb`
/// correctly rounded to f32 (computed in f64). The attention scaling of the
/// default and llama3 types is 1.0, so nothing multiplies them.
pub fn rope_cos_sin(inv_freq: &[f32], positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let half = inv_freq.len();
    let head_dim = 2 * half;
    let mut cos = vec![0.0f32; positions.len() * head_dim];
    let mut sin = vec![0.0f32; positions.len() * head_dim];
    for (s, &pos) in positions.iter().enumerate() {
        for (j, &f) in inv_freq.iter().enumerate() {
            let angle = (pos as f32 * f) as f64;
            let (sn, cs) = (angle.sin() as f32, angle.cos() as f32);
            for col in [j, j + half] {
                cos[s * head_dim + col] = cs;
                sin[s * head_dim + col] = sn;
            }
        }
    }
    (cos, sin)
}

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
    use crate::kernels::reference::testing::{dot64, numeric_grad};
    use crate::util::rng::Rng;

    const LLAMA3: RopeScaling = RopeScaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };

    #[test]
    fn default_inv_freq_known_values() {
        // head_dim 8, theta 10000: 10000^-(0, 1/4, 2/4, 3/4) = 1, 0.1, 0.01, 0.001.
        let inv = rope_inv_freq(8, 10000.0, None);
        assert_close("inv_freq", &inv, &[1.0, 0.1, 0.01, 0.001], 0.0, 2e-7);
        assert_eq!(inv[0], 1.0);
    }

    #[test]
    fn llama3_inv_freq_regions() {
        let head_dim = 128;
        let plain = rope_inv_freq(head_dim, 500000.0, None);
        let scaled = rope_inv_freq(head_dim, 500000.0, Some(&LLAMA3));
        let two_pi = (2.0 * std::f64::consts::PI) as f32;
        let (mut high, mut medium, mut low) = (0, 0, 0);
        for (&p, &s) in plain.iter().zip(&scaled) {
            let wavelen = (1.0 / p) * two_pi;
            if wavelen < 2048.0 {
                // High frequencies are untouched.
                assert_eq!(s, p);
                high += 1;
            } else if wavelen > 8192.0 {
                // Low frequencies are divided by the factor.
                assert_eq!(s, p / 8.0);
                low += 1;
            } else {
                // In between, a blend strictly between the two.
                assert!(s < p && s > p / 8.0, "medium frequency {s} not in ({}, {p})", p / 8.0);
                medium += 1;
            }
        }
        assert_eq!(high + medium + low, 64);
        assert!(high > 0 && medium > 0 && low > 0, "{high} {medium} {low}");
        // Monotonically decreasing frequencies survive the blend.
        assert!(scaled.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn cos_sin_layout() {
        let inv = rope_inv_freq(6, 10000.0, None);
        let (cos, sin) = rope_cos_sin(&inv, &[0, 3]);
        assert_eq!(cos.len(), 12);
        assert_eq!(&cos[..6], &[1.0; 6]);
        assert_eq!(&sin[..6], &[0.0; 6]);
        for j in 0..3 {
            let angle = 3.0f32 * inv[j];
            assert_eq!(cos[6 + j], cos[6 + j + 3]);
            assert_eq!(sin[6 + j], sin[6 + j + 3]);
            assert_close("cos", &[cos[6 + j]], &[angle.cos()], 1e-7, 0.0);
            assert_close("sin", &[sin[6 + j]], &[angle.sin()], 1e-7, 0.0);
        }
    }

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
        let (cos, sin) = rope_cos_sin(&inv, &positions);
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
        let (cos, sin) = rope_cos_sin(&inv, &[4, 9, 1]);
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
