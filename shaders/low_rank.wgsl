// A low-rank term added where a Linear's product stores y = x · Wᵀ: LoRA's
// scale · (x · Aᵀ) · Bᵀ, fused into the frozen product for decoding's few rows
// (one launch and one pass over y fewer per adapted Linear).
//
//   y[m, n] = alpha · (x · Wᵀ)[m, n] + lr_scale · Σ_j h[m, j] · B[lr_row + n, j]
//
// h = drop(x) · Aᵀ (M, r) is computed before the product; B (out, r) is
// LoRA's lora_B, whose rows lr_row.. are this launch's chunk of W's rows.
// Where a kernel's store adds the term, the invocation that stores an output
// sums its r products in order (r is small, and the rows are few). The GEMV
// (shaders/gemv.wgsl) instead splits them over the lanes of the row, whose
// sums it already adds up, and stores without the term: one lane alone would
// wait through r dependent loads at the end of every row.
//
// Appended to the modules of matmul.wgsl (f32 weights) and qmatmul.wgsl
// (quantized ones), whose stores call low_rank_term when LOW_RANK, and whose
// Params end in lr_rank, lr_scale, lr_row; the other launches get
// shaders/low_rank_none.wgsl instead.

const LOW_RANK: bool = true;

@group(0) @binding(8) var<storage, read> lr_h: array<f32>;  // h (M, r)
@group(0) @binding(9) var<storage, read> lr_b: array<f32>;  // B (out, r)

// The share of lane `lane` of `lanes` in the term at (m, n): scale times its
// products j = lane, lane + lanes, ….
fn low_rank_share(m: u32, n: u32, lane: u32, lanes: u32) -> f32 {
    let h0 = m * p.lr_rank;
    let b0 = (p.lr_row + n) * p.lr_rank;
    var sum = 0.0;
    for (var j = lane; j < p.lr_rank; j += lanes) { sum += lr_h[h0 + j] * lr_b[b0 + j]; }
    return p.lr_scale * sum;
}

fn low_rank_term(m: u32, n: u32) -> f32 { return low_rank_share(m, n, 0u, 1u); }
