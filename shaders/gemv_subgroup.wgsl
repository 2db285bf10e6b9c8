// The decoding GEMV with subgroup reductions, for any subgroup width (real
// GPUs report 32 on NVIDIA and Apple, 32 or 64 on AMD, 8-32 on Intel;
// lavapipe 8). The same parts as shaders/gemv.wgsl (host,
// arithmetic), with this reduction in place of the tree; it needs
// Features::SUBGROUP, so it is compiled as its own module and the portable
// one builds without it. (naga does not take `enable subgroups;` yet: the
// feature is what allows the builtins.)
//
// Which invocations share a subgroup. WGSL does not promise that a subgroup
// is a run of consecutive local_invocation_index values, nor that it is full,
// and the width a device uses may be any between the adapter's min and max.
// So nothing here derives from the local index: an invocation's place comes
// from its subgroup alone.
// - A subgroup's invocations count themselves (`subgroupAdd(1)`, the row's
//   lane count) and rank themselves (`subgroupExclusiveAdd(1)`, 0..count, the
//   lane), so even a partial subgroup covers its K exactly.
// - The subgroups number themselves: each marks its lowest local index in a
//   workgroup bitmap, and after a barrier a subgroup's number is how many
//   marks lie below its own, and S is the count of marks: 0..S whatever the
//   layout, and the same every run. (Not the `subgroup_id` and
//   `num_subgroups` builtins: lavapipe reports num_subgroups = 1 for a
//   workgroup of 12 invocations in two subgroups of 8 lanes, one partial.)
// - A workgroup has GV_LANES · GV_ROWS invocations for GV_ROWS rows of W.
//   With S subgroups, P = max(S / GV_ROWS, 1) subgroups share a row:
//   - P = 1 (subgroups of GV_LANES lanes or wider: NVIDIA with 32 lanes a
//     row, AMD's 64): a subgroup takes whole rows (rows slot, slot + S, …),
//     its lanes split K, and `subgroupAdd` gives the row's total. No
//     workgroup memory in the reduction (the numbering's two barriers come
//     before the loads).
//   - P > 1 (subgroups narrower than GV_LANES: lavapipe's 8 with 32 lanes a
//     row makes P = 4): the row's K is dealt out in chunks of GV_LANES·GV_PASS
//     steps, chunk j to its subgroup j mod P; each subgroup adds its lanes
//     with `subgroupAdd`, and the P totals meet in workgroup memory after one
//     barrier. Subgroups past P·GV_ROWS (S not a multiple of GV_ROWS) sit
//     idle.
// Every subgroup operation is reached by all of a subgroup's invocations
// together: the loops around them depend only on the subgroup's number and
// the counts.
//
// Prelude constants: GV_M, GV_LANES (lanes a row the workgroup is sized for;
// any count ≥ 1), GV_ROWS, with GV_LANES · GV_ROWS ≤ 256.

const GV_WG: u32 = GV_LANES * GV_ROWS;

// Vec4 steps of K per chunk where subgroups share a row: whole passes of
// GV_LANES lanes (so whole f16 runs).
const GV_CHUNK: u32 = GV_LANES * GV_PASS;

var<workgroup> gv_part: array<f32, GV_M * GV_WG>;  // (GV_M, subgroups) each subgroup's total of its row
var<workgroup> gv_firsts: array<atomic<u32>, (GV_WG + 31u) / 32u>;  // (GV_WG) bits: the lowest local index of each subgroup

@compute @workgroup_size(GV_WG, 1, 1)
fn gemv_nt_sg(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) index: u32,
) {
    if (index < (GV_WG + 31u) / 32u) { atomicStore(&gv_firsts[index], 0u); }
    host_setup(index, GV_WG);  // before the numbering's barriers, which cover it too
    workgroupBarrier();
    let lanes = subgroupAdd(1u);
    let lane = subgroupExclusiveAdd(1u);
    let first = subgroupMin(index);
    if (index == first) { atomicOr(&gv_firsts[first / 32u], 1u << (first % 32u)); }
    workgroupBarrier();
    var sg = 0u;         // this subgroup's number: subgroups whose first index is below ours
    var subgroups = 0u;  // S
    for (var w = 0u; w < (GV_WG + 31u) / 32u; w++) {
        let bits = atomicLoad(&gv_firsts[w]);
        subgroups += countOneBits(bits);
        if (w < first / 32u) { sg += countOneBits(bits); }
        if (w == first / 32u) { sg += countOneBits(bits & ((1u << (first % 32u)) - 1u)); }
    }
    gemv_setup(index, GV_WG);
    let per_row = max(subgroups / GV_ROWS, 1u);
    let slot = sg / per_row;           // this subgroup's first row in the workgroup
    let part = sg % per_row;           // and its share of the row's chunks
    let stride = subgroups / per_row;  // rows slot, slot + stride, …
    let k4 = p.k / 4u;
    for (var i = slot; i < GV_ROWS; i += stride) {
        let n = wid.x * GV_ROWS + i;
        let row = min(n, p.n - 1u);  // past the edge: a clamped row, never stored
        var acc: array<f32, GV_M>;
        if (per_row == 1u) {
            acc = gemv_lane(row, 0u, k4, lane, lanes);
        } else {
            for (var c0 = part * GV_CHUNK; c0 < k4; c0 += per_row * GV_CHUNK) {
                let chunk = gemv_lane(row, c0, min(c0 + GV_CHUNK, k4), lane, lanes);
                for (var m = 0u; m < GV_M; m++) { acc[m] += chunk[m]; }
            }
        }
        if (LOW_RANK && part == 0u) {  // a fused low-rank term, once a row
            for (var m = 0u; m < GV_M; m++) { acc[m] += gemv_units(m, low_rank_share(m, row, lane, lanes)); }
        }
        for (var m = 0u; m < GV_M; m++) {
            let total = subgroupAdd(acc[m]);
            if (per_row == 1u) {
                if (lane == 0u && n < p.n) { gemv_finish(m, n, total); }
            } else if (lane == 0u) {
                gv_part[m * GV_WG + sg] = total;
            }
        }
    }
    workgroupBarrier();
    // P > 1: the first subgroup of each row adds the row's P totals.
    let n = wid.x * GV_ROWS + slot;
    if (per_row > 1u && part == 0u && lane == 0u && slot < GV_ROWS && n < p.n) {
        for (var m = 0u; m < GV_M; m++) {
            var total = 0.0;
            for (var j = 0u; j < per_row; j++) { total += gv_part[m * GV_WG + sg + j]; }
            gemv_finish(m, n, total);
        }
    }
}
