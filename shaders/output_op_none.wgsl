// No output op (see shaders/output_op.wgsl): the store writes the product's
// output as it is.

fn output_op(m: u32, n: u32, v: f32) -> f32 { return v; }
