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
    load_query_rows(t, &qr);
    var acc: array<vec4<f32>, R * D4>;
    var m: array<f32, R>;
    var l: array<f32, R>;
    for (var r = 0u; r < R; r++) { m[r] = LOWEST; }
    let last = subgroup_last(index);
    for (var j = query_start(t.b, min(subgroup_i0(index), p.tq - 1u)); j <= last; j++) {  // lane 0's first row starts first
        let ka = kv_at(t.b, j, t.kvh);
        let kj = k_row_sg(ka, lane);
        var s = array<f32, R>();
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { s[r] += dot(qr[r * D4 + d], kj[d]); }
        }
        var c = array<f32, R>();
        online_softmax_step(t, j, &s, &c, &m, &l);
        let vj = v_row_sg(ka, lane);
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { acc[r * D4 + d] = acc[r * D4 + d] * c[r] + s[r] * vj[d]; }
        }
    }
    store_forward(t, &acc, &m, &l);
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
    load_dq_rows(t, &qr, &dor, &row_delta, &row_lse);
    var dqr: array<vec4<f32>, R * D4>;
    let last = subgroup_last(index);
    for (var j = query_start(t.b, min(subgroup_i0(index), p.tq - 1u)); j <= last; j++) {  // lane 0's first row starts first
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
        dq_scores(t, j, &s, &dp, &row_delta, &row_lse);
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { dqr[r * D4 + d] += s[r] * kj[d]; }
        }
    }
    store_dq(t, &dqr);
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
    load_key_rows(b, j0, nk, kvh, &kr, &vr);
    var dkr: array<vec4<f32>, PK * D4>;
    var dvr: array<vec4<f32>, PK * D4>;
    let group = p.hq / p.hkv;
    let first = select(0u, s0 - p.offset, s0 > p.offset);  // the first query any lane's keys see
    for (var g = 0u; g < group; g++) {
        let h = kvh * group + g;
        for (var i = first; i < p.tq; i++) {
            let start = query_start(b, i);
            if (start >= s0 + 8u * PK) { break; }  // after every lane's keys: the same in every lane
            let qa = q_at(b, i, h);
            let row = row_at(b, h, i);
            var qi = q_row_sg(qa, lane);
            var s = array<f32, PK>();
            for (var d = 0u; d < D4; d++) {
                for (var u = 0u; u < PK; u++) { s[u] += dot(qi[d], kr[u * D4 + d]); }
            }
            var doi = dout_row_sg(qa, lane);
            var dp = array<f32, PK>();
            for (var d = 0u; d < D4; d++) {
                for (var u = 0u; u < PK; u++) { dp[u] += dot(doi[d], vr[u * D4 + d]); }
            }
            dkv_accumulate(j0, i, row, start, &qi, &doi, &s, &dp, &dkr, &dvr);
        }
    }
    store_key_rows(b, j0, nk, kvh, &dkr, &dvr);
}
