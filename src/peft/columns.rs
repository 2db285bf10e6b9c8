//! A per-column vector (N) against (M, N) activations, for methods that
//! scale a Linear's outputs or inputs feature by feature ((IA)³, DoRA): the
//! product is the elementwise kernels' broadcast (`mul_columns`), and
//! Σ_rows is a matmul with a row of ones.

use crate::error::Result;
use crate::gpu::{Recorder, Tensor};
use crate::kernels::elementwise::{mul, mul_columns};
use crate::kernels::matmul::{gemm, Gemm};

/// x (M, N) ⊙ l (N), broadcast over rows (`mul_columns`: one launch).
pub(crate) fn scale_columns(rec: &mut Recorder, x: &Tensor, l: &Tensor) -> Result<Tensor> {
    mul_columns(rec, x, l)
}

/// g (N) += Σ_rows a ⊙ b, for a and b (M, N).
pub(crate) fn add_column_sums(rec: &mut Recorder, a: &Tensor, b: &Tensor, g: &Tensor) -> Result<()> {
    let (m, n) = (a.shape()[0], a.shape()[1]);
    let prod = mul(rec, a, b)?;
    let ones = rec.gpu().ones(m)?.reshape(&[1, m])?;
    gemm(rec, &Gemm::new(1, n, m, false, false).accumulate(true), &ones, &prod, &g.reshape(&[1, n])?)
}
