// Decoding's products, y = x · Wᵀ for a few rows of x (M ≤ 8), at the speed of
// reading W once.
//
// This core is appended to a host module (matmul.wgsl for f32 weights,
// qmatmul.wgsl for quantized ones) that supplies
//   gemv_x4(m, k) -> vec4<f32>    x[m, k..k+4]          (k % 4 == 0)
//   gemv_w4(n, k) -> vec4<f32>    W[n, k..k+4], decoded (k % 4 == 0)
//   gemv_store(m, n, value)       y[m, n] = (or +=) alpha · value
// for K a multiple of 4. A decoding step reads every weight once and does two
// FLOPs with it, so the bound is memory bandwidth: each workgroup takes
// GV_ROWS rows of W, GV_LANES invocations a row; the lanes of a row read
// consecutive 4-value groups (coalesced), GV_UNROLL groups apart in flight at
// once, and the row's partial sums meet in a tree in workgroup memory. x is
// small and stays in cache.
//
// Prelude constants: GV_M (rows of x, 1-8), GV_LANES (a power of two),
// GV_ROWS, with GV_LANES · GV_ROWS ≤ 256.

const GV_UNROLL: u32 = 4u;

var<workgroup> gv_sum: array<f32, GV_M * GV_LANES * GV_ROWS>;  // (GV_M, GV_ROWS, GV_LANES) partial sums

@compute @workgroup_size(GV_LANES, GV_ROWS, 1)
fn gemv_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let lane = lid.x;
    let n = wid.x * GV_ROWS + lid.y;
    let row = min(n, p.n - 1u);  // past the edge: a clamped row, never stored
    var acc: array<f32, GV_M>;
    let k4 = p.k / 4u;
    for (var base = 0u; base < k4; base += GV_LANES * GV_UNROLL) {
        var w: array<vec4<f32>, GV_UNROLL>;
        for (var u = 0u; u < GV_UNROLL; u++) {
            let q = base + u * GV_LANES + lane;
            w[u] = vec4<f32>(0.0);
            if (q < k4) { w[u] = gemv_w4(row, q * 4u); }
        }
        for (var u = 0u; u < GV_UNROLL; u++) {
            let q = base + u * GV_LANES + lane;
            if (q < k4) {
                for (var m = 0u; m < GV_M; m++) { acc[m] += dot(gemv_x4(m, q * 4u), w[u]); }
            }
        }
    }
    let slot = lid.y * GV_LANES + lane;
    for (var m = 0u; m < GV_M; m++) { gv_sum[m * GV_LANES * GV_ROWS + slot] = acc[m]; }
    for (var s = GV_LANES / 2u; s > 0u; s /= 2u) {
        workgroupBarrier();
        if (lane < s) {
            for (var m = 0u; m < GV_M; m++) {
                let i = m * GV_LANES * GV_ROWS + slot;
                gv_sum[i] += gv_sum[i + s];
            }
        }
    }
    if (lane == 0u && n < p.n) {
        for (var m = 0u; m < GV_M; m++) { gemv_store(m, n, gv_sum[m * GV_LANES * GV_ROWS + slot]); }
    }
}
