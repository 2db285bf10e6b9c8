// Sum of squares for global gradient-norm clipping, in two passes of
// workgroup reductions (WGSL has no float atomics):
//
//   sum_squares_partial  workgroup g of `groups` sums x² over its strided share of x
//                        into partials[offset + g]; several tensors fill one partials buffer
//   sum_partials         one workgroup sums partials[0..count] into total[0]
//   clip_coef            clip = [‖g‖, min(max_norm / (‖g‖ + 1e-6), 1)], torch's clip_grad_norm_
//   argmax_rows          one workgroup a row r of x (count, n): ids[r] = the index of its
//                        largest value, greedy decoding's token picked on the GPU
//
// Prelude constant: WG, invocations per workgroup (a power of two).
// workgroup_sum is in workgroup_reduce.wgsl and order_key in order_key.wgsl,
// both compiled before this file.

struct Params {
    n: u32,          // elements of x
    groups: u32,     // workgroups sharing x
    offset: u32,     // first partial slot of x
    count: u32,      // partials to sum
    max_norm: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;              // (n)
@group(0) @binding(2) var<storage, read_write> partials: array<f32>; // (count)
@group(0) @binding(3) var<storage, read> partials_in: array<f32>;    // (count)
@group(0) @binding(4) var<storage, read_write> total: array<f32>;    // (1)
@group(0) @binding(5) var<storage, read> sumsq: array<f32>;          // (1)
@group(0) @binding(6) var<storage, read_write> clip: array<f32>;     // (2): norm, coefficient
@group(0) @binding(7) var<storage, read_write> ids: array<u32>;      // (count): argmax_rows' indices

@compute @workgroup_size(WG)
fn sum_squares_partial(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = wid.x * WG + lid; i < p.n; i += p.groups * WG) {
        let v = x[i];
        acc += v * v;
    }
    let sum = workgroup_sum(lid, acc);
    if (lid == 0u) { partials[p.offset + wid.x] = sum; }
}

@compute @workgroup_size(WG)
fn sum_partials(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < p.count; i += WG) { acc += partials_in[i]; }
    let sum = workgroup_sum(lid, acc);
    if (lid == 0u) { total[0] = sum; }
}

@compute @workgroup_size(1)
fn clip_coef() {
    let norm = sqrt(sumsq[0]);
    clip[0] = norm;
    clip[1] = min(p.max_norm / (norm + 1e-6), 1.0);
}

// argmax_rows compares values as integers (order_key.wgsl), so no float
// rule (a compiler may assume there are no NaNs or infinities) can change the
// answer. NaN is skipped; ties keep the lowest index; a row of only NaN gives
// NO_INDEX. `crate::model::llama::argmax` on the CPU is the same rule.
const NO_INDEX: u32 = 0xffffffffu;

@compute @workgroup_size(WG)
fn argmax_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.x;  // one row a workgroup: every invocation reaches the barriers
    var k = 0u;       // no value yet
    var index = 0u;
    if (row < p.count) {
        // This invocation's values rise in index, so a strict > keeps the first.
        for (var i = lid; i < p.n; i += WG) {
            let v = x[row * p.n + i];
            if (!is_nan_bits(v) && order_key(v) > k) {
                k = order_key(v);
                index = i;
            }
        }
    }
    let best = workgroup_best(lid, k, index);
    if (lid == 0u && row < p.count) { ids[row] = select(best.y, NO_INDEX, best.x == 0u); }
}
