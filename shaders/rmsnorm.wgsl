// RMSNorm over the last dimension, as transformers' LlamaRMSNorm in f32:
//
//   y = w · (x · rstd),   rstd = 1 / sqrt(mean(x²) + eps)   for each row.
//
// The forward saves rstd (rows): with x and w it is all the backward needs.
//
//   rmsnorm_forward          one workgroup per row: y, rstd
//   rmsnorm_backward         one workgroup per row: dx = rstd·dy·w − x·rstd³·(Σ dy·w·x)/dim
//   rmsnorm_backward_weight  dweight = Σ_rows dy·x·rstd; each workgroup owns DW_X columns,
//                            DW_Y lanes walk the rows and are summed in workgroup memory
//                            (no float atomics, which WGSL lacks)
//
// Prelude constant: WG, invocations per row (a power of two). Rows come from
// `flat_group`, so there may be more than 65535. Compiled after workgroup_reduce.wgsl.

const DW_X: u32 = 16u;
const DW_Y: u32 = 16u;

struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;             // (rows, dim)
@group(0) @binding(2) var<storage, read> weight: array<f32>;        // (dim)
@group(0) @binding(3) var<storage, read_write> y: array<f32>;       // (rows, dim)
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;    // (rows), saved for backward
@group(0) @binding(5) var<storage, read> dy: array<f32>;            // (rows, dim)
@group(0) @binding(6) var<storage, read> rstd_in: array<f32>;       // (rows), from the forward
@group(0) @binding(7) var<storage, read_write> dx: array<f32>;      // (rows, dim)
@group(0) @binding(8) var<storage, read_write> dweight: array<f32>; // (dim)

// workgroup_sum is in workgroup_reduce.wgsl. rmsnorm_backward_weight sums
// columns of a (DW_Y, DW_X) tile instead (16 trees side by side), so it keeps its own.
var<workgroup> red_w: array<f32, 256>;  // (DW_Y, DW_X)

@compute @workgroup_size(WG)
fn rmsnorm_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    var sum_sq = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        let v = x[base + i];
        sum_sq += v * v;
    }
    let total = workgroup_sum(lid, sum_sq);
    let r = 1.0 / sqrt(total / f32(p.dim) + p.eps);
    for (var i = lid; i < p.dim; i += WG) {
        y[base + i] = weight[i] * (x[base + i] * r);
    }
    if (lid == 0u) { rstd[row] = r; }
}

@compute @workgroup_size(WG)
fn rmsnorm_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.dim;
    let r = rstd_in[row];
    var part = 0.0;
    for (var i = lid; i < p.dim; i += WG) {
        part += dy[base + i] * weight[i] * x[base + i];
    }
    let dot = workgroup_sum(lid, part);
    let coef = r * r * r * dot / f32(p.dim);
    for (var i = lid; i < p.dim; i += WG) {
        dx[base + i] = r * dy[base + i] * weight[i] - coef * x[base + i];
    }
}

@compute @workgroup_size(DW_X, DW_Y)
fn rmsnorm_backward_weight(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
) {
    let col = wid.x * DW_X + lid.x;
    var acc = 0.0;
    if (col < p.dim) {
        for (var r = lid.y; r < p.rows; r += DW_Y) {
            acc += dy[r * p.dim + col] * x[r * p.dim + col] * rstd_in[r];
        }
    }
    red_w[lid.y * DW_X + lid.x] = acc;
    workgroupBarrier();
    for (var s = DW_Y / 2u; s > 0u; s = s / 2u) {
        if (lid.y < s) { red_w[lid.y * DW_X + lid.x] += red_w[(lid.y + s) * DW_X + lid.x]; }
        workgroupBarrier();
    }
    if (lid.y == 0u && col < p.dim) { dweight[col] = red_w[lid.x]; }
}
