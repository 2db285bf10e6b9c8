// Tree reductions over one workgroup in workgroup memory (no float atomics,
// which WGSL lacks), shared by rmsnorm.wgsl, softmax.wgsl, reduce.wgsl,
// cross_entropy.wgsl and adalora.wgsl: the pipeline cache places this file
// before each of them (`Kernel::source`). The host's prelude defines WG, its
// invocations per workgroup (a power of two), and each host calls these from
// uniform control flow with `local_invocation_index`. Each ends with a
// barrier, so the next reduction may reuse the arrays at once.

var<workgroup> red: array<f32, WG>;
var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;

// Σ of `value` over the workgroup.
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    red[lid] = value;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// max of `value` over the workgroup.
fn workgroup_max(lid: u32, value: f32) -> f32 {
    red[lid] = value;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

// logsumexp over the workgroup of each invocation's running pair (m, s), its
// max and Σ exp(x − m): pairs merge as (max(m1, m2), s1·exp(m1 − mm) + s2·exp(m2 − mm)).
fn workgroup_logsumexp(lid: u32, m: f32, s: f32) -> f32 {
    red_m[lid] = m;
    red_s[lid] = s;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let m1 = red_m[lid];
            let m2 = red_m[lid + stride];
            let s1 = red_s[lid];
            let s2 = red_s[lid + stride];
            let mm = max(m1, m2);
            red_m[lid] = mm;
            red_s[lid] = s1 * exp(m1 - mm) + s2 * exp(m2 - mm);
        }
        workgroupBarrier();
    }
    let total = red_m[0] + log(red_s[0]);
    workgroupBarrier();
    return total;
}
