// Causal self-attention with grouped-query heads, transformers' eager
// semantics in f32: query head h reads kv head h / (hq / hkv), and
//
//   out_i = Σ_{j ≤ pos(i)} P_ij v_j,   P_ij = softmax_j(q_i·k_j · scale),   pos(i) = offset + i
//
// The forward keeps no (T, T) matrix: it saves the logsumexp of each query
// row's scores, lse (batch, hq, tq), and the backward recomputes
// P_ij = exp(q_i·k_j·scale − lse_i) (as FlashAttention-2 does):
//
//   delta_i = dout_i · out_i                         (= Σ_j P_ij dP_ij)
//   dP_ij   = dout_i · v_j,   dS_ij = P_ij (dP_ij − delta_i) · scale
//   dq_i    = Σ_j dS_ij k_j
//   dk_j    = Σ_{h in group} Σ_i dS_ij q_i,   dv_j = Σ_{h in group} Σ_i P_ij dout_i
//
// No float atomics: attention_backward_dq gives each invocation one query row
// (and writes delta), attention_backward_dkv gives each one key row, looping
// over the query heads of its group and the queries that see it.
//
// k and v have tkv rows per batch: the sequence itself in training (tkv = tq,
// offset 0), or a KV cache (tkv = its capacity) when generating: the queries
// are then positions offset .. offset + tq and read keys 0 ..= their position.
//
// One invocation per query row, online softmax in registers. Prelude
// constants: D (head_dim, sizes the register arrays), WG.

const LOWEST: f32 = -0x1.fffffep+127f;  // the lowest finite f32, exactly (Tint rejects an inexact decimal)

struct Params {
    batch: u32,
    tq: u32,      // query positions
    tkv: u32,     // rows of k and v per batch
    hq: u32,      // query heads
    hkv: u32,     // kv heads
    offset: u32,  // position of query 0
    scale: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;            // (batch, tq, hq, D)
@group(0) @binding(2) var<storage, read> k: array<f32>;            // (batch, tkv, hkv, D)
@group(0) @binding(3) var<storage, read> v: array<f32>;            // (batch, tkv, hkv, D)
@group(0) @binding(4) var<storage, read_write> out: array<f32>;    // (batch, tq, hq, D)
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;    // (batch, hq, tq), saved for backward
@group(0) @binding(6) var<storage, read> o: array<f32>;            // (batch, tq, hq, D), the forward's out
@group(0) @binding(7) var<storage, read> dout: array<f32>;         // (batch, tq, hq, D)
@group(0) @binding(8) var<storage, read> lse_in: array<f32>;       // (batch, hq, tq)
@group(0) @binding(9) var<storage, read_write> dq: array<f32>;     // (batch, tq, hq, D)
@group(0) @binding(10) var<storage, read_write> delta: array<f32>; // (batch, hq, tq)
@group(0) @binding(11) var<storage, read> delta_in: array<f32>;    // (batch, hq, tq)
@group(0) @binding(12) var<storage, read_write> dk: array<f32>;    // (batch, tkv, hkv, D)
@group(0) @binding(13) var<storage, read_write> dv: array<f32>;    // (batch, tkv, hkv, D)

fn q_at(b: u32, i: u32, h: u32) -> u32 { return ((b * p.tq + i) * p.hq + h) * D; }
fn kv_at(b: u32, j: u32, kvh: u32) -> u32 { return ((b * p.tkv + j) * p.hkv + kvh) * D; }
fn row_at(b: u32, h: u32, i: u32) -> u32 { return (b * p.hq + h) * p.tq + i; }

// Query row `index` as (b, h, i), i fastest: neighbouring invocations read the same keys.
fn query_row(index: u32) -> vec3<u32> {
    return vec3(index / (p.tq * p.hq), (index / p.tq) % p.hq, index % p.tq);
}

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg) * WG + lid;
    if (index >= p.batch * p.hq * p.tq) { return; }
    let r = query_row(index);
    let b = r.x; let h = r.y; let i = r.z;
    let kvh = h / (p.hq / p.hkv);
    let qa = q_at(b, i, h);
    var qr: array<f32, D>;
    for (var d = 0u; d < D; d++) { qr[d] = q[qa + d]; }
    var acc: array<f32, D>;
    var m = LOWEST;  // running max of the scores
    var l = 0.0;     // running Σ exp(s − m)
    for (var j = 0u; j <= p.offset + i; j++) {
        let ka = kv_at(b, j, kvh);
        var dot = 0.0;
        for (var d = 0u; d < D; d++) { dot += qr[d] * k[ka + d]; }
        let s = dot * p.scale;
        if (s > m) {
            let c = exp(m - s);
            l = l * c;
            for (var d = 0u; d < D; d++) { acc[d] = acc[d] * c; }
            m = s;
        }
        let e = exp(s - m);
        l += e;
        for (var d = 0u; d < D; d++) { acc[d] += e * v[ka + d]; }
    }
    for (var d = 0u; d < D; d++) { out[qa + d] = acc[d] / l; }
    lse[row_at(b, h, i)] = m + log(l);
}

@compute @workgroup_size(WG)
fn attention_backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg) * WG + lid;
    if (index >= p.batch * p.hq * p.tq) { return; }
    let r = query_row(index);
    let b = r.x; let h = r.y; let i = r.z;
    let kvh = h / (p.hq / p.hkv);
    let qa = q_at(b, i, h);
    var qr: array<f32, D>;
    var dor: array<f32, D>;
    var row_delta = 0.0;
    for (var d = 0u; d < D; d++) {
        qr[d] = q[qa + d];
        dor[d] = dout[qa + d];
        row_delta += dor[d] * o[qa + d];
    }
    let row = row_at(b, h, i);
    delta[row] = row_delta;
    let row_lse = lse_in[row];
    var dqr: array<f32, D>;
    for (var j = 0u; j <= p.offset + i; j++) {
        let ka = kv_at(b, j, kvh);
        var s = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < D; d++) {
            s += qr[d] * k[ka + d];
            dp += dor[d] * v[ka + d];
        }
        let prob = exp(s * p.scale - row_lse);
        let ds = prob * (dp - row_delta) * p.scale;
        for (var d = 0u; d < D; d++) { dqr[d] += ds * k[ka + d]; }
    }
    for (var d = 0u; d < D; d++) { dq[qa + d] = dqr[d]; }
}

@compute @workgroup_size(WG)
fn attention_backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg) * WG + lid;
    if (index >= p.batch * p.hkv * p.tkv) { return; }
    let j = index % p.tkv;
    let kvh = (index / p.tkv) % p.hkv;
    let b = index / (p.tkv * p.hkv);
    let ka = kv_at(b, j, kvh);
    var kr: array<f32, D>;
    var vr: array<f32, D>;
    for (var d = 0u; d < D; d++) {
        kr[d] = k[ka + d];
        vr[d] = v[ka + d];
    }
    var dkr: array<f32, D>;
    var dvr: array<f32, D>;
    let group = p.hq / p.hkv;
    // Queries at positions ≥ j see key j: i ≥ j − offset.
    let first = select(0u, j - p.offset, j > p.offset);
    for (var g = 0u; g < group; g++) {
        let h = kvh * group + g;
        for (var i = first; i < p.tq; i++) {
            let qa = q_at(b, i, h);
            let row = row_at(b, h, i);
            var s = 0.0;
            var dp = 0.0;
            for (var d = 0u; d < D; d++) {
                s += q[qa + d] * kr[d];
                dp += dout[qa + d] * vr[d];
            }
            let prob = exp(s * p.scale - lse_in[row]);
            let ds = prob * (dp - delta_in[row]) * p.scale;
            for (var d = 0u; d < D; d++) {
                dvr[d] += prob * dout[qa + d];
                dkr[d] += ds * q[qa + d];
            }
        }
    }
    for (var d = 0u; d < D; d++) {
        dk[ka + d] = dkr[d];
        dv[ka + d] = dvr[d];
    }
}
