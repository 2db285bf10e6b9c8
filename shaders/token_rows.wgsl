// Trainable token rows (PEFT's trainable_token_indices): k rows of the
// embedding table, delta (k, dim), stand in for table rows indices[0..k].
// The embedding gathers them in place of the frozen rows; on a model whose
// lm_head is the embedding (tie_word_embeddings) the head's logits for
// those ids are x · delta[j] too. Forward and backward side by side:
//
//   rows_forward:      out[t] = delta[slots[ids[t]]]  where the id has a slot
//   rows_backward:     d_delta[j] += Σ_t dx[t]        over t with slots[ids[t]] = j
//   columns_forward:   logits[r, indices[j]] = x[r] · delta[j]
//   columns_take:      g[r, j] = dlogits[r, indices[j]], and that logit's gradient set to 0
//
// LoRA on the embedding (PEFT's lora.Embedding: x += s·A[:, ids]ᵀ·Bᵀ, A (r, V)) reads and writes A
// by columns, the same id-indexed access:
//
//   ids_gather:        out[t, c] = a[c, ids[t]]                   (out (n, dim = r), a in `x` as (r, vocab))
//   ids_scatter:       grad[c, ids[t]] += x[t, c]                 (x (n, r), grad (r, vocab))
//
// After columns_take the frozen head's backward (dx = dlogits · W) no longer
// sees the replaced columns; the caller adds g · delta into dx and gᵀ · x
// into d_delta (two GEMMs).
//
// slots (vocab) maps an id to its row j, or -1. Prelude constant: WG.

struct Params {
    n: u32,      // tokens (rows_*) or rows of x and logits (columns_*)
    dim: u32,
    vocab: u32,
    k: u32,      // trainable rows
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;            // (n)
@group(0) @binding(2) var<storage, read> slots: array<i32>;          // (vocab)
@group(0) @binding(3) var<storage, read> indices: array<u32>;        // (k), each < vocab
@group(0) @binding(4) var<storage, read> delta: array<f32>;          // (k, dim)
@group(0) @binding(5) var<storage, read> x: array<f32>;              // (n, dim): dx (rows_backward), the head's input (columns_forward)
@group(0) @binding(6) var<storage, read_write> out: array<f32>;      // (n, dim)
@group(0) @binding(7) var<storage, read_write> grad: array<f32>;     // (k, dim), added to
@group(0) @binding(8) var<storage, read_write> logits: array<f32>;   // (n, vocab)
@group(0) @binding(9) var<storage, read_write> g: array<f32>;        // (n, k)

// Row j of delta for token id `id`, or -1 (ids ≥ vocab have none).
fn slot_of(id: u32) -> i32 {
    if (id >= p.vocab) { return -1; }
    return slots[id];
}

// One invocation per output value.
@compute @workgroup_size(WG)
fn rows_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.n * p.dim) { return; }
    let j = slot_of(ids[i / p.dim]);
    if (j >= 0) {
        out[i] = delta[u32(j) * p.dim + i % p.dim];
    }
}

// One invocation per column: it owns that column of every row of grad, so
// the tokens are summed in order, without atomics.
@compute @workgroup_size(WG)
fn rows_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = flat_group(wid, nwg) * WG + lid;
    if (c >= p.dim) { return; }
    for (var t = 0u; t < p.n; t++) {
        let j = slot_of(ids[t]);
        if (j >= 0) {
            let at = u32(j) * p.dim + c;
            grad[at] = grad[at] + x[t * p.dim + c];
        }
    }
}

// One invocation per (row r, trainable row j).
@compute @workgroup_size(WG)
fn columns_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.n * p.k) { return; }
    let r = i / p.k;
    let j = i % p.k;
    var sum = 0.0;
    for (var c = 0u; c < p.dim; c++) {
        sum += x[r * p.dim + c] * delta[j * p.dim + c];
    }
    logits[r * p.vocab + indices[j]] = sum;
}

// One invocation per (row r, trainable row j).
@compute @workgroup_size(WG)
fn columns_take(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.n * p.k) { return; }
    let at = (i / p.k) * p.vocab + indices[i % p.k];
    g[i] = logits[at];
    logits[at] = 0.0;
}

// One invocation per output value; ids past the vocabulary gather zeros.
@compute @workgroup_size(WG)
fn ids_gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.n * p.dim) { return; }
    let id = ids[i / p.dim];
    var v = 0.0;
    if (id < p.vocab) {
        v = x[(i % p.dim) * p.vocab + id];
    }
    out[i] = v;
}

// One invocation per row c of grad: it sums its tokens in order, without atomics.
@compute @workgroup_size(WG)
fn ids_scatter(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = flat_group(wid, nwg) * WG + lid;
    if (c >= p.dim) { return; }
    for (var t = 0u; t < p.n; t++) {
        let id = ids[t];
        if (id < p.vocab) {
            let at = c * p.vocab + id;
            grad[at] = grad[at] + x[t * p.dim + c];
        }
    }
}
