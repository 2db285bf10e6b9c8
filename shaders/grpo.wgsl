// GRPO's per-token loss at μ = 1 (TRL's GRPOTrainer._compute_loss with
// num_iterations 1: the importance ratio is exactly 1, and only its gradient,
// that of log π, flows; the clipping never binds), over the M rows of one
// micro-batch:
//
//   lp[r]  = −token_loss[r]                 log π(target of row r) at temperature T
//   ref[r] = −ref_loss[r]                   the reference's (β > 0)
//   kl[r]  = e^(ref[r] − lp[r]) − (ref[r] − lp[r]) − 1
//   stats[0] += Σ_r weight[r]·(β·kl[r] − adv[r])      the loss
//   stats[1] += Σ_{r: weight[r] > 0} kl[r]            for the kl metric (a masked mean)
//   stats[2] += Σ_{r: weight[r] > 0} entropy[r]       for the entropy metric
//   row_scale[r] = weight[r]·(adv[r] + β·(e^(ref[r] − lp[r]) − 1)) / T
//
// row_scale is the factor of (softmax(z/T) − onehot) in ∂loss/∂z, z the
// logits (cross_entropy_backward_rows_inplace on z/T, then / T); weight is
// the loss type's normaliser on completion rows, 0 elsewhere. One workgroup
// strides over the rows and reduces the sums (workgroup_reduce.wgsl precedes
// this file). Prelude constant: WG, invocations per workgroup (a power of two).

struct Params {
    rows: u32,
    beta: f32,
    inv_temperature: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> token_loss: array<f32>;     // (M)
@group(0) @binding(2) var<storage, read> ref_loss: array<f32>;       // (M), token_loss itself when β = 0
@group(0) @binding(3) var<storage, read> weight: array<f32>;         // (M)
@group(0) @binding(4) var<storage, read> adv: array<f32>;            // (M), each row's sequence's advantage
@group(0) @binding(5) var<storage, read_write> row_scale: array<f32>; // (M)
@group(0) @binding(6) var<storage, read_write> stats: array<f32>;    // (3), added to
@group(0) @binding(7) var<storage, read> entropy: array<f32>;        // (M)

@compute @workgroup_size(WG)
fn grpo_row_scale(@builtin(local_invocation_index) lid: u32) {
    var loss = 0.0;
    var kl_sum = 0.0;
    var entropy_sum = 0.0;
    for (var r = lid; r < p.rows; r += WG) {
        let w = weight[r];
        if (w == 0.0) {
            row_scale[r] = 0.0;
            continue;
        }
        var ratio = 1.0;  // e^(ref − lp)
        var kl = 0.0;
        if (p.beta != 0.0) {
            let d = token_loss[r] - ref_loss[r];  // ref − lp
            ratio = exp(d);
            kl = ratio - d - 1.0;
        }
        loss += w * (p.beta * kl - adv[r]);
        kl_sum += kl;
        entropy_sum += entropy[r];
        row_scale[r] = w * (adv[r] + p.beta * (ratio - 1.0)) * p.inv_temperature;
    }
    let total_loss = workgroup_sum(lid, loss);
    let total_kl = workgroup_sum(lid, kl_sum);
    let total_entropy = workgroup_sum(lid, entropy_sum);
    if (lid == 0u) {
        stats[0] += total_loss;
        stats[1] += total_kl;
        stats[2] += total_entropy;
    }
}
