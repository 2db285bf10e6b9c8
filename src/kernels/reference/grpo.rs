//! CPU reference for `shaders/grpo.wgsl`: GRPO's per-token loss at μ = 1.

/// `(row_scale, [loss, kl_sum, entropy_sum])` for per-row `token_loss` (−log π), its `entropy`, the
/// reference's `ref_loss` (read only when β ≠ 0), `weight` (the loss type's
/// normaliser, 0 off the completion) and `adv` (the row's advantage):
/// `kl = e^(ref − lp) − (ref − lp) − 1`, `loss = Σ w·(β·kl − adv)`,
/// `kl_sum = Σ_{w > 0} kl`, `entropy_sum = Σ_{w > 0} entropy`,
/// `row_scale = w·(adv + β·(e^(ref − lp) − 1)) / T`.
/// Sums in f64.
pub fn grpo_row_scale(
    token_loss: &[f32],
    entropy: &[f32],
    ref_loss: &[f32],
    weight: &[f32],
    adv: &[f32],
    beta: f32,
    temperature: f32,
) -> (Vec<f32>, [f32; 3]) {
    let (mut loss, mut kl_sum, mut entropy_sum) = (0f64, 0f64, 0f64);
    let scale = token_loss
        .iter()
        .enumerate()
        .map(|(r, &l)| {
            let w = weight[r];
            if w == 0.0 {
                return 0.0;
            }
            let (ratio, kl) = if beta != 0.0 {
                let d = l - ref_loss[r];
                (d.exp(), d.exp() - d - 1.0)
            } else {
                (1.0, 0.0)
            };
            loss += (w * (beta * kl - adv[r])) as f64;
            kl_sum += kl as f64;
            entropy_sum += entropy[r] as f64;
            w * (adv[r] + beta * (ratio - 1.0)) * (1.0 / temperature)
        })
        .collect();
    (scale, [loss as f32, kl_sum as f32, entropy_sum as f32])
}
