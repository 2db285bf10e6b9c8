//! The DPO and ORPO losses on per-sequence log-probabilities, the reference
//! for `shaders/preference.wgsl` (see `kernels::preference` for the math).
//! Sums run in f64 and each result is rounded to f32 once.

use crate::kernels::preference::{PreferenceLoss, STATS};

/// `(logps, nll)`, both (seqs): logps[s] = −Σ lp_weight·CE, nll[s] = Σ nll_weight·CE over the sequence's rows.
pub fn sequence_logps(token_loss: &[f32], lp_weight: &[f32], nll_weight: &[f32], seqs: usize) -> (Vec<f32>, Vec<f32>) {
    let per = token_loss.len() / seqs;
    let sum =
        |w: &[f32], s: usize| -> f64 { (s * per..(s + 1) * per).map(|r| w[r] as f64 * token_loss[r] as f64).sum() };
    (0..seqs).map(|s| (-sum(lp_weight, s) as f32, sum(nll_weight, s) as f32)).unzip()
}

fn log_sigmoid(x: f64) -> f64 {
    x.min(0.0) - (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// `(stats, dlogp)`: `scale` times the loss and TRL's metrics (the order of
/// `kernels::preference::STATS`) and ∂(scale·loss)/∂logps, for sequences laid
/// out as the chosen ones then the rejected ones.
pub fn preference_loss(
    loss: PreferenceLoss,
    policy: &[f32],
    reference: &[f32],
    nll: &[f32],
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let pairs = policy.len() / 2;
    let (n, k) = (pairs as f64, scale as f64);
    let mut stats = [0f64; STATS];
    let mut dlogp = vec![0f32; policy.len()];
    let beta = loss.beta() as f64;
    let mut nll_loss = 0.0;
    if let PreferenceLoss::Orpo { .. } = loss {
        nll_loss = nll.iter().map(|&v| v as f64).sum::<f64>();
    }
    let mut total = 0.0;
    for i in 0..pairs {
        let (c, r) = (i, i + pairs);
        let (pc, pr) = (policy[c] as f64, policy[r] as f64);
        let (rc, rr, term, dc, dr) = match loss {
            PreferenceLoss::Dpo { label_smoothing, .. } => {
                let eps = label_smoothing as f64;
                let (hc, hr) = (pc - reference[c] as f64, pr - reference[r] as f64);
                let z = beta * (hc - hr);
                let l = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
                let dh = beta * (-(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z)) * k / n;
                (beta * hc, beta * hr, l, dh, -dh)
            }
            PreferenceLoss::Orpo { .. } => {
                let log1m_exp = |x: f64| (-x.exp_m1()).ln();
                let lo = (pc - pr) - (log1m_exp(pc) - log1m_exp(pr));
                let ratio = log_sigmoid(lo);
                stats[6] += ratio / n * k;
                stats[7] += lo / n * k;
                let dlo = -beta * sigmoid(-lo) * k / n;
                (beta * pc, beta * pr, -beta * ratio, dlo / -pc.exp_m1(), -dlo / -pr.exp_m1())
            }
        };
        total += term;
        stats[1] += rc / n * k;
        stats[2] += rr / n * k;
        stats[3] += if rc > rr { k / n } else { 0.0 };
        stats[4] += (rc - rr) / n * k;
        dlogp[c] = dc as f32;
        dlogp[r] = dr as f32;
    }
    stats[0] = (nll_loss + total / n) * k;
    stats[5] = nll_loss * k;
    (stats.iter().map(|&v| v as f32).collect(), dlogp)
}

/// row_scale[r] = scale·nll_weight[r] − dlogp[s(r)]·lp_weight[r].
pub fn preference_row_scale(dlogp: &[f32], lp_weight: &[f32], nll_weight: &[f32], scale: f32) -> Vec<f32> {
    let per = lp_weight.len() / dlogp.len();
    (0..lp_weight.len()).map(|r| scale * nll_weight[r] - dlogp[r / per] * lp_weight[r]).collect()
}
