// Rotary position embedding, transformers' `apply_rotary_pos_emb` with
// `rotate_half` (the two halves of each head rotate together, not
// interleaved pairs), for x (batch, seq, heads, head_dim):
//
//   forward   y = x·cos + rotate_half(x)·sin,   rotate_half(x) = cat(−x₂, x₁)
//   backward  dx = dy·cos + rotate_halfᵀ(dy·sin), the inverse rotation
//
// cos and sin are (table_rows, head_dim) tables made on the CPU; position t
// of the sequence reads row `row_offset + t` (generation with a KV cache
// passes the number of cached positions as the offset).
//
// One invocation per rotated pair (i, i + head_dim/2): it reads and writes
// only its own two values, so the *_inplace entry points are safe.
//
// rope_cached is a decoding step's whole RoPE and cache write in one launch:
// q (the `heads` query heads) rotated in place, k (the `kv_heads`) rotated
// into rows row_offset.. of k_cache (batch, capacity, kv_heads, head_dim),
// v copied into the same rows of v_cache; the same rotation, so the same
// bits as rope_forward_inplace on q and k and a copy of each into the cache.
// Prelude constant: WG, invocations per workgroup.

struct Params {
    pairs: u32,       // batch · seq · heads · head_dim / 2
    seq: u32,
    heads: u32,
    head_dim: u32,
    row_offset: u32,  // table row of position 0 (rope_cached: and cache row)
    kv_heads: u32,    // rope_cached: heads of k and v
    capacity: u32,    // rope_cached: rows of the caches
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // (batch, seq, heads, head_dim)
@group(0) @binding(2) var<storage, read> cos_t: array<f32>;      // (table_rows, head_dim)
@group(0) @binding(3) var<storage, read> sin_t: array<f32>;      // (table_rows, head_dim)
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // (batch, seq, heads, head_dim)
@group(0) @binding(5) var<storage, read_write> xio: array<f32>;  // (batch, seq, heads, head_dim), in place
@group(0) @binding(6) var<storage, read> v_new: array<f32>;                // (batch, seq, kv_heads, head_dim): rope_cached
@group(0) @binding(7) var<storage, read_write> k_cache: array<f32>;        // (batch, capacity, kv_heads, head_dim)
@group(0) @binding(8) var<storage, read_write> v_cache: array<f32>;        // (batch, capacity, kv_heads, head_dim)

struct Pair {
    lo: u32,  // index of element i of the head in x
    hi: u32,  // index of element i + half
    t: u32,   // index of cos/sin[row_offset + s, i]
}

fn pair(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> Pair {
    let index = flat_group(wid, nwg) * WG + lid;
    let half = p.head_dim / 2u;
    let row = index / half;  // (batch · seq · heads) row
    let i = index % half;
    let s = (row / p.heads) % p.seq;
    let lo = row * p.head_dim + i;
    return Pair(lo, lo + half, (p.row_offset + s) * p.head_dim + i);
}

// (x_lo, x_hi) rotated by +θ: y_lo = x_lo·cos − x_hi·sin, y_hi = x_hi·cos + x_lo·sin.
fn rotate(v: vec2<f32>, t: u32) -> vec2<f32> {
    let half = p.head_dim / 2u;
    return vec2(v.x * cos_t[t] - v.y * sin_t[t], v.y * cos_t[t + half] + v.x * sin_t[t + half]);
}

// The transpose (inverse) rotation, by −θ.
fn unrotate(v: vec2<f32>, t: u32) -> vec2<f32> {
    let half = p.head_dim / 2u;
    return vec2(v.x * cos_t[t] + v.y * sin_t[t + half], v.y * cos_t[t + half] - v.x * sin_t[t]);
}

@compute @workgroup_size(WG)
fn rope_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (flat_group(wid, nwg) * WG + lid >= p.pairs) { return; }
    let q = pair(wid, nwg, lid);
    let r = rotate(vec2(x[q.lo], x[q.hi]), q.t);
    y[q.lo] = r.x;
    y[q.hi] = r.y;
}

@compute @workgroup_size(WG)
fn rope_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (flat_group(wid, nwg) * WG + lid >= p.pairs) { return; }
    let q = pair(wid, nwg, lid);
    let r = unrotate(vec2(x[q.lo], x[q.hi]), q.t);
    y[q.lo] = r.x;
    y[q.hi] = r.y;
}

@compute @workgroup_size(WG)
fn rope_forward_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (flat_group(wid, nwg) * WG + lid >= p.pairs) { return; }
    let q = pair(wid, nwg, lid);
    let r = rotate(vec2(xio[q.lo], xio[q.hi]), q.t);
    xio[q.lo] = r.x;
    xio[q.hi] = r.y;
}

@compute @workgroup_size(WG)
fn rope_backward_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    if (flat_group(wid, nwg) * WG + lid >= p.pairs) { return; }
    let q = pair(wid, nwg, lid);
    let r = unrotate(vec2(xio[q.lo], xio[q.hi]), q.t);
    xio[q.lo] = r.x;
    xio[q.hi] = r.y;
}

// Invocations 0 .. pairs rotate q in place (binding 5); the next kv pairs
// rotate k (binding 1) into k_cache; the kv pairs after them copy v's pairs.
@compute @workgroup_size(WG)
fn rope_cached(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let index = flat_group(wid, nwg) * WG + lid;
    let half = p.head_dim / 2u;
    let kv_pairs = p.pairs / p.heads * p.kv_heads;
    if (index < p.pairs) {
        let q = pair(wid, nwg, lid);
        let r = rotate(vec2(xio[q.lo], xio[q.hi]), q.t);
        xio[q.lo] = r.x;
        xio[q.hi] = r.y;
        return;
    }
    let e = index - p.pairs;
    if (e >= 2u * kv_pairs) { return; }
    let pe = e % kv_pairs;
    let row = pe / half;  // (batch · seq · kv_heads) row
    let i = pe % half;
    let h = row % p.kv_heads;
    let s = (row / p.kv_heads) % p.seq;
    let b = row / (p.kv_heads * p.seq);
    let lo = row * p.head_dim + i;
    let at = ((b * p.capacity + p.row_offset + s) * p.kv_heads + h) * p.head_dim + i;
    if (e < kv_pairs) {
        let r = rotate(vec2(x[lo], x[lo + half]), (p.row_offset + s) * p.head_dim + i);
        k_cache[at] = r.x;
        k_cache[at + half] = r.y;
    } else {
        v_cache[at] = v_new[lo];
        v_cache[at + half] = v_new[lo + half];
    }
}
