//! The Llama MLP's `h = silu(gate)·up` and the bottleneck adapters'
//! activations, forward and backward (`shaders/swiglu.wgsl`).
//!
//! What the forward saves for the backward is its input: `gate` and `up`
//! (2 × tokens × intermediate f32) for SwiGLU, `x` for an activation. h or y
//! itself is not needed.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, same_shape, u32_count};
use super::grid_1d;
use crate::error::Result;
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    _pad: [u32; 3],
}

/// The shader's ACT constant.
fn act_code(act: Activation) -> u32 {
    match act {
        Activation::Relu => 0,
        Activation::Silu => 1,
        Activation::Gelu => 2,
        Activation::Tanh => 3,
    }
}

fn launch(
    rec: &mut Recorder,
    op: &'static str,
    entry: &'static str,
    act: Activation,
    n: usize,
    bound: &[(u32, &Tensor)],
) -> Result<()> {
    let p = Params { n: u32_count(op, "element count", n)?, _pad: [0; 3] };
    rec.dispatch_bound(&key(entry, act), &p, bound, grid_1d(n.div_ceil(WG as usize)))
}

/// h = silu(gate) · up. gate, up, h: the same shape, e.g. (tokens, intermediate).
pub fn swiglu_forward(rec: &mut Recorder, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    const OP: &str = "swiglu_forward";
    all_f32(OP, &[("gate", gate), ("up", up)])?;
    same_shape(OP, ("gate", gate), ("up", up))?;
    let h = rec.alloc(gate.shape(), DType::F32)?;
    launch(rec, OP, OP, Activation::Silu, gate.numel(), &[(1, gate), (2, up), (3, &h)])?;
    Ok(h)
}

/// Returns `(dgate, dup)` for `dh`, given the forward's `gate` and `up`; all
/// the same shape.
pub fn swiglu_backward(rec: &mut Recorder, dh: &Tensor, gate: &Tensor, up: &Tensor) -> Result<(Tensor, Tensor)> {
    const OP: &str = "swiglu_backward";
    all_f32(OP, &[("dh", dh), ("gate", gate), ("up", up)])?;
    same_shape(OP, ("gate", gate), ("up", up))?;
    same_shape(OP, ("gate", gate), ("dh", dh))?;
    let dgate = rec.alloc(gate.shape(), DType::F32)?;
    let dup = rec.alloc(gate.shape(), DType::F32)?;
    let bound = [(1, gate), (2, up), (4, dh), (5, &dgate), (6, &dup)];
    launch(rec, OP, OP, Activation::Silu, gate.numel(), &bound)?;
    Ok((dgate, dup))
}

/// y = act(x), elementwise; y has x's shape.
pub fn activation_forward(rec: &mut Recorder, x: &Tensor, act: Activation) -> Result<Tensor> {
    const OP: &str = "activation_forward";
    all_f32(OP, &[("x", x)])?;
    let y = rec.alloc(x.shape(), DType::F32)?;
    launch(rec, OP, OP, act, x.numel(), &[(7, x), (8, &y)])?;
    Ok(y)
}

/// dx = dy · act'(x), given the forward's input x; dy, x, dx: the same shape.
pub fn activation_backward(rec: &mut Recorder, dy: &Tensor, x: &Tensor, act: Activation) -> Result<Tensor> {
    const OP: &str = "activation_backward";
    all_f32(OP, &[("dy", dy), ("x", x)])?;
    same_shape(OP, ("dy", dy), ("x", x))?;
    let dx = rec.alloc(x.shape(), DType::F32)?;
    launch(rec, OP, OP, act, x.numel(), &[(7, x), (9, dy), (10, &dx)])?;
    Ok(dx)
}

fn key(entry: &'static str, act: Activation) -> PipelineKey {
    PipelineKey::new(Kernel::SwiGlu, entry).with("WG", Const::U32(WG)).with("ACT", Const::U32(act_code(act)))
}

/// Every pipeline this file's launchers can request (`kernels::variants`):
/// SwiGLU with SiLU, the activations with each of theirs.
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    let mut keys = vec![key("swiglu_forward", Activation::Silu), key("swiglu_backward", Activation::Silu)];
    for act in [Activation::Relu, Activation::Silu, Activation::Gelu, Activation::Tanh] {
        keys.extend([key("activation_forward", act), key("activation_backward", act)]);
    }
    keys
}

/// The nonlinearity between a bottleneck adapter's down and up projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`; the derivative at 0 is 0, as torch's `threshold_backward`.
    Relu,
    /// `x * sigmoid(x)` ("swish" in AdapterHub configs).
    Silu,
    /// Exact GELU, `x * Φ(x) = 0.5 x (1 + erf(x / √2))`: torch's default
    /// `nn.GELU()` and `ACT2FN["gelu"]` (not the tanh approximation).
    Gelu,
    /// `tanh(x)`.
    Tanh,
}

impl Activation {
    /// The activation for a config name: "relu", "silu"/"swish", "gelu", "tanh"
    /// (case-insensitive). `None` for anything else, including "gelu_new" (the
    /// tanh approximation, not implemented).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "relu" => Some(Self::Relu),
            "silu" | "swish" => Some(Self::Silu),
            "gelu" => Some(Self::Gelu),
            "tanh" => Some(Self::Tanh),
            _ => None,
        }
    }
}
