//! Row softmax, forward and backward (`shaders/softmax.wgsl`), over the last
//! dimension of any tensor. The backward needs only the forward's output y
//! (the same size as x), not x.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, rows_cols, same_shape, u32_count};
use super::grid_1d;
use crate::error::Result;
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

/// Invocations per row (a power of two).
const WG: u32 = 64;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    _pad: [u32; 2],
}

fn launch(rec: &mut Recorder, op: &'static str, t: &Tensor, bound: &[(u32, &Tensor)]) -> Result<()> {
    let (rows, cols) = rows_cols(op, "x", t)?;
    u32_count(op, "element count", rows * cols)?;
    if cols == 0 {
        return Ok(());
    }
    let p = Params { rows: rows as u32, cols: cols as u32, _pad: [0; 2] };
    rec.dispatch_bound(&key(op), &p, bound, grid_1d(rows))
}

/// y = softmax(x) along the last dimension. x, y: (…, cols).
pub fn softmax_forward(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    all_f32("softmax_forward", &[("x", x)])?;
    rows_cols("softmax_forward", "x", x)?;
    let y = rec.alloc(x.shape(), DType::F32)?;
    launch(rec, "softmax_forward", x, &[(1, x), (2, &y)])?;
    Ok(y)
}

/// dx = y · (dy − Σ dy·y) along the last dimension, given the forward's
/// output y. dy, y, dx: (…, cols).
pub fn softmax_backward(rec: &mut Recorder, dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    all_f32("softmax_backward", &[("dy", dy), ("y", y)])?;
    same_shape("softmax_backward", ("dy", dy), ("y", y))?;
    rows_cols("softmax_backward", "y", y)?;
    let dx = rec.alloc(y.shape(), DType::F32)?;
    launch(rec, "softmax_backward", y, &[(3, dy), (4, y), (5, &dx)])?;
    Ok(dx)
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Softmax, entry).with("WG", Const::U32(WG))
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["softmax_forward", "softmax_backward"].map(key).to_vec()
}
