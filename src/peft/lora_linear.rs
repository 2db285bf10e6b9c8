//! A LoRA-adapted frozen Linear on the GPU (PEFT's `lora.Linear`, no dropout):
//! `y = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ`, W frozen (f32, Q8_0 or NF4), A (r, in) and
//! B (out, r) trainable. Only the LoRA term is scaled. Everything is recorded
//! into the caller's [`Recorder`]; nothing is submitted here.

use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::qmatmul::{qlinear, qlinear_backward_input, QWeight};

/// A frozen base weight (out, in) with a LoRA pair A (r, in), B (out, r).
#[derive(Clone, Debug)]
pub struct LoraLinear<'w> {
    pub base: &'w QWeight,
    pub a: Tensor,
    pub b: Tensor,
    pub scaling: f32,
}

fn rows(op: &'static str, arg: &'static str, t: &Tensor, cols: usize) -> Result<usize> {
    t.expect_dtype(op, arg, DType::F32)?;
    match t.shape() {
        [m, c] if *c == cols => Ok(*m),
        s => Err(Error::shape(op, format!("`{arg}` is {s:?}, expected (M, {cols})"))),
    }
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

    fn check(&self) -> Result<usize> {
        const OP: &str = "lora_linear";
        self.a.expect_dtype(OP, "lora_A", DType::F32)?;
        self.b.expect_dtype(OP, "lora_B", DType::F32)?;
        let (out, inp) = (self.base.rows, self.base.cols);
        let r = match self.a.shape() {
            [r, c] if *c == inp => *r,
            s => return Err(Error::shape(OP, format!("lora_A is {s:?}, expected (r, {inp})"))),
        };
        if self.b.shape() != [out, r] {
            return Err(Error::shape(OP, format!("lora_B is {:?}, expected ({out}, {r})", self.b.shape())));
        }
        Ok(r)
    }

    /// `y = x·Wᵀ + scaling·(x·Aᵀ)·Bᵀ` for x (M, in): returns y (M, out) and
    /// `xa = x·Aᵀ` (M, r), which [`backward`](Self::backward) needs.
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let r = self.check()?;
        let (out, inp) = (self.base.rows, self.base.cols);
        let m = rows("lora_linear", "x", x, inp)?;
        let y = qlinear(rec, x, self.base)?;
        let xa = Tensor::zeros(rec.gpu(), &[m, r], DType::F32)?;
        gemm(rec, &Gemm::new(m, r, inp, false, true), x, &self.a, &xa)?;
        gemm(rec, &Gemm::new(m, out, r, false, true).alpha(self.scaling).accumulate(true), &xa, &self.b, &y)?;
        Ok((y, xa))
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
        const OP: &str = "lora_linear_backward";
        let r = self.check()?;
        let (out, inp) = (self.base.rows, self.base.cols);
        let m = rows(OP, "x", x, inp)?;
        for (arg, t, cols) in [("xa", xa, r), ("dy", dy, out)] {
            if rows(OP, arg, t, cols)? != m {
                return Err(Error::shape(OP, format!("`{arg}` {:?} does not have the {m} rows of x", t.shape())));
            }
        }
        let gpu = rec.gpu();
        // dB (out, r) = scaling·dyᵀ·xa
        let db = Tensor::zeros(gpu, &[out, r], DType::F32)?;
        gemm(rec, &Gemm::new(out, r, m, true, false).alpha(self.scaling), dy, xa, &db)?;
        // d(xa) (M, r) = scaling·dy·B
        let dxa = Tensor::zeros(gpu, &[m, r], DType::F32)?;
        gemm(rec, &Gemm::new(m, r, out, false, false).alpha(self.scaling), dy, &self.b, &dxa)?;
        // dA (r, in) = d(xa)ᵀ·x
        let da = Tensor::zeros(gpu, &[r, inp], DType::F32)?;
        gemm(rec, &Gemm::new(r, inp, m, true, false), &dxa, x, &da)?;
        // dx (M, in) = dy·W + d(xa)·A
        let dx = qlinear_backward_input(rec, dy, self.base)?;
        gemm(rec, &Gemm::new(m, inp, r, false, false).accumulate(true), &dxa, &self.a, &dx)?;
        Ok((dx, da, db))
    }
}
