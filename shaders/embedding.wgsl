// Token embedding lookup: out[t, :] = table[ids[t], :], and for a trained
// table (PEFT's modules_to_save) its backward: grad[id, :] += Σ dx[t, :] over
// the tokens t of each id.
//
// The table may be split by rows across several buffers (a large vocabulary
// is over the storage-binding limit): one dispatch gathers from one chunk,
// which holds table rows row_start .. row_start + rows, and writes only the
// tokens whose id falls in it. Every other row of `out` is left as it was, so
// ids outside the whole table (≥ vocab) are never read and stay zero in a
// freshly allocated `out`.
//
// The table is f32 (`embedding_forward`), or f16 or bf16 as the checkpoint
// stored it (`embedding_forward_16`, BF16 telling which): 16-bit values widen
// to f32 exactly, so the rows equal the f32 table's.
//
// One invocation per output value (forward) or per (token, column)
// (backward). Prelude constants: WG, BF16.

struct Params {
    n: u32,          // tokens
    dim: u32,
    row_start: u32,  // first table row held by this chunk
    rows: u32,       // table rows held by this chunk
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<f32>;     // (rows, dim), table rows row_start..
@group(0) @binding(2) var<storage, read> ids: array<u32>;       // (n)
@group(0) @binding(3) var<storage, read_write> out: array<f32>; // (n, dim)
@group(0) @binding(4) var<storage, read> table16: array<u32>;   // (rows, dim) f16 or bf16, two a word (low half first)
@group(0) @binding(5) var<storage, read> dx: array<f32>;        // (n, dim), the gradient at the gathered rows
@group(0) @binding(6) var<storage, read_write> grad: array<f32>; // (rows, dim), table rows row_start.., added to

// Value e of the 16-bit table.
fn table_value16(e: u32) -> f32 {
    let word = table16[e >> 1u];
    if (BF16) { return bitcast<f32>((word >> ((e & 1u) * 16u)) << 16u); }
    return unpack2x16float(word)[e & 1u];
}

@compute @workgroup_size(WG)
fn embedding_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.n * p.dim) { return; }
    let token = i / p.dim;
    let d = i % p.dim;
    let id = ids[token];
    // Unsigned: ids below row_start wrap to large values and fail the test too.
    let local = id - p.row_start;
    if (id >= p.row_start && local < p.rows) {
        out[i] = table[local * p.dim + d];
    }
}

@compute @workgroup_size(WG)
fn embedding_forward_16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.n * p.dim) { return; }
    let id = ids[i / p.dim];
    let local = id - p.row_start;
    if (id >= p.row_start && local < p.rows) {
        out[i] = table_value16(local * p.dim + i % p.dim);
    }
}

// The first token of each id in this chunk sums every token of that id, in
// token order, into its row: no two invocations write one value, so no
// atomics; later tokens of an id do nothing.
@compute @workgroup_size(WG)
fn embedding_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.n * p.dim) { return; }
    let t = i / p.dim;
    let d = i % p.dim;
    let id = ids[t];
    let local = id - p.row_start;
    if (id < p.row_start || local >= p.rows) { return; }
    for (var u = 0u; u < t; u++) {
        if (ids[u] == id) { return; }
    }
    var sum = 0.0;
    for (var u = t; u < p.n; u++) {
        if (ids[u] == id) { sum += dx[u * p.dim + d]; }
    }
    let at = local * p.dim + d;
    grad[at] = grad[at] + sum;
}
