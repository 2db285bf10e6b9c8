// AdamW, one step in place on (param, m, v), exactly PyTorch's
// `torch.optim.AdamW` (foreach=False; https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html):
//
//   param = param · (1 − lr·wd)                        decoupled decay, skipped when wd = 0
//   m     = lerp(m, g, 1 − β1)                         one FMA, as ATen's lerp
//   v     = v·β2 + ((1 − β2)·g)·g
//   param = param + (−lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
//
// Every scalar (bias corrections included) is computed on the CPU in f64 as
// torch does in Python and arrives as f32 in the uniform, so the GPU does
// only the elementwise f32 work, in the reference's order.
//
//   adamw_step          g = grad, or grad · grad_scale when scale_grad is set
//   adamw_step_clipped  g = grad · clip[1], the clipping factor left on the GPU by `reduce`
//
// Prelude constant: WG, invocations per workgroup.

struct Params {
    n: u32,
    apply_decay: u32,
    scale_grad: u32,
    _pad: u32,
    decay: f32,                  // 1 − lr·weight_decay
    lerp_weight: f32,            // 1 − β1
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,  // sqrt(1 − β2^step)
    eps: f32,
    neg_step_size: f32,          // −lr / (1 − β1^step)
    grad_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;  // (n)
@group(0) @binding(2) var<storage, read> grad: array<f32>;         // (n)
@group(0) @binding(3) var<storage, read_write> m: array<f32>;      // (n), exp_avg
@group(0) @binding(4) var<storage, read_write> v: array<f32>;      // (n), exp_avg_sq
@group(0) @binding(5) var<storage, read> clip: array<f32>;         // (2): norm, clipping factor

fn update(i: u32, g: f32) {
    var w = param[i];
    if (p.apply_decay != 0u) { w = w * p.decay; }
    let m0 = m[i];
    var m1: f32;
    if (abs(p.lerp_weight) < 0.5) {
        m1 = fma(p.lerp_weight, g - m0, m0);
    } else {
        m1 = fma(p.lerp_weight - 1.0, g - m0, g);
    }
    var v1 = v[i] * p.beta2;
    v1 = v1 + (p.one_minus_beta2 * g) * g;
    let denom = sqrt(v1) / p.bias_correction2_sqrt + p.eps;
    param[i] = w + (p.neg_step_size * m1) / denom;
    m[i] = m1;
    v[i] = v1;
}

@compute @workgroup_size(WG)
fn adamw_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.n) { return; }
    var g = grad[i];
    if (p.scale_grad != 0u) { g = g * p.grad_scale; }
    update(i, g);
}

@compute @workgroup_size(WG)
fn adamw_step_clipped(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = flat_group(wid, nwg) * WG + lid;
    if (i >= p.n) { return; }
    update(i, grad[i] * clip[1]);
}
