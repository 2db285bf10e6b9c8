// GRPO's per-token loss (TRL's GRPOTrainer._compute_loss) and RLOO's per-sequence one (its
// RLOOTrainer's, rloo_sequence_scale below), over the M = B·T
// rows of one micro-batch (B completions of T rows each):
//
//   lp[r]  = −token_loss[r]                 log π(target of row r) at temperature T
//   old[r] = −old_loss[r]                   log π_old, the policy that sampled the completions
//                                           (token_loss itself at one iteration: ratio 1)
//   ref[r] = −ref_loss[r]                   the reference's (β > 0)
//   s      = lp − old                       per token (importance_sampling_level "token"), or
//                                           per completion: Σ_mask (lp − old) / |mask| ("sequence", GSPO)
//   c1 = e^s,  c2 = clamp(c1, 1 − ε_low, 1 + ε_high),  c1' = min(c1, δ) (two-sided, δ > 0)
//   ℓ[r]   = −min(c1'·A, c2·A) + β·kl,  kl = e^(ref − lp) − (ref − lp) − 1
//   stats[0] += Σ_r weight[r]·ℓ[r]                    the loss
//   stats[1..6] += share × the micro-batch's means (TRL logs a step's metrics as the mean over its
//                 micro-batches of each one's mean; share = 1 / micro-batches): kl and entropy over
//                 the tokens with weight > 0; low-clipped, high-clipped, either (c1 < 1 − ε_low with
//                 A < 0; c1 > 1 + ε_high with A > 0) over those tokens (token level) or over the
//                 completions (sequence level)
//   top_entropy_quantile ρ < 1 (masks_entropy): the policy term −min(…) is kept only on the
//   tokens whose entropy is ≥ torch.quantile(entropies of the weighted rows, 1 − ρ) (TRL's
//   get_high_entropy_mask, "Beyond the 80/20 rule"); β's KL and the clip counts keep every token.
//   grpo_entropy_order finds the two order statistics that quantile interpolates between.
//   row_scale[r] = (∂Σ_r' weight[r']·ℓ[r'] / ∂lp[r]) negated, / T:
//     token:    weight[r]·(kept[r]·∂min/∂s + β·(e^(ref − lp) − 1)) / T
//     sequence: (W·∂min/∂s / |mask| + weight[r]·β·(e^(ref − lp) − 1)) / T on the mask,
//               W = Σ weight·kept over the completion (every token's lp moves the ratio)
//
// ∂min/∂s follows torch: each clamp passes c1·A inside its bounds (inclusive)
// and 0 outside; min's gradient goes to the smaller term, half to each on a tie.
// row_scale is the factor of (softmax(z/T) − onehot) in ∂loss/∂z, z the logits
// (cross_entropy_backward_rows_inplace on z/T, then / T); weight is the loss
// type's normaliser on completion rows (the mask), 0 elsewhere. One workgroup
// strides over the rows and reduces the sums (workgroup_reduce.wgsl precedes
// this file). Prelude constant: WG, invocations per workgroup (a power of two).

struct Params {
    rows: u32,
    beta: f32,
    inv_temperature: f32,
    epsilon_low: f32,
    epsilon_high: f32,
    delta: f32,     // 0: no upper clip of c1
    seq_len: u32,   // T: rows a completion (the sequence-level entry)
    masks_entropy: u32,  // 1: keep the policy term only on high-entropy tokens (ρ < 1)
    quantile: f32,  // 1 − ρ, the quantile of the weighted rows' entropies kept from
    share: f32,     // 1 / the step's micro-batches: this one's share of the metrics' mean
    sequence_weight: f32,  // RLOO: each completion's share of the loss, 1 / (B·K)
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> token_loss: array<f32>;     // (M)
@group(0) @binding(2) var<storage, read> ref_loss: array<f32>;       // (M), token_loss itself when β = 0
@group(0) @binding(3) var<storage, read> weight: array<f32>;         // (M)
@group(0) @binding(4) var<storage, read> adv: array<f32>;            // (M), each row's completion's advantage
@group(0) @binding(5) var<storage, read_write> row_scale: array<f32>; // (M)
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;    // (6), added to
@group(0) @binding(7) var<storage, read> entropy: array<f32>;        // (M)
@group(0) @binding(8) var<storage, read> old_loss: array<f32>;       // (M), token_loss itself at one iteration
// (3): the order statistics below and above the quantile's rank and its interpolation weight
// (grpo_entropy_order writes them; the loss entries read them when masks_entropy = 1).
@group(0) @binding(9) var<storage, read_write> order: array<f32>;

// For ratio c1 and advantage a: (min(c1'·a, c2·a), ∂min/∂s, low-clipped, high-clipped).
fn clipped(c1: f32, a: f32) -> vec4<f32> {
    let lo = 1.0 - p.epsilon_low;
    let hi = 1.0 + p.epsilon_high;
    let c2 = clamp(c1, lo, hi);
    var c1d = c1;
    var pass1 = 1.0;
    if (p.delta > 0.0) {
        c1d = min(c1, p.delta);
        pass1 = select(0.0, 1.0, c1 <= p.delta);
    }
    let pass2 = select(0.0, 1.0, c1 >= lo && c1 <= hi);
    let l1 = c1d * a;
    let l2 = c2 * a;
    let g1 = a * c1 * pass1;
    let g2 = a * c1 * pass2;
    var dmin = 0.5 * (g1 + g2);
    if (l1 < l2) { dmin = g1; }
    if (l2 < l1) { dmin = g2; }
    let is_low = select(0.0, 1.0, c1 < lo && a < 0.0);
    let is_high = select(0.0, 1.0, c1 > hi && a > 0.0);
    return vec4<f32>(min(l1, l2), dmin, is_low, is_high);
}

// The entropy below which the policy term is dropped: torch.quantile's linear
// interpolation (torch.lerp's two forms, by the weight's side of 0.5); −1 (no
// entropy is below 0) when masks_entropy = 0.
fn entropy_threshold() -> f32 {
    if (p.masks_entropy == 0u) {
        return -1.0;
    }
    let lo = order[0];
    let hi = order[1];
    let w = order[2];
    if (w < 0.5) {
        return lo + w * (hi - lo);
    }
    return hi - (hi - lo) * (1.0 - w);
}

// 1 where row r's policy term counts, 0 where its entropy is below the threshold.
fn kept(r: u32, threshold: f32) -> f32 {
    return select(0.0, 1.0, entropy[r] >= threshold);
}

// β's KL of row r and its factor e^(ref − lp) − 1.
fn kl_terms(r: u32) -> vec2<f32> {
    if (p.beta == 0.0) {
        return vec2<f32>(0.0, 0.0);
    }
    let d = token_loss[r] - ref_loss[r];  // ref − lp
    let ratio = exp(d);
    return vec2<f32>(ratio - d - 1.0, ratio - 1.0);
}

// stats[0] += the workgroup's sum of the loss (v.x); stats[1..6] += share × the means of
// [kl, entropy] (v.yz) over the `tokens` weighted rows and of the three clip counts over
// `clipped_of` (tokens or completions); 0 / 0 counts 0, as TRL's clamp(min=1) makes it.
fn add_stats(lid: u32, v: vec3<f32>, clips: vec3<f32>, tokens: f32, by_completion: bool) {
    let totals = array<f32, 6>(
        workgroup_sum(lid, v.x),
        workgroup_sum(lid, v.y),
        workgroup_sum(lid, v.z),
        workgroup_sum(lid, clips.x),
        workgroup_sum(lid, clips.y),
        workgroup_sum(lid, clips.z),
    );
    let token_count = max(workgroup_sum(lid, tokens), 1.0);
    let clipped_of = select(token_count, f32(p.rows / p.seq_len), by_completion);
    if (lid == 0u) {
        stats[0] += totals[0];
        stats[1] += totals[1] / token_count * p.share;
        stats[2] += totals[2] / token_count * p.share;
        for (var i = 3u; i < 6u; i++) {
            stats[i] += totals[i] / clipped_of * p.share;
        }
    }
}

@compute @workgroup_size(WG)
fn grpo_row_scale(@builtin(local_invocation_index) lid: u32) {
    var sums = vec3<f32>(0.0);    // loss, kl, entropy
    var clips = vec3<f32>(0.0);   // low, high, either
    var tokens = 0.0;
    let threshold = entropy_threshold();
    for (var r = lid; r < p.rows; r += WG) {
        let w = weight[r];
        if (w == 0.0) {
            row_scale[r] = 0.0;
            continue;
        }
        tokens += 1.0;
        let c = clipped(exp(old_loss[r] - token_loss[r]), adv[r]);  // e^(lp − old)
        let k = kl_terms(r);
        let m = kept(r, threshold);
        sums += vec3<f32>(w * (p.beta * k.x - m * c.x), k.x, entropy[r]);
        clips += vec3<f32>(c.z, c.w, max(c.z, c.w));
        row_scale[r] = w * (m * c.y + p.beta * k.y) * p.inv_temperature;
    }
    add_stats(lid, sums, clips, tokens, false);
}

// GSPO: one ratio a completion, the mean of its tokens' log-ratios.
@compute @workgroup_size(WG)
fn grpo_sequence_scale(@builtin(local_invocation_index) lid: u32) {
    var sums = vec3<f32>(0.0);
    var clips = vec3<f32>(0.0);
    var tokens = 0.0;
    let completions = p.rows / p.seq_len;
    let threshold = entropy_threshold();
    for (var s = 0u; s < completions; s++) {
        let first = s * p.seq_len;
        var part = vec3<f32>(0.0);  // Σ (lp − old), |mask|, W
        for (var t = lid; t < p.seq_len; t += WG) {
            let r = first + t;
            if (weight[r] != 0.0) {
                part += vec3<f32>(old_loss[r] - token_loss[r], 1.0, weight[r] * kept(r, threshold));
            }
        }
        let log_ratio = workgroup_sum(lid, part.x);
        let count = max(workgroup_sum(lid, part.y), 1.0);
        let total_weight = workgroup_sum(lid, part.z);
        let c = clipped(exp(log_ratio / count), adv[first]);
        if (lid == 0u) {
            clips += vec3<f32>(c.z, c.w, max(c.z, c.w));
        }
        let shared_scale = total_weight * c.y / count;
        for (var t = lid; t < p.seq_len; t += WG) {
            let r = first + t;
            let w = weight[r];
            if (w == 0.0) {
                row_scale[r] = 0.0;
                continue;
            }
            tokens += 1.0;
            let k = kl_terms(r);
            sums += vec3<f32>(w * (p.beta * k.x - kept(r, threshold) * c.x), k.x, entropy[r]);
            row_scale[r] = (shared_scale + w * p.beta * k.y) * p.inv_temperature;
        }
    }
    add_stats(lid, sums, clips, tokens, true);
}

// RLOO (TRL's RLOOTrainer._compute_loss): one ratio a completion, e^(Σ_mask (lp − old)), the
// sum of its tokens' log-ratios (not GSPO's mean), and each completion's loss −min(c1·A, c2·A)
// weighed by sequence_weight = 1 / (B·K) whether or not a token of it counts (one masked whole
// has ratio 1 and adds −A·sequence_weight). β's KL is in RLOO's rewards, not here (p.beta = 0).
//   row_scale[r] = sequence_weight·∂min/∂s / T on the mask (each token's lp moves the ratio alike)
// The clip ratios are over the B completions; the entropy over the masked rows.
@compute @workgroup_size(WG)
fn rloo_sequence_scale(@builtin(local_invocation_index) lid: u32) {
    var sums = vec3<f32>(0.0);   // loss, 0 (no KL), entropy
    var clips = vec3<f32>(0.0);
    var tokens = 0.0;
    let completions = p.rows / p.seq_len;
    for (var s = 0u; s < completions; s++) {
        let first = s * p.seq_len;
        var part = 0.0;
        for (var t = lid; t < p.seq_len; t += WG) {
            let r = first + t;
            if (weight[r] != 0.0) {
                part += old_loss[r] - token_loss[r];
            }
        }
        let c = clipped(exp(workgroup_sum(lid, part)), adv[first]);
        if (lid == 0u) {
            clips += vec3<f32>(c.z, c.w, max(c.z, c.w));
            sums.x -= p.sequence_weight * c.x;
        }
        let scale = p.sequence_weight * c.y * p.inv_temperature;
        for (var t = lid; t < p.seq_len; t += WG) {
            let r = first + t;
            if (weight[r] == 0.0) {
                row_scale[r] = 0.0;
                continue;
            }
            tokens += 1.0;
            sums.z += entropy[r];
            row_scale[r] = scale;
        }
    }
    add_stats(lid, sums, clips, tokens, true);
}

var<workgroup> tile: array<vec2<f32>, WG>;  // a tile's (entropy, 1 if weighted else 0)

// torch.quantile's order statistics of the n weighted rows' entropies, over
// ⌈M / WG⌉ workgroups, a row an invocation: rank = q·(n − 1) in f32, and the
// rows whose place in sorted order (ties by row) is ⌊rank⌋ and ⌈rank⌉ write
// order[0] and order[1]; the first of them writes rank − ⌊rank⌋ to order[2].
// Each invocation counts n and its row's place over every row, a tile at a time.
@compute @workgroup_size(WG)
fn grpo_entropy_order(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = gid.x;
    var mine = 0.0;
    var weighted = false;
    if (i < p.rows) {
        mine = entropy[i];
        weighted = weight[i] != 0.0;
    }
    var n = 0u;
    var place = 0u;
    for (var start = 0u; start < p.rows; start += WG) {
        let j = start + lid;
        var e = vec2<f32>(0.0);
        if (j < p.rows) {
            e = vec2<f32>(entropy[j], select(0.0, 1.0, weight[j] != 0.0));
        }
        tile[lid] = e;
        workgroupBarrier();
        let count = min(WG, p.rows - start);
        for (var k = 0u; k < count; k++) {
            let t = tile[k];
            if (t.y != 0.0) {
                n += 1u;
                let before = t.x < mine || (t.x == mine && start + k < i);
                place += select(0u, 1u, before);
            }
        }
        workgroupBarrier();
    }
    if (!weighted) {
        return;
    }
    let rank = p.quantile * f32(n - 1u);
    let below = u32(rank);
    let above = u32(ceil(rank));
    if (place == below) {
        order[0] = mine;
        order[2] = rank - f32(below);
    }
    if (place == above) {
        order[1] = mine;
    }
}
