//! The DPO (every loss type), ORPO and CPO losses on per-sequence log-probabilities, the reference
//! for `shaders/preference.wgsl` (see `kernels::preference` for the math).
//! Sums run in f64 and each result is rounded to f32 once.

use crate::kernels::preference::{
    CpoLoss, CpoLossType, DpoLoss, DpoLossType, FDivergence, KtoLoss, PreferenceLoss, STATS,
};

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

/// DPO's ℓ(c, r) and (∂ℓ/∂c, ∂ℓ/∂r) for the log-ratios c, r (TRL's `dpo_loss`)
/// of the pairwise loss `t` (aot's and aot_pair's: sigmoid's form on c − r).
fn dpo_term(d: DpoLoss, t: DpoLossType, c: f64, r: f64) -> (f64, f64, f64) {
    let beta = d.beta as f64;
    let eps = match t {
        DpoLossType::ExoPair if d.label_smoothing == 0.0 => 1e-3,
        _ => d.label_smoothing as f64,
    };
    let (h, ds) = (c - r, |x: f64| sigmoid(x) * sigmoid(-x));
    let z = beta * h;
    // A loss of h alone: (ℓ, ∂ℓ/∂h).
    let of_h = |l: f64, dh: f64| (l, dh, -dh);
    match t {
        DpoLossType::Sigmoid | DpoLossType::Aot | DpoLossType::AotPair => of_h(
            -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z),
            beta * (-(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z)),
        ),
        DpoLossType::Robust => of_h(
            (-(1.0 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1.0 - 2.0 * eps),
            beta * (-(1.0 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1.0 - 2.0 * eps),
        ),
        DpoLossType::ExoPair => {
            let (a, b) = ((1.0 - eps).ln(), eps.ln());
            of_h(sigmoid(z) * (log_sigmoid(z) - a) + sigmoid(-z) * (log_sigmoid(-z) - b), beta * ds(z) * (z - a + b))
        }
        DpoLossType::Hinge => of_h((1.0 - z).max(0.0), if 1.0 - z > 0.0 { -beta } else { 0.0 }),
        DpoLossType::Ipo => {
            let e = h - 1.0 / (2.0 * beta);
            of_h(e * e, 2.0 * e)
        }
        DpoLossType::SppoHard => {
            let (a, b) = (c - 0.5 / beta, r + 0.5 / beta);
            (a * a + b * b, 2.0 * a, 2.0 * b)
        }
        DpoLossType::NcaPair => {
            let (zc, zr) = (beta * c, beta * r);
            (
                -log_sigmoid(zc) - 0.5 * log_sigmoid(-zc) - 0.5 * log_sigmoid(-zr),
                beta * (-sigmoid(-zc) + 0.5 * sigmoid(zc)),
                beta * 0.5 * sigmoid(zr),
            )
        }
        DpoLossType::ApoZero => {
            (1.0 - sigmoid(beta * c) + sigmoid(beta * r), -beta * ds(beta * c), beta * ds(beta * r))
        }
        DpoLossType::ApoDown => (sigmoid(beta * c) + 1.0 - sigmoid(z), beta * (ds(beta * c) - ds(z)), beta * ds(z)),
        DpoLossType::Discopop => {
            let tau = d.discopop_tau as f64;
            let m = sigmoid(z / tau);
            let dm = m * (1.0 - m) / tau;
            let e = (-z).exp();
            of_h(
                -log_sigmoid(z) * (1.0 - m) + e * m,
                beta * (-sigmoid(-z) * (1.0 - m) + log_sigmoid(z) * dm - e * m + e * dm),
            )
        }
        DpoLossType::BcoPair | DpoLossType::Sft => unreachable!("batch losses: dpo_losses"),
    }
}

/// DPO's Σ_k w_k·Σ_pairs ℓ_k and ∂/∂logps of it (unscaled), and each
/// pair's summed rewards (chosen, rejected), for the chosen-then-rejected
/// `policy` and `reference`; bco_pair updates `running` ([mean, count]).
/// DPO's f-divergence h of log-ratios c and r and its slopes (∂h/∂c, ∂h/∂r);
/// `None` for the reverse KL's h = c − r.
fn f_divergence_h(f: FDivergence, c: f64, r: f64) -> Option<(f64, f64, f64)> {
    let softplus = |x: f64| -log_sigmoid(-x);
    match f {
        FDivergence::ReverseKl => None,
        FDivergence::Js => Some(((c - r) - (softplus(c) - softplus(r)), sigmoid(-c), -sigmoid(-r))),
        FDivergence::Alpha(a) => {
            // TRL's cap_exp: the exponent capped at ln(f32::MAX), no slope past it.
            let (a, cap) = (a as f64, (f32::MAX as f64).ln());
            let capped = |x: f64| if x > cap { (cap.exp(), 0.0) } else { (x.exp(), x.exp()) };
            let ((ec, sc), (er, sr)) = (capped(-a * c), capped(-a * r));
            Some(((er - ec) / a, sc, -sr))
        }
    }
}

fn dpo_losses(d: DpoLoss, policy: &[f32], reference: &[f32], running: &mut [f32]) -> (f64, Vec<f64>, Vec<(f64, f64)>) {
    let n = policy.len() / 2;
    let beta = d.beta as f64;
    let (pi, rf) = (|s: usize| policy[s] as f64, |s: usize| reference[s] as f64);
    let ratio = |s: usize| pi(s) - rf(s);
    let mut grad = vec![0f64; 2 * n];
    let mut total = 0.0;
    // torch.sort's order of f32 values (ties in pair order).
    let sorted = |key: &dyn Fn(usize) -> f32| {
        let mut o: Vec<usize> = (0..n).collect();
        o.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
        o
    };
    for (t, w) in d.loss_type.terms() {
        let w = w as f64;
        match t {
            DpoLossType::Sft => {} // the NLL term, through nll_alpha
            DpoLossType::Aot | DpoLossType::AotPair => {
                let aot = t == DpoLossType::Aot;
                // aot: the policy's π_c − π_r against the reference's; aot_pair: c against r (f32, as the shader).
                let key_a = |i: usize| if aot { policy[i] - policy[i + n] } else { policy[i] - reference[i] };
                let key_b = |i: usize| {
                    if aot {
                        reference[i] - reference[i + n]
                    } else {
                        policy[i + n] - reference[i + n]
                    }
                };
                let (oa, ob) = (sorted(&key_a), sorted(&key_b));
                for (&a, &b) in oa.iter().zip(&ob) {
                    let delta = key_a(a) as f64 - key_b(b) as f64;
                    let (l, dd, _) = dpo_term(d, t, delta, 0.0);
                    total += w * l;
                    grad[a] += w * dd;
                    if aot {
                        grad[a + n] -= w * dd;
                    } else {
                        grad[b + n] -= w * dd;
                    }
                }
            }
            DpoLossType::BcoPair => {
                let x = (0..2 * n).map(|s| beta * ratio(s)).sum::<f64>() / (2 * n) as f64;
                let count = running[1] as f64 + 1.0;
                running[0] = (running[0] as f64 + (x - running[0] as f64) / count) as f32;
                running[1] = count as f32;
                let delta = running[0] as f64;
                for i in 0..n {
                    let (zc, zr) = (beta * ratio(i) - delta, beta * ratio(i + n) - delta);
                    total += w * (-log_sigmoid(zc) - log_sigmoid(-zr));
                    grad[i] += w * -beta * sigmoid(-zc);
                    grad[i + n] += w * beta * sigmoid(zr);
                }
            }
            _ => {
                // sppo_hard, nca_pair and discopop read the reference directly in TRL: reference_free or not.
                let in_loss = !d.reference_free || t.reads_reference();
                for i in 0..n {
                    let (c, r) = if in_loss { (ratio(i), ratio(i + n)) } else { (pi(i), pi(i + n)) };
                    let (l, dc, dr) = match f_divergence_h(d.f_divergence, c, r).filter(|_| t.of_h()) {
                        // The f-divergence's h: ℓ(h) and its slopes through ∂h/∂c, ∂h/∂r.
                        Some((h, hc, hr)) => {
                            let (l, dh, _) = dpo_term(d, t, h, 0.0);
                            (l, dh * hc, dh * hr)
                        }
                        None => dpo_term(d, t, c, r),
                    };
                    total += w * l;
                    grad[i] += w * dc;
                    grad[i + n] += w * dr;
                }
            }
        }
    }
    // TRL's rewards metrics: β·(π − ref) summed over the losses with their weights.
    let rewards = (0..n)
        .map(|i| {
            let sum = |s: usize| d.loss_type.terms().map(|(_, w)| beta * ratio(s) * w as f64).sum::<f64>();
            (sum(i), sum(i + n))
        })
        .collect();
    (total, grad, rewards)
}

/// CPO's ℓ(π_c, π_r) and its derivatives (TRL's `cpo_loss`): DPO's forms on
/// the policy alone, SimPO's sigmoid of β·h − γ.
fn cpo_term(c: CpoLoss, pc: f64, pr: f64) -> (f64, f64, f64) {
    let d = DpoLoss { beta: c.beta, label_smoothing: c.label_smoothing, ..DpoLoss::TRL };
    match c.loss_type {
        CpoLossType::Sigmoid => dpo_term(d, DpoLossType::Sigmoid, pc, pr),
        CpoLossType::Hinge => dpo_term(d, DpoLossType::Hinge, pc, pr),
        CpoLossType::Ipo => dpo_term(d, DpoLossType::Ipo, pc, pr),
        CpoLossType::Simpo => {
            let (beta, eps) = (c.beta as f64, c.label_smoothing as f64);
            let z = beta * (pc - pr) - c.simpo_gamma as f64;
            let dh = beta * (-(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z));
            (-(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z), dh, -dh)
        }
    }
}

/// KTO's `(stats, dlogp)` (TRL's `kto_loss`): rows 0..B the examples, B..2B
/// their KL rows (apo_zero_unpaired: the examples alone, kl 0); `desirable` (B) 1 or 0.
fn kto_loss(k: KtoLoss, policy: &[f32], reference: &[f32], desirable: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>) {
    let b = if k.loss_type.uses_kl() { policy.len() / 2 } else { policy.len() };
    let (n, s, beta) = (b as f64, scale as f64, k.beta as f64);
    let ratio = |i: usize| policy[i] as f64 - reference[i] as f64;
    let kl = if k.loss_type.uses_kl() { ((b..2 * b).map(ratio).sum::<f64>() / n).max(0.0) } else { 0.0 };
    let mut stats = [0f64; STATS];
    let mut dlogp = vec![0f32; policy.len()];
    for i in 0..b {
        let c = ratio(i);
        let good = desirable[i] > 0.5;
        let (z, w, dz) = if good {
            (beta * (c - kl), k.desirable_weight as f64, beta)
        } else {
            (beta * (kl - c), k.undesirable_weight as f64, -beta)
        };
        stats[0] += w * (1.0 - sigmoid(z)) / n * s;
        dlogp[i] = (-w * sigmoid(z) * sigmoid(-z) * dz * s / n) as f32;
        let side = usize::from(!good);
        stats[1 + side] += beta * c * s;
        stats[4 + side] += policy[i] as f64 * s;
        stats[6 + side] += s;
    }
    stats[3] = kl * s;
    (stats.iter().map(|&v| v as f32).collect(), dlogp)
}

/// `(stats, dlogp)`: `scale` times the loss and TRL's metrics (the order of
/// `kernels::preference::STATS`) and ∂(scale·loss)/∂logps, for sequences laid
/// out as the chosen ones then the rejected ones (KTO: the examples, then
/// their KL rows, with `desirable` the examples' labels; the others ignore it;
/// DPO's bco_pair updates `running`, [mean, count]).
pub fn preference_loss(
    loss: PreferenceLoss,
    policy: &[f32],
    reference: &[f32],
    nll: &[f32],
    desirable: &[f32],
    scale: f32,
    running: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    if let PreferenceLoss::Kto(k) = loss {
        return kto_loss(k, policy, reference, desirable, scale);
    }
    // DPO's losses are the batch's (sorted, running-mean ones among them): all at once.
    let (dpo_total, dpo_grad, dpo_rewards) = match loss {
        PreferenceLoss::Dpo(d) => dpo_losses(d, policy, reference, running),
        _ => (0.0, Vec::new(), Vec::new()),
    };
    let pairs = policy.len() / 2;
    let (n, k) = (pairs as f64, scale as f64);
    let mut stats = [0f64; STATS];
    let mut dlogp = vec![0f32; policy.len()];
    let beta = loss.beta() as f64;
    let nll_loss = nll.iter().map(|&v| v as f64).sum::<f64>();
    let mut total = 0.0;
    for i in 0..pairs {
        let (c, r) = (i, i + pairs);
        let (pc, pr) = (policy[c] as f64, policy[r] as f64);
        let (rc, rr, term, dc, dr) = match loss {
            PreferenceLoss::Dpo(_) => {
                let l = if i == 0 { dpo_total } else { 0.0 }; // the batch's losses, once
                let ((rc, rr), g) = (dpo_rewards.get(i).copied().unwrap_or_default(), |s: usize| dpo_grad[s] * k / n);
                (rc, rr, l, g(c), g(r))
            }
            PreferenceLoss::Kto(_) => unreachable!("KTO returned above"),
            PreferenceLoss::Cpo(cpo) => {
                // AlphaPO: the reward (1 − p^−α)/α of p = e^π, its derivative p^−α.
                let alpha = cpo.alpha as f64;
                let reward = |x: f64| {
                    if alpha == 0.0 {
                        (x, 1.0)
                    } else {
                        ((1.0 - (-alpha * x).exp()) / alpha, (-alpha * x).exp())
                    }
                };
                let ((rc, gc), (rr, gr)) = (reward(pc), reward(pr));
                let (l, dc, dr) = cpo_term(cpo, rc, rr);
                (beta * rc, beta * rr, l, dc * gc * k / n, dr * gr * k / n)
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
        stats[8] += pc / n * k;
        stats[9] += pr / n * k;
        stats[1] += rc / n * k;
        stats[2] += rr / n * k;
        stats[3] += if rc > rr { k / n } else { 0.0 };
        stats[4] += (rc - rr) / n * k;
        dlogp[c] = dc as f32;
        dlogp[r] = dr as f32;
    }
    let alpha = loss.nll_alpha().unwrap_or(0.0) as f64;
    stats[0] = (alpha * nll_loss + total / n) * k;
    stats[5] = nll_loss * k;
    (stats.iter().map(|&v| v as f32).collect(), dlogp)
}

/// row_scale[r] = nll_scale·nll_weight[r] − dlogp[s(r)]·lp_weight[r].
pub fn preference_row_scale(dlogp: &[f32], lp_weight: &[f32], nll_weight: &[f32], nll_scale: f32) -> Vec<f32> {
    let per = lp_weight.len() / dlogp.len();
    (0..lp_weight.len()).map(|r| nll_scale * nll_weight[r] - dlogp[r / per] * lp_weight[r]).collect()
}

/// `(stats, dscores)` of TRL's reward loss (`kernels::preference::reward_loss`):
/// `scale` times [loss, accuracy, margin, min, mean, max] and
/// ∂(scale·loss)/∂scores, for 2P scores (the chosen then the rejected), P
/// margins and `center_rewards_coefficient` γ, in f64:
/// loss = mean softplus(−(r_c − r_r − m)) + γ·mean (r_c + r_r)².
pub fn reward_loss(scores: &[f32], margins: &[f32], center: f32, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let p = margins.len();
    let n = p as f64;
    let (gamma, k) = (center as f64, scale as f64);
    let softplus = |x: f64| x.max(0.0) + (-x.abs()).exp().ln_1p();
    let (mut loss, mut center_sum, mut accuracy, mut margin, mut total) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut dscores = vec![0f32; 2 * p];
    for i in 0..p {
        let (rc, rr) = (scores[i] as f64, scores[i + p] as f64);
        let d = rc - rr - margins[i] as f64;
        loss += softplus(-d);
        center_sum += (rc + rr) * (rc + rr);
        let g = -1.0 / (1.0 + d.exp()); // −σ(−d)
        let c = 2.0 * gamma * (rc + rr);
        dscores[i] = ((g + c) * k / n) as f32;
        dscores[i + p] = ((c - g) * k / n) as f32;
        accuracy += f64::from(u8::from(rc > rr));
        margin += rc - rr;
        total += rc + rr;
    }
    let low = scores.iter().copied().fold(f32::INFINITY, f32::min) as f64;
    let high = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let stats = [
        (loss / n + gamma * center_sum / n) * k,
        accuracy / n * k,
        margin / n * k,
        low * k,
        total / (2.0 * n) * k,
        high * k,
    ];
    (stats.iter().map(|&v| v as f32).collect(), dscores)
}
