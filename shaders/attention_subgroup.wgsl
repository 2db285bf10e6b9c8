// Subgroup variants of the attention kernels. This file is appended to
// attention.wgsl (its Params, bindings, tiles and helpers) and subgroup.wgsl,
// and compiled as its own module: subgroup operations need Features::SUBGROUP,
// which the browser never has.
//
// Native only, chosen at launch when the adapter's subgroups are exactly 8
// lanes wide (lavapipe on a 256-bit CPU). There a lane is one SIMD lane and
// every load from a per-lane address is a loop over the 8 lanes, so the
// portable kernels spend their time loading the rows every lane needs. Here a
// workgroup is one 8-lane subgroup whose lanes need the same rows: each lane
// loads an eighth of a row and `spread8` (a register shuffle there) hands the
// pieces to the others, an eighth of a load per vec4 used.
//
// The forward and dq: a subgroup holds G query heads of one kv group at 8 · P
// consecutive positions, lane l the usual query tile at positions
// i0 + l·P .. i0 + l·P + P. The dkv kernel: a subgroup holds 8 · PK key rows,
// lane l the tile j0 + l·PK .. j0 + l·PK + PK. No lane leaves early (a
// broadcast needs them all): lanes past the end keep zero rows, are masked,
// and store nothing.

// Each lane loads the pieces s · 8 + lane (s < S8) of a row, the last vec4
// again past D4, and spread_row hands every lane the whole row.
const S8: u32 = (D4 + 7u) / 8u;

fn piece(s: u32, lane: u32) -> u32 { return min(s * 8u + lane, D4 - 1u); }

fn spread_row(own_in: array<vec4<f32>, S8>) -> array<vec4<f32>, D4> {
    var own = own_in;  // a var: naga copies a value array at every dynamic index
    var x: array<vec4<f32>, D4>;
    for (var s = 0u; s < S8; s++) {
        let all = spread8(own[s]);
        for (var l = 0u; l < 8u; l++) { if (s * 8u + l < D4) { x[s * 8u + l] = all[l]; } }
    }
    return x;
}

// Row `a` (D4 vec4s from vec4 index a) of k, v, q or dout, the same in every lane.
fn k_row_sg(a: u32, lane: u32) -> array<vec4<f32>, D4> { var x: array<vec4<f32>, S8>; for (var s = 0u; s < S8; s++) { x[s] = k[a + piece(s, lane)]; } return spread_row(x); }
fn v_row_sg(a: u32, lane: u32) -> array<vec4<f32>, D4> { var x: array<vec4<f32>, S8>; for (var s = 0u; s < S8; s++) { x[s] = v[a + piece(s, lane)]; } return spread_row(x); }
fn q_row_sg(a: u32, lane: u32) -> array<vec4<f32>, D4> { var x: array<vec4<f32>, S8>; for (var s = 0u; s < S8; s++) { x[s] = q[a + piece(s, lane)]; } return spread_row(x); }
fn dout_row_sg(a: u32, lane: u32) -> array<vec4<f32>, D4> { var x: array<vec4<f32>, S8>; for (var s = 0u; s < S8; s++) { x[s] = dout[a + piece(s, lane)]; } return spread_row(x); }

fn query_subgroups() -> u32 { return p.batch * (p.hq / G) * ((p.tq + 8u * P - 1u) / (8u * P)); }

// The first position of subgroup `index`.
fn subgroup_i0(index: u32) -> u32 { return index / (p.hq / G * p.batch) * 8u * P; }

// The last key any lane of subgroup `index` reads: the same in every lane, so
// the key loop runs in subgroup-uniform control flow, as a broadcast must.
fn subgroup_last(index: u32) -> u32 { return p.offset + min(subgroup_i0(index) + 8u * P, p.tq) - 1u; }

// Subgroup `index`'s lane `lane` tile; `last` is the subgroup's.
fn query_tile_sg(index: u32, lane: u32) -> QueryTile {
    let chunks = p.hq / G;
    let h0 = (index % chunks) * G;
    let i0 = subgroup_i0(index) + lane * P;
    let np = select(0u, min(P, p.tq - min(i0, p.tq)), i0 < p.tq);
    return QueryTile((index / chunks) % p.batch, h0, h0 / (p.hq / p.hkv), i0, np, subgroup_last(index));
}

@compute @workgroup_size(8)
fn attention_forward_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let index = flat_group(wid, nwg);
    if (index >= query_subgroups()) { return; }
    let t = query_tile_sg(index, lane);
    var qr: array<vec4<f32>, R * D4>;  // rows past tq stay 0 and are never stored
    for (var n = 0u; n < R; n++) {
        if (n >= G * t.np) { break; }
        let w = tile_row(t, n);
        let qa = q_at(t.b, w.i, w.h);
        for (var d = 0u; d < D4; d++) {
            let x = q[qa + d];
            for (var r = 0u; r < R; r++) { qr[r * D4 + d] = select(qr[r * D4 + d], x, r == w.r); }
        }
    }
    var acc: array<vec4<f32>, R * D4>;
    var m: array<f32, R>;
    var l: array<f32, R>;
    for (var r = 0u; r < R; r++) { m[r] = LOWEST; }
    let last = subgroup_last(index);
    for (var j = 0u; j <= last; j++) {
        let ka = kv_at(t.b, j, t.kvh);
        let kj = k_row_sg(ka, lane);
        var s = array<f32, R>();
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { s[r] += dot(qr[r * D4 + d], kj[d]); }
        }
        var c = array<f32, R>();
        for (var r = 0u; r < R; r++) {
            let seen = j <= row_pos(t, r);
            let sr = s[r] * p.scale;
            let mx = select(m[r], max(m[r], sr), seen);
            c[r] = exp(m[r] - mx);
            s[r] = select(0.0, exp(sr - mx), seen);
            l[r] = l[r] * c[r] + s[r];
            m[r] = mx;
        }
        let vj = v_row_sg(ka, lane);
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { acc[r * D4 + d] = acc[r * D4 + d] * c[r] + s[r] * vj[d]; }
        }
    }
    for (var n = 0u; n < R; n++) {
        if (n >= G * t.np) { break; }
        let w = tile_row(t, n);
        var ln = 0.0;
        var mn = 0.0;
        for (var r = 0u; r < R; r++) {
            ln = select(ln, l[r], r == w.r);
            mn = select(mn, m[r], r == w.r);
        }
        let qa = q_at(t.b, w.i, w.h);
        for (var d = 0u; d < D4; d++) {
            var x = vec4(0.0);
            for (var r = 0u; r < R; r++) { x = select(x, acc[r * D4 + d], r == w.r); }
            out[qa + d] = x / ln;
        }
        lse[row_at(t.b, w.h, w.i)] = mn + log(ln);
    }
}

@compute @workgroup_size(8)
fn attention_backward_dq_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let index = flat_group(wid, nwg);
    if (index >= query_subgroups()) { return; }
    let t = query_tile_sg(index, lane);
    var qr: array<vec4<f32>, R * D4>;  // rows past tq stay 0 (so dS = 0) and are never stored
    var dor: array<vec4<f32>, R * D4>;
    var row_delta: array<f32, R>;
    var row_lse: array<f32, R>;
    for (var n = 0u; n < R; n++) {
        if (n >= G * t.np) { break; }
        let w = tile_row(t, n);
        let qa = q_at(t.b, w.i, w.h);
        for (var d = 0u; d < D4; d++) {
            let x = q[qa + d];
            for (var r = 0u; r < R; r++) { qr[r * D4 + d] = select(qr[r * D4 + d], x, r == w.r); }
        }
        var dl = 0.0;
        for (var d = 0u; d < D4; d++) {
            let x = dout[qa + d];
            dl += dot(x, o[qa + d]);
            for (var r = 0u; r < R; r++) { dor[r * D4 + d] = select(dor[r * D4 + d], x, r == w.r); }
        }
        let row = row_at(t.b, w.h, w.i);
        delta[row] = dl;
        let e = lse_in[row];
        for (var r = 0u; r < R; r++) {
            row_delta[r] = select(row_delta[r], dl, r == w.r);
            row_lse[r] = select(row_lse[r], e, r == w.r);
        }
    }
    var dqr: array<vec4<f32>, R * D4>;
    let last = subgroup_last(index);
    for (var j = 0u; j <= last; j++) {
        let ka = kv_at(t.b, j, t.kvh);
        let kj = k_row_sg(ka, lane);
        var s = array<f32, R>();
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { s[r] += dot(qr[r * D4 + d], kj[d]); }
        }
        let vj = v_row_sg(ka, lane);
        var dp = array<f32, R>();
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { dp[r] += dot(dor[r * D4 + d], vj[d]); }
        }
        for (var r = 0u; r < R; r++) {
            let prob = exp(s[r] * p.scale - row_lse[r]);
            s[r] = select(0.0, prob * (dp[r] - row_delta[r]) * p.scale, j <= row_pos(t, r));  // dS
        }
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { dqr[r * D4 + d] += s[r] * kj[d]; }
        }
    }
    for (var n = 0u; n < R; n++) {
        if (n >= G * t.np) { break; }
        let w = tile_row(t, n);
        let qa = q_at(t.b, w.i, w.h);
        for (var d = 0u; d < D4; d++) {
            var x = vec4(0.0);
            for (var r = 0u; r < R; r++) { x = select(x, dqr[r * D4 + d], r == w.r); }
            dq[qa + d] = x;
        }
    }
}

@compute @workgroup_size(8)
fn attention_backward_dkv_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let index = flat_group(wid, nwg);
    if (index >= p.batch * p.hkv * ((p.tkv + 8u * PK - 1u) / (8u * PK))) { return; }
    let kvh = index % p.hkv;
    let b = (index / p.hkv) % p.batch;
    let s0 = index / (p.hkv * p.batch) * 8u * PK;  // the subgroup's first key
    let j0 = s0 + lane * PK;
    let nk = select(0u, min(PK, p.tkv - min(j0, p.tkv)), j0 < p.tkv);
    var kr: array<vec4<f32>, PK * D4>;  // rows past tkv stay 0, are masked and never stored
    var vr: array<vec4<f32>, PK * D4>;
    for (var n = 0u; n < PK; n++) {
        if (n >= nk) { break; }
        let ka = kv_at(b, j0 + n, kvh);
        for (var d = 0u; d < D4; d++) {
            let x = k[ka + d];
            for (var u = 0u; u < PK; u++) { kr[u * D4 + d] = select(kr[u * D4 + d], x, u == n); }
        }
        for (var d = 0u; d < D4; d++) {
            let x = v[ka + d];
            for (var u = 0u; u < PK; u++) { vr[u * D4 + d] = select(vr[u * D4 + d], x, u == n); }
        }
    }
    var dkr: array<vec4<f32>, PK * D4>;
    var dvr: array<vec4<f32>, PK * D4>;
    let group = p.hq / p.hkv;
    let first = select(0u, s0 - p.offset, s0 > p.offset);  // the first query any lane's keys see
    for (var g = 0u; g < group; g++) {
        let h = kvh * group + g;
        for (var i = first; i < p.tq; i++) {
            let qa = q_at(b, i, h);
            let row = row_at(b, h, i);
            let qi = q_row_sg(qa, lane);
            var s = array<f32, PK>();
            for (var d = 0u; d < D4; d++) {
                for (var u = 0u; u < PK; u++) { s[u] += dot(qi[d], kr[u * D4 + d]); }
            }
            let doi = dout_row_sg(qa, lane);
            var dp = array<f32, PK>();
            for (var d = 0u; d < D4; d++) {
                for (var u = 0u; u < PK; u++) { dp[u] += dot(doi[d], vr[u * D4 + d]); }
            }
            let row_lse = lse_in[row];
            let row_delta = delta_in[row];
            for (var u = 0u; u < PK; u++) {
                let prob = select(0.0, exp(s[u] * p.scale - row_lse), j0 + u <= p.offset + i);
                s[u] = prob;
                dp[u] = prob * (dp[u] - row_delta) * p.scale;  // dS
            }
            for (var d = 0u; d < D4; d++) {
                for (var u = 0u; u < PK; u++) { dvr[u * D4 + d] += s[u] * doi[d]; }
            }
            for (var d = 0u; d < D4; d++) {
                for (var u = 0u; u < PK; u++) { dkr[u * D4 + d] += dp[u] * qi[d]; }
            }
        }
    }
    for (var n = 0u; n < PK; n++) {
        if (n >= nk) { break; }
        let ka = kv_at(b, j0 + n, kvh);
        for (var d = 0u; d < D4; d++) {
            var x = vec4(0.0);
            for (var u = 0u; u < PK; u++) { x = select(x, dkr[u * D4 + d], u == n); }
            dk[ka + d] = x;
        }
        for (var d = 0u; d < D4; d++) {
            var x = vec4(0.0);
            for (var u = 0u; u < PK; u++) { x = select(x, dvr[u * D4 + d], u == n); }
            dv[ka + d] = x;
        }
    }
}
