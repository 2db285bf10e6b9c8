// Subgroup variants of the vec4 kernels in matmul.wgsl. This file is appended
// to matmul.wgsl (it reuses its Params, bindings and `store_c`) and compiled as
// its own module, because subgroup operations need Features::SUBGROUP and the
// portable module must build without it (wgpu's WebGPU backend never has it).
//
// Subgroup kernels (native only, chosen at launch when the adapter's subgroups
// are exactly 8 lanes wide: lavapipe on a 256-bit CPU). On lavapipe an
// invocation is one SIMD lane and every buffer load with a per-lane offset is
// a scalar loop over the lanes, so speed is FMAs per loaded element. One
// workgroup is one subgroup; it computes an SR × 8·TN block of C. The 8 lanes
// share the SR rows: each loads SR/8 of the A vectors it needs and
// `subgroupBroadcast` (a register shuffle there) hands them to the others, so
// A costs 1/8 of a load per use; each lane loads its own TN columns of B.
// No lane leaves early (a broadcast needs every lane): edges are clamped for
// loads and guarded for stores. Same layout rules as the vec4 kernels in
// matmul.wgsl.
//
// Prelude constants: SR (rows per subgroup, a multiple of 32), TN (columns
// per lane, a multiple of 4).

// y = x · Wᵀ, A (M, K) and B (N, K) contiguous along K.
@compute @workgroup_size(8, 1, 1)
fn matmul_nt_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row0 = wid.y * SR;
    let col0 = (wid.x * 8u + lane) * TN;
    let abase = (p.a_off + wid.z * p.stride_a) / 4u;
    let bbase = (p.b_off + wid.z * p.stride_b) / 4u;
    let lda4 = p.lda / 4u;
    let ldb4 = p.ldb / 4u;
    // Lane l loads rows row0 + 8s + l.
    var arow: array<u32, SR / 8u>;
    for (var s = 0u; s < SR / 8u; s++) { arow[s] = abase + min(row0 + s * 8u + lane, p.m - 1u) * lda4; }
    var brow: array<u32, TN>;
    for (var j = 0u; j < TN; j++) { brow[j] = bbase + min(col0 + j, p.n - 1u) * ldb4; }
    var acc: array<array<f32, TN>, SR>;
    let k4 = p.k / 4u;
    for (var kk = 0u; kk < k4; kk++) {
        var av: array<vec4<f32>, SR>;  // A[row0 + i, 4kk..4kk+4] in every lane
        for (var s = 0u; s < SR / 8u; s++) {
            let all = spread8(a4[arow[s] + kk]);
            for (var l = 0u; l < 8u; l++) { av[s * 8u + l] = all[l]; }
        }
        for (var j = 0u; j < TN; j++) {
            let bv = b4[brow[j] + kk];
            for (var i = 0u; i < SR; i++) { acc[i][j] += dot(av[i], bv); }
        }
    }
    let cbase = p.c_off + wid.z * p.stride_c;
    for (var i = 0u; i < SR; i++) {
        for (var j = 0u; j < TN; j++) {
            if (row0 + i < p.m && col0 + j < p.n) { store_c(cbase, row0 + i, col0 + j, acc[i][j]); }
        }
    }
}

// dx = dy · W, A (M, K) contiguous along K, B (K, N) contiguous along N.
@compute @workgroup_size(8, 1, 1)
fn matmul_nn_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row0 = wid.y * SR;
    let col0 = (wid.x * 8u + lane) * TN;
    let abase = (p.a_off + wid.z * p.stride_a) / 4u;
    let bbase = (p.b_off + wid.z * p.stride_b) / 4u;
    let lda4 = p.lda / 4u;
    let ldb4 = p.ldb / 4u;
    let n4 = p.n / 4u;
    var arow: array<u32, SR / 8u>;
    for (var s = 0u; s < SR / 8u; s++) { arow[s] = abase + min(row0 + s * 8u + lane, p.m - 1u) * lda4; }
    var bcol: array<u32, TN / 4u>;
    for (var j = 0u; j < TN / 4u; j++) { bcol[j] = bbase + min(col0 / 4u + j, n4 - 1u); }
    var acc: array<array<vec4<f32>, TN / 4u>, SR>;
    let k4 = p.k / 4u;
    for (var kk = 0u; kk < k4; kk++) {
        var av: array<vec4<f32>, SR>;  // A[row0 + i, 4kk..4kk+4] in every lane
        for (var s = 0u; s < SR / 8u; s++) {
            let all = spread8(a4[arow[s] + kk]);
            for (var l = 0u; l < 8u; l++) { av[s * 8u + l] = all[l]; }
        }
        for (var r = 0u; r < 4u; r++) {
            let brow = (kk * 4u + r) * ldb4;
            for (var j = 0u; j < TN / 4u; j++) {
                let bv = b4[bcol[j] + brow];
                for (var i = 0u; i < SR; i++) { acc[i][j] += av[i][r] * bv; }
            }
        }
    }
    let cbase = p.c_off + wid.z * p.stride_c;
    for (var i = 0u; i < SR; i++) {
        for (var j = 0u; j < TN; j++) {
            if (row0 + i < p.m && col0 + j < p.n) { store_c(cbase, row0 + i, col0 + j, acc[i][j / 4u][j % 4u]); }
        }
    }
}

// dW = dyᵀ · x, A stored (K, M) contiguous along M, B (K, N) contiguous along N.
@compute @workgroup_size(8, 1, 1)
fn matmul_tn_sg(@builtin(workgroup_id) wid: vec3<u32>, @builtin(subgroup_invocation_id) lane: u32) {
    let row0 = wid.y * SR;
    let col0 = (wid.x * 8u + lane) * TN;
    let abase = (p.a_off + wid.z * p.stride_a) / 4u;
    let bbase = (p.b_off + wid.z * p.stride_b) / 4u;
    let lda4 = p.lda / 4u;
    let ldb4 = p.ldb / 4u;
    let m4 = p.m / 4u;
    let n4 = p.n / 4u;
    // Lane l loads the vec4 of rows row0 + 4(8s + l) .. +4 at each k.
    var acol: array<u32, SR / 32u>;
    for (var s = 0u; s < SR / 32u; s++) { acol[s] = abase + min(row0 / 4u + s * 8u + lane, m4 - 1u); }
    var bcol: array<u32, TN / 4u>;
    for (var j = 0u; j < TN / 4u; j++) { bcol[j] = bbase + min(col0 / 4u + j, n4 - 1u); }
    var acc: array<array<vec4<f32>, TN / 4u>, SR>;
    for (var kk = 0u; kk < p.k; kk++) {
        var av: array<f32, SR>;  // A[kk, row0 + i] in every lane
        for (var s = 0u; s < SR / 32u; s++) {
            let all = spread8(a4[acol[s] + kk * lda4]);
            for (var l = 0u; l < 8u; l++) {
                for (var q = 0u; q < 4u; q++) { av[(s * 8u + l) * 4u + q] = all[l][q]; }
            }
        }
        var bv: array<vec4<f32>, TN / 4u>;
        for (var j = 0u; j < TN / 4u; j++) { bv[j] = b4[bcol[j] + kk * ldb4]; }
        for (var i = 0u; i < SR; i++) {
            for (var j = 0u; j < TN / 4u; j++) { acc[i][j] += av[i] * bv[j]; }
        }
    }
    let cbase = p.c_off + wid.z * p.stride_c;
    for (var i = 0u; i < SR; i++) {
        for (var j = 0u; j < TN; j++) {
            if (row0 + i < p.m && col0 + j < p.n) { store_c(cbase, row0 + i, col0 + j, acc[i][j / 4u][j % 4u]); }
        }
    }
}
