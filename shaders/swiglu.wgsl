// The Llama MLP's gated activation and the bottleneck adapters' activations,
// elementwise on flat tensors of n values, forward and backward.
//
//   swiglu_forward       h = silu(gate) · up
//   swiglu_backward      dgate = dh · up · silu'(gate),  dup = dh · silu(gate)
//   activation_forward   y = f(x)
//   activation_backward  dx = dy · f'(x)
//
// f is chosen by the prelude constant ACT: 0 relu, 1 silu, 2 gelu (exact, erf
// form: torch's default nn.GELU), 3 tanh. The backward takes the forward's
// input (gate and up, or x): the pre-activations are what the forward saves.
// Prelude constant: WG, invocations per workgroup (one value each).

struct Params {
    n: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gate: array<f32>;          // (n)
@group(0) @binding(2) var<storage, read> up: array<f32>;            // (n)
@group(0) @binding(3) var<storage, read_write> h: array<f32>;       // (n)
@group(0) @binding(4) var<storage, read> dh: array<f32>;            // (n)
@group(0) @binding(5) var<storage, read_write> dgate: array<f32>;   // (n)
@group(0) @binding(6) var<storage, read_write> dup: array<f32>;     // (n)
@group(0) @binding(7) var<storage, read> act_x: array<f32>;         // (n)
@group(0) @binding(8) var<storage, read_write> act_y: array<f32>;   // (n)
@group(0) @binding(9) var<storage, read> act_dy: array<f32>;        // (n)
@group(0) @binding(10) var<storage, read_write> act_dx: array<f32>; // (n)

const FRAC_1_SQRT_2: f32 = 0.70710678118654752;
const FRAC_1_SQRT_2PI: f32 = 0.39894228040143268;

// x · sigmoid(x) as torch evaluates it: x / (1 + exp(−x)).
fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

// silu'(x) = s · (1 + x · (1 − s)), s = sigmoid(x) (torch's silu_backward).
fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-x));
    return s * (1.0 + x * (1.0 - s));
}

// erfc(x) with relative error below 1.2e-7 (Numerical Recipes' erfcc, a
// Chebyshev fit). WGSL has no erf; the complement keeps GELU's negative tail
// accurate where 1 + erf(x) would cancel.
fn erfc(x: f32) -> f32 {
    let z = abs(x);
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
        + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * exp(-z * z + poly);
    return select(2.0 - r, r, x >= 0.0);
}

// Φ(x), the standard normal CDF: 0.5 · erfc(−x/√2).
fn normal_cdf(x: f32) -> f32 {
    return 0.5 * erfc(-x * FRAC_1_SQRT_2);
}

fn activation(x: f32) -> f32 {
    switch ACT {
        case 0u: { return max(x, 0.0); }
        case 1u: { return silu(x); }
        case 2u: { return x * normal_cdf(x); }
        default: { return tanh(clamp(x, -15.0, 15.0)); }  // clamped: some tanh lowerings give inf/inf
    }
}

fn activation_grad(x: f32) -> f32 {
    switch ACT {
        case 0u: { return select(0.0, 1.0, x > 0.0); }  // 0 at the kink, as torch
        case 1u: { return silu_grad(x); }
        case 2u: { return normal_cdf(x) + x * FRAC_1_SQRT_2PI * exp(-0.5 * x * x); }
        default: {
            let t = tanh(clamp(x, -15.0, 15.0));
            return 1.0 - t * t;
        }
    }
}

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return flat_group(wid, nwg) * WG + lid;
}

@compute @workgroup_size(WG)
fn swiglu_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    h[i] = silu(gate[i]) * up[i];
}

@compute @workgroup_size(WG)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    let g = gate[i];
    dgate[i] = dh[i] * up[i] * silu_grad(g);
    dup[i] = dh[i] * silu(g);
}

@compute @workgroup_size(WG)
fn activation_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    act_y[i] = activation(act_x[i]);
}

@compute @workgroup_size(WG)
fn activation_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if (i >= p.n) { return; }
    act_dx[i] = act_dy[i] * activation_grad(act_x[i]);
}
