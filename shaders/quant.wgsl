// NF4, Q8_0, f16 and bf16: quantize and dequantize, bit-exact with
// bitsandbytes (NF4), ggml (Q8_0) and round-to-nearest-even (f16 and bf16, as
// torch's .half() and .bfloat16()) as docs/formats.md states them.
//
// GPU layouts (the CPU formats in src/quant/ split the same way):
//   NF4   codes  array<u32>: byte i of the packed codes is byte i%4 of word i/4;
//                           element 2j is the high nibble of byte j, 2j+1 the low.
//         absmax array<f32>: one per 64 consecutive elements of the flattened tensor.
//   Q8_0  qs     array<u32>: int8 value e is byte e%4 of word e/4.
//         scales array<u32>: the f16 scale of block b (32 elements) is half b%2
//                           (low half first) of word b/2.
//   f16   codes  array<u32>: element e is half e%2 (low half first) of word e/2;
//   bf16                    no scales.
//
// WGSL only promises correctly rounded +, − and ×; its division may be off by
// 2.5 ulp and its f32→f16 conversion may round either way. Both formats depend
// on exact reciprocals and round-to-nearest-even f16, so `div_rn` and
// `f16_bits` below do them with integer arithmetic.

struct Params {
    len: u32,      // elements in the tensor
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;               // (len)
@group(0) @binding(2) var<storage, read_write> codes: array<u32>;     // NF4 (ceil(len/8)) | Q8_0 (ceil(len/4)) | f16, bf16 (ceil(len/2))
@group(0) @binding(3) var<storage, read_write> scales: array<u32>;    // NF4 absmax bits (ceil(len/64)) | Q8_0 f16 pairs (ceil(len/64))
@group(0) @binding(4) var<storage, read_write> y: array<f32>;         // (len) dequantized
@group(0) @binding(5) var<storage, read> codes_in: array<u32>;
@group(0) @binding(6) var<storage, read> ws: array<u32>;            // the scales to dequantize with (four_bit.wgsl for 4-bit)

// The 15 thresholds: midpoints of adjacent levels computed in f32, as
// bitsandbytes does (crate::quant::NF4_THRESHOLDS explains the CUDA kernel's
// one-ulp difference at four of them). Written as bits so no compiler's
// decimal parsing can move them.
var<private> NF4_THRESHOLDS: array<u32, 15> = array<u32, 15>(
    0xbf591cd8u, 0xbf1c5270u, 0xbeeb8480u, 0xbeadea76u, 0xbe703cecu, 0xbe0d38bcu, 0xbd3a7871u,
    0x3d22faffu, 0x3df64862u, 0x3e5067e0u, 0x3e9582d4u, 0x3ec753f9u, 0x3f006d04u, 0x3f248dafu, 0x3f5c89dau);

// a / b rounded to nearest even, for finite a >= 0 and normal b > 0; results
// below the normal range flush to zero (GPUs may flush subnormals anyway).
fn div_rn(a: f32, b: f32) -> f32 {
    let ab = bitcast<u32>(a);
    let bb = bitcast<u32>(b);
    if ((ab & 0x7fffffffu) == 0u) { return 0.0; }
    var e = i32((ab >> 23u) & 0xffu) - i32((bb >> 23u) & 0xffu) + 127;
    var ma = (ab & 0x7fffffu) | 0x800000u;
    let mb = (bb & 0x7fffffu) | 0x800000u;
    if (ma < mb) { ma = ma << 1u; e = e - 1; }
    // 24 quotient bits and a guard bit by restoring division; r < 2·mb < 2^25.
    var q = 0u;
    var r = ma;
    for (var i = 0u; i < 25u; i++) {
        q = q << 1u;
        if (r >= mb) { r = r - mb; q = q | 1u; }
        r = r << 1u;
    }
    let guard = q & 1u;
    q = q >> 1u;
    if (guard == 1u && (r != 0u || (q & 1u) == 1u)) { q = q + 1u; }
    if (q == 0x1000000u) { q = q >> 1u; e = e + 1; }
    // +inf, built from e so it is not a constant expression (Tint rejects a constant inf).
    if (e >= 255) { return bitcast<f32>(min(u32(e), 255u) << 23u); }
    if (e <= 0) { return 0.0; }
    return bitcast<f32>((u32(e) << 23u) | (q & 0x7fffffu));
}

// The binary16 bits of x, rounded to nearest even (subnormals included).
fn f16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    if ((b & 0x7fffffffu) == 0u) { return sign; }
    let e = i32((b >> 23u) & 0xffu) - 112;   // rebias 127 → 15
    var m = b & 0x7fffffu;
    if (e >= 31) { return sign | 0x7c00u; }
    if (e <= 0) {
        if (e < -10) { return sign; }
        m = m | 0x800000u;
        let shift = u32(14 - e);
        var h = m >> shift;
        let rem = m & ((1u << shift) - 1u);
        let half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (h & 1u) == 1u)) { h = h + 1u; }
        return sign | h;
    }
    var h = (u32(e) << 10u) | (m >> 13u);
    let rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) { h = h + 1u; }
    return sign | h;
}

// Round half away from zero (C's roundf); WGSL's round() goes to even.
fn round_away(v: f32) -> f32 {
    let t = trunc(v);
    if (abs(v - t) >= 0.5) { return t + sign(v); }
    return t;
}

fn nf4_code(v: f32) -> u32 {
    // Number of midpoints strictly below v: a value on a midpoint takes the lower code.
    var c = 0u;
    for (var i = 0u; i < 15u; i++) { c += select(0u, 1u, bitcast<f32>(NF4_THRESHOLDS[i]) < v); }
    return c;
}

// One invocation per block of 64: absmax, the exact reciprocal, 8 words of codes.
// Padding nibbles past `len` get code 7 (the 0.0 level).
@compute @workgroup_size(64, 1, 1)
fn nf4_quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let block = flat_group(wid, nwg) * 64u + li;
    let start = block * 64u;
    if (start >= p.len) { return; }
    let end = min(start + 64u, p.len);
    var amax = 0.0;
    for (var i = start; i < end; i++) { amax = max(amax, abs(x[i])); }
    let inv = div_rn(1.0, amax);
    for (var w = 0u; w < 8u; w++) {
        var word = 0u;
        for (var j = 0u; j < 8u; j++) {
            let e = start + w * 8u + j;
            var code = 7u;
            // An all-zero block (0·∞ = NaN) is coded as the 0.0 level, as bitsandbytes does.
            if (e < end && amax != 0.0) { code = nf4_code(x[e] * inv); }
            // element e sits in byte j/2 of the word, high nibble when e is even
            let shift = (j / 2u) * 8u + select(0u, 4u, (j & 1u) == 0u);
            word = word | (code << shift);
        }
        if (start + w * 8u < p.len || w == 0u) { codes[block * 8u + w] = word; }
    }
    scales[block] = bitcast<u32>(amax);
}

@compute @workgroup_size(256, 1, 1)
fn nf4_dequantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let e = flat_group(wid, nwg) * 256u + li;
    if (e >= p.len) { return; }
    let byte = (codes_in[e >> 3u] >> (((e >> 1u) & 3u) * 8u)) & 0xffu;
    let code = select(byte & 15u, byte >> 4u, (e & 1u) == 0u);
    y[e] = level(code) * block_absmax(e >> 6u);
}

// One invocation per pair of 32-blocks (one scale word, 16 code words).
@compute @workgroup_size(64, 1, 1)
fn q8_quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let pair = flat_group(wid, nwg) * 64u + li;
    if (pair * 64u >= p.len) { return; }
    var halves = 0u;
    for (var h = 0u; h < 2u; h++) {
        let start = pair * 64u + h * 32u;
        if (start >= p.len) { break; }
        var amax = 0.0;
        for (var i = 0u; i < 32u; i++) { amax = max(amax, abs(x[start + i])); }
        let d = div_rn(amax, 127.0);
        let inv = select(0.0, div_rn(1.0, d), d != 0.0);
        for (var w = 0u; w < 8u; w++) {
            var word = 0u;
            for (var j = 0u; j < 4u; j++) {
                let q = i32(round_away(x[start + w * 4u + j] * inv));
                word = word | ((u32(q) & 0xffu) << (j * 8u));
            }
            codes[(start >> 2u) + w] = word;
        }
        halves = halves | (f16_bits(d) << (h * 16u));
    }
    scales[pair] = halves;
}

@compute @workgroup_size(256, 1, 1)
fn q8_dequantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let e = flat_group(wid, nwg) * 256u + li;
    if (e >= p.len) { return; }
    let q = extractBits(bitcast<i32>(codes_in[e >> 2u]), (e & 3u) * 8u, 8u);
    let block = e >> 5u;
    let d = unpack2x16float(ws[block >> 1u])[block & 1u];
    y[e] = f32(q) * d;
}

// The bf16 bits of x rounded to nearest even, as torch's f32 → bfloat16: the
// top half of x's bits after adding half an ulp (less one where the kept half
// is even). A NaN stays a NaN, its quiet bit set.
fn bf16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if ((b & 0x7fffffffu) > 0x7f800000u) { return (b >> 16u) | 0x40u; }
    return (b + 0x7fffu + ((b >> 16u) & 1u)) >> 16u;
}

// The 16-bit code of x: bf16 (FORMAT 6) or f16.
fn half_bits(x: f32) -> u32 {
    if (FORMAT == 6u) { return bf16_bits(x); }
    return f16_bits(x);
}

// Word i of the f16 or bf16 codes: elements 2i and 2i + 1 (0 past len).
@compute @workgroup_size(256, 1, 1)
fn half_quantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let i = flat_group(wid, nwg) * 256u + li;
    if (i >= (p.len + 1u) / 2u) { return; }
    var high = 0u;
    if (2u * i + 1u < p.len) { high = half_bits(x[2u * i + 1u]); }
    codes[i] = half_bits(x[2u * i]) | (high << 16u);
}

// f16 and bf16 widen to f32 exactly (bf16's bits are the f32's top half).
@compute @workgroup_size(256, 1, 1)
fn half_dequantize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let e = flat_group(wid, nwg) * 256u + li;
    if (e >= p.len) { return; }
    let word = codes_in[e >> 1u];
    if (FORMAT == 6u) {
        y[e] = bitcast<f32>((word >> ((e & 1u) * 16u)) << 16u);
    } else {
        y[e] = unpack2x16float(word)[e & 1u];
    }
}
