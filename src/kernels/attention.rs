//! Causal self-attention with grouped-query heads (`shaders/attention.wgsl`),
//! transformers' eager semantics: `softmax(q·kᵀ·scale + causal mask)·v` in
//! f32, query head h reading kv head `h / (n_heads / n_kv_heads)`.
//!
//! Memory: the forward saves only the logsumexp of each query row's scores,
//! `lse` (batch, n_heads, seq) — `4·B·Hq·T` bytes, e.g. 64 KiB for 1×32×512 —
//! instead of the probabilities (`4·B·Hq·T²`, 32 MiB for the same shapes, and
//! over the binding limit at T = 2048). The backward recomputes the
//! probabilities from q, k and lse; it also needs v, the forward's `out` and
//! `dout`, and makes one (batch, n_heads, seq) scratch tensor.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, dims, same_shape, u32_count};
use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 64;
/// The largest head_dim: each invocation holds up to four head_dim vectors in
/// registers.
pub const MAX_HEAD_DIM: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    batch: u32,
    tq: u32,
    tkv: u32,
    hq: u32,
    hkv: u32,
    offset: u32,
    scale: f32,
    _pad: u32,
}

/// Checks q (B, Tq, Hq, D) against k and v (B, Tkv, Hkv, D) and returns the
/// uniform block for keys 0..tkv and queries from `offset`.
fn check(op: &'static str, q: &Tensor, k: &Tensor, v: &Tensor, offset: usize, scale: f32) -> Result<Params> {
    all_f32(op, &[("q", q), ("k", k), ("v", v)])?;
    let [batch, tq, hq, d] = dims(op, "q", "(batch, seq, n_heads, head_dim)", q)?;
    let [kb, tkv, hkv, kd] = dims(op, "k", "(batch, seq, n_kv_heads, head_dim)", k)?;
    same_shape(op, ("k", k), ("v", v))?;
    if kb != batch || kd != d {
        return Err(Error::shape(
            op,
            format!("k {:?} does not match q {:?} in batch or head_dim", k.shape(), q.shape()),
        ));
    }
    if hkv == 0 || hq % hkv != 0 {
        return Err(Error::shape(op, format!("n_heads {hq} must be a multiple of n_kv_heads {hkv}")));
    }
    if d == 0 || d > MAX_HEAD_DIM {
        return Err(Error::shape(op, format!("head_dim {d} must be in 1..={MAX_HEAD_DIM}")));
    }
    if offset + tq > tkv {
        return Err(Error::shape(
            op,
            format!("queries at positions {offset}..{} need that many rows of k, which has {tkv}", offset + tq),
        ));
    }
    if !scale.is_finite() {
        return Err(Error::invalid(op, format!("scale must be finite, got {scale}")));
    }
    u32_count(op, "q's element count", q.numel())?;
    u32_count(op, "k's element count", k.numel())?;
    Ok(Params {
        batch: batch as u32,
        tq: tq as u32,
        tkv: tkv as u32,
        hq: hq as u32,
        hkv: hkv as u32,
        offset: offset as u32,
        scale,
        _pad: 0,
    })
}

fn key(entry: &'static str, head_dim: usize) -> PipelineKey {
    PipelineKey::new(Kernel::Attention, entry).with("WG", Const::U32(WG)).with("D", Const::U32(head_dim as u32))
}

fn forward(rec: &mut Recorder, q: &Tensor, k: &Tensor, v: &Tensor, p: &Params) -> Result<(Tensor, Tensor)> {
    let out = rec.alloc(q.shape(), DType::F32)?;
    let lse = rec.alloc(&[p.batch as usize, p.hq as usize, p.tq as usize], DType::F32)?;
    let rows = (p.batch * p.hq * p.tq) as usize;
    let bound = [(1, q), (2, k), (3, v), (4, &out), (5, &lse)];
    rec.dispatch_bound(&key("attention_forward", q.shape()[3]), p, &bound, grid_1d(rows.div_ceil(WG as usize)))?;
    Ok((out, lse))
}

/// Returns `(out, lse)`.
///
/// - q: (batch, seq, n_heads, head_dim), after RoPE
/// - k, v: (batch, seq, n_kv_heads, head_dim), k after RoPE
/// - scale: usually `1 / sqrt(head_dim)`
/// - out: (batch, seq, n_heads, head_dim)
/// - lse: (batch, n_heads, seq), logsumexp of each row of scaled scores; saved for backward
pub fn attention_forward(
    rec: &mut Recorder,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "attention_forward";
    let p = check(OP, q, k, v, 0, scale)?;
    if p.tkv != p.tq {
        return Err(Error::shape(OP, format!("q {:?} and k {:?} must have the same seq", q.shape(), k.shape())));
    }
    forward(rec, q, k, v, &p)
}

/// Returns `(dq, dk, dv)` for `dout`, given the forward's inputs, its `out`
/// and `lse`; dk and dv are summed over the query heads sharing each kv head.
///
/// - dout, out: (batch, seq, n_heads, head_dim); lse: (batch, n_heads, seq)
/// - q, k, v, scale: as given to [`attention_forward`]
/// - dq: (batch, seq, n_heads, head_dim); dk, dv: (batch, seq, n_kv_heads, head_dim)
#[allow(clippy::too_many_arguments)] // the backward needs everything the forward had, and more
pub fn attention_backward(
    rec: &mut Recorder,
    dout: &Tensor,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    out: &Tensor,
    lse: &Tensor,
    scale: f32,
) -> Result<(Tensor, Tensor, Tensor)> {
    const OP: &str = "attention_backward";
    let p = check(OP, q, k, v, 0, scale)?;
    all_f32(OP, &[("dout", dout), ("out", out), ("lse", lse)])?;
    same_shape(OP, ("q", q), ("dout", dout))?;
    same_shape(OP, ("q", q), ("out", out))?;
    if p.tkv != p.tq {
        return Err(Error::shape(OP, format!("q {:?} and k {:?} must have the same seq", q.shape(), k.shape())));
    }
    let lse_shape = [p.batch as usize, p.hq as usize, p.tq as usize];
    if lse.shape() != lse_shape {
        return Err(Error::shape(OP, format!("lse {:?} must be {lse_shape:?} (batch, n_heads, seq)", lse.shape())));
    }
    let dq = rec.alloc(q.shape(), DType::F32)?;
    let dk = rec.alloc(k.shape(), DType::F32)?;
    let dv = rec.alloc(v.shape(), DType::F32)?;
    let delta = rec.alloc(&lse_shape, DType::F32)?;
    let d = q.shape()[3];
    let q_rows = (p.batch * p.hq * p.tq) as usize;
    let bound = [(1, q), (2, k), (3, v), (6, out), (7, dout), (8, lse), (9, &dq), (10, &delta)];
    rec.dispatch_bound(&key("attention_backward_dq", d), &p, &bound, grid_1d(q_rows.div_ceil(WG as usize)))?;
    let kv_rows = (p.batch * p.hkv * p.tkv) as usize;
    let bound = [(1, q), (2, k), (3, v), (7, dout), (8, lse), (11, &delta), (12, &dk), (13, &dv)];
    rec.dispatch_bound(&key("attention_backward_dkv", d), &p, &bound, grid_1d(kv_rows.div_ceil(WG as usize)))?;
    Ok((dq, dk, dv))
}

/// Attention for generation: queries at positions `offset .. offset + seq`
/// against the first `offset + seq` rows of a KV cache (rows past them are
/// never read). Write the new keys and values with [`write_kv_cache`] first.
///
/// - q: (batch, seq, n_heads, head_dim)
/// - k_cache, v_cache: (batch, capacity, n_kv_heads, head_dim), capacity ≥ offset + seq
/// - out: (batch, seq, n_heads, head_dim)
pub fn attention_forward_cached(
    rec: &mut Recorder,
    q: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    offset: usize,
    scale: f32,
) -> Result<Tensor> {
    let p = check("attention_forward_cached", q, k_cache, v_cache, offset, scale)?;
    Ok(forward(rec, q, k_cache, v_cache, &p)?.0)
}

/// Copies `new` (batch, seq, n_kv_heads, head_dim) into rows
/// `offset .. offset + seq` of `cache` (batch, capacity, n_kv_heads, head_dim):
/// one buffer copy per batch row.
pub fn write_kv_cache(rec: &mut Recorder, new: &Tensor, cache: &Tensor, offset: usize) -> Result<()> {
    const OP: &str = "write_kv_cache";
    all_f32(OP, &[("new", new), ("cache", cache)])?;
    let [batch, seq, heads, d] = dims(OP, "new", "(batch, seq, n_kv_heads, head_dim)", new)?;
    let [cb, capacity, ch, cd] = dims(OP, "cache", "(batch, capacity, n_kv_heads, head_dim)", cache)?;
    if (cb, ch, cd) != (batch, heads, d) || offset + seq > capacity {
        return Err(Error::shape(
            OP,
            format!("rows {offset}..{} of {:?} do not fit cache {:?}", offset + seq, new.shape(), cache.shape()),
        ));
    }
    let row = (heads * d * 4) as u64;
    for b in 0..batch {
        let src = (b * seq) as u64 * row;
        let dst = (b * capacity + offset) as u64 * row;
        rec.copy(new, src, cache, dst, seq as u64 * row)?;
    }
    Ok(())
}
