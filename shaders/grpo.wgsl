// GRPO's per-token loss (TRL's GRPOTrainer._compute_loss, token-level
// importance sampling), over the M rows of one micro-batch:
//
//   lp[r]  = −token_loss[r]                 log π(target of row r) at temperature T
//   old[r] = −old_loss[r]                   log π_old, the policy that sampled the completions
//                                           (token_loss itself at one iteration: ratio 1)
//   ref[r] = −ref_loss[r]                   the reference's (β > 0)
//   c1 = e^(lp − old),  c2 = clamp(c1, 1 − ε_low, 1 + ε_high),  c1' = min(c1, δ) (two-sided, δ > 0)
//   ℓ[r]   = −min(c1'·A, c2·A) + β·kl,  kl = e^(ref − lp) − (ref − lp) − 1
//   stats[0] += Σ_r weight[r]·ℓ[r]                    the loss
//   stats[1] += Σ_{weight > 0} kl, stats[2] += Σ_{weight > 0} entropy,
//   stats[3..6] += Σ_{weight > 0} [low-clipped], [high-clipped], [either]
//                 (c1 < 1 − ε_low with A < 0; c1 > 1 + ε_high with A > 0)
//   row_scale[r] = weight[r]·(∂min/∂lp + β·(e^(ref − lp) − 1)) / T
//
// ∂min/∂lp follows torch: each clamp passes c1·A inside its bounds (inclusive)
// and 0 outside; min's gradient goes to the smaller term, half to each on a tie.
// row_scale is the factor of (softmax(z/T) − onehot) in ∂loss/∂z, z the logits
// (cross_entropy_backward_rows_inplace on z/T, then / T); weight is the loss
// type's normaliser on completion rows, 0 elsewhere. One workgroup strides over
// the rows and reduces the sums (workgroup_reduce.wgsl precedes this file).
// Prelude constant: WG, invocations per workgroup (a power of two).

struct Params {
    rows: u32,
    beta: f32,
    inv_temperature: f32,
    epsilon_low: f32,
    epsilon_high: f32,
    delta: f32,  // 0: no upper clip of c1
    _pad: vec2<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> token_loss: array<f32>;     // (M)
@group(0) @binding(2) var<storage, read> ref_loss: array<f32>;       // (M), token_loss itself when β = 0
@group(0) @binding(3) var<storage, read> weight: array<f32>;         // (M)
@group(0) @binding(4) var<storage, read> adv: array<f32>;            // (M), each row's sequence's advantage
@group(0) @binding(5) var<storage, read_write> row_scale: array<f32>; // (M)
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;    // (6), added to
@group(0) @binding(7) var<storage, read> entropy: array<f32>;        // (M)
@group(0) @binding(8) var<storage, read> old_loss: array<f32>;       // (M), token_loss itself at one iteration

@compute @workgroup_size(WG)
fn grpo_row_scale(@builtin(local_invocation_index) lid: u32) {
    var loss = 0.0;
    var kl_sum = 0.0;
    var entropy_sum = 0.0;
    var low = 0.0;
    var high = 0.0;
    var region = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        let w = weight[r];
        if (w == 0.0) {
            row_scale[r] = 0.0;
            continue;
        }
        let a = adv[r];
        let c1 = exp(old_loss[r] - token_loss[r]);  // e^(lp − old)
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
        var ratio = 1.0;  // e^(ref − lp)
        var kl = 0.0;
        if (p.beta != 0.0) {
            let d = token_loss[r] - ref_loss[r];  // ref − lp
            ratio = exp(d);
            kl = ratio - d - 1.0;
        }
        loss += w * (p.beta * kl - min(l1, l2));
        kl_sum += kl;
        entropy_sum += entropy[r];
        let is_low = c1 < lo && a < 0.0;
        let is_high = c1 > hi && a > 0.0;
        low += select(0.0, 1.0, is_low);
        high += select(0.0, 1.0, is_high);
        region += select(0.0, 1.0, is_low || is_high);
        row_scale[r] = w * (dmin + p.beta * (ratio - 1.0)) * p.inv_temperature;
    }
    let totals = array<f32, 6>(
        workgroup_sum(lid, loss),
        workgroup_sum(lid, kl_sum),
        workgroup_sum(lid, entropy_sum),
        workgroup_sum(lid, low),
        workgroup_sum(lid, high),
        workgroup_sum(lid, region),
    );
    if (lid == 0u) {
        for (var i = 0u; i < 6u; i++) {
            stats[i] += totals[i];
        }
    }
}
