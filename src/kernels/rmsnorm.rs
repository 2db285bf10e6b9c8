//! RMSNorm forward and backward (`shaders/rmsnorm.wgsl`), as transformers'
//! `LlamaRMSNorm` in f32: `y = w · (x · rstd)` with `rstd = 1/sqrt(mean(x²) + eps)`.
//!
//! The forward saves `rstd`, one f32 per row (`4·rows` bytes): with x and w
//! it is all the backward needs, so x is kept rather than y.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, rows_cols, same_shape, u32_count};
use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

/// Invocations per row (a power of two); rows are 64–8192 wide.
const WG: u32 = 64;
/// Columns per workgroup of `rmsnorm_backward_weight` (DW_X in the shader).
const DW_X: usize = 16;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    eps: f32,
    _pad: u32,
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::RmsNorm, entry).with("WG", Const::U32(WG))
}

fn params(op: &'static str, rows: usize, dim: usize, eps: f32) -> Result<Params> {
    u32_count(op, "rows × dim", rows * dim)?;
    Ok(Params { rows: rows as u32, dim: dim as u32, eps, _pad: 0 })
}

fn check_weight(op: &'static str, x: &Tensor, weight: &Tensor) -> Result<(usize, usize)> {
    let (rows, dim) = rows_cols(op, "x", x)?;
    if weight.shape() != [dim] {
        return Err(Error::shape(op, format!("weight {:?} must be ({dim}) for x {:?}", weight.shape(), x.shape())));
    }
    Ok((rows, dim))
}

fn check_rstd(op: &'static str, rstd: &Tensor, rows: usize) -> Result<()> {
    if rstd.numel() != rows {
        return Err(Error::shape(op, format!("rstd {:?} must hold one value per row ({rows})", rstd.shape())));
    }
    Ok(())
}

/// Returns `(y, rstd)`.
///
/// - x: (…, dim)
/// - weight: (dim)
/// - y: (…, dim)
/// - rstd: (rows), rows = the product of x's leading dimensions; saved for backward
pub fn rmsnorm_forward(rec: &mut Recorder, x: &Tensor, weight: &Tensor, eps: f32) -> Result<(Tensor, Tensor)> {
    const OP: &str = "rmsnorm_forward";
    all_f32(OP, &[("x", x), ("weight", weight)])?;
    let (rows, dim) = check_weight(OP, x, weight)?;
    let p = params(OP, rows, dim, eps)?;
    let y = rec.alloc(x.shape(), DType::F32)?;
    let rstd = rec.alloc(&[rows], DType::F32)?;
    if dim > 0 {
        rec.dispatch_bound(&key("rmsnorm_forward"), &p, &[(1, x), (2, weight), (3, &y), (4, &rstd)], grid_1d(rows))?;
    }
    Ok((y, rstd))
}

/// dx for `dy`, given the forward's input `x`, `weight` and saved `rstd`.
///
/// - dy, x: (…, dim); weight: (dim); rstd: (rows)
/// - dx: (…, dim)
pub fn rmsnorm_backward(rec: &mut Recorder, dy: &Tensor, x: &Tensor, weight: &Tensor, rstd: &Tensor) -> Result<Tensor> {
    const OP: &str = "rmsnorm_backward";
    all_f32(OP, &[("dy", dy), ("x", x), ("weight", weight), ("rstd", rstd)])?;
    same_shape(OP, ("dy", dy), ("x", x))?;
    let (rows, dim) = check_weight(OP, x, weight)?;
    check_rstd(OP, rstd, rows)?;
    let p = params(OP, rows, dim, 0.0)?;
    let dx = rec.alloc(x.shape(), DType::F32)?;
    if dim > 0 {
        let bound = [(1, x), (2, weight), (5, dy), (6, rstd), (7, &dx)];
        rec.dispatch_bound(&key("rmsnorm_backward"), &p, &bound, grid_1d(rows))?;
    }
    Ok(dx)
}

/// dweight = Σ over rows of `dy · x · rstd` (only when the norm weight trains).
///
/// - dy, x: (…, dim); rstd: (rows)
/// - dweight: (dim)
pub fn rmsnorm_backward_weight(rec: &mut Recorder, dy: &Tensor, x: &Tensor, rstd: &Tensor) -> Result<Tensor> {
    const OP: &str = "rmsnorm_backward_weight";
    all_f32(OP, &[("dy", dy), ("x", x), ("rstd", rstd)])?;
    same_shape(OP, ("dy", dy), ("x", x))?;
    let (rows, dim) = rows_cols(OP, "x", x)?;
    check_rstd(OP, rstd, rows)?;
    let p = params(OP, rows, dim, 0.0)?;
    let dweight = rec.zeros(&[dim], DType::F32)?;
    let groups = [dim.div_ceil(DW_X) as u32, 1, 1];
    rec.dispatch_bound(&key("rmsnorm_backward_weight"), &p, &[(1, x), (5, dy), (6, rstd), (8, &dweight)], groups)?;
    Ok(dweight)
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["rmsnorm_forward", "rmsnorm_backward", "rmsnorm_backward_weight"].map(key).to_vec()
}
