// Elementwise f32 arithmetic on flat tensors of n values, one value per
// invocation. More than 65535 workgroups are split over a 2-D grid
// (`kernels::grid_1d`) and recombined with `flat_group`.
//
//   add           out = a + b
//   mul           out = a · b
//   scale         out = s · a
//   add_scaled    acc = acc + s · b      (in place: gradient accumulation, residuals)
//   scale_inplace acc = s · acc          (in place: gradient clipping)
//   fill          acc = s
//   mul_columns   out[r, c] = a[r, c] · b[c]             (rows of p.cols: (IA)³'s and DoRA's vectors)
//   scale_columns acc[r, c] = acc[r, c] · a[c]           (in place, rows of p.cols: DoRA's g in a generation)
//   affine_columns acc[r, c] = acc[r, c] · a[c] + b[c]   (the same with a shift)
//   dropout       out = a · keep(i) · s, keep(i) = hash(seed, i) ≥ threshold (inverted dropout;
//                 the backward is the same call on dy with the same seed)
//   uniform_noise acc = acc + s · (2u(i) − 1), u(i) = hash(seed, i)'s top 24 bits / 2²⁴
//                 (NEFTune's noise on the embeddings, in [−s, s); it has no backward: dy passes)
//
// Prelude constant: WG, invocations per workgroup.

struct Params {
    n: u32,
    s: f32,
    seed: u32,       // dropout and uniform_noise only
    threshold: u32,  // dropout only: drop when the hash's top 24 bits are below it
    cols: u32,       // the column entries only: the row length
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;          // (n)
@group(0) @binding(2) var<storage, read> b: array<f32>;          // (n)
@group(0) @binding(3) var<storage, read_write> out: array<f32>;  // (n)
@group(0) @binding(4) var<storage, read_write> acc: array<f32>;  // (n), updated in place

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_group(wid, nwg) * WG + lid;
}

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = a[i] + b[i]; }
}

@compute @workgroup_size(WG)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = a[i] * b[i]; }
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = a[i] * p.s; }
}

@compute @workgroup_size(WG)
fn add_scaled(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { acc[i] = acc[i] + p.s * b[i]; }
}

@compute @workgroup_size(WG)
fn scale_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { acc[i] = acc[i] * p.s; }
}

@compute @workgroup_size(WG)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { acc[i] = p.s; }
}

@compute @workgroup_size(WG)
fn mul_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { out[i] = a[i] * b[i % p.cols]; }
}

@compute @workgroup_size(WG)
fn scale_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { acc[i] = acc[i] * a[i % p.cols]; }
}

@compute @workgroup_size(WG)
fn affine_columns(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) { acc[i] = acc[i] * a[i % p.cols] + b[i % p.cols]; }
}

// PCG-style 32-bit hash (Jarzynski and Olano, "Hash Functions for GPU
// Rendering", JCGT 2020). `kernels::reference::dropout` mirrors it exactly.
fn pcg_hash(x: u32) -> u32 {
    let state = x * 747796405u + 2891336453u;
    let word = ((state >> ((state >> 28u) + 4u)) ^ state) * 277803737u;
    return (word >> 22u) ^ word;
}

@compute @workgroup_size(WG)
fn dropout(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        let keep = (pcg_hash(i ^ pcg_hash(p.seed)) >> 8u) >= p.threshold;
        out[i] = select(0.0, a[i] * p.s, keep);
    }
}

@compute @workgroup_size(WG)
fn uniform_noise(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i < p.n) {
        // 2u − 1 is exact in f32: 24 random bits times 2⁻²³, less 1.
        let unit = f32(pcg_hash(i ^ pcg_hash(p.seed)) >> 8u) * (1.0 / 8388608.0) - 1.0;
        acc[i] = acc[i] + p.s * unit;
    }
}
