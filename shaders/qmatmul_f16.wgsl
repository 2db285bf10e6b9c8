// f16 compute for the quantized matmuls: qmatmul_nt and qmatmul_nn of
// qmatmul.wgsl with f16 arithmetic, as bitsandbytes' `bnb_4bit_compute_dtype=
// float16`. This file is appended to qmatmul.wgsl (it reuses its Params,
// bindings, `w4` and `store`) and compiled as its own module behind
// `enable f16;`, because the portable module must build without SHADER_F16.
//
//   qmatmul_nt_f16   y  = x · Wᵀ     x (M, K), W (N, K) → y (M, N)     forward
//   qmatmul_nn_f16   dx = dy · W     dy (M, N), W (N, K) → dx (M, K)   backward to the input
//
// - Each row of x (or dy) is scaled by the power of two that puts its largest
//   |value| in [1, 2) (`row_scale`), so activations do not overflow f16 and
//   gradients do not underflow it. The store divides it back out, exactly.
// - Operands are rounded to f16; products and runs of RUN·4 products are summed
//   in f16, and the runs in f32. With |W| ≤ 1000 (QWeight::compute_for checks
//   it) a run's sum stays below 64·1000 < 65504.
// - Same register tiles and layout rules as the vec4 entries of qmatmul.wgsl
//   (K and the x rows aligned to 4, and N for qmatmul_nn_f16). Odd layouts
//   take `qmatmul_scalar`, in f32.
// - No subgroup variant: the subgroup kernels serve lavapipe's 8-lane
//   subgroups, and a CPU has no f16 arithmetic to gain from.
//
// Prelude constants: FORMAT, TM, TN, WX, WY (and FORWARD for the entries of
// qmatmul.wgsl in the module).

// vec4 steps of K per f16 partial sum.
const RUN: u32 = 8u;

// The power of two that puts the largest |value| of the len4 vec4s from
// a4[start] in [1, 2). An all-zero row gets 2^127, a non-finite one 2^-126
// (its outputs are non-finite, as in f32).
fn row_scale(start: u32, len4: u32) -> f32 {
    var m = vec4<f32>(0.0);
    for (var kk = 0u; kk < len4; kk++) { m = max(m, abs(a4[start + kk])); }
    let e = min((bitcast<u32>(max(max(m.x, m.y), max(m.z, m.w))) >> 23u) & 0xffu, 253u);
    return bitcast<f32>((254u - e) << 23u);
}

// The TM rows of x (or dy) from row0 an invocation multiplies: where each
// starts (a vec4 index, clamped to the last row) and its `row_scale`.
struct Rows {
    start: array<u32, TM>,
    scale: array<f32, TM>,
}

fn scaled_rows(row0: u32) -> Rows {
    var r: Rows;
    for (var i = 0u; i < TM; i++) {
        r.start[i] = p.a_off / 4u + min(row0 + i, p.m - 1u) * (p.lda / 4u);
        r.scale[i] = row_scale(r.start[i], p.k / 4u);
    }
    return r;
}

// y = x · Wᵀ: both operands contiguous along K.
@compute @workgroup_size(WX, WY, 1)
fn qmatmul_nt_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WY + lid.y) * TM;
    let col0 = (wid.x * WX + lid.x) * TN;
    if (row0 >= p.m || col0 >= p.n) { return; }
    let k4 = p.k / 4u;
    let rows = scaled_rows(row0);
    let arow = rows.start;
    let rs = rows.scale;
    var wrow: array<u32, TN>;  // first flattened element of W row col0 + j
    for (var j = 0u; j < TN; j++) { wrow[j] = min(col0 + j, p.n - 1u) * p.k; }
    var acc = array<array<f32, TN>, TM>();
    for (var k0 = 0u; k0 < k4; k0 += RUN) {
        var part = array<array<f16, TN>, TM>();
        for (var kk = k0; kk < min(k0 + RUN, k4); kk++) {
            var av: array<vec4<f16>, TM>;  // x[row0 + i, 4kk..4kk+4], scaled
            for (var i = 0u; i < TM; i++) { av[i] = vec4<f16>(a4[arow[i] + kk] * rs[i]); }
            for (var j = 0u; j < TN; j++) {
                let wv = vec4<f16>(w4(wrow[j] + kk * 4u));  // W[col0 + j, 4kk..4kk+4]
                for (var i = 0u; i < TM; i++) { part[i][j] += dot(av[i], wv); }
            }
        }
        for (var i = 0u; i < TM; i++) {
            for (var j = 0u; j < TN; j++) { acc[i][j] += f32(part[i][j]); }
        }
    }
    for (var i = 0u; i < TM; i++) {
        if (row0 + i >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            if (col0 + j < p.n) { store(row0 + i, col0 + j, acc[i][j] / rs[i]); }
        }
    }
}

// dx = dy · W: M×N is the output (rows of dy × in_features) and K the inner
// dimension (out_features); W row kk holds the weights of output kk.
@compute @workgroup_size(WX, WY, 1)
fn qmatmul_nn_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WY + lid.y) * TM;
    let col0 = (wid.x * WX + lid.x) * TN;
    if (row0 >= p.m || col0 >= p.n) { return; }
    let k4 = p.k / 4u;
    let rows = scaled_rows(row0);
    let arow = rows.start;
    let rs = rows.scale;
    var wcol: array<u32, TN / 4u>;  // first of 4 columns of W, clamped to the last whole vec4
    for (var j = 0u; j < TN / 4u; j++) { wcol[j] = min(col0 + j * 4u, p.n - 4u); }
    var acc = array<array<vec4<f32>, TN / 4u>, TM>();
    for (var k0 = 0u; k0 < k4; k0 += RUN) {
        var part = array<array<vec4<f16>, TN / 4u>, TM>();
        for (var kk = k0; kk < min(k0 + RUN, k4); kk++) {
            var av: array<vec4<f16>, TM>;  // dy[row0 + i, 4kk..4kk+4], scaled
            for (var i = 0u; i < TM; i++) { av[i] = vec4<f16>(a4[arow[i] + kk] * rs[i]); }
            for (var r = 0u; r < 4u; r++) {
                let wbase = (kk * 4u + r) * p.n;  // W row 4kk + r
                for (var j = 0u; j < TN / 4u; j++) {
                    let wv = vec4<f16>(w4(wbase + wcol[j]));
                    for (var i = 0u; i < TM; i++) { part[i][j] += av[i][r] * wv; }
                }
            }
        }
        for (var i = 0u; i < TM; i++) {
            for (var j = 0u; j < TN / 4u; j++) { acc[i][j] += vec4<f32>(part[i][j]); }
        }
    }
    for (var i = 0u; i < TM; i++) {
        if (row0 + i >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            if (col0 + j < p.n) { store(row0 + i, col0 + j, acc[i][j / 4u][j % 4u] / rs[i]); }
        }
    }
}
