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
// No float atomics: attention_backward_dq gives each invocation a tile of
// query rows (and writes their delta), attention_backward_dkv a tile of key
// rows, looping over the query heads of its group and the queries that see them.
//
// Packed rows (attention_segments.wgsl): several examples share a row and each query sees
// only its own example's keys, block-diagonal causal: query i reads keys
// starts[b, i] ..= i, where starts (batch, tq) holds the position at which
// its example begins (non-decreasing along the row, ≤ i). The key loops begin
// at the tile's first start, and dkv stops at the first query whose example
// begins after the tile's keys. Unpacked rows start every query at 0 and
// nothing else changes.
//
// k and v have tkv rows per batch: the sequence itself in training (tkv = tq,
// offset 0), or a KV cache (tkv = its capacity) when generating: the queries
// are then positions offset .. offset + tq and read keys 0 ..= their position.
//
// Register tiling: every k and v row an invocation loads serves all the query
// rows of its tile (every q and dout row all the key rows, in dkv), and every
// load is a vec4, so head_dim must be a multiple of 4 (the launcher zero-pads
// other head dims with attention_repad). A query tile is G query heads of one
// kv group × P consecutive positions; the invocations side by side (a CPU's
// SIMD lanes, a GPU's subgroup) hold tiles of the same positions for other
// (batch, heads), so they run the same number of keys. A tile's rows past tq
// (key rows past tkv) stay zero, are masked and are never stored.
// attention_subgroup.wgsl has native variants where 8 lanes share each row.
//
// Prelude constants: D4 (head_dim / 4), G (query heads per tile, dividing
// hq / hkv), P (query positions per tile), PK (key rows per dkv tile), WG.
// `query_start` comes from attention_rows.wgsl (every start 0) or, for packed
// rows, attention_segments.wgsl (which binds starts: a ninth storage buffer,
// so unpacked launches stay within WebGPU's default of 8 per stage).

const LOWEST: f32 = -0x1.fffffep+127f;  // the lowest finite f32, exactly (Tint rejects an inexact decimal)
const R: u32 = G * P;                    // query rows per tile, row r = head h0 + r / P at position i0 + r % P

struct Params {
    batch: u32,
    tq: u32,      // query positions
    tkv: u32,     // rows of k and v per batch
    hq: u32,      // query heads
    hkv: u32,     // kv heads
    offset: u32,  // position of query 0
    scale: f32,
    parts: u32,   // parts of each key block's dk and dv work (attention_flash.wgsl's split dkv)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;            // (batch, tq, hq, D)
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;            // (batch, tkv, hkv, D)
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;            // (batch, tkv, hkv, D)
@group(0) @binding(4) var<storage, read_write> out: array<vec4<f32>>;    // (batch, tq, hq, D)
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;          // (batch, hq, tq), saved for backward
@group(0) @binding(6) var<storage, read> o: array<vec4<f32>>;            // (batch, tq, hq, D), the forward's out
@group(0) @binding(7) var<storage, read> dout: array<vec4<f32>>;         // (batch, tq, hq, D)
@group(0) @binding(8) var<storage, read> lse_in: array<f32>;             // (batch, hq, tq)
@group(0) @binding(9) var<storage, read_write> dq: array<vec4<f32>>;     // (batch, tq, hq, D)
@group(0) @binding(10) var<storage, read_write> delta: array<f32>;       // (batch, hq, tq)
@group(0) @binding(11) var<storage, read> delta_in: array<f32>;          // (batch, hq, tq)
@group(0) @binding(12) var<storage, read_write> dk: array<vec4<f32>>;    // (batch, tkv, hkv, D)
@group(0) @binding(13) var<storage, read_write> dv: array<vec4<f32>>;    // (batch, tkv, hkv, D)
@group(0) @binding(14) var<storage, read> src: array<f32>;               // (batch, tq): attention_repad
@group(0) @binding(15) var<storage, read_write> dst: array<f32>;         // (batch, tkv)

// In vec4s.
fn q_at(b: u32, i: u32, h: u32) -> u32 { return ((b * p.tq + i) * p.hq + h) * D4; }
fn kv_at(b: u32, j: u32, kvh: u32) -> u32 { return ((b * p.tkv + j) * p.hkv + kvh) * D4; }
fn row_at(b: u32, h: u32, i: u32) -> u32 { return (b * p.hq + h) * p.tq + i; }

struct QueryTile {
    b: u32,
    h0: u32,   // first of its G query heads
    kvh: u32,
    i0: u32,   // first of its P positions
    np: u32,   // of which np are before tq
    last: u32, // the last key any of its rows reads
}

fn query_tiles() -> u32 { return p.batch * (p.hq / G) * ((p.tq + P - 1u) / P); }

// Tile `index`, (batch, head chunk) fastest.
fn query_tile(index: u32) -> QueryTile {
    let chunks = p.hq / G;
    let h0 = (index % chunks) * G;
    let i0 = index / (chunks * p.batch) * P;
    let np = min(P, p.tq - i0);
    return QueryTile((index / chunks) % p.batch, h0, h0 / (p.hq / p.hkv), i0, np, p.offset + i0 + np - 1u);
}

// The n-th of a tile's G · np rows: its register row r = g · P + position,
// its query head and its position.
struct TileRow { r: u32, h: u32, i: u32 }

fn tile_row(t: QueryTile, n: u32) -> TileRow {
    let g = n / t.np;
    return TileRow(g * P + n % t.np, t.h0 + g, t.i0 + n % t.np);
}

// The position register row r masks keys with: rows past tq take the last one.
fn row_pos(t: QueryTile, r: u32) -> u32 { return p.offset + min(t.i0 + r % P, p.tq - 1u); }

// The first key register row r sees (rows past tq: the last row's).
fn row_start(t: QueryTile, r: u32) -> u32 { return query_start(t.b, min(t.i0 + r % P, p.tq - 1u)); }

// Arrays declared inside a loop are initialised explicitly (`= array<…>()`):
// WGSL zeroes them at every iteration, but Chromium's compiler on SwiftShader
// kept the previous iteration's values (the demo's browser-vs-native adapter
// test caught it).
//
// Compile size matters on lavapipe (a CPU driver: every load or store of a
// per-invocation address is a loop over the SIMD lanes), so rows go in and out
// of the register arrays through one load or store loop that picks its row
// with select, and every loop nest indexing a register array does one vec4 op
// per (row, vec4) so that the compiler unrolls it (R · D4 ≤ 64, see the launcher).

// The pieces below are shared with attention_subgroup.wgsl, whose kernels
// differ only in how a k, v, q or dout row reaches every lane. Register
// arrays pass by pointer (a value array would be copied at every dynamic index).

// The tile's query rows into qr.
fn load_query_rows(t: QueryTile, qr: ptr<function, array<vec4<f32>, R * D4>>) {
    for (var n = 0u; n < R; n++) {
        if (n >= G * t.np) { break; }
        let w = tile_row(t, n);
        let qa = q_at(t.b, w.i, w.h);
        for (var d = 0u; d < D4; d++) {
            let x = q[qa + d];
            for (var r = 0u; r < R; r++) { (*qr)[r * D4 + d] = select((*qr)[r * D4 + d], x, r == w.r); }
        }
    }
}

// One key of the online softmax: the scores s (q·k_j) become the weights of
// v_j, e = exp(s · scale − m_new), with c = exp(m_old − m_new) the rescale of
// the sums so far; a key past the row's position gets e = 0 and leaves m alone.
fn online_softmax_step(
    t: QueryTile,
    j: u32,
    s: ptr<function, array<f32, R>>,
    c: ptr<function, array<f32, R>>,
    m: ptr<function, array<f32, R>>,
    l: ptr<function, array<f32, R>>,
) {
    for (var r = 0u; r < R; r++) {
        let seen = j <= row_pos(t, r) && j >= row_start(t, r);
        let sr = (*s)[r] * p.scale;
        let mx = select((*m)[r], max((*m)[r], sr), seen);
        (*c)[r] = exp((*m)[r] - mx);
        (*s)[r] = select(0.0, exp(sr - mx), seen);
        (*l)[r] = (*l)[r] * (*c)[r] + (*s)[r];
        (*m)[r] = mx;
    }
}

// The tile's rows of out (acc / l) and lse (m + log l).
fn store_forward(
    t: QueryTile,
    acc: ptr<function, array<vec4<f32>, R * D4>>,
    m: ptr<function, array<f32, R>>,
    l: ptr<function, array<f32, R>>,
) {
    for (var n = 0u; n < R; n++) {
        if (n >= G * t.np) { break; }
        let w = tile_row(t, n);
        var ln = 0.0;
        var mn = 0.0;
        for (var r = 0u; r < R; r++) {
            ln = select(ln, (*l)[r], r == w.r);
            mn = select(mn, (*m)[r], r == w.r);
        }
        let qa = q_at(t.b, w.i, w.h);
        for (var d = 0u; d < D4; d++) {
            var x = vec4(0.0);
            for (var r = 0u; r < R; r++) { x = select(x, (*acc)[r * D4 + d], r == w.r); }
            out[qa + d] = x / ln;
        }
        lse[row_at(t.b, w.h, w.i)] = mn + log(ln);
    }
}

// The tile's rows of q and dout into qr and dor, with each row's lse and its
// delta = dout · out, which is also stored for attention_backward_dkv.
fn load_dq_rows(
    t: QueryTile,
    qr: ptr<function, array<vec4<f32>, R * D4>>,
    dor: ptr<function, array<vec4<f32>, R * D4>>,
    row_delta: ptr<function, array<f32, R>>,
    row_lse: ptr<function, array<f32, R>>,
) {
    for (var n = 0u; n < R; n++) {
        if (n >= G * t.np) { break; }
        let w = tile_row(t, n);
        let qa = q_at(t.b, w.i, w.h);
        for (var d = 0u; d < D4; d++) {
            let x = q[qa + d];
            for (var r = 0u; r < R; r++) { (*qr)[r * D4 + d] = select((*qr)[r * D4 + d], x, r == w.r); }
        }
        var dl = 0.0;
        for (var d = 0u; d < D4; d++) {
            let x = dout[qa + d];
            dl += dot(x, o[qa + d]);
            for (var r = 0u; r < R; r++) { (*dor)[r * D4 + d] = select((*dor)[r * D4 + d], x, r == w.r); }
        }
        let row = row_at(t.b, w.h, w.i);
        delta[row] = dl;
        let e = lse_in[row];
        for (var r = 0u; r < R; r++) {
            (*row_delta)[r] = select((*row_delta)[r], dl, r == w.r);
            (*row_lse)[r] = select((*row_lse)[r], e, r == w.r);
        }
    }
}

// dS of key j for each row, from its scores s (q·k_j) and dp (dout·v_j), into
// s: P (dp − delta) · scale with P = exp(s · scale − lse), 0 past the row's position.
fn dq_scores(
    t: QueryTile,
    j: u32,
    s: ptr<function, array<f32, R>>,
    dp: ptr<function, array<f32, R>>,
    row_delta: ptr<function, array<f32, R>>,
    row_lse: ptr<function, array<f32, R>>,
) {
    for (var r = 0u; r < R; r++) {
        let prob = exp((*s)[r] * p.scale - (*row_lse)[r]);
        (*s)[r] = select(0.0, prob * ((*dp)[r] - (*row_delta)[r]) * p.scale, j <= row_pos(t, r) && j >= row_start(t, r));  // dS
    }
}

// The tile's rows of dq.
fn store_dq(t: QueryTile, dqr: ptr<function, array<vec4<f32>, R * D4>>) {
    for (var n = 0u; n < R; n++) {
        if (n >= G * t.np) { break; }
        let w = tile_row(t, n);
        let qa = q_at(t.b, w.i, w.h);
        for (var d = 0u; d < D4; d++) {
            var x = vec4(0.0);
            for (var r = 0u; r < R; r++) { x = select(x, (*dqr)[r * D4 + d], r == w.r); }
            dq[qa + d] = x;
        }
    }
}

// Key rows j0 .. j0 + nk of (batch b, kv head kvh) into kr and vr.
fn load_key_rows(
    b: u32,
    j0: u32,
    nk: u32,
    kvh: u32,
    kr: ptr<function, array<vec4<f32>, PK * D4>>,
    vr: ptr<function, array<vec4<f32>, PK * D4>>,
) {
    for (var n = 0u; n < PK; n++) {
        if (n >= nk) { break; }
        let ka = kv_at(b, j0 + n, kvh);
        for (var d = 0u; d < D4; d++) {
            let x = k[ka + d];
            for (var u = 0u; u < PK; u++) { (*kr)[u * D4 + d] = select((*kr)[u * D4 + d], x, u == n); }
        }
        for (var d = 0u; d < D4; d++) {
            let x = v[ka + d];
            for (var u = 0u; u < PK; u++) { (*vr)[u * D4 + d] = select((*vr)[u * D4 + d], x, u == n); }
        }
    }
}

// For query i (row `row` of lse and delta, first key `start`) against keys
// j0 + u, from the scores s (q_i·k) and dp (dout_i·v): s becomes P (0 past
// position i and before start) and dp becomes dS, and they add P dout_i to dv
// and dS q_i to dk.
fn dkv_accumulate(
    j0: u32,
    i: u32,
    row: u32,
    start: u32,
    qi: ptr<function, array<vec4<f32>, D4>>,
    doi: ptr<function, array<vec4<f32>, D4>>,
    s: ptr<function, array<f32, PK>>,
    dp: ptr<function, array<f32, PK>>,
    dkr: ptr<function, array<vec4<f32>, PK * D4>>,
    dvr: ptr<function, array<vec4<f32>, PK * D4>>,
) {
    let row_lse = lse_in[row];
    let row_delta = delta_in[row];
    for (var u = 0u; u < PK; u++) {
        let prob = select(0.0, exp((*s)[u] * p.scale - row_lse), j0 + u <= p.offset + i && j0 + u >= start);
        (*s)[u] = prob;
        (*dp)[u] = prob * ((*dp)[u] - row_delta) * p.scale;  // dS
    }
    for (var d = 0u; d < D4; d++) {
        for (var u = 0u; u < PK; u++) { (*dvr)[u * D4 + d] += (*s)[u] * (*doi)[d]; }
    }
    for (var d = 0u; d < D4; d++) {
        for (var u = 0u; u < PK; u++) { (*dkr)[u * D4 + d] += (*dp)[u] * (*qi)[d]; }
    }
}

// The nk rows of dk and dv from j0.
fn store_key_rows(
    b: u32,
    j0: u32,
    nk: u32,
    kvh: u32,
    dkr: ptr<function, array<vec4<f32>, PK * D4>>,
    dvr: ptr<function, array<vec4<f32>, PK * D4>>,
) {
    for (var n = 0u; n < PK; n++) {
        if (n >= nk) { break; }
        let ka = kv_at(b, j0 + n, kvh);
        for (var d = 0u; d < D4; d++) {
            var x = vec4(0.0);
            for (var u = 0u; u < PK; u++) { x = select(x, (*dkr)[u * D4 + d], u == n); }
            dk[ka + d] = x;
        }
        for (var d = 0u; d < D4; d++) {
            var x = vec4(0.0);
            for (var u = 0u; u < PK; u++) { x = select(x, (*dvr)[u * D4 + d], u == n); }
            dv[ka + d] = x;
        }
    }
}

@compute @workgroup_size(WG)
fn attention_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg) * WG + lid;
    if (index >= query_tiles()) { return; }
    let t = query_tile(index);
    var qr: array<vec4<f32>, R * D4>;  // rows past tq stay 0 and are never stored
    load_query_rows(t, &qr);
    var acc: array<vec4<f32>, R * D4>;  // Σ exp(s − m) v, un-normalised
    var m: array<f32, R>;               // running max of the scores
    var l: array<f32, R>;               // running Σ exp(s − m)
    for (var r = 0u; r < R; r++) { m[r] = LOWEST; }
    for (var j = row_start(t, 0u); j <= t.last; j++) {  // row 0 starts first
        let ka = kv_at(t.b, j, t.kvh);
        var s = array<f32, R>();
        for (var d = 0u; d < D4; d++) {
            let kd = k[ka + d];
            for (var r = 0u; r < R; r++) { s[r] += dot(qr[r * D4 + d], kd); }
        }
        var c = array<f32, R>();
        online_softmax_step(t, j, &s, &c, &m, &l);
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { acc[r * D4 + d] *= c[r]; }
        }
        for (var d = 0u; d < D4; d++) {
            let vd = v[ka + d];
            for (var r = 0u; r < R; r++) { acc[r * D4 + d] += s[r] * vd; }
        }
    }
    store_forward(t, &acc, &m, &l);
}

@compute @workgroup_size(WG)
fn attention_backward_dq(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg) * WG + lid;
    if (index >= query_tiles()) { return; }
    let t = query_tile(index);
    // Rows past tq stay 0 (so dS = 0) and are never stored.
    var qr: array<vec4<f32>, R * D4>;
    var dor: array<vec4<f32>, R * D4>;
    var row_delta: array<f32, R>;
    var row_lse: array<f32, R>;
    load_dq_rows(t, &qr, &dor, &row_delta, &row_lse);
    var dqr: array<vec4<f32>, R * D4>;
    for (var j = row_start(t, 0u); j <= t.last; j++) {  // row 0 starts first
        let ka = kv_at(t.b, j, t.kvh);
        var kj = array<vec4<f32>, D4>();
        var s = array<f32, R>();
        for (var d = 0u; d < D4; d++) {
            kj[d] = k[ka + d];
            for (var r = 0u; r < R; r++) { s[r] += dot(qr[r * D4 + d], kj[d]); }
        }
        var dp = array<f32, R>();
        for (var d = 0u; d < D4; d++) {
            let vd = v[ka + d];
            for (var r = 0u; r < R; r++) { dp[r] += dot(dor[r * D4 + d], vd); }
        }
        dq_scores(t, j, &s, &dp, &row_delta, &row_lse);
        for (var d = 0u; d < D4; d++) {
            for (var r = 0u; r < R; r++) { dqr[r * D4 + d] += s[r] * kj[d]; }
        }
    }
    store_dq(t, &dqr);
}

// A tile is PK consecutive key rows j0 .. j0 + nk of one (batch, kv head),
// (batch, kv head) fastest.
@compute @workgroup_size(WG)
fn attention_backward_dkv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg) * WG + lid;
    if (index >= p.batch * p.hkv * ((p.tkv + PK - 1u) / PK)) { return; }
    let kvh = index % p.hkv;
    let b = (index / p.hkv) % p.batch;
    let j0 = index / (p.hkv * p.batch) * PK;
    let nk = min(PK, p.tkv - j0);
    var kr: array<vec4<f32>, PK * D4>;  // rows past tkv stay 0, are masked and never stored
    var vr: array<vec4<f32>, PK * D4>;
    load_key_rows(b, j0, nk, kvh, &kr, &vr);
    var dkr: array<vec4<f32>, PK * D4>;
    var dvr: array<vec4<f32>, PK * D4>;
    let group = p.hq / p.hkv;
    // Queries at positions ≥ j0 see key j0: i ≥ j0 − offset. Later keys of
    // the tile mask the first queries out.
    let first = select(0u, j0 - p.offset, j0 > p.offset);
    for (var g = 0u; g < group; g++) {
        let h = kvh * group + g;
        for (var i = first; i < p.tq; i++) {
            let start = query_start(b, i);
            if (start >= j0 + nk) { break; }  // this query's example, and every later one, begins after the tile
            let qa = q_at(b, i, h);
            let row = row_at(b, h, i);
            var qi = array<vec4<f32>, D4>();
            var s = array<f32, PK>();
            for (var d = 0u; d < D4; d++) {
                qi[d] = q[qa + d];
                for (var u = 0u; u < PK; u++) { s[u] += dot(qi[d], kr[u * D4 + d]); }
            }
            var doi = array<vec4<f32>, D4>();
            var dp = array<f32, PK>();
            for (var d = 0u; d < D4; d++) {
                doi[d] = dout[qa + d];
                for (var u = 0u; u < PK; u++) { dp[u] += dot(doi[d], vr[u * D4 + d]); }
            }
            dkv_accumulate(j0, i, row, start, &qi, &doi, &s, &dp, &dkr, &dvr);
        }
    }
    store_key_rows(b, j0, nk, kvh, &dkr, &dvr);
}

// For head dims that are not a multiple of 4: copies p.batch rows of width
// p.tq into rows of width p.tkv, dropping columns or filling them with zeros
// (zero columns of q, k, v and dout change no score and no kept output).
@compute @workgroup_size(WG)
fn attention_repad(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg) * WG + lid;
    if (index >= p.batch * p.tkv) { return; }
    let col = index % p.tkv;
    var x = 0.0;
    if (col < p.tq) { x = src[index / p.tkv * p.tq + col]; }
    dst[index] = x;
}
