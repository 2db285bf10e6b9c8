// Packed rows for shaders/attention.wgsl: several examples share a row, and
// query i of batch row b sees keys starts[b, i] ..= i (block-diagonal causal).

@group(0) @binding(16) var<storage, read> starts: array<u32>;  // (batch, tq): where each query's example begins

// The first key query i of batch row b sees: its example's first position.
fn query_start(b: u32, i: u32) -> u32 { return starts[b * p.tq + i]; }
