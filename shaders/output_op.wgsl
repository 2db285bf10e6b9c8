// What a Linear's product does to each output it stores, after the
// low-rank term (shaders/low_rank.wgsl) and before the store writes it, or
// adds it to the output (the prelude constant OUTPUT_OP picks it):
//
//   1  bias   y = v + bias[op_col + n]                    the Linear's bias (Qwen2's q, k, v)
//   2  gate   y = silu(gate[m·op_ld + op_col + n]) · v    SwiGLU fused into up_proj's product:
//                                                         h = silu(gate_proj(x)) · up_proj(x)
//
// v is the product's finished output (alpha · its sum, plus the term), n
// the launch's column, and op_col the first column of this launch's chunk
// of the Linear's outputs. The same value the unfused launches give: the
// bias added once to the finished output (as after a term), silu as
// shaders/swiglu.wgsl computes it. One launch and one pass over the output
// fewer each.
//
// Appended after the term's part to the modules of matmul.wgsl and
// qmatmul.wgsl whose launches have an op; the others get
// shaders/output_op_none.wgsl. Every store of those modules calls
// output_op, so every kernel takes one; only the final store of a
// split-K product does (gemm_split_sum, shaders/gemm_blocked.wgsl).

@group(0) @binding(11) var<storage, read> op_operand: array<f32>;  // bias (N) | gate (M, op_ld)

fn output_op(m: u32, n: u32, v: f32) -> f32 {
    if (OUTPUT_OP == 1u) { return v + op_operand[p.op_col + n]; }
    let g = op_operand[m * p.op_ld + p.op_col + n];
    return g / (1.0 + exp(-g)) * v;
}
