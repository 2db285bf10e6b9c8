// Subgroup variants of qmatmul_nt and qmatmul_nn. This file is appended to
// qmatmul.wgsl (it reuses its Params, bindings, `w4` and `store`) and compiled
// as its own module, because subgroup operations need Features::SUBGROUP and
// the portable module must build without it.
//
// Same scheme as shaders/matmul_subgroup.wgsl (native only, chosen at launch
// when the adapter's subgroups are exactly 8 lanes wide: lavapipe on a 256-bit
// CPU, where every per-lane buffer load is a scalar loop and speed is FMAs per
// loaded element). One workgroup is one subgroup; it computes an SR × 8·TN
// block of the output. The 8 lanes share the SR rows of x (or dy): each loads
// SR/8 of the vectors and `subgroupBroadcast` hands them to the others, so
// they cost 1/8 of a load per use. Each lane decodes its own TN columns of W
// with `w4`, and every decoded vec4 serves all SR rows.
// No lane leaves early (a broadcast needs every lane): edges are clamped for
// loads and guarded for stores. Same layout rules as the vec4 entries of
// qmatmul.wgsl: K and the x rows aligned to 4, and for qmatmul_nn_sg N too.
//
// Prelude constants: FORMAT, SR (rows per subgroup, a multiple of 8), TN (columns
// per lane, a multiple of 4), and the ones qmatmul.wgsl's own entries need.

// The vec4 index where each row lane `lane` loads starts: rows row0 + 8s +
// lane of x (or dy), clamped to the last row.
fn lane_rows(row0: u32, lane: u32) -> array<u32, SR / 8u> {
    var arow: array<u32, SR / 8u>;
    for (var s = 0u; s < SR / 8u; s++) { arow[s] = p.a_off / 4u + min(row0 + s * 8u + lane, p.m - 1u) * (p.lda / 4u); }
    return arow;
}

// y = x · Wᵀ: x (M, K) and W (N, K) both contiguous along K → y (M, N).
@compute @workgroup_size(8, 1, 1)
fn qmatmul_nt_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row0 = wid.y * SR;
    let col0 = (wid.x * 8u + lane) * TN;
    let arow = lane_rows(row0, lane);
    var wrow: array<u32, TN>;  // first flattened element of W row col0 + j
    for (var j = 0u; j < TN; j++) { wrow[j] = min(col0 + j, p.n - 1u) * p.k; }
    var acc: array<array<f32, TN>, SR>;
    for (var kk = 0u; kk < p.k / 4u; kk++) {
        var av: array<vec4<f32>, SR>;  // x[row0 + i, 4kk..4kk+4] in every lane
        for (var s = 0u; s < SR / 8u; s++) {
            let all = spread8(a4[arow[s] + kk]);
            for (var l = 0u; l < 8u; l++) { av[s * 8u + l] = all[l]; }
        }
        for (var j = 0u; j < TN; j++) {
            let wv = w4(wrow[j] + kk * 4u);  // W[col0 + j, 4kk..4kk+4]
            for (var i = 0u; i < SR; i++) { acc[i][j] += dot(av[i], wv); }
        }
    }
    for (var i = 0u; i < SR; i++) {
        for (var j = 0u; j < TN; j++) {
            if (row0 + i < p.m && col0 + j < p.n) { store(row0 + i, col0 + j, acc[i][j]); }
        }
    }
}

// dx = dy · W: dy (M, K) contiguous along K, W (K, N) contiguous along N →
// dx (M, N). Here N is in_features and K out_features (see qmatmul_nn).
@compute @workgroup_size(8, 1, 1)
fn qmatmul_nn_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row0 = wid.y * SR;
    let col0 = (wid.x * 8u + lane) * TN;
    let arow = lane_rows(row0, lane);
    var wcol: array<u32, TN / 4u>;  // first of 4 columns of W, clamped to the last whole vec4
    for (var j = 0u; j < TN / 4u; j++) { wcol[j] = min(col0 + j * 4u, p.n - 4u); }
    var acc: array<array<vec4<f32>, TN / 4u>, SR>;
    for (var kk = 0u; kk < p.k / 4u; kk++) {
        var av: array<vec4<f32>, SR>;  // dy[row0 + i, 4kk..4kk+4] in every lane
        for (var s = 0u; s < SR / 8u; s++) {
            let all = spread8(a4[arow[s] + kk]);
            for (var l = 0u; l < 8u; l++) { av[s * 8u + l] = all[l]; }
        }
        for (var r = 0u; r < 4u; r++) {
            let wbase = (kk * 4u + r) * p.n;  // W row 4kk + r
            for (var j = 0u; j < TN / 4u; j++) {
                let wv = w4(wbase + wcol[j]);
                for (var i = 0u; i < SR; i++) { acc[i][j] += av[i][r] * wv; }
            }
        }
    }
    for (var i = 0u; i < SR; i++) {
        for (var j = 0u; j < TN; j++) {
            if (row0 + i < p.m && col0 + j < p.n) { store(row0 + i, col0 + j, acc[i][j / 4u][j % 4u]); }
        }
    }
}
