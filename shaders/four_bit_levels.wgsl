// `level(code)` straight from four_bit.wgsl's tables: every quantized kernel
// but the decoding GEMV (shaders/four_bit_staged.wgsl). Nothing to stage.

fn level(code: u32) -> f32 { return table_level(code); }

fn stage_levels(index: u32, count: u32) {}
