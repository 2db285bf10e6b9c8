//! Whole positions copied between (B, T, D) tensors: the virtual tokens of
//! prompt tuning go before each row's own ([`Hooks::prepend_forward`](super::Hooks::prepend_forward)),
//! and come off again before the loss. Recorded as buffer copies (exact).

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::elementwise::fill;

/// (B, V+T, D): `front` (B, V, D) then `x` (B, T, D) in every row.
pub(crate) fn prepend(rec: &mut Recorder, front: &Tensor, x: &Tensor) -> Result<Tensor> {
    let (b, v, t, d) = (x.shape()[0], front.shape()[1], x.shape()[1], x.shape()[2]);
    let out = rec.alloc(&[b, v + t, d], DType::F32)?;
    let row = |n: usize| (n * d * 4) as u64;
    for i in 0..b {
        rec.copy(front, row(i * v), &out, row(i * (v + t)), row(v))?;
        rec.copy(x, row(i * t), &out, row(i * (v + t) + v), row(t))?;
    }
    Ok(out)
}

/// Positions `from..from + n` of every row of x (B, T, D), as (B, n, D).
pub(crate) fn positions(rec: &mut Recorder, x: &Tensor, from: usize, n: usize) -> Result<Tensor> {
    let (b, t, d) = (x.shape()[0], x.shape()[1], x.shape()[2]);
    let out = rec.alloc(&[b, n, d], DType::F32)?;
    let row = |k: usize| (k * d * 4) as u64;
    for i in 0..b {
        rec.copy(x, row(i * t + from), &out, row(i * n), row(n))?;
    }
    Ok(out)
}

/// (B, V+T, D): V positions of zeros, then dx (B, T, D), in every row (the
/// gradient of [`positions`]`(x, V, T)`).
pub(crate) fn pad_front(rec: &mut Recorder, dx: &Tensor, v: usize) -> Result<Tensor> {
    let (b, t, d) = (dx.shape()[0], dx.shape()[1], dx.shape()[2]);
    let out = rec.alloc(&[b, v + t, d], DType::F32)?;
    fill(rec, &out, 0.0)?;
    let row = |k: usize| (k * d * 4) as u64;
    for i in 0..b {
        rec.copy(dx, row(i * t), &out, row(i * (v + t) + v), row(t))?;
    }
    Ok(out)
}
