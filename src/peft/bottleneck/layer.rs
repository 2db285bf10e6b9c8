//! One bottleneck unit on the GPU (AdapterHub's `Adapter` module), forward
//! and backward side by side:
//!
//! ```text
//! ad(s) = drop(scaling · (W_up · act(W_down · s + b_down) + b_up))
//! ```
//!
//! added to the residual stream where the kind puts it ([`super::hooks`]).

use super::file::{BnPart, BottleneckUnit};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::elementwise::{add_scaled, dropout, scale};
use crate::kernels::matmul::{gemm, gemm_fused, Gemm};
use crate::kernels::output_op::OutputOp;
use crate::kernels::swiglu::{activation_backward, activation_forward, Activation};

/// One unit's tensors (or their gradients, or moments).
#[derive(Clone, Debug)]
pub struct BnUnit {
    /// (m, D)
    pub down_w: Tensor,
    /// (m)
    pub down_b: Tensor,
    /// (D, m)
    pub up_w: Tensor,
    /// (D)
    pub up_b: Tensor,
}

/// How a unit runs in one call.
#[derive(Clone, Copy, Debug)]
pub struct BnCall {
    pub act: Activation,
    pub scaling: f32,
    /// Dropout on the output: probability and mask seed.
    pub dropout: Option<(f32, u32)>,
}

/// What [`bn_forward`] keeps for [`bn_backward`].
#[derive(Clone, Debug)]
pub struct BnSaved {
    /// The unit's input s (M, D).
    pub(super) s: Tensor,
    /// W_down·s + b_down (M, m), before the activation.
    pub(super) a: Tensor,
    /// act(a) (M, m).
    pub(super) z: Tensor,
}

impl BnUnit {
    /// (D, m), checking the four shapes.
    pub fn dims(&self) -> Result<(usize, usize)> {
        let (m, d) = match self.down_w.shape() {
            [m, d] => (*m, *d),
            s => return Err(Error::shape("bottleneck", format!("adapter_down weight {s:?} must be (m, D)"))),
        };
        if self.down_b.shape() != [m] || self.up_w.shape() != [d, m] || self.up_b.shape() != [d] {
            return Err(Error::shape("bottleneck", "adapter tensors do not have shapes (m, D), (m), (D, m), (D)"));
        }
        Ok((d, m))
    }

    pub(super) fn upload(gpu: &Gpu, u: &BottleneckUnit, d: usize, m: usize) -> Result<BnUnit> {
        Ok(BnUnit {
            down_w: Tensor::from_slice(gpu, &[m, d], &u.down_w)?,
            down_b: Tensor::from_slice(gpu, &[m], &u.down_b)?,
            up_w: Tensor::from_slice(gpu, &[d, m], &u.up_w)?,
            up_b: Tensor::from_slice(gpu, &[d], &u.up_b)?,
        })
    }

    pub(super) async fn download(&self, gpu: &Gpu) -> Result<BottleneckUnit> {
        Ok(BottleneckUnit {
            down_w: self.down_w.to_vec(gpu).await?,
            down_b: self.down_b.to_vec(gpu).await?,
            up_w: self.up_w.to_vec(gpu).await?,
            up_b: self.up_b.to_vec(gpu).await?,
        })
    }

    pub(super) fn zeros_like(&self, gpu: &Gpu) -> Result<BnUnit> {
        let z = |t: &Tensor| Tensor::zeros(gpu, t.shape(), DType::F32);
        Ok(BnUnit { down_w: z(&self.down_w)?, down_b: z(&self.down_b)?, up_w: z(&self.up_w)?, up_b: z(&self.up_b)? })
    }

    pub(super) fn part(&self, part: BnPart) -> &Tensor {
        match part {
            BnPart::DownWeight => &self.down_w,
            BnPart::DownBias => &self.down_b,
            BnPart::UpWeight => &self.up_w,
            BnPart::UpBias => &self.up_b,
        }
    }
}

/// y (M, D) += ad(s) for s (M, D); returns what the backward needs.
pub fn bn_forward(rec: &mut Recorder, s: &Tensor, unit: &BnUnit, call: BnCall, y: &Tensor) -> Result<BnSaved> {
    let (d, m) = unit.dims()?;
    let rows = s.numel() / d.max(1);
    if s.shape().last() != Some(&d) || y.numel() != s.numel() {
        return Err(Error::shape("bn_forward", format!("s {:?} and y {:?} must be (M, {d})", s.shape(), y.shape())));
    }
    let s = s.reshape(&[rows, d])?;
    // Each bias added by its product's store (`shaders/output_op.wgsl`).
    let bias = |b| Some((OutputOp::Bias(b), 0));
    let a = rec.alloc(&[rows, m], DType::F32)?;
    gemm_fused(rec, &Gemm::new(rows, m, d, false, true), (&s, &unit.down_w, &a), None, bias(&unit.down_b))?; // s·W_downᵀ + b_down
    let z = activation_forward(rec, &a, call.act)?;
    let up = rec.alloc(&[rows, d], DType::F32)?;
    gemm_fused(rec, &Gemm::new(rows, d, m, false, true), (&z, &unit.up_w, &up), None, bias(&unit.up_b))?; // z·W_upᵀ + b_up
    let y2 = y.reshape(&[rows, d])?;
    match call.dropout {
        Some((p, seed)) if p > 0.0 => {
            let up = scale(rec, &up, call.scaling)?;
            let up = dropout(rec, &up, p, seed)?;
            add_scaled(rec, &y2, &up, 1.0)?;
        }
        _ => add_scaled(rec, &y2, &up, call.scaling)?,
    }
    Ok(BnSaved { s, a, z })
}

/// The unit's backward for dy (M, D), the gradient at its output: parameter
/// gradients are added into `grads` and ∂/∂s into `ds` (M, D).
pub fn bn_backward(
    rec: &mut Recorder,
    dy: &Tensor,
    saved: &BnSaved,
    unit: &BnUnit,
    call: BnCall,
    grads: &BnUnit,
    ds: &Tensor,
) -> Result<()> {
    let (d, m) = unit.dims()?;
    if grads.dims()? != (d, m) {
        return Err(Error::shape("bn_backward", "the gradient tensors do not have the unit's shapes"));
    }
    let rows = saved.s.shape()[0];
    if dy.numel() != rows * d || ds.numel() != rows * d {
        return Err(Error::shape(
            "bn_backward",
            format!("dy {:?} and ds {:?} must be ({rows}, {d})", dy.shape(), ds.shape()),
        ));
    }
    let gpu = rec.gpu();
    // du = drop⁻¹(scaling · dy), the gradient at W_up·z + b_up.
    let mut du = scale(rec, &dy.reshape(&[rows, d])?, call.scaling)?;
    if let Some((p, seed)) = call.dropout.filter(|(p, _)| *p > 0.0) {
        du = dropout(rec, &du, p, seed)?;
    }
    let ones = gpu.ones(rows)?.reshape(&[1, rows])?;
    gemm(rec, &Gemm::new(d, m, rows, true, false).accumulate(true), &du, &saved.z, &grads.up_w)?; // dW_up += duᵀ·z
    gemm(rec, &Gemm::new(1, d, rows, false, false).accumulate(true), &ones, &du, &grads.up_b)?; // db_up += Σ_rows du
    let dz = rec.alloc(&[rows, m], DType::F32)?;
    gemm(rec, &Gemm::new(rows, m, d, false, false), &du, &unit.up_w, &dz)?; // dz = du·W_up
    let da = activation_backward(rec, &dz, &saved.a, call.act)?;
    gemm(rec, &Gemm::new(m, d, rows, true, false).accumulate(true), &da, &saved.s, &grads.down_w)?; // dW_down += daᵀ·s
    gemm(rec, &Gemm::new(1, m, rows, false, false).accumulate(true), &ones, &da, &grads.down_b)?; // db_down += Σ_rows da
    gemm(rec, &Gemm::new(rows, d, m, false, false).accumulate(true), &da, &unit.down_w, &ds.reshape(&[rows, d])?)
    // ds += da·W_down
}
