// Softmax cross-entropy over the vocabulary, one workgroup per row of logits.
//
//   cross_entropy_forward           lse = logsumexp(row), loss = lse − logits[target]
//   cross_entropy_backward          dlogits = (exp(logits − lse) − onehot(target)) · scale
//   cross_entropy_backward_inplace  the same, overwriting the logits (saves a (rows, vocab) buffer)
//   cross_entropy_backward_rows_inplace  the same with a scale per row (preference losses)
//   cross_entropy_entropy           entropy = lse − Σ_i softmax_i·logits_i, the softmax's entropy
//                                   (GRPO's metric), 0 on ignored rows
//   cross_entropy_dft               DFT's weights (TRL's SFT loss_type "dft"): p = exp(−loss), the
//                                   target's probability; loss ← p·loss, row_scale_out = p·scale
//   cross_entropy_metrics           SFT's metrics per row: (weights.x · entropy, weights.y · hit), hit 1
//                                   where the target is the row's first largest logit (torch.argmax's pick)
//
// The forward saves lse (rows) for the backward. Rows whose target is −100
// (ignored) get loss 0 and a zero gradient row. A target outside 0..vocab
// cannot be reported from the GPU: its loss is NaN (so the mean shows it)
// and its gradient row zero.
//
// Rows are long (vocab up to 128k): each invocation keeps a running
// (max, Σ exp(x − max)) over its strided share of the row, and the pairs are
// merged in workgroup memory (workgroup_logsumexp, in workgroup_reduce.wgsl,
// which is compiled before this file).
// Prelude constant: WG, invocations per row (a power of two).

const IGNORE_INDEX: i32 = -100;
const LOWEST: f32 = -0x1.fffffep+127f;  // the lowest finite f32, exactly (Tint rejects an inexact decimal)

struct Params {
    rows: u32,
    vocab: u32,
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;         // (rows, vocab)
@group(0) @binding(2) var<storage, read> targets: array<i32>;        // (rows)
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;     // (rows)
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;      // (rows), saved for backward
@group(0) @binding(5) var<storage, read> lse_in: array<f32>;         // (rows), from the forward
@group(0) @binding(6) var<storage, read_write> dlogits: array<f32>;  // (rows, vocab)
@group(0) @binding(7) var<storage, read_write> logits_io: array<f32>; // (rows, vocab): logits in, dlogits out
@group(0) @binding(8) var<storage, read> row_scale: array<f32>;      // (rows)
@group(0) @binding(9) var<storage, read_write> entropy: array<f32>;  // (rows)
@group(0) @binding(10) var<storage, read> weights: array<vec2<f32>>;       // (rows, 2): entropy's, hit's
@group(0) @binding(11) var<storage, read_write> metrics: array<vec2<f32>>; // (rows, 2)
@group(0) @binding(12) var<storage, read_write> row_scale_out: array<f32>;  // (rows)

fn nan() -> f32 {
    var bits = 0x7fc00000u;  // a runtime value: NaN is not allowed as a constant
    return bitcast<f32>(bits);
}

// The target's column, or −1 for an ignored or invalid target.
fn target_column(row: u32) -> i32 {
    let t = targets[row];
    if (t < 0 || u32(t) >= p.vocab) { return -1; }
    return t;
}

@compute @workgroup_size(WG)
fn cross_entropy_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.vocab;
    var m = LOWEST;
    var s = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = logits[base + i];
        if (v > m) {
            s = s * exp(m - v) + 1.0;
            m = v;
        } else {
            s += exp(v - m);
        }
    }
    let row_lse = workgroup_logsumexp(lid, m, s);
    if (lid == 0u) {
        lse[row] = row_lse;
        let t = targets[row];
        let column = target_column(row);
        if (t == IGNORE_INDEX) {
            loss[row] = 0.0;
        } else if (column < 0) {
            loss[row] = nan();
        } else {
            loss[row] = row_lse - logits[base + u32(column)];
        }
    }
}

// d(loss)/d(logit i) of a row: (softmax_i − onehot_i) · scale, 0 for an ignored row (column < 0).
fn dlogit(logit: f32, i: u32, column: i32, row_lse: f32, scale: f32) -> f32 {
    if (column < 0) { return 0.0; }
    let onehot = select(0.0, 1.0, i == u32(column));
    return (exp(logit - row_lse) - onehot) * scale;
}

@compute @workgroup_size(WG)
fn cross_entropy_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.vocab;
    let column = target_column(row);
    let row_lse = lse_in[row];
    for (var i = lid; i < p.vocab; i += WG) {
        dlogits[base + i] = dlogit(logits[base + i], i, column, row_lse, p.scale);
    }
}

@compute @workgroup_size(WG)
fn cross_entropy_backward_inplace(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.vocab;
    let column = target_column(row);
    let row_lse = lse_in[row];
    for (var i = lid; i < p.vocab; i += WG) {
        logits_io[base + i] = dlogit(logits_io[base + i], i, column, row_lse, p.scale);
    }
}

@compute @workgroup_size(WG)
fn cross_entropy_backward_rows_inplace(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.vocab;
    let column = target_column(row);
    let row_lse = lse_in[row];
    let scale = row_scale[row];
    for (var i = lid; i < p.vocab; i += WG) {
        logits_io[base + i] = dlogit(logits_io[base + i], i, column, row_lse, scale);
    }
}

@compute @workgroup_size(WG)
fn cross_entropy_entropy(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    if (target_column(row) < 0) {  // uniform per workgroup: every invocation returns
        if (lid == 0u) { entropy[row] = 0.0; }
        return;
    }
    let base = row * p.vocab;
    let row_lse = lse_in[row];
    var s = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = logits[base + i];
        s += exp(v - row_lse) * v;
    }
    let total = workgroup_sum(lid, s);
    if (lid == 0u) {
        entropy[row] = row_lse - total;
    }
}

// The target is argmax's pick when no logit beats it: none larger, none as
// large at a lower index. The count of those is exact in f32 (vocab < 2²⁴).
// A NaN logit is no hit's concern: the row's loss is NaN and the step fails.
@compute @workgroup_size(WG)
fn cross_entropy_metrics(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.vocab;
    let row_lse = lse_in[row];
    let column = target_column(row);
    let at = u32(max(column, 0));
    let target_logit = logits[base + at];
    var s = 0.0;
    var ahead = 0.0;
    for (var i = lid; i < p.vocab; i += WG) {
        let v = logits[base + i];
        s += exp(v - row_lse) * v;
        if (v > target_logit || (v == target_logit && i < at)) { ahead += 1.0; }
    }
    let total = workgroup_sum(lid, s);
    let beaten = workgroup_sum(lid, ahead);
    if (lid == 0u) {
        let w = weights[row];
        let hit = select(0.0, w.y, column >= 0 && beaten == 0.0);
        metrics[row] = vec2<f32>(select(0.0, w.x * (row_lse - total), w.x != 0.0), hit);
    }
}

// DFT (Wu et al. 2025): each token's cross-entropy weighted by its target's
// probability, held constant in the backward: loss = −sg(p)·log p, so its
// gradient is the cross-entropy's times p. An ignored row's loss is 0, so
// its p is 1 and its weighted loss 0 (its gradient row is zero anyway).
@compute @workgroup_size(WG)
fn cross_entropy_dft(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows || lid != 0u) { return; }
    let ce = loss[row];
    let prob = exp(-ce);
    loss[row] = prob * ce;
    row_scale_out[row] = prob * p.scale;
}
