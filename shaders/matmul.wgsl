// Matrix multiply in f32, batched:  C = alpha · op(A) · op(B)  (+ C when accumulating).
//
//   op(A) is (M, K): A stored (M, K) row-major, or stored (K, M) and transposed ("tn").
//   op(B) is (K, N): B stored (K, N), or stored (N, K) and transposed ("nt":
//   y = x·Wᵀ with a Linear weight W of shape (out, in)).
//
// The three orientations training needs are three entry points:
//   matmul_nt  y  = x · Wᵀ        forward through a Linear
//   matmul_nn  dx = dy · W        backward to the input
//   matmul_tn  dW = dyᵀ · x       gradient of a weight
// Each invocation computes a TM×TN block of C in registers from vec4 loads
// along the contiguous dimension; lavapipe and real GPUs both reward work per
// invocation and wide loads far more than workgroup memory here. These need
// the contiguous extents and offsets to be multiples of 4; `matmul_scalar`
// (the same register tiling with scalar loads) takes every other shape, and
// `matmul_naive` (one output per invocation) is kept as the benchmark's yardstick.
//
// Prelude constants: TM, TN (outputs per invocation; multiples of 4, except
// TM of 1-3 for a few rows in matmul_nt, matmul_nn and the scalar kernel), WX,
// WY (workgroup size), and for the scalar kernels TRANS_A, TRANS_B.
// Appended to every module: shaders/low_rank.wgsl (a Linear's forward that
// adds LoRA's term as it stores y) or shaders/low_rank_none.wgsl, then
// shaders/output_op.wgsl (its bias, or SwiGLU's gate) or output_op_none.wgsl.

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    lda: u32,           // row stride of A as stored
    ldb: u32,           // row stride of B as stored
    ldc: u32,           // row stride of C
    accumulate: u32,    // 1: C += …, 0: C = …
    a_off: u32, b_off: u32, c_off: u32,  // element offsets of batch 0
    alpha: f32,
    stride_a: u32, stride_b: u32, stride_c: u32,  // element strides between batches
    k_split: u32,       // K per split of gemm_blocked_split (shaders/gemm_blocked.wgsl)
    lr_rank: u32,       // r of the low-rank term (shaders/low_rank.wgsl)
    lr_scale: f32,      // its scale
    lr_row: u32,        // B's row of this launch's first output column
    lr_ld: u32,         // 0: B stored (out, r); else Bᵀ stored (r, lr_ld)
    lr_h_ld: u32,       // h's row stride
    lr_h_col: u32,      // the first of h's columns the term reads
    op_col: u32,        // the output op's first column (shaders/output_op.wgsl)
    op_ld: u32,         // its gate's row stride
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;   // (batch, M, K) or (batch, K, M), vec4 along the row
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;   // (batch, K, N) or (batch, N, K), vec4 along the row
@group(0) @binding(3) var<storage, read_write> c: array<f32>;    // (batch, M, ldc)
@group(0) @binding(4) var<storage, read> a: array<f32>;          // scalar views for any shape
@group(0) @binding(5) var<storage, read> b: array<f32>;
@group(0) @binding(6) var<storage, read_write> cs: array<f32>;

// C[base + m·ldc + n] = alpha · value (+ C), plus the low-rank term where the
// module has one (shaders/low_rank.wgsl: a Linear's forward, batch 1; the
// GEMV stores with `term` off, having added it in its lanes), through the
// output op (shaders/output_op.wgsl; batch 1 too).
fn store_c(base: u32, m: u32, n: u32, value: f32) { store_c_with(base, m, n, value, LOW_RANK); }

fn store_c_with(base: u32, m: u32, n: u32, value: f32, term: bool) {
    let i = base + m * p.ldc + n;
    var v = p.alpha * value;
    if (term) { v += low_rank_term(m, n); }
    v = output_op(m, n, v);
    if (p.accumulate != 0u) {
        c[i] = c[i] + v;
    } else {
        c[i] = v;
    }
}

// y = x · Wᵀ: A (M, K) and B (N, K) both contiguous along K.
@compute @workgroup_size(WX, WY, 1)
fn matmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WY + lid.y) * TM;
    let col0 = (wid.x * WX + lid.x) * TN;
    if (row0 >= p.m || col0 >= p.n) { return; }
    let abase = (p.a_off + wid.z * p.stride_a) / 4u;
    let bbase = (p.b_off + wid.z * p.stride_b) / 4u;
    let lda4 = p.lda / 4u;
    let ldb4 = p.ldb / 4u;
    // Rows and columns past the edge are clamped so every load is in range;
    // only the stores are guarded.
    var arow: array<u32, TM>;
    for (var i = 0u; i < TM; i++) { arow[i] = abase + min(row0 + i, p.m - 1u) * lda4; }
    var brow: array<u32, TN>;
    for (var j = 0u; j < TN; j++) { brow[j] = bbase + min(col0 + j, p.n - 1u) * ldb4; }
    var acc: array<array<f32, TN>, TM>;
    let k4 = p.k / 4u;
    for (var kk = 0u; kk < k4; kk++) {
        var av: array<vec4<f32>, TM>;
        for (var i = 0u; i < TM; i++) { av[i] = a4[arow[i] + kk]; }
        for (var j = 0u; j < TN; j++) {
            let bv = b4[brow[j] + kk];
            for (var i = 0u; i < TM; i++) { acc[i][j] += dot(av[i], bv); }
        }
    }
    let cbase = p.c_off + wid.z * p.stride_c;
    for (var i = 0u; i < TM; i++) {
        if (row0 + i >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            if (col0 + j < p.n) { store_c(cbase, row0 + i, col0 + j, acc[i][j]); }
        }
    }
}

// dx = dy · W: A (M, K) contiguous along K, B (K, N) contiguous along N.
@compute @workgroup_size(WX, WY, 1)
fn matmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WY + lid.y) * TM;
    let col0 = (wid.x * WX + lid.x) * TN;
    if (row0 >= p.m || col0 >= p.n) { return; }
    let abase = (p.a_off + wid.z * p.stride_a) / 4u;
    let bbase = (p.b_off + wid.z * p.stride_b) / 4u;
    let lda4 = p.lda / 4u;
    let ldb4 = p.ldb / 4u;
    let n4 = p.n / 4u;
    var arow: array<u32, TM>;
    for (var i = 0u; i < TM; i++) { arow[i] = abase + min(row0 + i, p.m - 1u) * lda4; }
    var bcol: array<u32, TN / 4u>;
    for (var j = 0u; j < TN / 4u; j++) { bcol[j] = bbase + min(col0 / 4u + j, n4 - 1u); }
    var acc: array<array<vec4<f32>, TN / 4u>, TM>;
    let k4 = p.k / 4u;
    for (var kk = 0u; kk < k4; kk++) {
        var av: array<vec4<f32>, TM>;
        for (var i = 0u; i < TM; i++) { av[i] = a4[arow[i] + kk]; }
        for (var r = 0u; r < 4u; r++) {
            let brow = (kk * 4u + r) * ldb4;
            for (var j = 0u; j < TN / 4u; j++) {
                let bv = b4[bcol[j] + brow];
                for (var i = 0u; i < TM; i++) { acc[i][j] += av[i][r] * bv; }
            }
        }
    }
    let cbase = p.c_off + wid.z * p.stride_c;
    for (var i = 0u; i < TM; i++) {
        if (row0 + i >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            if (col0 + j < p.n) { store_c(cbase, row0 + i, col0 + j, acc[i][j / 4u][j % 4u]); }
        }
    }
}

// dW = dyᵀ · x: A stored (K, M) contiguous along M, B (K, N) contiguous along N.
@compute @workgroup_size(WX, WY, 1)
fn matmul_tn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WY + lid.y) * TM;
    let col0 = (wid.x * WX + lid.x) * TN;
    if (row0 >= p.m || col0 >= p.n) { return; }
    let abase = (p.a_off + wid.z * p.stride_a) / 4u;
    let bbase = (p.b_off + wid.z * p.stride_b) / 4u;
    let lda4 = p.lda / 4u;
    let ldb4 = p.ldb / 4u;
    let m4 = p.m / 4u;
    let n4 = p.n / 4u;
    // At least one slot, so a module built for 1-3 row tiles stays valid
    // (they serve matmul_nt and matmul_nn; this entry runs with TM ≥ 4).
    var acol: array<u32, (TM + 3u) / 4u>;
    for (var i = 0u; i < TM / 4u; i++) { acol[i] = abase + min(row0 / 4u + i, m4 - 1u); }
    var bcol: array<u32, TN / 4u>;
    for (var j = 0u; j < TN / 4u; j++) { bcol[j] = bbase + min(col0 / 4u + j, n4 - 1u); }
    var acc: array<array<vec4<f32>, TN / 4u>, TM>;
    for (var kk = 0u; kk < p.k; kk++) {
        var bv: array<vec4<f32>, TN / 4u>;
        for (var j = 0u; j < TN / 4u; j++) { bv[j] = b4[bcol[j] + kk * ldb4]; }
        for (var i4 = 0u; i4 < TM / 4u; i4++) {
            let av = a4[acol[i4] + kk * lda4];
            for (var r = 0u; r < 4u; r++) {
                for (var j = 0u; j < TN / 4u; j++) { acc[i4 * 4u + r][j] += av[r] * bv[j]; }
            }
        }
    }
    let cbase = p.c_off + wid.z * p.stride_c;
    for (var i = 0u; i < TM; i++) {
        if (row0 + i >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            if (col0 + j < p.n) { store_c(cbase, row0 + i, col0 + j, acc[i][j / 4u][j % 4u]); }
        }
    }
}

fn a_at(base: u32, m: u32, k: u32) -> f32 {
    if (TRANS_A) { return a[base + k * p.lda + m]; }
    return a[base + m * p.lda + k];
}

fn b_at(base: u32, k: u32, n: u32) -> f32 {
    if (TRANS_B) { return b[base + n * p.ldb + k]; }
    return b[base + k * p.ldb + n];
}

// store_c for the kernels that bind C as `cs`.
fn store_cs(base: u32, m: u32, n: u32, value: f32) { store_cs_with(base, m, n, value, LOW_RANK); }

fn store_cs_with(base: u32, m: u32, n: u32, value: f32, term: bool) {
    let i = base + m * p.ldc + n;
    var v = p.alpha * value;
    if (term) { v += low_rank_term(m, n); }
    v = output_op(m, n, v);
    if (p.accumulate != 0u) {
        cs[i] = cs[i] + v;
    } else {
        cs[i] = v;
    }
}

// Any orientation, any shape and offset: the same TM×TN register tile, scalar loads.
@compute @workgroup_size(WX, WY, 1)
fn matmul_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WY + lid.y) * TM;
    let col0 = (wid.x * WX + lid.x) * TN;
    if (row0 >= p.m || col0 >= p.n) { return; }
    let abase = p.a_off + wid.z * p.stride_a;
    let bbase = p.b_off + wid.z * p.stride_b;
    var rows: array<u32, TM>;
    for (var i = 0u; i < TM; i++) { rows[i] = min(row0 + i, p.m - 1u); }
    var cols: array<u32, TN>;
    for (var j = 0u; j < TN; j++) { cols[j] = min(col0 + j, p.n - 1u); }
    var acc: array<array<f32, TN>, TM>;
    for (var kk = 0u; kk < p.k; kk++) {
        var av: array<f32, TM>;
        for (var i = 0u; i < TM; i++) { av[i] = a_at(abase, rows[i], kk); }
        for (var j = 0u; j < TN; j++) {
            let bv = b_at(bbase, kk, cols[j]);
            for (var i = 0u; i < TM; i++) { acc[i][j] += av[i] * bv; }
        }
    }
    let cbase = p.c_off + wid.z * p.stride_c;
    for (var i = 0u; i < TM; i++) {
        if (row0 + i >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            if (col0 + j < p.n) { store_cs(cbase, row0 + i, col0 + j, acc[i][j]); }
        }
    }
}

// The operands as the shared cores see them (shaders/gemm_blocked.wgsl and
// shaders/gemv.wgsl, appended to this file for real GPUs).
const GEMM_A_ALONG_K: bool = !TRANS_A;
const GEMM_B_ALONG_N: bool = !TRANS_B;

fn gemm_a(z: u32, m: u32, k: u32) -> f32 { return a_at(p.a_off + z * p.stride_a, m, k); }

fn gemm_b(z: u32, k: u32, n: u32) -> f32 { return b_at(p.b_off + z * p.stride_b, k, n); }

// Four values along the contiguous dimension, through the vec4 views (A_VEC4
// and B_VEC4 launches, whose layouts keep every vec4 aligned).
fn gemm_a4(z: u32, m: u32, k: u32) -> vec4<f32> {
    let base = p.a_off + z * p.stride_a;
    if (TRANS_A) { return a4[(base + k * p.lda + m) / 4u]; }
    return a4[(base + m * p.lda + k) / 4u];
}

fn gemm_b4(z: u32, k: u32, n: u32) -> vec4<f32> {
    let base = p.b_off + z * p.stride_b;
    if (TRANS_B) { return b4[(base + n * p.ldb + k) / 4u]; }
    return b4[(base + k * p.ldb + n) / 4u];
}

// Without the term: the blocked core adds a fused term to its tiles itself.
fn gemm_store(z: u32, m: u32, n: u32, value: f32) { store_cs_with(p.c_off + z * p.stride_c, m, n, value, false); }

fn gemv_x4(m: u32, k: u32) -> vec4<f32> { return a4[(p.a_off + m * p.lda + k) / 4u]; }

fn gemv_w4(n: u32, k: u32) -> vec4<f32> { return b4[(p.b_off + n * p.ldb + k) / 4u]; }

fn gemv_w32(n: u32, k: u32) -> array<vec4<f32>, 8> {
    let q = (p.b_off + n * p.ldb + k) / 4u;
    var w: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) { w[i] = b4[q + i]; }
    return w;
}

// Nothing to prepare for f32 weights (qmatmul.wgsl stages its 4-bit levels).
fn host_setup(index: u32, count: u32) {}

fn gemv_store(m: u32, n: u32, value: f32) { store_c_with(p.c_off, m, n, value, false); }

// One output per invocation: the yardstick the benchmark prints beside the tiled kernels.
@compute @workgroup_size(WX, WY, 1)
fn matmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.y;
    let col = gid.x;
    if (row >= p.m || col >= p.n) { return; }
    let abase = p.a_off + gid.z * p.stride_a;
    let bbase = p.b_off + gid.z * p.stride_b;
    var acc = 0.0;
    for (var kk = 0u; kk < p.k; kk++) { acc += a_at(abase, row, kk) * b_at(bbase, kk, col); }
    store_cs(p.c_off + gid.z * p.stride_c, row, col, acc);
}

