//! CPU reference for `shaders/grpo.wgsl`: GRPO's per-token loss, with token-
//! or sequence-level (GSPO) importance ratios, and RLOO's per-sequence loss.

use crate::kernels::grpo::{Clip, ImportanceSampling};

/// `(min(c1'·a, c2·a), ∂min/∂s, low-clipped, high-clipped)` for ratio `c1`
/// and advantage `a`: `c2 = clamp(c1, 1 − ε_low, 1 + ε_high)`, `c1' = min(c1, δ)`;
/// each clamp passes c1·a inside its (inclusive) bounds, min's gradient goes
/// to the smaller term, half to each on a tie.
fn clipped(c1: f32, a: f32, clip: Clip) -> (f32, f32, bool, bool) {
    let (lo, hi) = (1.0 - clip.epsilon_low, 1.0 + clip.epsilon_high);
    let c2 = c1.clamp(lo, hi);
    let (c1d, pass1) = match clip.delta {
        Some(d) => (c1.min(d), if c1 <= d { 1.0 } else { 0.0 }),
        None => (c1, 1.0),
    };
    let pass2 = if c1 >= lo && c1 <= hi { 1.0 } else { 0.0 };
    let (l1, l2) = (c1d * a, c2 * a);
    let (g1, g2) = (a * c1 * pass1, a * c1 * pass2);
    let dmin = if l1 < l2 {
        g1
    } else if l2 < l1 {
        g2
    } else {
        0.5 * (g1 + g2)
    };
    (l1.min(l2), dmin, c1 < lo && a < 0.0, c1 > hi && a > 0.0)
}

/// `torch.quantile(values, q)` in f32: the sorted values' linear interpolation
/// at rank q·(n − 1), as `torch.lerp` takes it (each side of weight 0.5).
pub fn torch_quantile(values: &[f32], q: f32) -> f32 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = q * (sorted.len() - 1) as f32;
    let (below, above) = (rank as usize, rank.ceil() as usize);
    let (lo, hi, w) = (sorted[below], sorted[above], rank - below as f32);
    if w < 0.5 {
        lo + w * (hi - lo)
    } else {
        hi - (hi - lo) * (1.0 - w)
    }
}

/// `(row_scale, [loss, kl, entropy, low, high, region])`, the loss a sum and
/// the rest means (kl and entropy over the weighted rows, the clip indicators
/// over them or over the completions), for per-row
/// `token_loss` (−log π), its `entropy`, the sampling policy's `old_loss`, the
/// reference's `ref_loss` (read only when β ≠ 0), `weight` (the loss type's
/// normaliser, 0 off the completion) and `adv` (the row's advantage), the rows
/// being `completions` completions of equal length, as `shaders/grpo.wgsl`
/// computes them (f32 per row, sums in f64):
/// `s = lp − old` per token, or its mean over a completion's weighted rows
/// (`Sequence`); `c1 = e^s`, `ℓ = −min(c1'·A, c2·A) + β·kl`, and
/// `row_scale = (∂Σ weight·ℓ / ∂lp) negated / T`. The clip ratios are of
/// tokens (`Token`) or of completions (`Sequence`). At `top_entropy_quantile`
/// ρ < 1 the policy term −min(…) counts only where the entropy reaches the
/// weighted rows' (1 − ρ) quantile ([`torch_quantile`]), as TRL masks it.
#[allow(clippy::too_many_arguments)] // the rows' inputs and the settings
pub fn grpo_row_scale(
    [token_loss, entropy, old_loss, ref_loss]: [&[f32]; 4],
    weight: &[f32],
    adv: &[f32],
    beta: f32,
    temperature: f32,
    (clip, level, completions, top_entropy_quantile): (Clip, ImportanceSampling, usize, f64),
) -> (Vec<f32>, [f32; 6]) {
    let rows = token_loss.len();
    let weighted: Vec<f32> = (0..rows).filter(|&r| weight[r] != 0.0).map(|r| entropy[r]).collect();
    let threshold = match crate::kernels::grpo::entropy_quantile(top_entropy_quantile) {
        Some(q) if !weighted.is_empty() => torch_quantile(&weighted, q),
        _ => f32::NEG_INFINITY,
    };
    let kept = |r: usize| if entropy[r] >= threshold { 1.0f32 } else { 0.0 };
    let per = rows / completions;
    let mut sums = [0f64; 6];
    let mut scale = vec![0f32; rows];
    // β's KL of row r and its factor e^(ref − lp) − 1.
    let kl = |r: usize| -> (f32, f32) {
        if beta == 0.0 {
            return (0.0, 0.0);
        }
        let d = token_loss[r] - ref_loss[r];
        (d.exp() - d - 1.0, d.exp() - 1.0)
    };
    let count_clips = |sums: &mut [f64; 6], low: bool, high: bool| {
        sums[3] += low as u8 as f64;
        sums[4] += high as u8 as f64;
        sums[5] += (low || high) as u8 as f64;
    };
    for s in 0..completions {
        let span = s * per..(s + 1) * per;
        let masked: Vec<usize> = span.filter(|&r| weight[r] != 0.0).collect();
        // The sequence's ratio and its share of ∂min/∂s (GSPO), from f32 sums as the kernel's.
        let sequence = (level == ImportanceSampling::Sequence).then(|| {
            let log_ratio = masked.iter().map(|&r| old_loss[r] - token_loss[r]).sum::<f32>();
            let count = (masked.len() as f32).max(1.0);
            let total_weight = masked.iter().map(|&r| weight[r] * kept(r)).sum::<f32>();
            let c = clipped((log_ratio / count).exp(), adv[s * per], clip);
            count_clips(&mut sums, c.2, c.3);
            (c.0, total_weight * c.1 / count)
        });
        for &r in &masked {
            let w = weight[r];
            let (k, ratio) = kl(r);
            let (min_term, share) = match sequence {
                Some((min_term, shared)) => (min_term, shared),
                None => {
                    let c = clipped((old_loss[r] - token_loss[r]).exp(), adv[r], clip);
                    count_clips(&mut sums, c.2, c.3);
                    (c.0, w * kept(r) * c.1)
                }
            };
            sums[0] += (w * (beta * k - kept(r) * min_term)) as f64;
            sums[1] += k as f64;
            sums[2] += entropy[r] as f64;
            scale[r] = (share + w * beta * ratio) * (1.0 / temperature);
        }
    }
    let tokens = weighted.len().max(1) as f64;
    let clipped_of = if level == ImportanceSampling::Sequence { completions as f64 } else { tokens };
    let means =
        [sums[0], sums[1] / tokens, sums[2] / tokens, sums[3] / clipped_of, sums[4] / clipped_of, sums[5] / clipped_of];
    (scale, means.map(|s| s as f32))
}

/// `(row_scale, [loss, 0, entropy, low, high, region])` of RLOO's loss as
/// `shaders/grpo.wgsl`'s `rloo_sequence_scale` computes it, for the rows of
/// `completions` completions of equal length: each completion's ratio
/// `c1 = e^(Σ_mask (lp − old))` (f32 sum), its loss `−min(c1·A, c2·A)`
/// weighed by `sequence_weight` whether or not a row of it is in the mask
/// (`weight ≠ 0`), and on the mask `row_scale = sequence_weight·∂min/∂s / T`.
/// Entropy is the mean over the mask, the clip ratios over the completions.
pub fn rloo_row_scale(
    [token_loss, entropy, old_loss]: [&[f32]; 3],
    (weight, adv): (&[f32], &[f32]),
    (temperature, clip): (f32, Clip),
    (completions, sequence_weight): (usize, f32),
) -> (Vec<f32>, [f32; 6]) {
    let rows = token_loss.len();
    let per = rows / completions;
    let mut sums = [0f64; 6];
    let mut scale = vec![0f32; rows];
    let mut tokens = 0usize;
    for s in 0..completions {
        let masked: Vec<usize> = (s * per..(s + 1) * per).filter(|&r| weight[r] != 0.0).collect();
        let log_ratio = masked.iter().map(|&r| old_loss[r] - token_loss[r]).sum::<f32>();
        let (min_term, dmin, low, high) = clipped(log_ratio.exp(), adv[s * per], clip);
        sums[0] -= (sequence_weight * min_term) as f64;
        sums[3] += low as u8 as f64;
        sums[4] += high as u8 as f64;
        sums[5] += (low || high) as u8 as f64;
        for &r in &masked {
            sums[2] += entropy[r] as f64;
            scale[r] = sequence_weight * dmin * (1.0 / temperature);
        }
        tokens += masked.len();
    }
    let (tokens, n) = (tokens.max(1) as f64, completions as f64);
    (scale, [sums[0], 0.0, sums[2] / tokens, sums[3] / n, sums[4] / n, sums[5] / n].map(|s| s as f32))
}
