// The decoding GEMV's f16 arithmetic (see shaders/gemv.wgsl for the parts a
// GEMV module is built from), for quantized weights computing in f16. The
// module is compiled behind `enable f16;` (SHADER_F16), apart from the f32
// one, because the portable module must build without it.
//
// The arithmetic contract of shaders/qmatmul_f16.wgsl, and the same runs:
// - Each row of x is scaled by the power of two that puts its largest |value|
//   in [1, 2), so activations do not overflow f16; gemv_finish divides it back
//   out, exactly. The workgroup finds each row's largest |value| together
//   (every invocation scans a share of x; the maxima meet in a workgroup
//   atomic: for values ≥ 0 the order of the f32 bit patterns is the order of
//   the values).
// - Operands are rounded to f16; each group of 4 products (a `dot`) and each
//   run of GV_RUN·4 = 32 consecutive products along K are summed in f16, and
//   the runs in f32. The runs are the reference's (K = 0..32, 32..64, …;
//   `reference::matmul::matmul_f16_compute`): a lane takes whole runs, lanes
//   consecutive ones. With |W| ≤ 1000 (QWeight::compute_for checks it) a
//   run's sum stays below 64·1000 < 65504.

// Vec4 steps per f16 partial sum (RUN of qmatmul_f16.wgsl).
const GV_RUN: u32 = 8u;

// Vec4 steps a lane takes per pass over its row: one run.
const GV_PASS: u32 = GV_RUN;

var<workgroup> gv_max_bits: array<atomic<u32>, GV_M>;  // (GV_M) largest |x[m, :]|, as f32 bits

var<private> gv_scale: array<f32, GV_M>;  // (GV_M) the row scales

// Every invocation of the workgroup, `index` of `count`, in uniform control flow.
fn gemv_setup(index: u32, count: u32) {
    if (index < GV_M) { atomicStore(&gv_max_bits[index], 0u); }
    workgroupBarrier();
    let k4 = p.k / 4u;
    for (var m = 0u; m < GV_M; m++) {
        var mx = vec4<f32>(0.0);
        for (var q = index; q < k4; q += count) { mx = max(mx, abs(gemv_x4(m, q * 4u))); }
        atomicMax(&gv_max_bits[m], bitcast<u32>(max(max(mx.x, mx.y), max(mx.z, mx.w))));
    }
    workgroupBarrier();
    // As row_scale in qmatmul_f16.wgsl: an all-zero row gets 2^127, a
    // non-finite one 2^-126.
    for (var m = 0u; m < GV_M; m++) {
        let e = min((atomicLoad(&gv_max_bits[m]) >> 23u) & 0xffu, 253u);
        gv_scale[m] = bitcast<f32>((254u - e) << 23u);
    }
}

// Runs starting at begin + lane·GV_RUN, then every lanes·GV_RUN steps, cut
// at end. With GV_WIDE and K a multiple of 32 a run is one wide load of W
// (gemv_w32): the same values, summed in the same order.
fn gemv_lane(row: u32, begin: u32, end: u32, lane: u32, lanes: u32) -> array<f32, GV_M> {
    var acc: array<f32, GV_M>;
    let wide = GV_WIDE && p.k % 32u == 0u;
    for (var base = begin; base < end; base += lanes * GV_RUN) {
        let first = base + lane * GV_RUN;
        var run: array<vec4<f32>, GV_RUN>;  // W[row, 4·first .. 4·first + 32], zero past end
        if (wide && first < end) {
            run = gemv_w32(row, first * 4u);
        } else {
            for (var i = 0u; i < GV_RUN; i++) {
                if (first + i < end) { run[i] = gemv_w4(row, (first + i) * 4u); }
            }
        }
        var part: array<f16, GV_M>;
        for (var i = 0u; i < GV_RUN; i++) {
            let q = first + i;
            if (q < end) {
                let w = vec4<f16>(run[i]);
                for (var m = 0u; m < GV_M; m++) {
                    part[m] += dot(vec4<f16>(gemv_x4(m, q * 4u) * gv_scale[m]), w);
                }
            }
        }
        for (var m = 0u; m < GV_M; m++) { acc[m] += f32(part[m]); }
    }
    return acc;
}

// A value in the units of gemv_lane's sums: times the row's scale, which
// gemv_finish divides back out (a power of two: exact either way).
fn gemv_units(m: u32, value: f32) -> f32 { return value * gv_scale[m]; }

fn gemv_finish(m: u32, n: u32, sum: f32) { gemv_store(m, n, sum / gv_scale[m]); }
