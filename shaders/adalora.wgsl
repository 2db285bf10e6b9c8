// AdaLoRA (PEFT's `ADALORA`, peft/tuners/adalora/{layer,model}.py): the
// layer's scaled right factor, the orthogonality regulariser's small pieces
// and the rank allocator's importance, scores and budget mask. All f32; sums
// are workgroup reductions (WGSL has no float atomics).
//
//   scale_rows_forward    out = A ∘ E: out[i, j] = A[i, j] · E[i]
//   scale_rows_backward   one workgroup per row i: dA[i, j] += dout[i, j] · E[i];
//                         dE[i] += Σ_j dout[i, j] · A[i, j]
//   orth_norm             one workgroup: C = cov − I in place, f = ‖C‖_F into norms[slot],
//                         then C becomes the gradient coefficient 2·((w/n)/f)·C (0 where f = 0)
//   orth_loss             one invocation: loss[0] += w · ((Σ norms) / n), torch's order
//   update_importance     ipt = |p·g|; ipt_avg = β1·ipt_avg + (1−β1)·ipt;
//                         unc_avg = β2·unc_avg + (1−β2)·|ipt − ipt_avg|
//   update_importance_clipped   the same with g · clip[1] (clip_grad_norm_'s factor, left on the GPU)
//   triplet_scores        one workgroup per triplet i: s(E)[i] + (mean_j s(A)[i, j] + mean_k s(B)[k, i]),
//                         s(X) = ipt_avg(X) · unc_avg(X)
//   mask_to_budget        one invocation per score: keep[i] = 1 when at least k scores are
//                         below it (it is above the k-th smallest), else 0
//   apply_rank_mask       E[i] = 0 where keep[offset + i] is 0 (masked_fill_)
//
// Prelude constant: WG, invocations per workgroup (a power of two).
// workgroup_sum is in workgroup_reduce.wgsl, compiled before this file.

struct Params {
    rows: u32,       // r: rows of A, E, the covariance side
    cols: u32,       // in: columns of A; the element count of elementwise entries
    out: u32,        // out: rows of B
    offset: u32,     // first slot of scores / keep, the norm slot of orth_norm
    k: u32,          // mask_to_budget: the rank of the threshold (1-based)
    factors: u32,    // orth_loss: the number of factors n
    weight: f32,     // orth: the regulariser's weight
    count: f32,      // orth: n as f32
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// scale_rows_forward, scale_rows_backward
@group(0) @binding(1) var<storage, read> a: array<f32>;                // (r, in), lora_A
@group(0) @binding(2) var<storage, read> e: array<f32>;                // (r, 1), lora_E
@group(0) @binding(3) var<storage, read_write> scaled: array<f32>;     // (r, in), A ∘ E
@group(0) @binding(4) var<storage, read> dscaled: array<f32>;          // (r, in)
@group(0) @binding(5) var<storage, read_write> da: array<f32>;         // (r, in)
@group(0) @binding(6) var<storage, read_write> de: array<f32>;         // (r, 1)

// orth_norm, orth_loss
@group(0) @binding(7) var<storage, read_write> cov: array<f32>;        // (r, r): P·Pᵀ or Pᵀ·P in, the coefficient out
@group(0) @binding(8) var<storage, read_write> norms: array<f32>;      // (n): ‖cov − I‖_F of each factor
@group(0) @binding(9) var<storage, read> norms_in: array<f32>;         // (n)
@group(0) @binding(10) var<storage, read_write> loss: array<f32>;      // (1)

// update_importance, update_importance_clipped; `cols` holds the element count
@group(0) @binding(11) var<storage, read> param: array<f32>;           // (numel)
@group(0) @binding(12) var<storage, read> grad: array<f32>;            // (numel)
@group(0) @binding(13) var<storage, read> clip: array<f32>;            // (2): norm, clipping factor
@group(0) @binding(14) var<storage, read_write> ipt_avg: array<f32>;   // (numel), exp_avg_ipt
@group(0) @binding(15) var<storage, read_write> unc_avg: array<f32>;   // (numel), exp_avg_unc

// triplet_scores
@group(0) @binding(16) var<storage, read> ipt_a: array<f32>;           // (r, in)
@group(0) @binding(17) var<storage, read> unc_a: array<f32>;           // (r, in)
@group(0) @binding(18) var<storage, read> ipt_e: array<f32>;           // (r, 1)
@group(0) @binding(19) var<storage, read> unc_e: array<f32>;           // (r, 1)
@group(0) @binding(20) var<storage, read> ipt_b: array<f32>;           // (out, r)
@group(0) @binding(21) var<storage, read> unc_b: array<f32>;           // (out, r)
@group(0) @binding(22) var<storage, read_write> scores: array<f32>;    // (total), this module at offset .. offset + r

// mask_to_budget, apply_rank_mask; `cols` holds the score count n
@group(0) @binding(23) var<storage, read> scores_in: array<f32>;       // (n)
@group(0) @binding(24) var<storage, read_write> keep: array<f32>;      // (n): 1 kept, 0 pruned
@group(0) @binding(25) var<storage, read_write> e_masked: array<f32>;  // (r, 1), lora_E
@group(0) @binding(26) var<storage, read> keep_in: array<f32>;         // (n)

@compute @workgroup_size(WG)
fn scale_rows_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.rows * p.cols) { return; }
    scaled[i] = a[i] * e[i / p.cols];
}

@compute @workgroup_size(WG)
fn scale_rows_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; } // uniform: the whole workgroup leaves
    let base = row * p.cols;
    let scale = e[row];
    var acc = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let d = dscaled[base + j];
        da[base + j] += d * scale;
        acc += d * a[base + j];
    }
    let sum = workgroup_sum(lid, acc);
    if (lid == 0u) { de[row] += sum; }
}

@compute @workgroup_size(WG)
fn orth_norm(@builtin(local_invocation_index) lid: u32) {
    let r = p.rows;
    var acc = 0.0;
    for (var i = lid; i < r * r; i += WG) {
        let c = cov[i] - select(0.0, 1.0, i / r == i % r);
        acc += c * c;
    }
    let f = sqrt(workgroup_sum(lid, acc));
    if (lid == 0u) { norms[p.offset] = f; }
    // torch: ∂loss/∂f = (w/n) in f32; the norm's backward scales C by that / f
    // (0 where f = 0); P·Pᵀ's backward takes C twice (C is symmetric).
    let coef = select(0.0, 2.0 * ((p.weight / p.count) / f), f > 0.0);
    for (var i = lid; i < r * r; i += WG) {
        cov[i] = (cov[i] - select(0.0, 1.0, i / r == i % r)) * coef;
    }
}

@compute @workgroup_size(1)
fn orth_loss() {
    // regu_loss = Σ norms in order; / num_param; · orth_reg_weight; outputs.loss +=.
    var sum = 0.0;
    for (var i = 0u; i < p.factors; i++) { sum += norms_in[i]; }
    loss[0] = loss[0] + p.weight * (sum / p.count);
}

fn importance(i: u32, g: f32) {
    let ipt = abs(param[i] * g);
    let avg = p.beta1 * ipt_avg[i] + p.one_minus_beta1 * ipt;
    ipt_avg[i] = avg;
    unc_avg[i] = p.beta2 * unc_avg[i] + p.one_minus_beta2 * abs(ipt - avg);
}

@compute @workgroup_size(WG)
fn update_importance(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.cols) { return; }
    importance(i, grad[i]);
}

@compute @workgroup_size(WG)
fn update_importance_clipped(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.cols) { return; }
    importance(i, grad[i] * clip[1]);
}

@compute @workgroup_size(WG)
fn triplet_scores(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; } // uniform: the whole workgroup leaves
    var acc_a = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let at = row * p.cols + j;
        acc_a += ipt_a[at] * unc_a[at];
    }
    var acc_b = 0.0;
    for (var k = lid; k < p.out; k += WG) {
        let at = k * p.rows + row;
        acc_b += ipt_b[at] * unc_b[at];
    }
    let sum_a = workgroup_sum(lid, acc_a);
    let sum_b = workgroup_sum(lid, acc_b);
    if (lid == 0u) {
        scores[p.offset + row] = ipt_e[row] * unc_e[row] + (sum_a / f32(p.cols) + sum_b / f32(p.out));
    }
}

@compute @workgroup_size(WG)
fn mask_to_budget(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.cols) { return; }
    // s > t (the k-th smallest) exactly when at least k scores are below s:
    // the k smallest are all ≤ t < s, and fewer than k lie below t.
    let s = scores_in[i];
    var below = 0u;
    for (var j = 0u; j < p.cols; j++) {
        below += select(0u, 1u, scores_in[j] < s);
    }
    keep[i] = select(0.0, 1.0, below >= p.k);
}

@compute @workgroup_size(WG)
fn apply_rank_mask(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.rows) { return; }
    // masked_fill_: a pruned value becomes +0 whatever it held (no −0, no NaN·0).
    if (keep_in[p.offset + i] == 0.0) { e_masked[i] = 0.0; }
}
