// `level(code)` for the decoding GEMV: with wide spans (GV_WIDE, see
// GemvTiles::wide) from a copy of the 16 levels in workgroup memory, else
// from four_bit.wgsl's tables. A table in private memory indexed by data is
// per-invocation local memory on a GPU (or a constant bank, serialized when
// lanes read different entries); in workgroup memory lanes reading different
// entries hit different banks. bitsandbytes' 4-bit GEMV keeps its code table
// in shared memory too.
//
// The GEMV calls stage_levels(local index, invocations) in uniform control
// flow before its first decode, then a barrier (through host_setup,
// shaders/qmatmul.wgsl). A workgroup may have fewer than 16 invocations (3
// lanes on 4 rows is 12): each stages every count-th level.

var<workgroup> staged_levels: array<f32, 16>;

fn stage_levels(index: u32, count: u32) {
    if (GV_WIDE) {
        for (var i = index; i < 16u; i += count) { staged_levels[i] = table_level(i); }
    }
}

fn level(code: u32) -> f32 {
    if (GV_WIDE) { return staged_levels[code]; }
    return table_level(code);
}
