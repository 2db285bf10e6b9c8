// DoRA (PEFT's DoraLinearLayer, peft/tuners/lora/dora.py) on a dense block of
// rows r0..r0+rows of a Linear's (out, in) weight, one workgroup per row:
//
//   magnitude_scale  w holds W + s·B·A:  n[r0 + i] = ‖w[i, :]‖₂,  g[r0 + i] = m[r0 + i] / n[r0 + i],  inv_n[r0 + i] = 1 / n[r0 + i]
//   scale_rows       w[i, :] *= g[r0 + i]     (merge: W ← g·(W + ΔW))
//   unscale_rows     w[i, :] /= g[r0 + i]     (unmerge: W + ΔW ← W / g)
//
// Prelude constant: WG, invocations per workgroup (a power of two).
// workgroup_sum is in workgroup_reduce.wgsl, compiled before this file.

struct Params {
    rows: u32,     // rows of this block
    cols: u32,     // in
    row_off: u32,  // r0: the block's first row in the Linear
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<f32>;            // (rows, in): W + s·B·A, rows r0..r0+rows
@group(0) @binding(2) var<storage, read> m: array<f32>;            // (out): lora_magnitude_vector
@group(0) @binding(3) var<storage, read_write> g: array<f32>;      // (out): m / ‖W + s·B·A‖
@group(0) @binding(4) var<storage, read_write> inv_n: array<f32>;  // (out): 1 / ‖W + s·B·A‖
@group(0) @binding(5) var<storage, read_write> wr: array<f32>;     // (rows, in): rescaled in place
@group(0) @binding(6) var<storage, read> scale: array<f32>;        // (out): g
@group(0) @binding(7) var<storage, read_write> n: array<f32>;      // (out): ‖W + s·B·A‖

@compute @workgroup_size(WG)
fn magnitude_scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; } // uniform: the whole workgroup leaves
    var acc = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let v = w[row * p.cols + j];
        acc += v * v;
    }
    let sumsq = workgroup_sum(lid, acc);
    if (lid == 0u) {
        let norm = sqrt(sumsq);
        n[p.row_off + row] = norm;
        g[p.row_off + row] = m[p.row_off + row] / norm;
        inv_n[p.row_off + row] = 1.0 / norm;
    }
}

@compute @workgroup_size(WG)
fn scale_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let s = scale[p.row_off + row];
    for (var j = lid; j < p.cols; j += WG) { wr[row * p.cols + j] = wr[row * p.cols + j] * s; }
}

@compute @workgroup_size(WG)
fn unscale_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let s = scale[p.row_off + row];
    for (var j = lid; j < p.cols; j += WG) { wr[row * p.cols + j] = wr[row * p.cols + j] / s; }
}
