//! AdamW (`shaders/adamw.wgsl`), PyTorch's `torch.optim.AdamW` with
//! `foreach=False` (<https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>),
//! one step in place on a parameter and its moments.
//!
//! The scalars of a step (bias corrections, step size) come from
//! [`AdamWScalars::new`], the same f64 computation the CPU reference uses, so
//! the GPU and the reference differ only in elementwise f32 rounding. State:
//! m and v, each the parameter's size.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, same_shape, u32_count};
use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 256;

/// What multiplies the gradient before the update (torch's `clip_grad_norm_`
/// scales the gradients in place first; this does it on the fly).
#[derive(Clone, Copy, Debug)]
pub enum GradScale<'a> {
    /// The gradient as it is.
    None,
    /// g · s, with s known on the CPU.
    By(f32),
    /// g · clip[1], for the (2) tensor from `reduce::clip_coefficient`, which
    /// stays on the GPU.
    Clip(&'a Tensor),
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    apply_decay: u32,
    scale_grad: u32,
    _pad: u32,
    decay: f32,
    lerp_weight: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bias_correction2_sqrt: f32,
    eps: f32,
    neg_step_size: f32,
    grad_scale: f32,
}

/// AdamW hyperparameters, as the Python floats torch holds them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    /// `torch.optim.AdamW`'s defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8,
    /// weight_decay 1e-2.
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2 }
    }
}

/// The f32 constants one step applies elementwise, computed on the CPU in
/// torch's order. The GPU kernel receives exactly these, so CPU and GPU steps
/// differ only in the elementwise arithmetic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWScalars {
    /// `f32(1 - lr * weight_decay)`; not applied when weight_decay is 0.
    pub decay: f32,
    /// Whether to apply `decay` (torch skips the multiply when weight_decay == 0).
    pub apply_decay: bool,
    /// `f32(1 - beta1)`, the lerp weight.
    pub lerp_weight: f32,
    /// `f32(beta2)`.
    pub beta2: f32,
    /// `f32(1 - beta2)`.
    pub one_minus_beta2: f32,
    /// `f32(sqrt(1 - beta2^step))`.
    pub bias_correction2_sqrt: f32,
    /// `f32(eps)`.
    pub eps: f32,
    /// `f32(-lr / (1 - beta1^step))`.
    pub neg_step_size: f32,
}

impl AdamWScalars {
    /// The constants for 1-based step `step` (the value of torch's `state["step"]`
    /// after its increment).
    pub fn new(p: &AdamWParams, step: u32) -> Self {
        assert!(step >= 1, "AdamW steps are 1-based");
        let step = step as f64; // torch's step is a float tensor; `.item()` gives a Python float
        let bias_correction1 = 1.0 - p.beta1.powf(step);
        let bias_correction2 = 1.0 - p.beta2.powf(step);
        let step_size = p.lr / bias_correction1;
        Self {
            decay: (1.0 - p.lr * p.weight_decay) as f32,
            apply_decay: p.weight_decay != 0.0,
            lerp_weight: (1.0 - p.beta1) as f32,
            beta2: p.beta2 as f32,
            one_minus_beta2: (1.0 - p.beta2) as f32,
            // `bias_correction2 ** 0.5`; sqrt and pow(·, 0.5) are both correctly rounded here.
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
            eps: p.eps as f32,
            neg_step_size: (-step_size) as f32,
        }
    }
}

/// torch's own checks on the hyperparameters.
fn check_hyper(op: &'static str, hp: &AdamWParams, step: u32) -> Result<()> {
    if step == 0 {
        return Err(Error::invalid(op, "steps count from 1"));
    }
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if !(ok(hp.lr)
        && ok(hp.eps)
        && ok(hp.weight_decay)
        && ok(hp.beta1)
        && ok(hp.beta2)
        && hp.beta1 < 1.0
        && hp.beta2 < 1.0)
    {
        return Err(Error::invalid(
            op,
            format!("lr, eps and weight_decay must be ≥ 0 and betas in [0, 1), got {hp:?}"),
        ));
    }
    Ok(())
}

/// One AdamW step, in place on `param`, `m` and `v`.
///
/// - param, grad, m, v: the same shape, f32, four different buffers
/// - hp: the hyperparameters as torch holds them (Python floats)
/// - step: 1-based, counting this step (torch's `state["step"]` after its increment)
/// - grad_scale: what multiplies the gradient first (clipping)
#[allow(clippy::too_many_arguments)] // the optimizer's state is four tensors
pub fn adamw_step(
    rec: &mut Recorder,
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    hp: &AdamWParams,
    step: u32,
    grad_scale: GradScale,
) -> Result<()> {
    const OP: &str = "adamw_step";
    all_f32(OP, &[("param", param), ("grad", grad), ("m", m), ("v", v)])?;
    for (name, t) in [("grad", grad), ("m", m), ("v", v)] {
        same_shape(OP, ("param", param), (name, t))?;
    }
    let all = [param, grad, m, v];
    for (i, a) in all.iter().enumerate() {
        if all[i + 1..].iter().any(|b| a.same_buffer(b)) {
            return Err(Error::invalid(OP, "param, grad, m and v must be four different buffers"));
        }
    }
    check_hyper(OP, hp, step)?;
    let n = u32_count(OP, "element count", param.numel())?;
    let s = AdamWScalars::new(hp, step);
    let mut p = Params {
        n,
        apply_decay: s.apply_decay as u32,
        scale_grad: 0,
        _pad: 0,
        decay: s.decay,
        lerp_weight: s.lerp_weight,
        beta2: s.beta2,
        one_minus_beta2: s.one_minus_beta2,
        bias_correction2_sqrt: s.bias_correction2_sqrt,
        eps: s.eps,
        neg_step_size: s.neg_step_size,
        grad_scale: 1.0,
    };
    let groups = grid_1d(param.numel().div_ceil(WG as usize));
    match grad_scale {
        GradScale::None => rec.dispatch(&key("adamw_step"), &p, &[param, grad, m, v], groups),
        GradScale::By(scale) => {
            p.scale_grad = 1;
            p.grad_scale = scale;
            rec.dispatch(&key("adamw_step"), &p, &[param, grad, m, v], groups)
        }
        GradScale::Clip(clip) => {
            clip.expect_dtype(OP, "clip", DType::F32)?;
            if clip.numel() != 2 {
                return Err(Error::shape(OP, format!("clip {:?} must be the (2) tensor [norm, factor]", clip.shape())));
            }
            rec.dispatch(&key("adamw_step_clipped"), &p, &[param, grad, m, v, clip], groups)
        }
    }
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::AdamW, entry).with("WG", Const::U32(WG))
}

/// Every pipeline [`adamw_step`] can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    vec![key("adamw_step"), key("adamw_step_clipped")]
}
