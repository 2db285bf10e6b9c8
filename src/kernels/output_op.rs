//! A Linear's output op, done by its product's store after the low-rank
//! term (`shaders/output_op.wgsl`): adding the Linear's bias, or, where the
//! product is up_proj's, SwiGLU's gate (`h = silu(gate)·up`, up never
//! stored). Each is one launch and one pass over the output fewer. Where a
//! product does not add its term as it stores, the op cannot come after
//! the term in the store either; [`add_bias`] and the SwiGLU kernel then do
//! it with launches of their own (see `qmatmul::qlinear_into` and
//! `qmatmul::qlinear_gated`).

use super::matmul::{gemm, Gemm};
use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};

/// What a product's store does to each finished output (`v`: the product,
/// with its term) before it writes it.
#[derive(Clone, Copy, Debug)]
pub enum OutputOp<'a> {
    /// `y = v + bias[n]`: the Linear's bias (N).
    Bias(&'a Tensor),
    /// `y = silu(gate[m, n])·v`: SwiGLU with this product as up_proj's
    /// output, gate (M, N) gate_proj's on the same rows.
    Gate(&'a Tensor),
}

/// The op of one launch, with the column of the op's operand where the
/// launch's first output goes (a chunk of a Linear's rows starts further in).
pub(crate) type FusedOp<'a> = Option<(OutputOp<'a>, usize)>;

impl<'a> OutputOp<'a> {
    pub(crate) const OP: &'static str = "linear_output_op";

    /// The shader's OUTPUT_OP constant.
    pub(crate) fn code(&self) -> u32 {
        match self {
            OutputOp::Bias(_) => 1,
            OutputOp::Gate(_) => 2,
        }
    }

    /// The tensor at binding 11.
    pub(crate) fn operand(&self) -> &'a Tensor {
        match self {
            OutputOp::Bias(t) | OutputOp::Gate(t) => t,
        }
    }

    /// The row stride of the operand: a gate's columns (a bias has no rows).
    pub(crate) fn ld(&self) -> usize {
        match self {
            OutputOp::Bias(_) => 0,
            OutputOp::Gate(g) => g.shape().last().copied().unwrap_or(0),
        }
    }

    /// Checks the op fits a product of `m` rows to the output columns
    /// `col..col + n` of the op's operand, added to what the output holds
    /// with `accumulate`: f32, a bias (≥ col + n) or a gate (m, ≥ col + n),
    /// and no gate on an accumulating store (SwiGLU's h is written whole).
    pub(crate) fn check(&self, m: usize, (col, n): (usize, usize), accumulate: bool) -> Result<()> {
        let t = self.operand();
        let name = if self.code() == 1 { "bias" } else { "gate" };
        t.expect_dtype(Self::OP, name, DType::F32)?;
        let fits = match (self, t.shape()) {
            (OutputOp::Bias(_), [len]) => col + n <= *len,
            (OutputOp::Gate(_), [rows, cols]) => *rows == m && col + n <= *cols,
            _ => false,
        };
        if !fits {
            let want = if self.code() == 1 { format!("({})", col + n) } else { format!("({m}, {})", col + n) };
            let detail = format!(
                "{name} {:?} does not fit a product of {m} rows to {n} columns from column {col}: expected {want}",
                t.shape()
            );
            return Err(Error::shape(Self::OP, detail));
        }
        if accumulate && self.code() == 2 {
            let detail = "SwiGLU's gate applies to a product that writes its output, not one that adds to it";
            return Err(Error::invalid(Self::OP, detail));
        }
        Ok(())
    }
}

/// y (M, N) += 1 (M, 1) · bias (1, N): the bias broadcast over rows, recorded
/// as a k = 1 matmul (one exact product per element, then one add), so no
/// broadcast kernel is needed. For the products that do not add their bias
/// as they store (see the module's doc), and the bottleneck adapters' own.
pub fn add_bias(rec: &mut Recorder, y: &Tensor, bias: &Tensor) -> Result<()> {
    let n = bias.numel();
    if n == 0 || y.numel() % n != 0 || y.shape().last() != Some(&n) {
        return Err(Error::shape(
            "Linear::forward",
            format!("bias {:?} does not match output {:?}", bias.shape(), y.shape()),
        ));
    }
    let m = y.numel() / n;
    let ones = rec.gpu().ones(m)?.reshape(&[m, 1])?;
    gemm(rec, &Gemm::new(m, n, 1, false, false).accumulate(true), &ones, bias, y)
}
