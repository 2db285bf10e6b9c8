//! A per-column vector (N) against (M, N) activations, for methods that
//! scale a Linear's outputs or inputs feature by feature ((IA)³, DoRA): the
//! vector is spread to the rows with a k = 1 matmul (exact), and Σ_rows is a
//! matmul with a row of ones, so no broadcast kernel is needed.

use crate::error::Result;
use crate::gpu::{Recorder, Tensor};
use crate::kernels::elementwise::mul;
use crate::kernels::matmul::{gemm, Gemm};

/// x (M, N) ⊙ l (N), broadcast over rows.
pub(crate) fn scale_columns(rec: &mut Recorder, x: &Tensor, l: &Tensor) -> Result<Tensor> {
    let (m, n) = (x.shape()[0], x.shape()[1]);
    if m == 1 {
        return mul(rec, x, &l.reshape(&[1, n])?); // a decoding step's row: l is the row
    }
    let ones = rec.gpu().ones(m)?.reshape(&[m, 1])?;
    let spread = rec.alloc(&[m, n], crate::gpu::DType::F32)?;
    gemm(rec, &Gemm::new(m, n, 1, false, false), &ones, &l.reshape(&[1, n])?, &spread)?; // (M, N), every row l
    mul(rec, x, &spread)
}

/// g (N) += Σ_rows a ⊙ b, for a and b (M, N).
pub(crate) fn add_column_sums(rec: &mut Recorder, a: &Tensor, b: &Tensor, g: &Tensor) -> Result<()> {
    let (m, n) = (a.shape()[0], a.shape()[1]);
    let prod = mul(rec, a, b)?;
    let ones = rec.gpu().ones(m)?.reshape(&[1, m])?;
    gemm(rec, &Gemm::new(1, n, m, false, false).accumulate(true), &ones, &prod, &g.reshape(&[1, n])?)
}
