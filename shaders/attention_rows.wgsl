// Unpacked rows for shaders/attention.wgsl: every query's example starts at
// position 0 of its row (plain causal attention); no starts binding.

// The first key query i of batch row b sees.
fn query_start(b: u32, i: u32) -> u32 { return 0u; }
