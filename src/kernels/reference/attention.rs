//! Causal self-attention with grouped-query heads, the reference for
//! `shaders/attention.wgsl`.
//!
//! As transformers' `eager_attention_forward` for Llama:
//! `probs = softmax(q·kᵀ * scale + causal_mask)` in f32, `out = probs·v`.
//! Query head `h` reads kv head `h / (n_heads / n_kv_heads)` (the
//! `repeat_kv` grouping). The mask excludes keys after the query position;
//! those probabilities are exactly 0, as torch's `exp(min_float)` underflows to.

/// Returns `(out, probs)`.
///
/// - q: (batch, seq, n_heads, head_dim), after RoPE
/// - k: (batch, seq, n_kv_heads, head_dim), after RoPE
/// - v: (batch, seq, n_kv_heads, head_dim)
/// - scale: usually `1 / sqrt(head_dim)`
/// - out: (batch, seq, n_heads, head_dim)
/// - probs: (batch, n_heads, seq, seq), zeros above the diagonal; saved for the backward
///
/// Scores are the f32 dot product in order, then `* scale`; the softmax is
/// max-subtracted over keys `0..=i`.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    batch: usize,
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let shape = Shape::new("attention_forward", batch, seq, n_heads, n_kv_heads, head_dim);
    forward_from(q, k, v, &shape, scale, |_, _| 0)
}

/// [`attention_forward`] for packed rows, block-diagonal causal: query `i` of
/// row `b` sees keys `starts[b·seq + i] ..= i`, the positions of its own
/// example (transformers' eager attention under a 4-D mask that is
/// causal within each example and blocks every other). The backward is
/// [`attention_backward`] on the probabilities this returns (0 at every
/// masked key).
///
/// - starts: (batch, seq), `starts[b·seq + i] ≤ i`
#[allow(clippy::too_many_arguments)]
pub fn attention_forward_segmented(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    starts: &[u32],
    batch: usize,
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let shape = Shape::new("attention_forward_segmented", batch, seq, n_heads, n_kv_heads, head_dim);
    assert_eq!(starts.len(), batch * seq, "attention_forward_segmented: starts must be (batch, seq)");
    forward_from(q, k, v, &shape, scale, |b, i| {
        let from = starts[b * seq + i] as usize;
        assert!(from <= i, "attention_forward_segmented: query {i} of row {b} starts at {from}, after itself");
        from
    })
}

/// The forward with query i of row b seeing keys `first(b, i) ..= i`.
fn forward_from(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    shape: &Shape,
    scale: f32,
    first: impl Fn(usize, usize) -> usize,
) -> (Vec<f32>, Vec<f32>) {
    let (batch, seq, n_heads, head_dim) = (shape.batch, shape.seq, shape.n_heads, shape.head_dim);
    shape.check_qkv(q, k, v);
    let mut out = vec![0.0f32; q.len()];
    let mut probs = vec![0.0f32; batch * n_heads * seq * seq];
    let mut scores = vec![0.0f32; seq];
    for b in 0..batch {
        for h in 0..n_heads {
            let kvh = shape.kv_head(h);
            for i in 0..seq {
                let from = first(b, i);
                let qi = &q[shape.q_at(b, i, h)..][..head_dim];
                let mut max = f32::NEG_INFINITY;
                for (j, score) in scores.iter_mut().enumerate().take(i + 1).skip(from) {
                    let kj = &k[shape.kv_at(b, j, kvh)..][..head_dim];
                    let mut dot = 0.0f32;
                    for d in 0..head_dim {
                        dot += qi[d] * kj[d];
                    }
                    *score = dot * scale;
                    max = max.max(*score);
                }
                let p = &mut probs[shape.p_at(b, h, i)..][..seq];
                let mut sum = 0.0f32;
                for j in from..=i {
                    p[j] = (scores[j] - max).exp();
                    sum += p[j];
                }
                for pj in &mut p[from..=i] {
                    *pj /= sum;
                }
                let o = &mut out[shape.q_at(b, i, h)..][..head_dim];
                for (j, &pj) in p.iter().enumerate().take(i + 1).skip(from) {
                    let vj = &v[shape.kv_at(b, j, kvh)..][..head_dim];
                    for d in 0..head_dim {
                        o[d] += pj * vj[d];
                    }
                }
            }
        }
    }
    (out, probs)
}

/// Returns `(dq, dk, dv)`.
///
/// - dout: (batch, seq, n_heads, head_dim)
/// - q, k, v: as in [`attention_forward`]
/// - probs: (batch, n_heads, seq, seq), saved by the forward
/// - dq: (batch, seq, n_heads, head_dim)
/// - dk, dv: (batch, seq, n_kv_heads, head_dim), summed over the query heads
///   that share each kv head
///
/// With `P = probs`: `dP = dout·vᵀ`, `dS = P ⊙ (dP - rowsum(P ⊙ dP))`,
/// `dq = dS·k * scale`, `dk = dSᵀ·q * scale`, `dv = Pᵀ·dout`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    batch: usize,
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let shape = Shape::new("attention_backward", batch, seq, n_heads, n_kv_heads, head_dim);
    shape.check_qkv(q, k, v);
    assert_eq!(dout.len(), q.len(), "attention_backward: dout must be (batch, seq, n_heads, head_dim)");
    assert_eq!(
        probs.len(),
        batch * n_heads * seq * seq,
        "attention_backward: probs must be (batch, n_heads, seq, seq)"
    );
    let mut dq = vec![0.0f32; q.len()];
    let mut dk = vec![0.0f32; k.len()];
    let mut dv = vec![0.0f32; v.len()];
    let mut dp = vec![0.0f32; seq];
    for b in 0..batch {
        for h in 0..n_heads {
            let kvh = shape.kv_head(h);
            for i in 0..seq {
                let p = &probs[shape.p_at(b, h, i)..][..seq];
                let doi = &dout[shape.q_at(b, i, h)..][..head_dim];
                // dP_ij = dout_i · v_j, and the row's Σ_j P_ij dP_ij.
                let mut row_dot = 0.0f32;
                for j in 0..=i {
                    let vj = &v[shape.kv_at(b, j, kvh)..][..head_dim];
                    let mut dot = 0.0f32;
                    for d in 0..head_dim {
                        dot += doi[d] * vj[d];
                    }
                    dp[j] = dot;
                    row_dot += p[j] * dot;
                }
                let qi = &q[shape.q_at(b, i, h)..][..head_dim];
                for j in 0..=i {
                    let ds = p[j] * (dp[j] - row_dot) * scale;
                    let kv_j = shape.kv_at(b, j, kvh);
                    for d in 0..head_dim {
                        dq[shape.q_at(b, i, h) + d] += ds * k[kv_j + d];
                        dk[kv_j + d] += ds * qi[d];
                        dv[kv_j + d] += p[j] * doi[d];
                    }
                }
            }
        }
    }
    (dq, dk, dv)
}

/// Index arithmetic for the (batch, seq, heads, head_dim) layouts.
struct Shape {
    batch: usize,
    seq: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    op: &'static str,
}

impl Shape {
    fn new(op: &'static str, batch: usize, seq: usize, n_heads: usize, n_kv_heads: usize, head_dim: usize) -> Self {
        assert!(
            n_kv_heads > 0 && n_heads % n_kv_heads == 0,
            "{op}: n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})"
        );
        Self { batch, seq, n_heads, n_kv_heads, head_dim, op }
    }

    fn check_qkv(&self, q: &[f32], k: &[f32], v: &[f32]) {
        let op = self.op;
        let tokens = self.batch * self.seq;
        assert_eq!(q.len(), tokens * self.n_heads * self.head_dim, "{op}: q must be (batch, seq, n_heads, head_dim)");
        assert_eq!(
            k.len(),
            tokens * self.n_kv_heads * self.head_dim,
            "{op}: k must be (batch, seq, n_kv_heads, head_dim)"
        );
        assert_eq!(
            v.len(),
            tokens * self.n_kv_heads * self.head_dim,
            "{op}: v must be (batch, seq, n_kv_heads, head_dim)"
        );
    }

    /// The kv head read by query head `h`.
    fn kv_head(&self, h: usize) -> usize {
        h / (self.n_heads / self.n_kv_heads)
    }

    /// Start of q[b, s, h, :].
    fn q_at(&self, b: usize, s: usize, h: usize) -> usize {
        ((b * self.seq + s) * self.n_heads + h) * self.head_dim
    }

    /// Start of k[b, s, kvh, :] (and v).
    fn kv_at(&self, b: usize, s: usize, kvh: usize) -> usize {
        ((b * self.seq + s) * self.n_kv_heads + kvh) * self.head_dim
    }

    /// Start of probs[b, h, i, :].
    fn p_at(&self, b: usize, h: usize, i: usize) -> usize {
        ((b * self.n_heads + h) * self.seq + i) * self.seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::assert_close;
    use crate::kernels::reference::testing::{dot64, numeric_grad};
    use crate::util::rng::Rng;

    #[test]
    fn first_position_copies_its_value_and_mask_is_zero() {
        let mut rng = Rng::new(51);
        let (batch, seq, nh, nkv, hd) = (1, 4, 2, 1, 3);
        let q = rng.normal_vec(batch * seq * nh * hd, 1.0);
        let k = rng.normal_vec(batch * seq * nkv * hd, 1.0);
        let v = rng.normal_vec(batch * seq * nkv * hd, 1.0);
        let (out, probs) = attention_forward(&q, &k, &v, batch, seq, nh, nkv, hd, 0.5);
        // Position 0 attends only to itself: both heads output v[0].
        assert_close("out0", &out[..hd], &v[..hd], 1e-7, 0.0);
        assert_close("out0 head1", &out[hd..2 * hd], &v[..hd], 1e-7, 0.0);
        for h in 0..nh {
            for i in 0..seq {
                let row = &probs[(h * seq + i) * seq..][..seq];
                assert!(row[i + 1..].iter().all(|&p| p == 0.0));
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn gqa_equals_repeated_kv_heads() {
        let mut rng = Rng::new(52);
        let (batch, seq, nh, nkv, hd) = (2, 5, 6, 2, 4);
        let q = rng.normal_vec(batch * seq * nh * hd, 1.0);
        let k = rng.normal_vec(batch * seq * nkv * hd, 1.0);
        let v = rng.normal_vec(batch * seq * nkv * hd, 1.0);
        // repeat_kv: kv head g serves query heads g*3 .. g*3+3.
        let repeat = |x: &[f32]| {
            let mut r = Vec::with_capacity(batch * seq * nh * hd);
            for t in 0..batch * seq {
                for h in 0..nh {
                    let g = h / (nh / nkv);
                    r.extend_from_slice(&x[(t * nkv + g) * hd..][..hd]);
                }
            }
            r
        };
        let (out, _) = attention_forward(&q, &k, &v, batch, seq, nh, nkv, hd, 0.5);
        let (want, _) = attention_forward(&q, &repeat(&k), &repeat(&v), batch, seq, nh, nh, hd, 0.5);
        assert_close("gqa", &out, &want, 0.0, 0.0);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(53);
        let (batch, seq, nh, nkv, hd) = (2, 5, 4, 2, 3);
        let scale = 1.0 / (hd as f32).sqrt();
        let q = rng.normal_vec(batch * seq * nh * hd, 1.0);
        let k = rng.normal_vec(batch * seq * nkv * hd, 1.0);
        let v = rng.normal_vec(batch * seq * nkv * hd, 1.0);
        let dout = rng.normal_vec(q.len(), 1.0);
        let (_, probs) = attention_forward(&q, &k, &v, batch, seq, nh, nkv, hd, scale);
        let (dq, dk, dv) = attention_backward(&dout, &q, &k, &v, &probs, batch, seq, nh, nkv, hd, scale);
        let loss = |q: &[f32], k: &[f32], v: &[f32]| {
            dot64(&attention_forward(q, k, v, batch, seq, nh, nkv, hd, scale).0, &dout)
        };
        let num_dq = numeric_grad(&q, 1e-2, |x| loss(x, &k, &v));
        let num_dk = numeric_grad(&k, 1e-2, |x| loss(&q, x, &v));
        let num_dv = numeric_grad(&v, 1e-2, |x| loss(&q, &k, x));
        assert_close("dq", &dq, &num_dq, 2e-3, 5e-3);
        assert_close("dk", &dk, &num_dk, 2e-3, 5e-3);
        assert_close("dv", &dv, &num_dv, 2e-3, 5e-3);
    }
}
