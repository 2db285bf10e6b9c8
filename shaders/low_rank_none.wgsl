// No low-rank term (see shaders/low_rank.wgsl): what the modules of
// matmul.wgsl and qmatmul.wgsl are built with unless a launch fuses LoRA's
// term into its store.

const LOW_RANK: bool = false;

fn low_rank_h(m: u32, j: u32) -> f32 { return 0.0; }

fn low_rank_b(n: u32, j: u32) -> f32 { return 0.0; }

fn low_rank_share(m: u32, n: u32, lane: u32, lanes: u32) -> f32 { return 0.0; }

fn low_rank_term(m: u32, n: u32) -> f32 { return 0.0; }
