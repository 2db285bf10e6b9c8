// The decoding GEMV's f32 arithmetic (see shaders/gemv.wgsl for the parts a
// GEMV module is built from): a lane reads consecutive lanes' neighbouring
// 4-value groups of W (coalesced), GV_UNROLL of them in flight at once, and
// sums their products with x in f32. x is small and stays in cache. With
// GV_WIDE and K a multiple of 32, a lane takes spans of GV_SPAN consecutive
// groups instead, consecutive lanes consecutive spans (coalesced too), each
// span one wide load (gemv_w32).

const GV_UNROLL: u32 = 4u;

// Vec4 steps in a wide span: 32 values.
const GV_SPAN: u32 = 8u;

// Vec4 steps a lane takes per pass over its row.
const GV_PASS: u32 = select(GV_UNROLL, GV_SPAN, GV_WIDE);

fn gemv_setup(index: u32, count: u32) {}

// Steps begin + lane, begin + lane + lanes, … below end.
fn gemv_lane(row: u32, begin: u32, end: u32, lane: u32, lanes: u32) -> array<f32, GV_M> {
    if (GV_WIDE && p.k % 32u == 0u) { return gemv_lane_wide(row, begin, end, lane, lanes); }
    var acc: array<f32, GV_M>;
    for (var base = begin; base < end; base += lanes * GV_UNROLL) {
        var w: array<vec4<f32>, GV_UNROLL>;
        for (var u = 0u; u < GV_UNROLL; u++) {
            let q = base + u * lanes + lane;
            w[u] = vec4<f32>(0.0);
            if (q < end) { w[u] = gemv_w4(row, q * 4u); }
        }
        for (var u = 0u; u < GV_UNROLL; u++) {
            let q = base + u * lanes + lane;
            if (q < end) {
                for (var m = 0u; m < GV_M; m++) { acc[m] += dot(gemv_x4(m, q * 4u), w[u]); }
            }
        }
    }
    return acc;
}

// Spans starting at begin + lane·GV_SPAN, then every lanes·GV_SPAN steps
// (begin and end multiples of GV_SPAN: K is a multiple of 32).
fn gemv_lane_wide(row: u32, begin: u32, end: u32, lane: u32, lanes: u32) -> array<f32, GV_M> {
    var acc: array<f32, GV_M>;
    for (var base = begin; base < end; base += lanes * GV_SPAN) {
        let first = base + lane * GV_SPAN;
        if (first < end) {
            let w = gemv_w32(row, first * 4u);  // W[row, 4·first .. 4·first + 32]
            for (var i = 0u; i < GV_SPAN; i++) {
                for (var m = 0u; m < GV_M; m++) { acc[m] += dot(gemv_x4(m, (first + i) * 4u), w[i]); }
            }
        }
    }
    return acc;
}

// A value in the units of gemv_lane's sums (theirs are the output's).
fn gemv_units(m: u32, value: f32) -> f32 { return value; }

fn gemv_finish(m: u32, n: u32, sum: f32) { gemv_store(m, n, sum); }
