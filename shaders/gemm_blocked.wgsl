// The GEMM for real GPUs: block tiles staged in workgroup memory.
//
// This core is appended to a host module (matmul.wgsl for f32 operands,
// qmatmul.wgsl for frozen quantized weights) that supplies the operands as
//   gemm_a(z, m, k) -> f32        op(A)[z, m, k], only called in range
//   gemm_b(z, k, n) -> f32        op(B)[z, k, n], only called in range
//   gemm_store(z, m, n, value)    C[z, m, n] = (or +=) alpha · value (a
//                                 fused low-rank term, shaders/low_rank.wgsl,
//                                 is the core's to add: see add_low_rank)
// and which dimension of each is contiguous in memory:
//   GEMM_A_ALONG_K (A stored (M, K)), GEMM_B_ALONG_N (B stored (K, N)),
// so consecutive invocations load consecutive addresses (coalesced), and
// for vec4 loads
//   gemm_a4(z, m, k) -> vec4<f32> four consecutive values along A's contiguous
//                                 dimension from (m, k) (A_VEC4 launches)
//   gemm_b4(z, k, n) -> vec4<f32> the same along B's (B_VEC4 launches), so a
//                                 quantized weight decodes one word for four
// (the launcher sets A_VEC4 or B_VEC4 where that operand's contiguous extent,
// row stride, offset and batch stride are multiples of 4, so every vec4 is
// whole and aligned, and BK is a multiple of 4, so every split's K is). The
// quantized host dequantizes while it stages B, never writing f32 weights out.
//
// One workgroup computes a BM × BN block of C for batch z = workgroup_id.z,
// with (BN/TN) × (BM/TM) invocations, each a TM × TN register tile. K is walked
// in slices of BK: every invocation loads its share of the A slice (BM × BK)
// and the B slice (BK × BN) into registers, the workgroup stores them into
// workgroup memory k-major (so the inner loop reads vec4s of 4 rows or 4
// columns), and while it multiplies the slice out of workgroup memory the next
// slice's global loads are already in flight (register prefetch: one buffer of
// workgroup memory, two barriers a slice). Invocation (tx, ty) owns the vec4
// column groups tx, tx + BN/TN, … and row groups ty, ty + BM/TM, …, so the
// lanes of a subgroup read consecutive vec4s (no bank conflicts) and store
// consecutive columns. Rows of the staged tiles are padded by 4 floats so the
// transposing stores of a K-contiguous operand spread over the banks.
// Elements past M, N or K are staged as zeros (never clamped: a repeated k
// would be summed twice); stores past M or N are skipped. Any shape, stride
// and offset works; there is no early return because every invocation takes
// part in the barriers. With BUFFERS = 2 the slices alternate between two
// copies of the staging memory (double buffering): a slice is stored while
// slower invocations may still read the previous one from the other copy,
// so only the barrier after the store remains, one a slice.
//
// Prelude constants: BM, BN, BK, TM, TN (TM and TN multiples of 4,
// BM % TM == BN % TN == 0, at most 256 invocations: WebGPU's default), A_VEC4
// and B_VEC4 (BK a multiple of 4 then), BUFFERS (1 or 2).

const GWX: u32 = BN / TN;           // invocations along N
const GWY: u32 = BM / TM;           // invocations along M
const GTHREADS: u32 = GWX * GWY;
const AS_STRIDE: u32 = BM + 4u;     // floats per staged k-row of A (padded)
const BS_STRIDE: u32 = BN + 4u;     // floats per staged k-row of B (padded)
const A_LOADS: u32 = (BM * BK + GTHREADS - 1u) / GTHREADS;  // elements each invocation stages
const B_LOADS: u32 = (BK * BN + GTHREADS - 1u) / GTHREADS;
const A_LOADS4: u32 = (BM * BK / 4u + GTHREADS - 1u) / GTHREADS;  // vec4s, with A_VEC4
const B_LOADS4: u32 = (BK * BN / 4u + GTHREADS - 1u) / GTHREADS;  // vec4s, with B_VEC4

const A_TILE: u32 = BK * AS_STRIDE / 4u;  // vec4s of one staged A slice
const B_TILE: u32 = BK * BS_STRIDE / 4u;

var<workgroup> tile_a: array<vec4<f32>, BUFFERS * A_TILE>;  // BUFFERS × (BK, BM + 4): A slices, k-major
var<workgroup> tile_b: array<vec4<f32>, BUFFERS * B_TILE>;  // BUFFERS × (BK, BN + 4): B slices, k-major

// The (m, k) within the block of A's staging slot e, consecutive e along the
// contiguous dimension.
fn a_slot(e: u32) -> vec2<u32> {
    if (GEMM_A_ALONG_K) { return vec2<u32>(e / BK, e % BK); }
    return vec2<u32>(e % BM, e / BM);
}

// The (k, n) within the block of B's staging slot e.
fn b_slot(e: u32) -> vec2<u32> {
    if (GEMM_B_ALONG_N) { return vec2<u32>(e / BN, e % BN); }
    return vec2<u32>(e % BK, e / BK);
}

// The (m, k) within the block of A's vec4 staging slot e (A_VEC4): the first
// of four consecutive values along the contiguous dimension.
fn a_slot4(e: u32) -> vec2<u32> {
    if (GEMM_A_ALONG_K) { return vec2<u32>(e / (BK / 4u), (e % (BK / 4u)) * 4u); }
    return vec2<u32>((e % (BM / 4u)) * 4u, e / (BM / 4u));
}

// The (k, n) within the block of B's vec4 staging slot e (B_VEC4).
fn b_slot4(e: u32) -> vec2<u32> {
    if (GEMM_B_ALONG_N) { return vec2<u32>(e / (BN / 4u), (e % (BN / 4u)) * 4u); }
    return vec2<u32>((e % (BK / 4u)) * 4u, e / (BK / 4u));
}

// Vec4 staging slot e of the A slice at k0, zero past M and past k_end (whole
// vec4s: the launcher made the contiguous extent and k_end multiples of 4).
fn fetch_a4(z: u32, m0: u32, k0: u32, k_end: u32, e: u32) -> vec4<f32> {
    let s = a_slot4(e);
    var v = vec4<f32>(0.0);
    if (e < BM * BK / 4u && m0 + s.x < p.m && k0 + s.y < k_end) { v = gemm_a4(z, m0 + s.x, k0 + s.y); }
    return v;
}

// Vec4 staging slot e of the B slice at k0, zero past N and past k_end.
fn fetch_b4(z: u32, n0: u32, k0: u32, k_end: u32, e: u32) -> vec4<f32> {
    let s = b_slot4(e);
    var v = vec4<f32>(0.0);
    if (e < BK * BN / 4u && k0 + s.x < k_end && n0 + s.y < p.n) { v = gemm_b4(z, k0 + s.x, n0 + s.y); }
    return v;
}

// Staging slot e of the A slice at k0, zero past M and past k_end.
fn fetch_a(z: u32, m0: u32, k0: u32, k_end: u32, e: u32) -> f32 {
    let s = a_slot(e);
    var v = 0.0;
    if (e < BM * BK && m0 + s.x < p.m && k0 + s.y < k_end) { v = gemm_a(z, m0 + s.x, k0 + s.y); }
    return v;
}

// Staging slot e of the B slice at k0, zero past N and past k_end.
fn fetch_b(z: u32, n0: u32, k0: u32, k_end: u32, e: u32) -> f32 {
    let s = b_slot(e);
    var v = 0.0;
    if (e < BK * BN && k0 + s.x < k_end && n0 + s.y < p.n) { v = gemm_b(z, k0 + s.x, n0 + s.y); }
    return v;
}

// The TM × TN tile of invocation tid in the block at (m0, n0) of batch z,
// summed over k in [k0, k_end). Every invocation of the workgroup calls it
// (barriers inside).
fn block_product(z: u32, m0: u32, n0: u32, k0: u32, k_end: u32, tid: u32) -> array<array<vec4<f32>, TN / 4u>, TM> {
    let tx = tid % GWX;
    let ty = tid / GWX;
    var acc: array<array<vec4<f32>, TN / 4u>, TM>;  // (TM, TN) block of C
    var ra: array<f32, A_LOADS>;                     // the next A slice, this invocation's share
    var ra4: array<vec4<f32>, A_LOADS4>;             // (or its vec4s)
    var rb: array<f32, B_LOADS>;
    var rb4: array<vec4<f32>, B_LOADS4>;
    let slices = (k_end - k0 + BK - 1u) / BK;
    // Iteration t stages slice t − 1 (already in registers) into workgroup
    // memory, loads slice t into registers, and multiplies slice t − 1 while
    // those loads are in flight. t is the same in every invocation, so the
    // barriers are in uniform control flow.
    for (var t = 0u; t <= slices; t++) {
        // The staging copy of slice t − 1 (always 0 with one buffer).
        let ao = ((t + BUFFERS - 1u) % BUFFERS) * A_TILE;
        let bo = ((t + BUFFERS - 1u) % BUFFERS) * B_TILE;
        if (t > 0u) {
            // One buffer: everyone must be done reading the previous slice.
            if (BUFFERS == 1u) { workgroupBarrier(); }
            if (A_VEC4) {
                for (var i = 0u; i < A_LOADS4; i++) {
                    let e = i * GTHREADS + tid;
                    if (e < BM * BK / 4u) {
                        let s = a_slot4(e);
                        if (GEMM_A_ALONG_K) {
                            for (var c = 0u; c < 4u; c++) {
                                let f = (s.y + c) * AS_STRIDE + s.x;
                                tile_a[ao + f / 4u][f % 4u] = ra4[i][c];
                            }
                        } else {
                            tile_a[ao + (s.y * AS_STRIDE + s.x) / 4u] = ra4[i];
                        }
                    }
                }
            } else {
                for (var i = 0u; i < A_LOADS; i++) {
                    let e = i * GTHREADS + tid;
                    if (e < BM * BK) {
                        let s = a_slot(e);
                        let f = s.y * AS_STRIDE + s.x;
                        tile_a[ao + f / 4u][f % 4u] = ra[i];
                    }
                }
            }
            if (B_VEC4) {
                for (var i = 0u; i < B_LOADS4; i++) {
                    let e = i * GTHREADS + tid;
                    if (e < BK * BN / 4u) {
                        let s = b_slot4(e);
                        if (GEMM_B_ALONG_N) {
                            tile_b[bo + (s.x * BS_STRIDE + s.y) / 4u] = rb4[i];
                        } else {
                            for (var c = 0u; c < 4u; c++) {
                                let f = (s.x + c) * BS_STRIDE + s.y;
                                tile_b[bo + f / 4u][f % 4u] = rb4[i][c];
                            }
                        }
                    }
                }
            } else {
                for (var i = 0u; i < B_LOADS; i++) {
                    let e = i * GTHREADS + tid;
                    if (e < BK * BN) {
                        let s = b_slot(e);
                        let f = s.x * BS_STRIDE + s.y;
                        tile_b[bo + f / 4u][f % 4u] = rb[i];
                    }
                }
            }
            workgroupBarrier();
        }
        if (t < slices) {
            let next = k0 + t * BK;
            if (A_VEC4) {
                for (var i = 0u; i < A_LOADS4; i++) { ra4[i] = fetch_a4(z, m0, next, k_end, i * GTHREADS + tid); }
            } else {
                for (var i = 0u; i < A_LOADS; i++) { ra[i] = fetch_a(z, m0, next, k_end, i * GTHREADS + tid); }
            }
            if (B_VEC4) {
                for (var i = 0u; i < B_LOADS4; i++) { rb4[i] = fetch_b4(z, n0, next, k_end, i * GTHREADS + tid); }
            } else {
                for (var i = 0u; i < B_LOADS; i++) { rb[i] = fetch_b(z, n0, next, k_end, i * GTHREADS + tid); }
            }
        }
        if (t == 0u) { continue; }
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<vec4<f32>, TM / 4u>;
            for (var g = 0u; g < TM / 4u; g++) { av[g] = tile_a[ao + kk * (AS_STRIDE / 4u) + ty + g * GWY]; }
            var bv: array<vec4<f32>, TN / 4u>;
            for (var g = 0u; g < TN / 4u; g++) { bv[g] = tile_b[bo + kk * (BS_STRIDE / 4u) + tx + g * GWX]; }
            for (var i = 0u; i < TM; i++) {
                let a = av[i / 4u][i % 4u];
                for (var g = 0u; g < TN / 4u; g++) { acc[i][g] = fma(vec4<f32>(a), bv[g], acc[i][g]); }
            }
        }
    }
    return acc;
}

// Row of C of the invocation's register row i, and the first of the 4
// columns of its register column group g.
fn tile_row(m0: u32, tid: u32, i: u32) -> u32 { return m0 + (tid / GWX + (i / 4u) * GWY) * 4u + i % 4u; }
fn tile_col(n0: u32, tid: u32, g: u32) -> u32 { return n0 + (tid % GWX + g * GWX) * 4u; }

// A fused low-rank term (shaders/low_rank.wgsl; batch 1, alpha 1) added to
// an invocation's tile as r outer products of its TM values of h and TN of B:
// TM + TN loads a rank instead of the 2·TM·TN of a term summed per output.
// Rows past M and columns past N read row M − 1 and column N − 1 (never stored).
fn add_low_rank(m0: u32, n0: u32, tid: u32, tile: array<array<vec4<f32>, TN / 4u>, TM>) -> array<array<vec4<f32>, TN / 4u>, TM> {
    var acc = tile;
    for (var j = 0u; j < p.lr_rank; j++) {
        var hv: array<f32, TM>;
        for (var i = 0u; i < TM; i++) { hv[i] = p.lr_scale * low_rank_h(min(tile_row(m0, tid, i), p.m - 1u), j); }
        var bv: array<vec4<f32>, TN / 4u>;
        for (var g = 0u; g < TN / 4u; g++) {
            let nb = tile_col(n0, tid, g);
            for (var c4 = 0u; c4 < 4u; c4++) { bv[g][c4] = low_rank_b(min(nb + c4, p.n - 1u), j); }
        }
        for (var i = 0u; i < TM; i++) {
            for (var g = 0u; g < TN / 4u; g++) { acc[i][g] = fma(vec4<f32>(hv[i]), bv[g], acc[i][g]); }
        }
    }
    return acc;
}

// Store an invocation's tile of the block at (m0, n0) of batch z into C,
// with a fused low-rank term where the module has one.
fn store_tile(z: u32, m0: u32, n0: u32, tid: u32, tile: array<array<vec4<f32>, TN / 4u>, TM>) {
    var acc = tile;
    if (LOW_RANK) { acc = add_low_rank(m0, n0, tid, tile); }
    for (var i = 0u; i < TM; i++) {
        let m = tile_row(m0, tid, i);
        if (m >= p.m) { continue; }
        for (var g = 0u; g < TN / 4u; g++) {
            let nb = tile_col(n0, tid, g);
            for (var c4 = 0u; c4 < 4u; c4++) {
                if (nb + c4 < p.n) { gemm_store(z, m, nb + c4, acc[i][g][c4]); }
            }
        }
    }
}

// C = alpha · op(A) · op(B) (+ C), one BM × BN block a workgroup.
@compute @workgroup_size(GWX, GWY, 1)
fn gemm_blocked(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    store_tile(wid.z, m0, n0, tid, block_product(wid.z, m0, n0, 0u, p.k, tid));
}

// Split-K, for products with few blocks and a long K (LoRA's x·Aᵀ, dy·B,
// dA and dB, where M or N is the rank): workgroup_id.z = split · batch + z
// sums k in [split · k_split, (split + 1) · k_split) into its own slice of
// `partial`, and gemm_split_sum adds the slices into C. No float atomics
// (WebGPU has none): a second pass. A fused low-rank term goes into split
// 0's partial sums, as outer products like the unsplit kernel's, not into
// the sum pass, where each output would sum its r products alone.
@group(0) @binding(7) var<storage, read_write> partial: array<f32>;  // (splits, batch, M, N)

// The batch, the first k and the end of k of split workgroup_id.z.
fn split_range(wz: u32) -> vec3<u32> {
    let k0 = (wz / p.batch) * p.k_split;
    return vec3<u32>(wz % p.batch, k0, min(p.k, k0 + p.k_split));
}

// Store an invocation's tile of split workgroup_id.z into its slice of `partial`.
fn store_partial(wz: u32, m0: u32, n0: u32, tid: u32, acc: array<array<vec4<f32>, TN / 4u>, TM>) {
    let base = wz * p.m * p.n;
    for (var i = 0u; i < TM; i++) {
        let m = tile_row(m0, tid, i);
        if (m >= p.m) { continue; }
        for (var g = 0u; g < TN / 4u; g++) {
            let nb = tile_col(n0, tid, g);
            for (var c4 = 0u; c4 < 4u; c4++) {
                if (nb + c4 < p.n) { partial[base + m * p.n + nb + c4] = acc[i][g][c4]; }
            }
        }
    }
}

@compute @workgroup_size(GWX, GWY, 1)
fn gemm_blocked_split(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let r = split_range(wid.z);
    store_partial(wid.z, m0, n0, tid, with_term(wid.z, m0, n0, tid, block_product(r.x, m0, n0, r.y, r.z, tid)));
}

// A split's tile, with a fused low-rank term added by the first split (batch
// 1): gemm_split_sum then adds the splits up without it.
fn with_term(wz: u32, m0: u32, n0: u32, tid: u32, acc: array<array<vec4<f32>, TN / 4u>, TM>) -> array<array<vec4<f32>, TN / 4u>, TM> {
    if (LOW_RANK && wz == 0u) { return add_low_rank(m0, n0, tid, acc); }
    return acc;
}

// C[z, m, n] = alpha · Σ_split partial[split, z, m, n] (+ C): one element an
// invocation, 256 a workgroup, over a 2-D grid of workgroups.
@compute @workgroup_size(256, 1, 1)
fn gemm_split_sum(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) tid: u32) {
    let i = flat_group(wid, nwg) * 256u + tid;
    let per = p.m * p.n;
    if (i >= p.batch * per) { return; }
    let splits = (p.k + p.k_split - 1u) / p.k_split;
    var sum = 0.0;
    for (var s = 0u; s < splits; s++) { sum += partial[s * p.batch * per + i]; }
    let z = i / per;
    let r = i % per;
    gemm_store(z, r / p.n, r % p.n, sum);
}
