// Decoding's products, y = x · Wᵀ for a few rows of x (M ≤ 8), at the speed of
// reading W once.
//
// A decoding step reads every weight once and does two FLOPs with it, so the
// bound is memory bandwidth: each workgroup takes GV_ROWS rows of W, and the
// lanes of a row split its K; each lane keeps partial sums of the GV_M
// outputs, and the row's lanes then add them up. This file is the portable
// form: GV_LANES invocations a row, their partial sums meet in a tree in
// workgroup memory with a barrier per step. shaders/gemv_subgroup.wgsl is
// the form for devices with subgroups (the same lanes, added with subgroup
// operations).
//
// The module is assembled from three parts:
//   host        matmul.wgsl (f32 weights) or qmatmul.wgsl (quantized ones),
//               which supplies, for K a multiple of 4,
//                 gemv_x4(m, k) -> vec4<f32>    x[m, k..k+4]          (k % 4 == 0)
//                 gemv_w4(n, k) -> vec4<f32>    W[n, k..k+4], decoded (k % 4 == 0)
//                 gemv_w32(n, k) -> array<vec4<f32>, 8>
//                                               W[n, k..k+32], decoded from one
//                                               wide load where the format allows
//                                               (GV_WIDE; k % 32 == 0, K % 32 == 0)
//                 host_setup(index, count)      per-workgroup preparation (all
//                                               invocations; a barrier follows)
//                 gemv_store(m, n, value)       y[m, n] = (or +=) alpha · value
//   arithmetic  gemv_f32.wgsl (f32 sums) or gemv_f16.wgsl (f16 compute), which
//               supplies
//                 GV_PASS                        vec4 steps a lane takes per pass
//                 gemv_setup(index, count)       per-workgroup preparation (all
//                                                invocations, uniform control flow)
//                 gemv_lane(row, begin, end, lane, lanes) -> array<f32, GV_M>
//                     the partial sums of lane `lane` of `lanes` over the
//                     vec4 steps [begin, end) of W row `row` (begin a multiple
//                     of GV_PASS; the loop's trip count is the same for all lanes)
//                 gemv_units(m, value) -> f32    value in the units of those sums
//                 gemv_finish(m, n, sum)         stores a row's total
//   reduction   this file (gemv_nt), or gemv_subgroup.wgsl (gemv_nt_sg).
//   epilogue    shaders/low_rank.wgsl or low_rank_none.wgsl: a fused LoRA term,
//               whose r products the row's lanes share before their sums meet.
//
// Prelude constants: GV_M (rows of x, 1-8), GV_LANES, GV_ROWS, with
// GV_LANES · GV_ROWS ≤ 256 (here GV_LANES is a power of two), and GV_WIDE
// (lanes take spans of 32 weights, each one wide load: see GemvTiles::wide).

var<workgroup> gv_sum: array<f32, GV_M * GV_LANES * GV_ROWS>;  // (GV_M, GV_ROWS, GV_LANES) partial sums

@compute @workgroup_size(GV_LANES, GV_ROWS, 1)
fn gemv_nt(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) index: u32,
) {
    host_setup(index, GV_LANES * GV_ROWS);
    workgroupBarrier();
    gemv_setup(index, GV_LANES * GV_ROWS);
    let lane = lid.x;
    let n = wid.x * GV_ROWS + lid.y;
    let row = min(n, p.n - 1u);  // past the edge: a clamped row, never stored
    var acc = gemv_lane(row, 0u, p.k / 4u, lane, GV_LANES);
    if (LOW_RANK) {  // the lanes' shares of a fused low-rank term (shaders/low_rank.wgsl)
        for (var m = 0u; m < GV_M; m++) { acc[m] += gemv_units(m, low_rank_share(m, row, lane, GV_LANES)); }
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
        for (var m = 0u; m < GV_M; m++) { gemv_finish(m, n, gv_sum[m * GV_LANES * GV_ROWS + slot]); }
    }
}
