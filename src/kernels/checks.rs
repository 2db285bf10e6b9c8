//! Argument checks shared by the launchers: each returns the typed error a
//! user's bad input deserves (never a panic), naming the op and the argument.

use crate::error::{Error, Result};
use crate::gpu::{DType, Tensor};

/// Every named tensor must be f32.
pub(crate) fn all_f32(op: &'static str, tensors: &[(&'static str, &Tensor)]) -> Result<()> {
    for (name, t) in tensors {
        t.expect_dtype(op, name, DType::F32)?;
    }
    Ok(())
}

/// `b` must have exactly the shape of `a`.
pub(crate) fn same_shape(op: &'static str, a: (&str, &Tensor), b: (&str, &Tensor)) -> Result<()> {
    if a.1.shape() != b.1.shape() {
        return Err(Error::shape(
            op,
            format!("`{}` {:?} and `{}` {:?} must have the same shape", a.0, a.1.shape(), b.0, b.1.shape()),
        ));
    }
    Ok(())
}

/// (rows, cols) of a tensor seen as rows of its last dimension.
pub(crate) fn rows_cols(op: &'static str, arg: &str, t: &Tensor) -> Result<(usize, usize)> {
    match t.shape() {
        [] => Err(Error::shape(op, format!("`{arg}` is a scalar, expected at least one dimension"))),
        s => Ok((s[..s.len() - 1].iter().product(), s[s.len() - 1])),
    }
}

/// The dimensions of a tensor that must have exactly `N` of them.
pub(crate) fn dims<const N: usize>(op: &'static str, arg: &str, what: &str, t: &Tensor) -> Result<[usize; N]> {
    t.shape().try_into().map_err(|_| Error::shape(op, format!("`{arg}` must be {what}, got {:?}", t.shape())))
}

/// A count the shaders index with 32 bits.
pub(crate) fn u32_count(op: &'static str, what: &str, n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::shape(op, format!("{what} ({n}) is too large to index with 32 bits")))
}
