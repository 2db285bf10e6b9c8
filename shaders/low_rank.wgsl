// A low-rank term added where a product stores its output: LoRA's
// scale · (x · Aᵀ) · Bᵀ fused into a Linear's frozen product y = x · Wᵀ, or,
// going backward, the LoRA path's share of dx, d(xa) · A, fused into the
// frozen dx = dy · W (one launch and one pass over the output fewer each).
//
//   out[m, n] = alpha · (product)[m, n] + lr_scale · Σ_j h[m, lr_h_col + j] · B[lr_row + n, j]
//
// h (M, lr_h_ld) is computed before the product; the term reads its r
// columns from lr_h_col (several Linears on one input share one h). B is stored (out, r) (lora_B;
// lr_ld = 0), or transposed, Bᵀ (r, lr_ld) (lora_A (r, in) for dx; lr_ld =
// in); rows lr_row.. of B are this launch's chunk of the output's columns.
// Where a register-tiled kernel's store adds the term, the invocation that
// stores an output sums its r products in order (r is small, and such
// launches have few rows). The GEMV (shaders/gemv.wgsl) instead splits them
// over the lanes of the row, whose sums it already adds up, and stores
// without the term: one lane alone would wait through r dependent loads at
// the end of every row. The blocked GEMM (shaders/gemm_blocked.wgsl) adds r
// outer products of its tile's rows of h and of B to its registers, and
// stores without the term too.
//
// Appended to the modules of matmul.wgsl (f32 weights) and qmatmul.wgsl
// (quantized ones), whose stores call low_rank_term when LOW_RANK, and whose
// Params end in lr_rank, lr_scale, lr_row, lr_ld; the other launches get
// shaders/low_rank_none.wgsl instead.

const LOW_RANK: bool = true;

@group(0) @binding(8) var<storage, read> lr_h: array<f32>;  // h (M, lr_h_ld), the term's columns from lr_h_col
@group(0) @binding(9) var<storage, read> lr_b: array<f32>;  // B (out, r), or Bᵀ (r, lr_ld)

fn low_rank_h(m: u32, j: u32) -> f32 { return lr_h[m * p.lr_h_ld + p.lr_h_col + j]; }

// B[lr_row + n, j] in either layout.
fn low_rank_b(n: u32, j: u32) -> f32 {
    if (p.lr_ld == 0u) { return lr_b[(p.lr_row + n) * p.lr_rank + j]; }
    return lr_b[j * p.lr_ld + p.lr_row + n];
}

// The share of lane `lane` of `lanes` in the term at (m, n): scale times its
// products j = lane, lane + lanes, ….
fn low_rank_share(m: u32, n: u32, lane: u32, lanes: u32) -> f32 {
    var sum = 0.0;
    for (var j = lane; j < p.lr_rank; j += lanes) { sum += low_rank_h(m, j) * low_rank_b(n, j); }
    return p.lr_scale * sum;
}

fn low_rank_term(m: u32, n: u32) -> f32 { return low_rank_share(m, n, 0u, 1u); }
