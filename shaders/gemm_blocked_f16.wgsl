// f16 compute in the blocked GEMM of real GPUs: gemm_blocked.wgsl's block walk
// with both operands staged in workgroup memory as f16 and multiplied in f16,
// for a frozen quantized weight whose compute dtype is f16 (bitsandbytes'
// `bnb_4bit_compute_dtype=float16`). Appended after qmatmul.wgsl and
// gemm_blocked.wgsl, whose bindings, staging slots and fetches, tile_row/col,
// store_tile/store_partial and gemm_split_sum it reuses, in a module behind
// `enable f16;` (Features::SHADER_F16).
//
//   f16_row_scales          scales[m]: the power of two that puts row m of A's largest |value| in [1, 2)
//   gemm_blocked_f16        C = op(A) · op(B), one BM × BN block a workgroup
//   gemm_blocked_split_f16  the same over one split of K, into `partial` (then gemm_split_sum)
//
// The arithmetic is qmatmul_f16.wgsl's (and reference::matmul::
// matmul_f16_compute's): each row of A is multiplied by its scale and rounded
// to f16, so activations do not overflow and gradients do not underflow; the
// weights are rounded to f16; products are summed in f16 over runs of RUN_K
// consecutive k (|W| ≤ 1000 keeps a run below 32·2·1000 < 65504), the runs in
// f32; the sum is divided by the scale, exactly. Halves in workgroup memory
// also halve the bytes each multiply reads there, and GPUs with packed f16
// arithmetic do two f16 FMAs for one f32 one.
//
// The staging loops repeat block_product's with f16 tiles and registers
// (WGSL has no generics, and an f32 core carrying an f16 run would double the
// f32 kernel's accumulators).
//
// A is staged by scalars whatever A_VEC4 says: x's vec4 view would be the
// ninth storage binding of a split launch with a fused term (scales and the
// term's factors take three), past WebGPU's default of eight.
//
// Prelude constants: as gemm_blocked.wgsl, with BK dividing RUN_K.

const RUN_K: u32 = 32u;                // k per f16 partial sum (the reference's F16_RUN)
const RUN_SLICES: u32 = RUN_K / BK;    // slices per run
const AS16: u32 = BM + 8u;             // halves per staged k-row of A (padded by 16 bytes)
const BS16: u32 = BN + 8u;             // halves per staged k-row of B

@group(0) @binding(6) var<storage, read_write> scales: array<f32>;  // (M): row m of A's power-of-two scale

var<workgroup> tile_a16: array<vec4<f16>, BK * AS16 / 4u>;  // (BK, BM + 8): A slice, k-major, scaled
var<workgroup> tile_b16: array<vec4<f16>, BK * BS16 / 4u>;  // (BK, BN + 8): B slice, k-major

const SCALE_WG: u32 = 64u;
var<workgroup> row_max: array<u32, SCALE_WG>;

// scales[m] for row m = the workgroup's flattened index (one row a workgroup,
// 64 invocations reading it coalesced). The maximum is taken on the bits of
// |value|, which order as u32 for non-negative floats and put a NaN above
// infinity: an all-zero row gets 2^127 and a non-finite one 2^-126 (its
// outputs are non-finite, as in f32), as `row_scale` in qmatmul_f16.wgsl.
@compute @workgroup_size(SCALE_WG, 1, 1)
fn f16_row_scales(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let m = flat_group(wid, nwg);
    var mx = 0u;
    if (m < p.m) {
        for (var k = lid; k < p.k; k += SCALE_WG) { mx = max(mx, bitcast<u32>(abs(gemm_a(0u, m, k)))); }
    }
    row_max[lid] = mx;
    for (var s = SCALE_WG / 2u; s > 0u; s /= 2u) {
        workgroupBarrier();
        if (lid < s) { row_max[lid] = max(row_max[lid], row_max[lid + s]); }
    }
    if (lid == 0u && m < p.m) {
        let e = min((row_max[0] >> 23u) & 0xffu, 253u);
        scales[m] = bitcast<f32>((254u - e) << 23u);
    }
}

// block_product of gemm_blocked.wgsl in f16: the invocation's TM × TN tile,
// summed over k in [k0, k_end) (runs of RUN_K from k0) and divided by its
// rows' scales. Every invocation of the workgroup calls it (barriers inside).
fn block_product_f16(z: u32, m0: u32, n0: u32, k0: u32, k_end: u32, tid: u32) -> array<array<vec4<f32>, TN / 4u>, TM> {
    let tx = tid % GWX;
    let ty = tid / GWX;
    var acc: array<array<vec4<f32>, TN / 4u>, TM>;   // (TM, TN) block of C: the runs' f32 sum
    var part: array<array<vec4<f16>, TN / 4u>, TM>;  // the current run's f16 sum
    var sa: array<f32, A_LOADS>;                     // scale of each staged A element's row
    for (var i = 0u; i < A_LOADS; i++) { sa[i] = scales[min(m0 + a_slot(i * GTHREADS + tid).x, p.m - 1u)]; }
    var ra: array<f16, A_LOADS>;                     // the next slice, this invocation's share
    var rb: array<f16, B_LOADS>;
    var rb4: array<vec4<f16>, B_LOADS4>;
    let slices = (k_end - k0 + BK - 1u) / BK;
    // As block_product: iteration t stages slice t − 1, loads slice t, and
    // multiplies slice t − 1 while those loads are in flight.
    for (var t = 0u; t <= slices; t++) {
        if (t > 0u) {
            workgroupBarrier();
            for (var i = 0u; i < A_LOADS; i++) {
                let e = i * GTHREADS + tid;
                if (e < BM * BK) {
                    let s = a_slot(e);
                    let f = s.y * AS16 + s.x;
                    tile_a16[f / 4u][f % 4u] = ra[i];
                }
            }
            if (B_VEC4) {
                for (var i = 0u; i < B_LOADS4; i++) {
                    let e = i * GTHREADS + tid;
                    if (e < BK * BN / 4u) {
                        let s = b_slot4(e);
                        if (GEMM_B_ALONG_N) {
                            tile_b16[(s.x * BS16 + s.y) / 4u] = rb4[i];
                        } else {
                            for (var c = 0u; c < 4u; c++) {
                                let f = (s.x + c) * BS16 + s.y;
                                tile_b16[f / 4u][f % 4u] = rb4[i][c];
                            }
                        }
                    }
                }
            } else {
                for (var i = 0u; i < B_LOADS; i++) {
                    let e = i * GTHREADS + tid;
                    if (e < BK * BN) {
                        let s = b_slot(e);
                        let f = s.x * BS16 + s.y;
                        tile_b16[f / 4u][f % 4u] = rb[i];
                    }
                }
            }
            workgroupBarrier();
        }
        if (t < slices) {
            let next = k0 + t * BK;
            for (var i = 0u; i < A_LOADS; i++) { ra[i] = f16(fetch_a(z, m0, next, k_end, i * GTHREADS + tid) * sa[i]); }
            if (B_VEC4) {
                for (var i = 0u; i < B_LOADS4; i++) { rb4[i] = vec4<f16>(fetch_b4(z, n0, next, k_end, i * GTHREADS + tid)); }
            } else {
                for (var i = 0u; i < B_LOADS; i++) { rb[i] = f16(fetch_b(z, n0, next, k_end, i * GTHREADS + tid)); }
            }
        }
        if (t == 0u) { continue; }
        for (var kk = 0u; kk < BK; kk++) {
            var av: array<vec4<f16>, TM / 4u>;
            for (var g = 0u; g < TM / 4u; g++) { av[g] = tile_a16[kk * (AS16 / 4u) + ty + g * GWY]; }
            var bv: array<vec4<f16>, TN / 4u>;
            for (var g = 0u; g < TN / 4u; g++) { bv[g] = tile_b16[kk * (BS16 / 4u) + tx + g * GWX]; }
            for (var i = 0u; i < TM; i++) {
                let a = av[i / 4u][i % 4u];
                for (var g = 0u; g < TN / 4u; g++) { part[i][g] = fma(vec4<f16>(a), bv[g], part[i][g]); }
            }
        }
        if (t % RUN_SLICES == 0u || t == slices) {
            for (var i = 0u; i < TM; i++) {
                for (var g = 0u; g < TN / 4u; g++) {
                    acc[i][g] += vec4<f32>(part[i][g]);
                    part[i][g] = vec4<f16>(0.0);
                }
            }
        }
    }
    for (var i = 0u; i < TM; i++) {
        let scale = scales[min(tile_row(m0, tid, i), p.m - 1u)];
        for (var g = 0u; g < TN / 4u; g++) { acc[i][g] /= scale; }
    }
    return acc;
}

// C = alpha · op(A) · op(B) (+ C) in f16 arithmetic, one BM × BN block a workgroup.
@compute @workgroup_size(GWX, GWY, 1)
fn gemm_blocked_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    store_tile(wid.z, m0, n0, tid, block_product_f16(wid.z, m0, n0, 0u, p.k, tid));
}

// One split of K, as gemm_blocked_split (its runs start at the split's first k).
@compute @workgroup_size(GWX, GWY, 1)
fn gemm_blocked_split_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let r = split_range(wid.z);
    store_partial(wid.z, m0, n0, tid, with_term(wid.z, m0, n0, tid, block_product_f16(r.x, m0, n0, r.y, r.z, tid)));
}
