// bitsandbytes' 4-bit weights as the matmul and dequantize kernels read them,
// shared by shaders/qmatmul.wgsl and shaders/quant.wgsl (each declares the
// scales binding `ws` this file reads).
//
// FORMAT (a prelude constant) names the layout of the codes and scales:
//   0 NF4, 3 FP4                  ws: one f32 absmax per 64 values
//   4 NF4, 5 FP4, double-quantized ws (array<u32>), bitsandbytes'
//                                 `bnb_4bit_use_double_quant` bytes as stored:
//       ws[0]            offset (f32 bits)                      `nested_offset`
//       ws[1]            skew: absmaxes of the first nested block before this chunk's
//       ws[2]            c0: the word where the 8-bit absmax codes start
//       ws[3 .. 259]     the 256 levels of the 8-bit map (f32)  `nested_quant_map`
//       ws[259 .. c0]    one f32 per 256 absmaxes               `nested_absmax`
//       ws[c0 ..]        one byte per 64 values, byte b%4 of word b/4   `absmax`
//     absmax(b) = map[code(b)] · nested[(b + skew) / 256] + offset
//   1 Q8_0, 2 f16 are read in qmatmul.wgsl itself.
// The codes: two a byte, the even element in the high nibble (quant.wgsl).

const FOUR_BIT_FP4: bool = FORMAT == 3u || FORMAT == 5u;
const DOUBLE_QUANT: bool = FORMAT == 4u || FORMAT == 5u;

var<private> NF4_LEVELS: array<f32, 16> = array<f32, 16>(
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230850219727, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0);

// crate::quant::FP4_LEVELS: 0, 0.0625, 8, 12, 4, 6, 2, 3 over 12, then negated.
var<private> FP4_LEVELS: array<f32, 16> = array<f32, 16>(
    0.0, 0.0625 / 12.0, 8.0 / 12.0, 1.0, 4.0 / 12.0, 0.5, 2.0 / 12.0, 0.25,
    0.0, -0.0625 / 12.0, -8.0 / 12.0, -1.0, -4.0 / 12.0, -0.5, -2.0 / 12.0, -0.25);

// The level of a 4-bit code, from the tables above. Kernels read levels
// through `level(code)`, which one of two files supplies with
// `stage_levels(index, count)`: four_bit_levels.wgsl reads these tables,
// four_bit_staged.wgsl (the decoding GEMV) a copy in workgroup memory for
// its wide spans.
fn table_level(code: u32) -> f32 {
    if (FOUR_BIT_FP4) { return FP4_LEVELS[code]; }
    return NF4_LEVELS[code];
}

// The f32 absmax of block b (64 values) of the chunk.
fn block_absmax(b: u32) -> f32 {
    if (DOUBLE_QUANT) {
        let code = (ws[ws[2] + (b >> 2u)] >> ((b & 3u) * 8u)) & 0xffu;
        let scaled = bitcast<f32>(ws[3u + code]) * bitcast<f32>(ws[259u + ((b + ws[1]) >> 8u)]);
        return scaled + bitcast<f32>(ws[0]);
    }
    return bitcast<f32>(ws[b]);
}
