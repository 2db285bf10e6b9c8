// Token embedding lookup: out[t, :] = table[ids[t], :].
//
// The table may be split by rows across several buffers (a large vocabulary
// is over the storage-binding limit): one dispatch gathers from one chunk,
// which holds table rows row_start .. row_start + rows, and writes only the
// tokens whose id falls in it. Every other row of `out` is left as it was, so
// ids outside the whole table (≥ vocab) are never read and stay zero in a
// freshly allocated `out`.
//
// One invocation per output value. Prelude constant: WG.

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
