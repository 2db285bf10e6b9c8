//! Rotary position embedding (`shaders/rope.wgsl`), transformers' `rotate_half`
//! form, on x (batch, seq, heads, head_dim).
//!
//! cos and sin are (table_rows, head_dim) tables computed on the CPU
//! (`model::llama::rope::rope_cos_sin`) and uploaded once; position `t` of the
//! sequence reads table row `row_offset + t`, so a generation step with `n`
//! cached positions passes `row_offset = n`. The backward is the inverse
//! rotation and needs nothing saved but the tables.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, dims, u32_count};
use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    pairs: u32,
    seq: u32,
    heads: u32,
    head_dim: u32,
    row_offset: u32,
    _pad: [u32; 3],
}

fn check(op: &'static str, x: &Tensor, cos: &Tensor, sin: &Tensor, row_offset: usize) -> Result<Params> {
    all_f32(op, &[("x", x), ("cos", cos), ("sin", sin)])?;
    let [batch, seq, heads, head_dim] = dims(op, "x", "(batch, seq, heads, head_dim)", x)?;
    if head_dim % 2 != 0 {
        return Err(Error::shape(op, format!("head_dim {head_dim} of x {:?} must be even", x.shape())));
    }
    for (name, t) in [("cos", cos), ("sin", sin)] {
        let [rows, d] = dims(op, name, "(table_rows, head_dim)", t)?;
        if d != head_dim {
            return Err(Error::shape(op, format!("`{name}` {:?} must have head_dim {head_dim} columns", t.shape())));
        }
        if row_offset + seq > rows {
            return Err(Error::shape(
                op,
                format!(
                    "positions {row_offset}..{} need that many rows of `{name}`, which has {rows}",
                    row_offset + seq
                ),
            ));
        }
    }
    u32_count(op, "x's element count", x.numel())?;
    u32_count(op, "the table size", cos.numel())?;
    Ok(Params {
        pairs: (batch * seq * heads * head_dim / 2) as u32,
        seq: seq as u32,
        heads: heads as u32,
        head_dim: head_dim as u32,
        row_offset: row_offset as u32,
        _pad: [0; 3],
    })
}

fn launch(rec: &mut Recorder, entry: &'static str, p: &Params, bound: &[(u32, &Tensor)]) -> Result<()> {
    rec.dispatch_bound(&key(entry), p, bound, grid_1d((p.pairs as usize).div_ceil(WG as usize)))
}

/// y = rope(x) at positions `row_offset..row_offset + seq`.
///
/// - x: (batch, seq, heads, head_dim), head_dim even
/// - cos, sin: (table_rows, head_dim), table_rows ≥ row_offset + seq
/// - y: (batch, seq, heads, head_dim)
pub fn rope_forward(rec: &mut Recorder, x: &Tensor, cos: &Tensor, sin: &Tensor, row_offset: usize) -> Result<Tensor> {
    let p = check("rope_forward", x, cos, sin, row_offset)?;
    let y = rec.alloc(x.shape(), DType::F32)?;
    launch(rec, "rope_forward", &p, &[(1, x), (2, cos), (3, sin), (4, &y)])?;
    Ok(y)
}

/// [`rope_forward`] in place on x.
pub fn rope_forward_inplace(
    rec: &mut Recorder,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    row_offset: usize,
) -> Result<()> {
    let p = check("rope_forward_inplace", x, cos, sin, row_offset)?;
    launch(rec, "rope_forward_inplace", &p, &[(5, x), (2, cos), (3, sin)])
}

/// dx = the inverse rotation of dy, same shapes and tables as the forward.
pub fn rope_backward(rec: &mut Recorder, dy: &Tensor, cos: &Tensor, sin: &Tensor, row_offset: usize) -> Result<Tensor> {
    let p = check("rope_backward", dy, cos, sin, row_offset)?;
    let dx = rec.alloc(dy.shape(), DType::F32)?;
    launch(rec, "rope_backward", &p, &[(1, dy), (2, cos), (3, sin), (4, &dx)])?;
    Ok(dx)
}

/// [`rope_backward`] in place on dy (which becomes dx).
pub fn rope_backward_inplace(
    rec: &mut Recorder,
    dy: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    row_offset: usize,
) -> Result<()> {
    let p = check("rope_backward_inplace", dy, cos, sin, row_offset)?;
    launch(rec, "rope_backward_inplace", &p, &[(5, dy), (2, cos), (3, sin)])
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Rope, entry).with("WG", Const::U32(WG))
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["rope_forward", "rope_forward_inplace", "rope_backward", "rope_backward_inplace"].map(key).to_vec()
}
