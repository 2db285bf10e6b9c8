//! CPU reference for `shaders/grpo.wgsl`: GRPO's per-token loss.

use crate::kernels::grpo::Clip;

/// `(row_scale, [loss, kl, entropy, low, high, region])` for per-row
/// `token_loss` (−log π), its `entropy`, the sampling policy's `old_loss`, the
/// reference's `ref_loss` (read only when β ≠ 0), `weight` (the loss type's
/// normaliser, 0 off the completion) and `adv` (the row's advantage), as
/// `shaders/grpo.wgsl` computes them (f32 per row, sums in f64):
/// `c1 = e^(lp − old)`, `c2 = clamp(c1, 1 − ε_low, 1 + ε_high)`,
/// `c1' = min(c1, δ)`, `ℓ = −min(c1'·A, c2·A) + β·kl`,
/// `row_scale = w·(∂min/∂lp + β·(e^(ref − lp) − 1)) / T`.
#[allow(clippy::too_many_arguments)] // the rows' inputs and the settings
pub fn grpo_row_scale(
    [token_loss, entropy, old_loss, ref_loss]: [&[f32]; 4],
    weight: &[f32],
    adv: &[f32],
    beta: f32,
    temperature: f32,
    clip: Clip,
) -> (Vec<f32>, [f32; 6]) {
    let mut sums = [0f64; 6];
    let (lo, hi) = (1.0 - clip.epsilon_low, 1.0 + clip.epsilon_high);
    let scale = token_loss
        .iter()
        .enumerate()
        .map(|(r, &l)| {
            let w = weight[r];
            if w == 0.0 {
                return 0.0;
            }
            let a = adv[r];
            let c1 = (old_loss[r] - l).exp();
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
            let (ratio, kl) = if beta != 0.0 {
                let d = l - ref_loss[r];
                (d.exp(), d.exp() - d - 1.0)
            } else {
                (1.0, 0.0)
            };
            let (is_low, is_high) = (c1 < lo && a < 0.0, c1 > hi && a > 0.0);
            let terms = [w * (beta * kl - l1.min(l2)), kl, entropy[r], is_low as u8 as f32, is_high as u8 as f32];
            for (sum, t) in sums.iter_mut().zip(terms) {
                *sum += t as f64;
            }
            sums[5] += (is_low || is_high) as u8 as f64;
            w * (dmin + beta * (ratio - 1.0)) * (1.0 / temperature)
        })
        .collect();
    (scale, sums.map(|s| s as f32))
}
