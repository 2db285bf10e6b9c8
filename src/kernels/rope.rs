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
    kv_heads: u32,
    capacity: u32,
    _pad: u32,
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
        kv_heads: 0,
        capacity: 0,
        _pad: 0,
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

/// A decoding step's RoPE and KV-cache write in one launch: q rotated in
/// place, k rotated into rows `row_offset..row_offset + seq` of `k_cache` and
/// v copied into the same rows of `v_cache`: the rotation of
/// [`rope_forward_inplace`] (the same shader function) on q and k and a copy
/// of each into its cache (`attention::write_kv_cache`), one launch instead
/// of two and two copies.
/// k itself is left as it was.
///
/// - q: (batch, seq, heads, head_dim); k, v: (batch, seq, kv_heads, head_dim)
/// - cos, sin: (table_rows, head_dim), table_rows ≥ row_offset + seq
/// - k_cache, v_cache: (batch, capacity, kv_heads, head_dim), capacity ≥ row_offset + seq
#[allow(clippy::too_many_arguments)]
pub fn rope_cached(
    rec: &mut Recorder,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    row_offset: usize,
) -> Result<()> {
    const OP: &str = "rope_cached";
    let mut p = check(OP, q, cos, sin, row_offset)?;
    check(OP, k, cos, sin, row_offset)?;
    all_f32(OP, &[("v", v), ("k_cache", k_cache), ("v_cache", v_cache)])?;
    let [batch, seq, _, head_dim] = dims(OP, "q", "(batch, seq, heads, head_dim)", q)?;
    let [kb, ks, kv_heads, kd] = dims(OP, "k", "(batch, seq, kv_heads, head_dim)", k)?;
    if (kb, ks, kd) != (batch, seq, head_dim) || v.shape() != k.shape() {
        return Err(Error::shape(
            OP,
            format!("k {:?} and v {:?} must be q {:?}'s rows", k.shape(), v.shape(), q.shape()),
        ));
    }
    let [cb, capacity, ch, cd] = dims(OP, "k_cache", "(batch, capacity, kv_heads, head_dim)", k_cache)?;
    if (cb, ch, cd) != (batch, kv_heads, head_dim) || v_cache.shape() != k_cache.shape() || row_offset + seq > capacity
    {
        return Err(Error::shape(
            OP,
            format!(
                "rows {row_offset}..{} of k {:?} do not fit caches {:?}",
                row_offset + seq,
                k.shape(),
                k_cache.shape()
            ),
        ));
    }
    u32_count(OP, "the cache's element count", k_cache.numel())?;
    (p.kv_heads, p.capacity) = (kv_heads as u32, capacity as u32);
    let invocations = p.pairs as usize + k.numel();
    let bound = [(5, q), (1, k), (6, v), (2, cos), (3, sin), (7, k_cache), (8, v_cache)];
    rec.dispatch_bound(&key("rope_cached"), &p, &bound, grid_1d(invocations.div_ceil(WG as usize)))
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Rope, entry).with("WG", Const::U32(WG))
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["rope_forward", "rope_forward_inplace", "rope_backward", "rope_backward_inplace", "rope_cached"].map(key).to_vec()
}
