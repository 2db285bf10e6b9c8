//! A LoRA-adapted frozen Linear on the GPU (PEFT's `lora.Linear`):
//! `y = x·Wᵀ + scaling·(drop(x)·Aᵀ)·Bᵀ`, W frozen (f32, Q8_0 or NF4), A (r, in)
//! and B (out, r) trainable. Only the LoRA term is scaled, and dropout applies
//! only to the LoRA branch's input, as in PEFT. Everything is recorded into
//! the caller's [`Recorder`]; nothing is submitted here.
//!
//! [`lora_forward`] and [`lora_backward`] add the LoRA term to a frozen
//! Linear's output and its gradients into accumulators (the model's training
//! path); [`LoraLinear`] bundles a base weight with its factors.

use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::elementwise::{add_scaled, dropout};
use crate::kernels::low_rank::LowRank;
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::qmatmul::{qlinear_backward_input, qlinear_low_rank, QWeight};

/// One module's LoRA factors (or their gradients, or their AdamW moments:
/// the same shapes).
#[derive(Clone, Debug)]
pub struct LoraFactors {
    /// lora_A (r, in)
    pub a: Tensor,
    /// lora_B (out, r)
    pub b: Tensor,
    /// lora_magnitude_vector (out): DoRA's magnitude, `None` for plain LoRA.
    pub m: Option<Tensor>,
}

/// Dropout on the LoRA input: probability and the seed of this call's mask.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraDropout {
    pub p: f32,
    pub seed: u32,
}

/// What [`lora_forward`] saves for [`lora_backward`].
#[derive(Clone, Debug)]
pub struct LoraSaved {
    /// drop(x) (M, in): the input the factors saw (x itself without dropout).
    pub x: Tensor,
    /// drop(x)·Aᵀ (M, r)
    pub xa: Tensor,
}

impl LoraFactors {
    /// Plain LoRA factors (no DoRA magnitude).
    pub fn new(a: Tensor, b: Tensor) -> LoraFactors {
        LoraFactors { a, b, m: None }
    }

    /// (r, in, out), checking that A is (r, in) and B (out, r), both f32,
    /// and the magnitude, if any, (out).
    pub fn dims(&self, op: &'static str) -> Result<(usize, usize, usize)> {
        self.a.expect_dtype(op, "lora_A", DType::F32)?;
        self.b.expect_dtype(op, "lora_B", DType::F32)?;
        let (r, inp) = match self.a.shape() {
            [r, i] => (*r, *i),
            s => return Err(Error::shape(op, format!("lora_A is {s:?}, expected (r, in)"))),
        };
        let out = match self.b.shape() {
            [out, rb] if *rb == r => *out,
            s => return Err(Error::shape(op, format!("lora_B is {s:?}, expected (out, {r})"))),
        };
        if let Some(m) = &self.m {
            m.expect_dtype(op, "lora_magnitude_vector", DType::F32)?;
            if m.shape() != [out] {
                return Err(Error::shape(op, format!("lora_magnitude_vector is {:?}, expected ({out})", m.shape())));
            }
        }
        Ok((r, inp, out))
    }

    /// Zero tensors of the same shapes (for gradients and moments).
    pub fn zeros_like(&self, gpu: &crate::Gpu) -> Result<LoraFactors> {
        let zeros = |t: &Tensor| Tensor::zeros(gpu, t.shape(), DType::F32);
        Ok(LoraFactors { a: zeros(&self.a)?, b: zeros(&self.b)?, m: self.m.as_ref().map(zeros).transpose()? })
    }
}

fn rows(op: &'static str, arg: &'static str, t: &Tensor, cols: usize) -> Result<usize> {
    t.expect_dtype(op, arg, DType::F32)?;
    match t.shape() {
        [m, c] if *c == cols => Ok(*m),
        s => Err(Error::shape(op, format!("`{arg}` is {s:?}, expected (M, {cols})"))),
    }
}

/// The LoRA term of x (M, in) as a [`LowRank`] for the frozen product to
/// add (`h = drop(x)·Aᵀ`, B, scaling: see `qlinear_low_rank`), and what the
/// backward needs.
pub fn lora_term(
    rec: &mut Recorder,
    x: &Tensor,
    f: &LoraFactors,
    scaling: f32,
    drop: Option<LoraDropout>,
) -> Result<(LowRank, LoraSaved)> {
    const OP: &str = "lora_forward";
    let (r, inp, _) = f.dims(OP)?;
    let m = rows(OP, "x", x, inp)?;
    let x = match drop {
        Some(d) if d.p > 0.0 => dropout(rec, x, d.p, d.seed)?,
        _ => x.clone(),
    };
    let xa = rec.alloc(&[m, r], DType::F32)?;
    gemm(rec, &Gemm::new(m, r, inp, false, true), &x, &f.a, &xa)?;
    Ok((LowRank::new(xa.clone(), f.b.clone(), scaling), LoraSaved { x, xa }))
}

/// y (M, out) += scaling·(drop(x)·Aᵀ)·Bᵀ for x (M, in); returns what the
/// backward needs.
pub fn lora_forward(
    rec: &mut Recorder,
    x: &Tensor,
    f: &LoraFactors,
    scaling: f32,
    drop: Option<LoraDropout>,
    y: &Tensor,
) -> Result<LoraSaved> {
    const OP: &str = "lora_forward";
    let (_, inp, out) = f.dims(OP)?;
    let m = rows(OP, "x", x, inp)?;
    if rows(OP, "y", y, out)? != m {
        return Err(Error::shape(OP, format!("y {:?} does not have the {m} rows of x", y.shape())));
    }
    let (term, saved) = lora_term(rec, x, f, scaling, drop)?;
    term.add_to(rec, y)?;
    Ok(saved)
}

/// The LoRA term's backward for dy (M, out): dA and dB are added into
/// `grads`, and the LoRA path's dx into `dx` (M, in) (which holds, or will
/// hold, the frozen path's dy·W).
#[allow(clippy::too_many_arguments)] // the forward's inputs, its saved tensors, and two accumulators
pub fn lora_backward(
    rec: &mut Recorder,
    dy: &Tensor,
    saved: &LoraSaved,
    f: &LoraFactors,
    scaling: f32,
    drop: Option<LoraDropout>,
    grads: &LoraFactors,
    dx: &Tensor,
) -> Result<()> {
    const OP: &str = "lora_backward";
    let (r, inp, out) = f.dims(OP)?;
    let m = rows(OP, "dy", dy, out)?;
    if rows(OP, "dx", dx, inp)? != m {
        return Err(Error::shape(OP, format!("`dx` {:?} does not have the {m} rows of dy", dx.shape())));
    }
    let term = lora_backward_term(rec, dy, saved, f, scaling, grads)?;
    // dx (M, in) += drop⁻¹(d(xa)·A): the same mask and scale as the forward.
    match drop {
        Some(d) if d.p > 0.0 => {
            let dxd = rec.alloc(&[m, inp], DType::F32)?;
            gemm(rec, &Gemm::new(m, inp, r, false, false), &term.h, &f.a, &dxd)?;
            let dxl = dropout(rec, &dxd, d.p, d.seed)?;
            add_scaled(rec, dx, &dxl, 1.0)
        }
        _ => term.add_to(rec, dx),
    }
}

/// The LoRA term's backward without dropout's mask on dx, for dy (M, out):
/// dB += scaling·dyᵀ·xa and dA += d(xa)ᵀ·drop(x) into `grads`, and the
/// LoRA path's dx, d(xa)·A with d(xa) = scaling·dy·B, returned as a
/// low-rank term (h = d(xa) (M, r), Bᵀ = A (r, in)) for the frozen path's
/// dx = dy·W to add (`qlinear_backward_low_rank`).
pub fn lora_backward_term(
    rec: &mut Recorder,
    dy: &Tensor,
    saved: &LoraSaved,
    f: &LoraFactors,
    scaling: f32,
    grads: &LoraFactors,
) -> Result<LowRank> {
    const OP: &str = "lora_backward";
    let (r, inp, out) = f.dims(OP)?;
    if grads.dims(OP)? != (r, inp, out) {
        return Err(Error::shape(OP, "the gradient tensors do not have the factors' shapes"));
    }
    let m = rows(OP, "dy", dy, out)?;
    for (arg, t, cols) in [("x", &saved.x, inp), ("xa", &saved.xa, r)] {
        if rows(OP, arg, t, cols)? != m {
            return Err(Error::shape(OP, format!("`{arg}` {:?} does not have the {m} rows of dy", t.shape())));
        }
    }
    // dB (out, r) += scaling·dyᵀ·xa
    gemm(rec, &Gemm::new(out, r, m, true, false).alpha(scaling).accumulate(true), dy, &saved.xa, &grads.b)?;
    // d(xa) (M, r) = scaling·dy·B
    let dxa = rec.alloc(&[m, r], DType::F32)?;
    gemm(rec, &Gemm::new(m, r, out, false, false).alpha(scaling), dy, &f.b, &dxa)?;
    // dA (r, in) += d(xa)ᵀ·drop(x)
    gemm(rec, &Gemm::new(r, inp, m, true, false).accumulate(true), &dxa, &saved.x, &grads.a)?;
    Ok(LowRank::new_transposed(dxa, f.a.clone(), 1.0))
}

/// A frozen base weight (out, in) with a LoRA pair A (r, in), B (out, r).
#[derive(Clone, Debug)]
pub struct LoraLinear<'w> {
    pub base: &'w QWeight,
    pub a: Tensor,
    pub b: Tensor,
    pub scaling: f32,
}

impl<'w> LoraLinear<'w> {
    /// Checks that A is (r, in) and B is (out, r) for the base (out, in).
    pub fn new(base: &'w QWeight, a: Tensor, b: Tensor, scaling: f32) -> Result<Self> {
        let l = LoraLinear { base, a, b, scaling };
        l.check()?;
        Ok(l)
    }

    /// The rank r.
    pub fn rank(&self) -> usize {
        self.a.shape().first().copied().unwrap_or(0)
    }

    fn factors(&self) -> LoraFactors {
        LoraFactors::new(self.a.clone(), self.b.clone())
    }

    fn check(&self) -> Result<usize> {
        const OP: &str = "lora_linear";
        let (r, inp, out) = self.factors().dims(OP)?;
        if (inp, out) != (self.base.cols, self.base.rows) {
            return Err(Error::shape(
                OP,
                format!(
                    "lora_A {:?} and lora_B {:?} do not fit the base ({}, {})",
                    self.a.shape(),
                    self.b.shape(),
                    self.base.rows,
                    self.base.cols
                ),
            ));
        }
        Ok(r)
    }

    /// `y = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ` for x (M, in): returns y (M, out) and
    /// `xa = x·Aᵀ` (M, r), which [`backward`](Self::backward) needs.
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check()?;
        rows("lora_linear", "x", x, self.base.cols)?;
        let (term, saved) = lora_term(rec, x, &self.factors(), self.scaling, None)?;
        let y = qlinear_low_rank(rec, x, self.base, &term)?;
        Ok((y, saved.xa))
    }

    /// Gradients for x (M, in), the saved xa (M, r) and dy (M, out):
    /// returns (dx (M, in), dA (r, in), dB (out, r)). The base is frozen.
    pub fn backward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        xa: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        self.check()?;
        rows("lora_linear_backward", "dy", dy, self.base.rows)?;
        let f = self.factors();
        let grads = f.zeros_like(rec.gpu())?;
        let dx = qlinear_backward_input(rec, dy, self.base)?;
        let saved = LoraSaved { x: x.clone(), xa: xa.clone() };
        lora_backward(rec, dy, &saved, &f, self.scaling, None, &grads, &dx)?;
        Ok((dx, grads.a, grads.b))
    }
}
