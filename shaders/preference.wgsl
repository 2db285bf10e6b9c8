// Preference losses on per-sequence log-probabilities (TRL's DPOTrainer and
// ORPOTrainer), for a micro-batch of P pairs laid out as TRL concatenates
// them: S = 2P sequences, the P chosen ones, then the P rejected ones, each
// T' rows (positions) long.
//
//   sequence_logps        logps[s] = −Σ_r lp_weight[r]·CE[r],  nll[s] = Σ_r nll_weight[r]·CE[r]
//   preference_loss       the loss, TRL's metrics (added to `stats`, times `scale`) and
//                         dlogp[s] = ∂(scale·loss)/∂logps[s]
//   preference_row_scale  row_scale[r] = scale·nll_weight[r] − dlogp[s(r)]·lp_weight[r]
//                         (scale here: the step's scale times the NLL's factor),
//                         the per-row factor of (softmax − onehot) in dlogits
//
// CE[r] = −log p(target of row r) from cross_entropy_forward (0 where ignored).
// DPO:  c = π_c − ref_c, r = π_r − ref_r, h = c − r; loss = α·NLL + mean Σ_k w_k·ℓ_k(c, r), each ℓ_k
//       by its code (dpo_term; sigmoid: −(1−ε)·logσ(β·h) − ε·logσ(−β·h)); α = rpo_alpha + the sft
//       terms' weights (0: no NLL term). Over the batch: aot's and aot_pair's ℓ on the k-th smallest
//       values (sort_order), bco_pair's on c, r against the running mean δ of the mean reward.
// CPO:  the same with c = π_c, r = π_r (no reference; SimPO: ℓ of β·h − γ), α = cpo_alpha
// ORPO: π are mean completion log-probs, lo = (π_c − π_r) − (log(1 − e^π_c) − log(1 − e^π_r)),
//       loss = NLL − β·mean logσ(lo)
// NLL = Σ_s nll[s] (its weights hold the 1/N of the mean).
// KTO:  rows 0..B the examples, B..2B their KL rows; kl = max(0, mean_KL(π − ref)) (no gradient);
//       loss = mean w·(1 − σ(z)), z = β(c − kl) desirable, β(kl − c) not, c = π − ref
//       (loss_type 1, apo_zero_unpaired: no KL rows (seqs = B), kl = 0)
// stats: [loss, rewards/chosen, rewards/rejected, rewards/accuracies, rewards/margins,
//         nll_loss, log_odds_ratio, log_odds_chosen, logps/chosen, logps/rejected] (log_odds_* ORPO's,
//         0 for DPO; logps/* the policy's π, the mean over the pairs);
//        KTO: [loss, rewards/chosen_sum, rewards/rejected_sum, kl, logps/chosen_sum,
//         logps/rejected_sum, count/chosen, count/rejected, 0, 0].
// Reward modelling (TRL's RewardTrainer, reward_loss below): policy_logps holds S = 2P scores instead,
//       the score head's at each sequence's last non-pad token, the P chosen then the P rejected;
//       kto_label holds the P margins m (0 without); with d = r_c − r_r − m,
//       loss = mean −logσ(d) + γ·mean (r_c + r_r)², γ = center_rewards_coefficient (in p.beta);
//       stats: [loss, accuracy (r_c > r_r), margin (r_c − r_r), min, mean and max of the S scores],
//       each times scale; dlogp[s] = ∂(scale·loss)/∂score[s].
// Prelude constant: WG, invocations per workgroup (a power of two); workgroup_reduce.wgsl precedes this file.

const DPO: u32 = 0u;
const ORPO: u32 = 1u;
const CPO: u32 = 2u;
const KTO: u32 = 3u;

// DPO's loss types (kernels::preference::DpoLossType::ALL's order).
const SIGMOID: u32 = 0u;
const ROBUST: u32 = 1u;
const EXO_PAIR: u32 = 2u;
const HINGE: u32 = 3u;
const IPO: u32 = 4u;
const SPPO_HARD: u32 = 5u;
const NCA_PAIR: u32 = 6u;
const APO_ZERO: u32 = 7u;
const APO_DOWN: u32 = 8u;
const DISCOPOP: u32 = 9u;
const SIMPO: u32 = 10u; // CPO's only
const AOT: u32 = 11u;
const AOT_PAIR: u32 = 12u;
const BCO_PAIR: u32 = 13u;
const SFT: u32 = 14u; // the NLL term: through nll_alpha, not here

// The most pairs aot and aot_pair sort (kernels::preference::MAX_SORTED_PAIRS).
const MAX_SORTED: u32 = 1024u;

struct Params {
    seqs: u32,
    rows_per_seq: u32,
    objective: u32,
    pairs: u32,
    beta: f32,
    label_smoothing: f32,
    scale: f32,
    nll_alpha: f32,
    loss_type: u32,
    discopop_tau: f32,
    simpo_gamma: f32,
    desirable_weight: f32,
    undesirable_weight: f32,
    reference_free: u32, // DPO: the loss without the reference (the rewards keep it)
    terms: u32,          // DPO: how many losses are summed
    alpha: f32,          // CPO: AlphaPO's α (0: off)
    f_divergence: u32,   // DPO: h of the losses of h alone; 0 c − r, 1 JS, 2 α-divergence
    f_alpha: f32,        // DPO: the α-divergence's α
    codes: vec4<u32>,    // DPO: each loss's code
    weights: vec4<f32>,  // DPO: each loss's weight
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> token_loss: array<f32>;       // (S·T')
@group(0) @binding(2) var<storage, read> lp_weight: array<f32>;        // (S·T')
@group(0) @binding(3) var<storage, read> nll_weight: array<f32>;       // (S·T')
@group(0) @binding(4) var<storage, read_write> logps: array<f32>;      // (S)
@group(0) @binding(5) var<storage, read_write> nll: array<f32>;        // (S)
@group(0) @binding(6) var<storage, read> policy_logps: array<f32>;     // (S)
@group(0) @binding(7) var<storage, read> ref_logps: array<f32>;        // (S), unused by ORPO
@group(0) @binding(8) var<storage, read> nll_in: array<f32>;           // (S)
@group(0) @binding(9) var<storage, read_write> stats: array<f32>;      // (12), added to; [10..12] are train::preference_loss's
@group(0) @binding(10) var<storage, read_write> dlogp: array<f32>;     // (S)
@group(0) @binding(11) var<storage, read> dlogp_in: array<f32>;        // (S)
@group(0) @binding(12) var<storage, read_write> row_scale: array<f32>; // (S·T')
@group(0) @binding(13) var<storage, read> kto_label: array<f32>;       // (S/2), KTO: 1 desirable, 0 not
@group(0) @binding(14) var<storage, read_write> running: array<f32>;   // (2) bco_pair: [mean, count]

// aot / aot_pair: the pairs in the order of their two sorted values.
var<workgroup> order_a: array<u32, MAX_SORTED>;
var<workgroup> order_b: array<u32, MAX_SORTED>;

@compute @workgroup_size(WG)
fn sequence_logps(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = flat_group(wid, nwg);
    if (s >= p.seqs) { return; }
    var lp = 0.0;
    var nl = 0.0;
    for (var i = lid; i < p.rows_per_seq; i += WG) {
        let r = s * p.rows_per_seq + i;
        let ce = token_loss[r];
        lp += lp_weight[r] * ce;
        nl += nll_weight[r] * ce;
    }
    let lp_sum = workgroup_sum(lid, lp);
    let nl_sum = workgroup_sum(lid, nl);
    if (lid == 0u) {
        logps[s] = -lp_sum;
        nll[s] = nl_sum;
    }
}

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}

// log1p(y) for y > −1, accurate near 0 (Kahan: log(u)·y/(u − 1) with u = 1 + y).
fn log1p(y: f32) -> f32 {
    let u = 1.0 + y;
    if (u == 1.0) { return y; }
    return log(u) * y / (u - 1.0);
}

// expm1(x), accurate near 0 (Kahan: (u − 1)·x/log(u) with u = eᵡ).
fn expm1(x: f32) -> f32 {
    let u = exp(x);
    if (u == 1.0) { return x; }
    let um1 = u - 1.0;
    if (um1 == -1.0) { return -1.0; }
    return um1 * x / log(u);
}

// log σ(x) = min(x, 0) − log1p(e^−|x|) (F.logsigmoid).
fn log_sigmoid(x: f32) -> f32 {
    return min(x, 0.0) - log1p(exp(-abs(x)));
}

// log(1 − eᵡ) for x < 0 (torch.log1p(−torch.exp(x)) in TRL), in the form accurate on each side of −ln 2.
fn log1m_exp(x: f32) -> f32 {
    if (x > -0.6931472) { return log(-expm1(x)); }
    return log1p(-exp(x));
}

// σ(x)·σ(−x) = σ'(x).
fn dsigmoid(x: f32) -> f32 {
    return sigmoid(x) * sigmoid(-x);
}

// DPO's ℓ(c, r) for the loss `code` and (∂ℓ/∂c, ∂ℓ/∂r): (loss, dc, dr).
fn dpo_term(code: u32, c: f32, r: f32) -> vec3<f32> {
    let beta = p.beta;
    // TRL's dpo_loss reads a zero ε as 1e-3 for EXO.
    let eps = select(p.label_smoothing, 1e-3, code == EXO_PAIR && p.label_smoothing == 0.0);
    let h = c - r;
    let z = beta * h;
    var l = 0.0;
    var dh = 0.0; // ∂ℓ/∂h, for the losses of h alone
    var dc = 0.0;
    var dr = 0.0;
    switch code {
        case ROBUST: {
            l = (-(1.0 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1.0 - 2.0 * eps);
            dh = beta * (-(1.0 - eps) * sigmoid(-z) - eps * sigmoid(z)) / (1.0 - 2.0 * eps);
        }
        case EXO_PAIR: {
            let a = log(1.0 - eps);
            let b = log(eps);
            l = sigmoid(z) * (log_sigmoid(z) - a) + sigmoid(-z) * (log_sigmoid(-z) - b);
            // σ(z)σ(−z)·(logσ(z) − logσ(−z) − a + b), logσ(z) − logσ(−z) = z
            dh = beta * dsigmoid(z) * (z - a + b);
        }
        case HINGE: {
            l = max(1.0 - z, 0.0);
            dh = select(0.0, -beta, 1.0 - z > 0.0);
        }
        case IPO: {
            let d = h - 1.0 / (2.0 * beta);
            l = d * d;
            dh = 2.0 * d;
        }
        case SPPO_HARD: {
            let a = c - 0.5 / beta;
            let b = r + 0.5 / beta;
            l = a * a + b * b;
            dc = 2.0 * a;
            dr = 2.0 * b;
        }
        case NCA_PAIR: {
            let zc = beta * c;
            let zr = beta * r;
            l = -log_sigmoid(zc) - 0.5 * log_sigmoid(-zc) - 0.5 * log_sigmoid(-zr);
            dc = beta * (-sigmoid(-zc) + 0.5 * sigmoid(zc));
            dr = beta * 0.5 * sigmoid(zr);
        }
        case APO_ZERO: {
            l = 1.0 - sigmoid(beta * c) + sigmoid(beta * r);
            dc = -beta * dsigmoid(beta * c);
            dr = beta * dsigmoid(beta * r);
        }
        case APO_DOWN: {
            l = sigmoid(beta * c) + 1.0 - sigmoid(z);
            dc = beta * (dsigmoid(beta * c) - dsigmoid(z));
            dr = beta * dsigmoid(z);
        }
        case DISCOPOP: {
            let tau = p.discopop_tau;
            let m = sigmoid(z / tau);
            let dm = m * (1.0 - m) / tau;
            let e = exp(-z);
            l = -log_sigmoid(z) * (1.0 - m) + e * m;
            dh = beta * (-sigmoid(-z) * (1.0 - m) + log_sigmoid(z) * dm - e * m + e * dm);
        }
        case SIMPO: {
            let zg = z - p.simpo_gamma;
            l = -(1.0 - eps) * log_sigmoid(zg) - eps * log_sigmoid(-zg);
            dh = beta * (-(1.0 - eps) * sigmoid(-zg) + eps * sigmoid(zg));
        }
        default: { // SIGMOID, and aot's and aot_pair's form on h = δ
            l = -(1.0 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z);
            dh = beta * (-(1.0 - eps) * sigmoid(-z) + eps * sigmoid(z));
        }
    }
    return vec3<f32>(l, dc + dh, dr - dh);
}

// The value pair i is sorted by: 0 its chosen log-ratio π_c − ref_c, 1 its
// rejected one, 2 the policy's π_c − π_r, 3 the reference's ref_c − ref_r.
fn sort_key(which: u32, i: u32) -> f32 {
    let c = i;
    let r = i + p.pairs;
    switch which {
        case 0u: { return policy_logps[c] - ref_logps[c]; }
        case 1u: { return policy_logps[r] - ref_logps[r]; }
        case 2u: { return policy_logps[c] - policy_logps[r]; }
        default: { return ref_logps[c] - ref_logps[r]; }
    }
}

// order_a (which_a) and order_b (which_b): order[k] = the pair with the k-th
// smallest value (ties in pair order), as torch.sort's values.
fn sort_order(which_a: u32, which_b: u32) {
    for (var i = 0u; i < p.pairs; i++) {
        let va = sort_key(which_a, i);
        let vb = sort_key(which_b, i);
        var ra = 0u;
        var rb = 0u;
        for (var j = 0u; j < p.pairs; j++) {
            let wa = sort_key(which_a, j);
            let wb = sort_key(which_b, j);
            ra += select(0u, 1u, wa < va || (wa == va && j < i));
            rb += select(0u, 1u, wb < vb || (wb == vb && j < i));
        }
        order_a[ra] = i;
        order_b[rb] = i;
    }
}

// One of DPO's losses (code, weight w) over the batch: w·Σ ℓ returned, w·∂ℓ
// (times `g` = scale / n) added into dlogp.
fn dpo_loss_sum(code: u32, w: f32, g: f32) -> f32 {
    let n = p.pairs;
    var total = 0.0;
    if (code == SFT) { return 0.0; }
    if (code == AOT || code == AOT_PAIR) {
        let aot = code == AOT;
        sort_order(select(0u, 2u, aot), select(1u, 3u, aot));
        for (var k = 0u; k < n; k++) {
            let a = order_a[k];
            let b = order_b[k];
            let delta = sort_key(select(0u, 2u, aot), a) - sort_key(select(1u, 3u, aot), b);
            let t = dpo_term(SIGMOID, delta, 0.0);
            total += t.x;
            let d = w * t.y * g;
            if (aot) { // δ = (π_c − π_r)[a] − (ref_c − ref_r)[b]: the policy's pair a alone
                dlogp[a] += d;
                dlogp[a + n] -= d;
            } else { // δ = c[a] − r[b]
                dlogp[a] += d;
                dlogp[b + n] -= d;
            }
        }
        return w * total;
    }
    if (code == BCO_PAIR) {
        // TRL's RunningMoments.update with the batch's mean reward (one value), then δ its mean.
        var x = 0.0;
        for (var s = 0u; s < 2u * n; s++) { x += p.beta * (policy_logps[s] - ref_logps[s]); }
        x /= f32(2u * n);
        let count = running[1] + 1.0;
        running[0] += (x - running[0]) / count;
        running[1] = count;
        let delta = running[0];
        for (var i = 0u; i < n; i++) {
            let zc = p.beta * (policy_logps[i] - ref_logps[i]) - delta;
            let zr = p.beta * (policy_logps[i + n] - ref_logps[i + n]) - delta;
            total += -log_sigmoid(zc) - log_sigmoid(-zr);
            dlogp[i] += w * -p.beta * sigmoid(-zc) * g;
            dlogp[i + n] += w * p.beta * sigmoid(zr) * g;
        }
        return w * total;
    }
    // (sppo_hard, nca_pair and discopop read the reference directly in TRL's dpo_loss: reference_free or not.)
    let direct = code == SPPO_HARD || code == NCA_PAIR || code == DISCOPOP;
    let in_loss = select(1.0, 0.0, p.reference_free != 0u && !direct);
    let of_h = code == SIGMOID || code == ROBUST || code == EXO_PAIR || code == HINGE || code == IPO;
    for (var i = 0u; i < n; i++) {
        let c = policy_logps[i] - in_loss * ref_logps[i];
        let r = policy_logps[i + n] - in_loss * ref_logps[i + n];
        if (of_h && p.f_divergence != 0u) {
            // The f-divergence's h and its slopes ∂h/∂c, ∂h/∂r; ℓ(h) through dpo_term(h, 0).
            let f = f_divergence_h(c, r);
            let t = dpo_term(code, f.x, 0.0);
            total += t.x;
            dlogp[i] += w * t.y * f.y * g;
            dlogp[i + n] += w * t.y * f.z * g;
            continue;
        }
        let t = dpo_term(code, c, r);
        total += t.x;
        dlogp[i] += w * t.y * g;
        dlogp[i + n] += w * t.z * g;
    }
    return w * total;
}

// TRL's cap_exp in f32: e^min(x, ln(f32::MAX)), its slope 0 where capped.
const EXP_CAP: f32 = 88.7228;

// (h, ∂h/∂c, ∂h/∂r) of DPO's f-divergence (p.f_divergence 1: JS, 2: α).
fn f_divergence_h(c: f32, r: f32) -> vec3<f32> {
    if (p.f_divergence == 1u) {
        // (c − r) − (softplus(c) − softplus(r)), softplus(x) = −logσ(−x)
        let h = (c - r) - (-log_sigmoid(-c) + log_sigmoid(-r));
        return vec3<f32>(h, sigmoid(-c), -sigmoid(-r));
    }
    let a = p.f_alpha;
    let ec = exp(min(-a * c, EXP_CAP));
    let er = exp(min(-a * r, EXP_CAP));
    let dc = select(ec, 0.0, -a * c > EXP_CAP);
    let dr = select(-er, 0.0, -a * r > EXP_CAP);
    return vec3<f32>((er - ec) / a, dc, dr);
}

// KTO: rows 0..B the examples, B..2B their KL rows (p.pairs = B); apo_zero_unpaired
// (loss_type 1): the B examples alone, kl 0 (its loss does not read it).
fn kto_loss() {
    let b = p.pairs;
    let n = f32(b);
    let beta = p.beta;
    var kl = 0.0;
    if (p.loss_type == 0u) {
        for (var i = 0u; i < b; i++) { kl += policy_logps[b + i] - ref_logps[b + i]; }
        kl = max(kl / n, 0.0);
    }
    var loss = 0.0;
    var sums = array<f32, 6>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0); // rewards c/r, logps c/r, counts c/r
    for (var i = 0u; i < b; i++) {
        let c = policy_logps[i] - ref_logps[i];
        let side = select(1u, 0u, kto_label[i] > 0.5); // 0 desirable, 1 not
        let z = select(beta * (kl - c), beta * (c - kl), side == 0u);
        let w = select(p.undesirable_weight, p.desirable_weight, side == 0u);
        loss += w * (1.0 - sigmoid(z));
        // ∂(1 − σ(z))/∂c = −σ'(z)·∂z/∂c, ∂z/∂c = ±β
        dlogp[i] = select(beta, -beta, side == 0u) * w * dsigmoid(z) * p.scale / n;
        if (p.seqs > b) { dlogp[b + i] = 0.0; }
        sums[side] += beta * c;
        sums[2u + side] += policy_logps[i];
        sums[4u + side] += 1.0;
    }
    let k = p.scale;
    stats[0] += loss / n * k;
    stats[1] += sums[0] * k;
    stats[2] += sums[1] * k;
    stats[3] += kl * k;
    stats[4] += sums[2] * k;
    stats[5] += sums[3] * k;
    stats[6] += sums[4] * k;
    stats[7] += sums[5] * k;
}

@compute @workgroup_size(WG)
fn preference_loss(@builtin(local_invocation_index) lid: u32) {
    if (lid != 0u) { return; }
    if (p.objective == KTO) {
        kto_loss();
        return;
    }
    let n = f32(p.pairs);
    let beta = p.beta;
    var loss = 0.0;
    var chosen = 0.0;
    var rejected = 0.0;
    var accuracies = 0.0;
    var ratio_sum = 0.0;
    var log_odds_sum = 0.0;
    var logps_chosen = 0.0;
    var logps_rejected = 0.0;
    if (p.objective == DPO) {
        for (var s = 0u; s < p.seqs; s++) { dlogp[s] = 0.0; }
        for (var k = 0u; k < p.terms; k++) {
            loss += dpo_loss_sum(p.codes[k], p.weights[k], p.scale / n);
        }
    }
    for (var i = 0u; i < p.pairs; i++) {
        let c = i;
        let r = i + p.pairs;
        logps_chosen += policy_logps[c];
        logps_rejected += policy_logps[r];
        if (p.objective == DPO) {
            // TRL's rewards: β·(π − ref) summed over the losses with their weights, in order.
            var hc = 0.0;
            var hr = 0.0;
            for (var k = 0u; k < p.terms; k++) {
                hc += beta * (policy_logps[c] - ref_logps[c]) * p.weights[k];
                hr += beta * (policy_logps[r] - ref_logps[r]) * p.weights[k];
            }
            chosen += hc;
            rejected += hr;
            accuracies += select(0.0, 1.0, hc > hr);
        } else if (p.objective == CPO) {
            // The policy's own log-probabilities, no reference; AlphaPO's reward (1 − p^−α)/α of p = e^π
            // where α ≠ 0, whose derivative is p^−α = e^(−απ) (TRL's cpo_loss takes exp, then pow: the same
            // where e^π does not underflow, which for sums of log-probs below −87 it does, and TRL's loss is inf).
            var hc = policy_logps[c];
            var hr = policy_logps[r];
            var gc = 1.0;
            var gr = 1.0;
            if (p.alpha != 0.0) {
                gc = exp(-p.alpha * hc);
                gr = exp(-p.alpha * hr);
                hc = (1.0 - gc) / p.alpha;
                hr = (1.0 - gr) / p.alpha;
            }
            let t = dpo_term(p.loss_type, hc, hr);
            loss += t.x;
            dlogp[c] = t.y * gc * p.scale / n;
            dlogp[r] = t.z * gr * p.scale / n;
            chosen += beta * hc;
            rejected += beta * hr;
            accuracies += select(0.0, 1.0, beta * hc > beta * hr);
        } else {
            let pc = policy_logps[c];
            let pr = policy_logps[r];
            let lo = (pc - pr) - (log1m_exp(pc) - log1m_exp(pr));
            let ratio = log_sigmoid(lo);
            loss += -beta * ratio;
            let dlo = -beta * sigmoid(-lo) * p.scale / n;
            dlogp[c] = dlo / -expm1(pc);
            dlogp[r] = -dlo / -expm1(pr);
            chosen += beta * pc;
            rejected += beta * pr;
            accuracies += select(0.0, 1.0, beta * pc > beta * pr);
            ratio_sum += ratio;
            log_odds_sum += lo;
        }
    }
    var nll_loss = 0.0;
    for (var s = 0u; s < p.seqs; s++) { nll_loss += nll_in[s]; }
    let k = p.scale;
    stats[0] += (p.nll_alpha * nll_loss + loss / n) * k;
    stats[1] += chosen / n * k;
    stats[2] += rejected / n * k;
    stats[3] += accuracies / n * k;
    stats[4] += (chosen - rejected) / n * k;
    stats[5] += nll_loss * k;
    stats[6] += ratio_sum / n * k;
    stats[7] += log_odds_sum / n * k;
    stats[8] += logps_chosen / n * k;
    stats[9] += logps_rejected / n * k;
}

@compute @workgroup_size(WG)
fn preference_row_scale(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let r = flat_group(wid, nwg) * WG + lid;
    if (r >= p.seqs * p.rows_per_seq) { return; }
    let s = r / p.rows_per_seq;
    row_scale[r] = p.scale * nll_weight[r] - dlogp_in[s] * lp_weight[r];
}

// TRL's RewardTrainer.compute_loss on one micro-batch of P pairs (the header's "Reward modelling").
@compute @workgroup_size(WG)
fn reward_loss(@builtin(local_invocation_index) lid: u32) {
    if (lid != 0u) { return; }
    let n = f32(p.pairs);
    let gamma = p.beta;
    let k = p.scale;
    var loss = 0.0;
    var center = 0.0;
    var accuracy = 0.0;
    var margin = 0.0;
    var low = policy_logps[0];
    var high = policy_logps[0];
    var total = 0.0;
    for (var i = 0u; i < p.pairs; i++) {
        let rc = policy_logps[i];
        let rr = policy_logps[i + p.pairs];
        let d = rc - rr - kto_label[i];
        loss += -log_sigmoid(d);
        let sum = rc + rr;
        center += sum * sum;
        // ∂/∂r_c of −logσ(d) is −σ(−d); of γ·(r_c + r_r)², 2γ·(r_c + r_r); each over the P pairs.
        let g = -sigmoid(-d);
        let c = 2.0 * gamma * sum;
        dlogp[i] = (g + c) * k / n;
        dlogp[i + p.pairs] = (c - g) * k / n;
        accuracy += select(0.0, 1.0, rc > rr);
        margin += rc - rr;
        low = min(low, min(rc, rr));
        high = max(high, max(rc, rr));
        total += sum;
    }
    stats[0] += (loss / n + gamma * center / n) * k;
    stats[1] += accuracy / n * k;
    stats[2] += margin / n * k;
    stats[3] += low * k;
    stats[4] += total / (2.0 * n) * k;
    stats[5] += high * k;
}
