// Matrix multiply through a frozen quantized weight, dequantizing inside the
// kernel so the f32 weight never exists in memory.
//
//   qmatmul_nt   y  = x · Wᵀ     x (M, K), W (N, K) → y (M, N)     forward
//   qmatmul_nn   dx = dy · W     dy (M, N), W (N, K) → dx (M, K)   backward to the input
//
// W is NF4 or FP4 (shaders/four_bit.wgsl), Q8_0, f16 or bf16 (FORMAT), laid
// out as shaders/quant.wgsl describes.
// Dequantised values are exactly level·absmax (NF4), q·d (Q8_0) and the f16
// or bf16 value itself, the same values quant.wgsl's dequantize entries write.
// f16 weights are widened with unpack2x16float, which every WebGPU device has,
// bf16 ones by shifting their bits into an f32's top half; products and sums
// are f32 in every format.
// Register tiling as in matmul.wgsl: each invocation owns a TM×TN block and
// decodes 4 consecutive weights per 32-bit load. The vec4 entries need K and
// the x rows aligned to 4 (real models always are); `qmatmul_scalar` takes any
// shape, and `qmatmul_naive` is the benchmark's yardstick.
// Prelude constants: FORMAT, TM, TN, WX, WY, and for the scalar kernels FORWARD.
// Appended to every module: shaders/low_rank.wgsl (a launch that adds LoRA's
// term as it stores y) or shaders/low_rank_none.wgsl, then
// shaders/output_op.wgsl (the Linear's bias, or SwiGLU's gate) or
// output_op_none.wgsl.

const Q8_0: u32 = 1u;
const F16: u32 = 2u;
const BF16: u32 = 6u;

const HALVES: bool = FORMAT == F16 || FORMAT == BF16;  // two 16-bit floats a word, no scales

// The two 16-bit values of a word (the low half first), widened exactly:
// bf16 by putting its bits in an f32's top half.
fn half_pair(word: u32) -> vec2<f32> {
    if (FORMAT == BF16) { return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u)); }
    return unpack2x16float(word);
}

struct Params {
    m: u32, n: u32, k: u32, batch: u32,
    lda: u32,           // row stride of x (or dy)
    ldb: u32,           // unused: W rows are contiguous
    ldc: u32,           // row stride of the output
    accumulate: u32,
    a_off: u32, b_off: u32, c_off: u32,
    alpha: f32,
    stride_a: u32, stride_b: u32, stride_c: u32,
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
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;  // x (M, K) or dy (M, N), vec4 along rows
@group(0) @binding(2) var<storage, read> wq: array<u32>;        // codes: NF4 nibbles | Q8_0 int8 | f16, bf16 pairs, (N, K) flattened
@group(0) @binding(3) var<storage, read> ws: array<u32>;        // 4-bit absmaxes (four_bit.wgsl) | Q8_0 f16 scale pairs | f16, bf16: wq again
@group(0) @binding(4) var<storage, read_write> c: array<f32>;   // y (M, ldc) or dx (M, ldc)
@group(0) @binding(5) var<storage, read> a: array<f32>;         // scalar view of x / dy
@group(0) @binding(10) var<storage, read> wq4: array<vec4<u32>>; // the codes in 16-byte units (the GEMV's wide spans)

// Four consecutive weights starting at flattened element e (e % 4 == 0).
fn w4(e: u32) -> vec4<f32> {
    if (HALVES) {
        return vec4<f32>(half_pair(wq[e >> 1u]), half_pair(wq[(e >> 1u) + 1u]));
    }
    if (FORMAT == Q8_0) {
        let word = bitcast<i32>(wq[e >> 2u]);
        let block = e >> 5u;
        let d = unpack2x16float(ws[block >> 1u])[block & 1u];
        let q = vec4<f32>(f32(extractBits(word, 0u, 8u)), f32(extractBits(word, 8u, 8u)),
                          f32(extractBits(word, 16u, 8u)), f32(extractBits(word, 24u, 8u)));
        return q * d;
    }
    // NF4 or FP4 (shaders/four_bit.wgsl): two bytes of one word; the even
    // element of each byte is its high nibble.
    let v = wq[e >> 3u] >> ((e & 4u) * 4u);
    let absmax = block_absmax(e >> 6u);
    return vec4<f32>(level((v >> 4u) & 15u), level(v & 15u),
                     level((v >> 12u) & 15u), level((v >> 8u) & 15u)) * absmax;
}

// Thirty-two weights from flattened element e (e % 32 == 0), one block's
// worth: one 16-byte load of 4-bit codes, two of Q8_0, four of f16 (the
// decoding GEMV's wide spans; the same values as eight w4 calls).
fn w32(e: u32) -> array<vec4<f32>, 8> {
    var w: array<vec4<f32>, 8>;
    if (HALVES) {
        for (var j = 0u; j < 4u; j++) {
            let v = wq4[e / 8u + j];
            w[2u * j] = vec4<f32>(half_pair(v.x), half_pair(v.y));
            w[2u * j + 1u] = vec4<f32>(half_pair(v.z), half_pair(v.w));
        }
        return w;
    }
    if (FORMAT == Q8_0) {
        let block = e >> 5u;
        let d = unpack2x16float(ws[block >> 1u])[block & 1u];
        for (var j = 0u; j < 2u; j++) {
            let v = wq4[e / 16u + j];
            for (var c = 0u; c < 4u; c++) {
                let word = bitcast<i32>(v[c]);
                w[4u * j + c] = vec4<f32>(f32(extractBits(word, 0u, 8u)), f32(extractBits(word, 8u, 8u)),
                                          f32(extractBits(word, 16u, 8u)), f32(extractBits(word, 24u, 8u))) * d;
            }
        }
        return w;
    }
    // NF4 or FP4: word c holds elements 8c..8c+8, the even one of each byte high.
    let v = wq4[e / 32u];
    let absmax = block_absmax(e >> 6u);
    for (var c = 0u; c < 4u; c++) {
        for (var h = 0u; h < 2u; h++) {
            let b = v[c] >> (16u * h);
            w[2u * c + h] = vec4<f32>(level((b >> 4u) & 15u), level(b & 15u),
                                      level((b >> 12u) & 15u), level((b >> 8u) & 15u)) * absmax;
        }
    }
    return w;
}

// One weight at flattened element e.
fn w1(e: u32) -> f32 {
    if (HALVES) {
        return half_pair(wq[e >> 1u])[e & 1u];
    }
    if (FORMAT == Q8_0) {
        let q = extractBits(bitcast<i32>(wq[e >> 2u]), (e & 3u) * 8u, 8u);
        let block = e >> 5u;
        return f32(q) * unpack2x16float(ws[block >> 1u])[block & 1u];
    }
    let byte = (wq[e >> 3u] >> (((e >> 1u) & 3u) * 8u)) & 0xffu;
    let code = select(byte & 15u, byte >> 4u, (e & 1u) == 0u);
    return level(code) * block_absmax(e >> 6u);
}

// y[m, n] = alpha · value (+ y[m, n]), plus the low-rank term where the
// module has one (shaders/low_rank.wgsl; every kernel stores through here,
// the GEMV with `term` off: it added the term in its lanes), through the
// output op (shaders/output_op.wgsl).
fn store(m: u32, n: u32, value: f32) { store_with(m, n, value, LOW_RANK); }

fn store_with(m: u32, n: u32, value: f32, term: bool) {
    let i = p.c_off + m * p.ldc + n;
    var v = p.alpha * value;
    if (term) { v += low_rank_term(m, n); }
    v = output_op(m, n, v);
    if (p.accumulate != 0u) {
        c[i] = c[i] + v;
    } else {
        c[i] = v;
    }
}

// y = x · Wᵀ: both operands contiguous along K.
@compute @workgroup_size(WX, WY, 1)
fn qmatmul_nt(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WY + lid.y) * TM;
    let col0 = (wid.x * WX + lid.x) * TN;
    if (row0 >= p.m || col0 >= p.n) { return; }
    let lda4 = p.lda / 4u;
    var arow: array<u32, TM>;
    for (var i = 0u; i < TM; i++) { arow[i] = p.a_off / 4u + min(row0 + i, p.m - 1u) * lda4; }
    var wrow: array<u32, TN>;
    for (var j = 0u; j < TN; j++) { wrow[j] = min(col0 + j, p.n - 1u) * p.k; }
    var acc: array<array<f32, TN>, TM>;
    for (var kk = 0u; kk < p.k / 4u; kk++) {
        var av: array<vec4<f32>, TM>;
        for (var i = 0u; i < TM; i++) { av[i] = a4[arow[i] + kk]; }
        for (var j = 0u; j < TN; j++) {
            let wv = w4(wrow[j] + kk * 4u);
            for (var i = 0u; i < TM; i++) { acc[i][j] += dot(av[i], wv); }
        }
    }
    for (var i = 0u; i < TM; i++) {
        if (row0 + i >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            if (col0 + j < p.n) { store(row0 + i, col0 + j, acc[i][j]); }
        }
    }
}

// dx = dy · W: here M×N is the output (rows of dy × in_features) and K is the
// inner dimension (out_features); W row kk holds the weights of output kk.
@compute @workgroup_size(WX, WY, 1)
fn qmatmul_nn(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WY + lid.y) * TM;
    let col0 = (wid.x * WX + lid.x) * TN;
    if (row0 >= p.m || col0 >= p.n) { return; }
    let lda4 = p.lda / 4u;
    var arow: array<u32, TM>;
    for (var i = 0u; i < TM; i++) { arow[i] = p.a_off / 4u + min(row0 + i, p.m - 1u) * lda4; }
    var wcol: array<u32, TN / 4u>;
    for (var j = 0u; j < TN / 4u; j++) { wcol[j] = min(col0 + j * 4u, p.n - 4u); }
    var acc: array<array<vec4<f32>, TN / 4u>, TM>;
    for (var kk = 0u; kk < p.k / 4u; kk++) {
        var av: array<vec4<f32>, TM>;
        for (var i = 0u; i < TM; i++) { av[i] = a4[arow[i] + kk]; }
        for (var r = 0u; r < 4u; r++) {
            let wbase = (kk * 4u + r) * p.n;
            for (var j = 0u; j < TN / 4u; j++) {
                let wv = w4(wbase + wcol[j]);
                for (var i = 0u; i < TM; i++) { acc[i][j] += av[i][r] * wv; }
            }
        }
    }
    for (var i = 0u; i < TM; i++) {
        if (row0 + i >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            if (col0 + j < p.n) { store(row0 + i, col0 + j, acc[i][j / 4u][j % 4u]); }
        }
    }
}

// Weight (inner index kk, output column n) for either direction.
fn w_at(kk: u32, n: u32) -> f32 {
    if (FORWARD) { return w1(n * p.k + kk); }
    return w1(kk * p.n + n);
}

// The operands as the shared cores see them (shaders/gemm_blocked.wgsl and
// shaders/gemv.wgsl, appended to this file for real GPUs): op(B) is Wᵀ going
// forward and W going backward; it is decoded as it is staged.
const GEMM_A_ALONG_K: bool = true;
const GEMM_B_ALONG_N: bool = !FORWARD;

fn gemm_a(z: u32, m: u32, k: u32) -> f32 { return a[p.a_off + m * p.lda + k]; }

fn gemm_b(z: u32, k: u32, n: u32) -> f32 { return w_at(k, n); }

// Four values of x (or dy) along its row from (m, k) (A_VEC4 launches).
fn gemm_a4(z: u32, m: u32, k: u32) -> vec4<f32> { return a4[(p.a_off + m * p.lda + k) / 4u]; }

// Four weights along W's rows from (k, n): one decoded word (B_VEC4 launches).
fn gemm_b4(z: u32, k: u32, n: u32) -> vec4<f32> {
    if (FORWARD) { return w4(n * p.k + k); }
    return w4(k * p.n + n);
}

// Without the term: the blocked core adds a fused term to its tiles itself.
fn gemm_store(z: u32, m: u32, n: u32, value: f32) { store_with(m, n, value, false); }

fn gemv_x4(m: u32, k: u32) -> vec4<f32> { return a4[(p.a_off + m * p.lda + k) / 4u]; }

fn gemv_w4(n: u32, k: u32) -> vec4<f32> { return w4(n * p.k + k); }

fn gemv_w32(n: u32, k: u32) -> array<vec4<f32>, 8> { return w32(n * p.k + k); }

// Per-workgroup preparation before the GEMV's first decode (every invocation,
// local index `index` of `count`, uniform control flow; a barrier follows):
// the 4-bit levels into workgroup memory for wide spans
// (shaders/four_bit_staged.wgsl; four_bit_levels.wgsl has nothing to stage).
fn host_setup(index: u32, count: u32) { stage_levels(index, count); }

fn gemv_store(m: u32, n: u32, value: f32) { store_with(m, n, value, false); }

// Any shape: the same register tile with scalar loads.
@compute @workgroup_size(WX, WY, 1)
fn qmatmul_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let row0 = (wid.y * WY + lid.y) * TM;
    let col0 = (wid.x * WX + lid.x) * TN;
    if (row0 >= p.m || col0 >= p.n) { return; }
    var rows: array<u32, TM>;
    for (var i = 0u; i < TM; i++) { rows[i] = p.a_off + min(row0 + i, p.m - 1u) * p.lda; }
    var cols: array<u32, TN>;
    for (var j = 0u; j < TN; j++) { cols[j] = min(col0 + j, p.n - 1u); }
    var acc: array<array<f32, TN>, TM>;
    for (var kk = 0u; kk < p.k; kk++) {
        var av: array<f32, TM>;
        for (var i = 0u; i < TM; i++) { av[i] = a[rows[i] + kk]; }
        for (var j = 0u; j < TN; j++) {
            let wv = w_at(kk, cols[j]);
            for (var i = 0u; i < TM; i++) { acc[i][j] += av[i] * wv; }
        }
    }
    for (var i = 0u; i < TM; i++) {
        if (row0 + i >= p.m) { break; }
        for (var j = 0u; j < TN; j++) {
            if (col0 + j < p.n) { store(row0 + i, col0 + j, acc[i][j]); }
        }
    }
}

// One output per invocation, decoding every weight it touches.
@compute @workgroup_size(WX, WY, 1)
fn qmatmul_naive(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.y >= p.m || gid.x >= p.n) { return; }
    var acc = 0.0;
    for (var kk = 0u; kk < p.k; kk++) { acc += a[p.a_off + gid.y * p.lda + kk] * w_at(kk, gid.x); }
    store(gid.y, gid.x, acc);
}
