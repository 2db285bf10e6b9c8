//! A per-column vector's gradient, for methods that scale a Linear's outputs
//! or inputs feature by feature ((IA)³, DoRA): Σ_rows is a matmul with a row
//! of ones. The scaling itself is the elementwise kernels' broadcast
//! (`kernels::elementwise::mul_columns`).

use crate::error::Result;
use crate::gpu::{Recorder, Tensor};
use crate::kernels::elementwise::mul;
use crate::kernels::matmul::{gemm, Gemm};

/// g (N) += Σ_rows a ⊙ b, for a and b (M, N).
pub(crate) fn add_column_sums(rec: &mut Recorder, a: &Tensor, b: &Tensor, g: &Tensor) -> Result<()> {
    let (m, n) = (a.shape()[0], a.shape()[1]);
    let prod = mul(rec, a, b)?;
    let ones = rec.gpu().ones(m)?.reshape(&[1, m])?;
    gemm(rec, &Gemm::new(1, n, m, false, false).accumulate(true), &ones, &prod, &g.reshape(&[1, n])?)
}
