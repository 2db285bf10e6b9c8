// Workgroup-memory ("flash") variants of the attention kernels, for real
// GPUs: the forward, dq and dkv of attention.wgsl (same semantics, same
// inputs and outputs, same saved lse and delta), with the rows every
// invocation of a workgroup needs staged once in workgroup memory instead of
// each invocation streaming them from global memory itself. This file is
// appended to attention.wgsl (its Params, bindings, address helpers, LOWEST,
// and the query_start of attention_rows.wgsl or attention_segments.wgsl);
// attention.wgsl's register tiles are unused here (its P and PK are 1).
//
// The forward and dq: a workgroup of WG invocations owns a block of query
// rows of one (batch, kv group): G query heads × BP consecutive positions
// (G · BP ≤ WG), one row per invocation, heads fastest (their q rows are
// adjacent). It walks the keys its rows see in tiles of BK: the WG
// invocations copy the tile's rows of k and v (consecutive vec4s, coalesced)
// into tile_kq and tile_vdo, barrier, each runs its row against the keys of
// the tile it sees, from workgroup memory, barrier. The forward's online
// softmax rescales the sums only when a key raises the row's max.
//
// dkv: a workgroup of KB invocations owns KB consecutive key rows of one
// (batch, kv head), one per invocation, k, v, dk and dv in registers. For
// each query head of the group it walks the queries that see its keys in
// tiles of BK, staging q and dout rows the same way. No float atomics: each
// dk and dv row has one owner. Where those workgroups are too few to fill a
// GPU, attention_backward_dkv_flash_split cuts each key block's work into
// parts, one workgroup each, that store partial dk and dv, and
// attention_dkv_sum adds them up (see there).
//
// Uniform control flow for every barrier (WGSL requires it, Chromium's
// compiler checks it): the tile loops run from and to bounds of the whole
// block (its first row's start, its last row's position; a dkv part's range
// of queries), which depend only on the uniform Params, the workgroup id and
// starts (read-only storage at uniform indices). Within a tile each
// invocation loops over the keys (queries) its own row sees, and rows past
// the block, tq or tkv take a valid row, compute along and store nothing; no
// invocation leaves the tile loop early.
//
// Workgroup memory: two tiles of BK × D4 vec4s, 32 · BK · D4 bytes, which the
// launcher keeps within WebGPU's default 16 KiB (BK = 512 / D4, at most 64).
//
// Prelude constants: D4, G, BP, BK, WG (forward and dq invocations), KB (dkv
// invocations), and attention.wgsl's P = PK = 1.

var<workgroup> tile_kq: array<vec4<f32>, BK * D4>;   // (BK, D): rows of k (forward, dq) or of q (dkv)
var<workgroup> tile_vdo: array<vec4<f32>, BK * D4>;  // (BK, D): the same rows of v, or of dout

// Keys j0 .. j0 + n (n ≤ BK) of (batch b, kv head kvh) into the tiles, by
// the `wg` invocations of the workgroup.
fn stage_keys(b: u32, kvh: u32, j0: u32, n: u32, lid: u32, wg: u32) {
    for (var x = lid; x < n * D4; x += wg) {
        let a = kv_at(b, j0 + x / D4, kvh) + x % D4;
        tile_kq[x] = k[a];
        tile_vdo[x] = v[a];
    }
}

// Queries i0 .. i0 + n (n ≤ BK) of (batch b, head h): q into tile_kq, dout
// into tile_vdo.
fn stage_queries(b: u32, h: u32, i0: u32, n: u32, lid: u32, wg: u32) {
    for (var x = lid; x < n * D4; x += wg) {
        let a = q_at(b, i0 + x / D4, h) + x % D4;
        tile_kq[x] = q[a];
        tile_vdo[x] = dout[a];
    }
}

// A block of query rows: G heads from h0 × positions i0 .. i0 + BP (fewer at tq).
struct FlashBlock {
    b: u32,
    h0: u32,
    kvh: u32,
    i0: u32,
    first: u32,  // the first key any of its rows sees: its first position's start
    last: u32,   // the last: its last position
}

fn flash_blocks() -> u32 { return p.batch * (p.hq / G) * ((p.tq + BP - 1u) / BP); }

// Block `index`, (batch, head chunk) fastest, the last positions (the most
// keys) first so that the longest blocks do not start last.
fn flash_block(index: u32) -> FlashBlock {
    let chunks = p.hq / G;
    let h0 = (index % chunks) * G;
    let b = (index / chunks) % p.batch;
    let i0 = ((p.tq + BP - 1u) / BP - 1u - index / (chunks * p.batch)) * BP;
    let np = min(BP, p.tq - i0);
    return FlashBlock(b, h0, h0 / (p.hq / p.hkv), i0, query_start(b, i0), p.offset + i0 + np - 1u);
}

// Invocation lid's row: head h0 + lid % G at position i0 + lid / G; rows past
// the block or tq (not `stores`) take the block's last position.
struct FlashRow {
    h: u32,
    i: u32,
    stores: bool,  // a row of the block, before tq
    pos: u32,      // offset + i: its last key
    start: u32,    // its first key
}

fn flash_row(f: FlashBlock, lid: u32) -> FlashRow {
    let i = f.i0 + lid / G;
    let last = f.last - p.offset;
    let ic = min(i, last);
    return FlashRow(f.h0 + lid % G, ic, lid < G * BP && i <= last, p.offset + ic, query_start(f.b, ic));
}

// The keys j0 + u of a tile of n that row w sees: u in lo .. hi (none if hi ≤ lo).
fn seen_from(w: FlashRow, j0: u32) -> u32 { return select(0u, w.start - j0, w.start > j0); }
fn seen_to(w: FlashRow, j0: u32, n: u32) -> u32 { return select(0u, min(n, w.pos + 1u - j0), w.pos >= j0); }

// The loops over a tile's rows have bounds known only at run time and index
// no register array with their counter: a GPU keeps the register arrays
// (indexed by the unrolled loops over D4) in registers, and lavapipe's
// compiler does not unroll BK · D4 operations (minutes of compile time).

@compute @workgroup_size(WG)
fn attention_forward_flash(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg);
    if (index >= flash_blocks()) { return; }  // the whole workgroup
    let f = flash_block(index);
    let w = flash_row(f, lid);
    let qa = q_at(f.b, w.i, w.h);
    var qr: array<vec4<f32>, D4>;   // (D) its q row
    for (var d = 0u; d < D4; d++) { qr[d] = q[qa + d]; }
    var acc: array<vec4<f32>, D4>;  // (D) Σ exp(s − m) v, un-normalised
    var m = LOWEST;                 // running max of the scaled scores
    var l = 0.0;                    // running Σ exp(s − m)
    for (var j0 = f.first; j0 <= f.last; j0 += BK) {
        let n = min(BK, f.last + 1u - j0);
        workgroupBarrier();  // every invocation is done with the previous tiles
        stage_keys(f.b, f.kvh, j0, n, lid, WG);
        workgroupBarrier();
        // No continue or break past here: the next barrier must stay uniform.
        for (var u = seen_from(w, j0); u < seen_to(w, j0, n); u++) {
            var x = 0.0;
            for (var d = 0u; d < D4; d++) { x += dot(qr[d], tile_kq[u * D4 + d]); }
            let s = x * p.scale;
            if (s > m) {  // a new max: rescale the sums so far (rarely, after the first keys)
                let c = exp(m - s);
                l *= c;
                for (var d = 0u; d < D4; d++) { acc[d] *= c; }
                m = s;
            }
            let e = exp(s - m);
            l += e;
            for (var d = 0u; d < D4; d++) { acc[d] += e * tile_vdo[u * D4 + d]; }
        }
    }
    if (!w.stores) { return; }
    for (var d = 0u; d < D4; d++) { out[qa + d] = acc[d] / l; }
    lse[row_at(f.b, w.h, w.i)] = m + log(l);
}

@compute @workgroup_size(WG)
fn attention_backward_dq_flash(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg);
    if (index >= flash_blocks()) { return; }  // the whole workgroup
    let f = flash_block(index);
    let w = flash_row(f, lid);
    let qa = q_at(f.b, w.i, w.h);
    var qr: array<vec4<f32>, D4>;   // (D) its q row
    var dor: array<vec4<f32>, D4>;  // (D) its dout row
    var row_delta = 0.0;            // dout · out
    for (var d = 0u; d < D4; d++) {
        qr[d] = q[qa + d];
        dor[d] = dout[qa + d];
        row_delta += dot(dor[d], o[qa + d]);
    }
    let row = row_at(f.b, w.h, w.i);
    if (w.stores) { delta[row] = row_delta; }  // for attention_backward_dkv_flash
    let row_lse = lse_in[row];
    var dqr: array<vec4<f32>, D4>;  // (D) Σ dS k
    for (var j0 = f.first; j0 <= f.last; j0 += BK) {
        let n = min(BK, f.last + 1u - j0);
        workgroupBarrier();  // every invocation is done with the previous tiles
        stage_keys(f.b, f.kvh, j0, n, lid, WG);
        workgroupBarrier();
        // No continue or break past here: the next barrier must stay uniform.
        for (var u = seen_from(w, j0); u < seen_to(w, j0, n); u++) {
            var s = 0.0;   // q · k
            var dp = 0.0;  // dout · v
            for (var d = 0u; d < D4; d++) {
                s += dot(qr[d], tile_kq[u * D4 + d]);
                dp += dot(dor[d], tile_vdo[u * D4 + d]);
            }
            let ds = exp(s * p.scale - row_lse) * (dp - row_delta) * p.scale;  // P (dP − delta) · scale
            for (var d = 0u; d < D4; d++) { dqr[d] += ds * tile_kq[u * D4 + d]; }
        }
    }
    if (!w.stores) { return; }
    for (var d = 0u; d < D4; d++) { dq[qa + d] = dqr[d]; }
}

// A dkv workgroup's key block: keys j0 .. j0 + nk (nk ≤ KB) of (batch b, kv
// head kvh).
struct KeyBlock {
    b: u32,
    kvh: u32,
    j0: u32,
    nk: u32,
}

fn key_blocks() -> u32 { return p.batch * p.hkv * ((p.tkv + KB - 1u) / KB); }

// Block `index`, (batch, kv head) fastest, the first keys (seen by the most
// queries) first.
fn key_block(index: u32) -> KeyBlock {
    let j0 = index / (p.hkv * p.batch) * KB;
    return KeyBlock((index / p.hkv) % p.batch, index % p.hkv, j0, min(KB, p.tkv - j0));
}

// The first query that sees the block's keys: position ≥ j0, i ≥ j0 − offset
// (tq if none does).
fn first_query(kb: KeyBlock) -> u32 { return min(select(0u, kb.j0 - p.offset, kb.j0 > p.offset), p.tq); }

// The queries from q0 on that see any of the block's keys end at the
// first whose example begins after them (tq for unpacked rows): a binary
// search, as starts do not decrease along a row.
fn queries_end(kb: KeyBlock, q0: u32) -> u32 {
    var lo = q0;
    var hi = p.tq;
    while (lo < hi) {
        let mid = (lo + hi) / 2u;
        if (query_start(kb.b, mid) >= kb.j0 + kb.nk) { hi = mid; } else { lo = mid + 1u; }
    }
    return lo;
}

// Invocation lid's sums over a range of the block's work into dkr and dvr.
// The work is (hq / hkv) · n units g · n + u: query q0 + u (u < n) of the
// kv group's g-th query head; this runs units u0 .. u1. For each head it
// walks its queries in tiles of BK, staging q and dout rows.
fn dkv_sums(
    kb: KeyBlock,
    lid: u32,
    q0: u32,
    n: u32,
    u0: u32,
    u1: u32,
    dkr: ptr<function, array<vec4<f32>, D4>>,  // (D) Σ dS q
    dvr: ptr<function, array<vec4<f32>, D4>>,  // (D) Σ P dout
) {
    let j = kb.j0 + min(lid, kb.nk - 1u);  // rows past tkv take the last key
    let ka = kv_at(kb.b, j, kb.kvh);
    var kr: array<vec4<f32>, D4>;   // (D) its k row
    var vr: array<vec4<f32>, D4>;   // (D) its v row
    for (var d = 0u; d < D4; d++) {
        kr[d] = k[ka + d];
        vr[d] = v[ka + d];
    }
    let group = p.hq / p.hkv;
    for (var g = 0u; g < group; g++) {
        // Head g's units are g · n .. g · n + n; those in u0 .. u1 are its
        // queries q0 + a − g · n .. q0 + z − g · n.
        let a = max(u0, g * n);
        let z = min(u1, g * n + n);
        if (z <= a) { continue; }  // uniform: none of this head's queries
        let h = kb.kvh * group + g;
        let end = q0 + z - g * n;
        for (var i0 = q0 + a - g * n; i0 < end; i0 += BK) {
            // This tile's first example, and every later one, begins after the block's keys.
            if (query_start(kb.b, i0) >= kb.j0 + kb.nk) { break; }
            let nt = min(BK, end - i0);
            workgroupBarrier();  // every invocation is done with the previous tiles
            stage_queries(kb.b, h, i0, nt, lid, KB);
            workgroupBarrier();
            // No continue or break past here: the next barrier must stay uniform.
            // Queries i0 + t from the first at or after key j (position ≥ j) see it.
            for (var t = select(0u, j - p.offset - i0, j > p.offset + i0); t < nt; t++) {
                let i = i0 + t;
                if (j >= query_start(kb.b, i)) {  // and from its example's start
                    let row = row_at(kb.b, h, i);
                    var s = 0.0;   // q · k
                    var dp = 0.0;  // dout · v
                    for (var d = 0u; d < D4; d++) {
                        s += dot(tile_kq[t * D4 + d], kr[d]);
                        dp += dot(tile_vdo[t * D4 + d], vr[d]);
                    }
                    let prob = exp(s * p.scale - lse_in[row]);
                    let ds = prob * (dp - delta_in[row]) * p.scale;
                    for (var d = 0u; d < D4; d++) {
                        (*dvr)[d] += prob * tile_vdo[t * D4 + d];
                        (*dkr)[d] += ds * tile_kq[t * D4 + d];
                    }
                }
            }
        }
    }
}

// A workgroup owns the key block `index` (see key_block): invocation lid key
// j0 + lid (rows past tkv take the last key and store nothing), all the work
// of the block's keys, dk and dv stored directly.
@compute @workgroup_size(KB)
fn attention_backward_dkv_flash(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg);
    if (index >= key_blocks()) { return; }  // the whole workgroup
    let kb = key_block(index);
    let q0 = first_query(kb);
    let n = p.tq - q0;
    var dkr: array<vec4<f32>, D4>;  // (D) Σ dS q
    var dvr: array<vec4<f32>, D4>;  // (D) Σ P dout
    dkv_sums(kb, lid, q0, n, 0u, p.hq / p.hkv * n, &dkr, &dvr);
    if (lid >= kb.nk) { return; }
    let ka = kv_at(kb.b, kb.j0 + lid, kb.kvh);
    for (var d = 0u; d < D4; d++) {
        dk[ka + d] = dkr[d];
        dv[ka + d] = dvr[d];
    }
}

// Split dkv, to fill a large GPU when the key blocks are few: each block's
// work (its query heads × the queries that see its keys, up to the end of
// their examples) is cut into p.parts even ranges of units, one workgroup
// each, which store their partial dk and dv into dkv_parts;
// attention_dkv_sum adds the parts into dk and dv (no float atomics). With
// the causal mask the last key blocks see few queries, so the cut is of the
// needed range, not of tq. Binds q, k, v, dout, lse_in, delta_in and
// dkv_parts (and starts, for packed rows): 8 storage buffers at most.
@group(0) @binding(17) var<storage, read_write> dkv_parts: array<vec4<f32>>;  // (parts, 2, batch, tkv, hkv, D): each part's dk, then its dv

// vec4s of one dk (or dv): (batch, tkv, hkv, D).
fn kv_vec4s() -> u32 { return p.batch * p.tkv * p.hkv * D4; }

// Where part `part` of `units` begins: the first units % parts parts take
// one unit more (no product that could overflow).
fn part_start(part: u32, units: u32) -> u32 { return part * (units / p.parts) + min(part, units % p.parts); }

// Workgroup index: (batch, kv head) fastest, then the part, then the key
// block (the first keys, the most work, first).
@compute @workgroup_size(KB)
fn attention_backward_dkv_flash_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg);
    if (index >= key_blocks() * p.parts) { return; }  // the whole workgroup
    let heads = p.batch * p.hkv;
    let part = index / heads % p.parts;
    let kb = key_block(index / (heads * p.parts) * heads + index % heads);
    let q0 = first_query(kb);
    let n = queries_end(kb, q0) - q0;
    let units = p.hq / p.hkv * n;
    var dkr: array<vec4<f32>, D4>;  // (D) Σ dS q over the part's queries
    var dvr: array<vec4<f32>, D4>;  // (D) Σ P dout
    dkv_sums(kb, lid, q0, n, part_start(part, units), part_start(part + 1u, units), &dkr, &dvr);
    if (lid >= kb.nk) { return; }
    // Every part stores its rows, zeros if its range was empty: the scratch is not cleared.
    let ka = kv_at(kb.b, kb.j0 + lid, kb.kvh);
    let dka = 2u * part * kv_vec4s() + ka;
    let dva = dka + kv_vec4s();
    for (var d = 0u; d < D4; d++) {
        dkv_parts[dka + d] = dkr[d];
        dkv_parts[dva + d] = dvr[d];
    }
}

// dk and dv = the sum of the parts' partials (part 0 first), one vec4 of
// each an invocation.
@compute @workgroup_size(WG)
fn attention_dkv_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let x = flat_group(wid, nwg) * WG + lid;
    let whole = kv_vec4s();
    if (x >= whole) { return; }
    var sk = vec4<f32>(0.0);
    var sv = vec4<f32>(0.0);
    for (var s = 0u; s < p.parts; s++) {
        sk += dkv_parts[2u * s * whole + x];
        sv += dkv_parts[(2u * s + 1u) * whole + x];
    }
    dk[x] = sk;
    dv[x] = sv;
}
