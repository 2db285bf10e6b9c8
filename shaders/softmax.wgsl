// Softmax along the rows of a (rows, cols) matrix, one workgroup per row.
//
//   softmax_forward   y = exp(x − max) / Σ exp(x − max)
//   softmax_backward  dx = y · (dy − Σ dy·y)     (needs only the forward's output y)
//
// A row that is all −inf gives NaN (0/0), as torch does.
// Prelude constant: WG, invocations per row (a power of two). Rows come from
// `flat_group`, so there may be more than 65535. workgroup_sum and
// workgroup_max are in workgroup_reduce.wgsl, compiled before this file.

const LOWEST: f32 = -0x1.fffffep+127f;  // a max that any real value beats (exactly the lowest f32: Tint rejects an inexact decimal)

struct Params {
    rows: u32,
    cols: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;         // (rows, cols)
@group(0) @binding(2) var<storage, read_write> y: array<f32>;   // (rows, cols)
@group(0) @binding(3) var<storage, read> dy: array<f32>;        // (rows, cols)
@group(0) @binding(4) var<storage, read> y_in: array<f32>;      // (rows, cols), the forward's output
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;  // (rows, cols)

@compute @workgroup_size(WG)
fn softmax_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var m = LOWEST;
    for (var i = lid; i < p.cols; i += WG) { m = max(m, x[base + i]); }
    m = workgroup_max(lid, m);
    var sum = 0.0;
    for (var i = lid; i < p.cols; i += WG) { sum += exp(x[base + i] - m); }
    sum = workgroup_sum(lid, sum);
    for (var i = lid; i < p.cols; i += WG) { y[base + i] = exp(x[base + i] - m) / sum; }
}

@compute @workgroup_size(WG)
fn softmax_backward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.cols;
    var dot = 0.0;
    for (var i = lid; i < p.cols; i += WG) { dot += dy[base + i] * y_in[base + i]; }
    dot = workgroup_sum(lid, dot);
    for (var i = lid; i < p.cols; i += WG) { dx[base + i] = y_in[base + i] * (dy[base + i] - dot); }
}
