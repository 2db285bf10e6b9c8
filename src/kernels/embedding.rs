//! Token embedding lookup (`shaders/embedding.wgsl`), from a table that may be
//! split by rows across several tensors.
//!
//! A table over the device's storage-binding limit (Llama 3's 128k × 4096 f32
//! is 2 GiB) is loaded as consecutive row chunks; [`embedding_chunked`]
//! gathers from each in turn, every dispatch writing only the tokens whose id
//! falls in its chunk. The ids live on the GPU, so the launcher cannot check
//! them: an id ≥ vocab reads nothing and its output row stays zero (the
//! caller, which has the ids on the CPU, should reject them before upload).
//! The table is frozen under every method but PEFT's `modules_to_save`,
//! which trains a copy: [`embedding_weight_backward`] adds the gradient of
//! the gathered rows into that copy's chunks.
//! A model's table is a [`QWeight`]: f32, or f16 or bf16 as the checkpoint
//! stored it ([`embedding_weight`]), each row widened to f32 exactly.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, dims, u32_count};
use super::grid_1d;
use super::qmatmul::{ChunkData, QWeight};
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};
use crate::quant::QuantFormat;

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    row_start: u32,
    rows: u32,
}

/// out (n, dim) = table[ids], for a table held whole in one tensor (vocab, dim).
pub fn embedding(rec: &mut Recorder, table: &Tensor, ids: &Tensor) -> Result<Tensor> {
    embedding_chunked(rec, &[table], ids)
}

/// out (n, dim) = table[ids], for a table split by rows into `chunks`, in
/// order: chunk i is (rows_i, dim) and holds the rows after chunk i − 1's.
/// ids: (n) u32.
pub fn embedding_chunked(rec: &mut Recorder, chunks: &[&Tensor], ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    let first = chunks.first().ok_or_else(|| Error::invalid(OP, "the table has no chunks"))?;
    let [_, dim] = dims(OP, "table", "(rows, dim)", first)?;
    // Check every chunk before recording any, so an error records nothing.
    ids.expect_dtype(OP, "ids", DType::U32)?;
    if ids.shape().len() != 1 {
        return Err(Error::shape(OP, format!("ids {:?} must be (n)", ids.shape())));
    }
    all_f32(OP, &chunks.iter().map(|c| ("table", *c)).collect::<Vec<_>>())?;
    let mut vocab = 0;
    for chunk in chunks {
        let [rows, d] = dims(OP, "table", "(rows, dim)", chunk)?;
        if d != dim {
            return Err(Error::shape(
                OP,
                format!("table chunks {:?} and {:?} have different widths", first.shape(), chunk.shape()),
            ));
        }
        vocab += rows;
    }
    u32_count(OP, "the vocabulary", vocab)?;
    let out = rec.zeros(&[ids.numel(), dim], DType::F32)?;
    let mut row_start = 0;
    for chunk in chunks {
        embedding_gather_chunk(rec, chunk, row_start, ids, &out)?;
        row_start += chunk.shape()[0];
    }
    Ok(out)
}

/// Writes `out[t] = chunk[ids[t] − row_start]` for every token t whose id is in
/// `row_start .. row_start + rows`; other rows of `out` are left untouched.
///
/// - chunk: (rows, dim), table rows row_start..row_start + rows
/// - ids: (n) u32
/// - out: (n, dim)
pub fn embedding_gather_chunk(
    rec: &mut Recorder,
    chunk: &Tensor,
    row_start: usize,
    ids: &Tensor,
    out: &Tensor,
) -> Result<()> {
    const OP: &str = "embedding";
    all_f32(OP, &[("table", chunk), ("out", out)])?;
    ids.expect_dtype(OP, "ids", DType::U32)?;
    let [rows, dim] = dims(OP, "table", "(rows, dim)", chunk)?;
    let n = ids.numel();
    if ids.shape().len() != 1 {
        return Err(Error::shape(OP, format!("ids {:?} must be (n)", ids.shape())));
    }
    if out.shape() != [n, dim] {
        return Err(Error::shape(
            OP,
            format!("out {:?} must be ({n}, {dim}) for {n} ids and table rows of {dim}", out.shape()),
        ));
    }
    u32_count(OP, "out's element count", n * dim)?;
    let p = Params {
        n: n as u32,
        dim: dim as u32,
        row_start: u32_count(OP, "row_start", row_start)?,
        rows: u32_count(OP, "table rows", rows)?,
    };
    rec.dispatch_bound(&key(), &p, &[(1, chunk), (2, ids), (3, out)], grid_1d((n * dim).div_ceil(WG as usize)))
}

/// out (n, dim) = w[ids] for a frozen table w (vocab, dim) stored in f32,
/// f16 or bf16 (`model.embed_tokens`), in its row chunks. ids: (n) u32.
pub fn embedding_weight(rec: &mut Recorder, w: &QWeight, ids: &Tensor) -> Result<Tensor> {
    const OP: &str = "embedding";
    ids.expect_dtype(OP, "ids", DType::U32)?;
    if ids.shape().len() != 1 {
        return Err(Error::shape(OP, format!("ids {:?} must be (n)", ids.shape())));
    }
    u32_count(OP, "the vocabulary", w.rows)?;
    // Check every chunk before recording any, so an error records nothing.
    for chunk in &w.chunks {
        match &chunk.data {
            ChunkData::F32(t) if t.shape() != [chunk.rows, w.cols] => {
                return Err(Error::shape(
                    OP,
                    format!("table chunk {:?} is not ({}, {}) as its weight says", t.shape(), chunk.rows, w.cols),
                ))
            }
            ChunkData::Quant(p) if !matches!(p.format, QuantFormat::F16 | QuantFormat::Bf16) => {
                return Err(Error::invalid(
                    OP,
                    format!("the table is stored as {}: embeddings are gathered from f32, f16 or bf16", p.format),
                ))
            }
            _ => {}
        }
    }
    let (n, dim) = (ids.numel(), w.cols);
    u32_count(OP, "out's element count", n * dim)?;
    let out = rec.zeros(&[n, dim], DType::F32)?;
    for chunk in &w.chunks {
        match &chunk.data {
            ChunkData::F32(t) => embedding_gather_chunk(rec, t, chunk.row_start, ids, &out)?,
            ChunkData::Quant(packed) => {
                let p = Params {
                    n: n as u32,
                    dim: dim as u32,
                    row_start: u32_count(OP, "row_start", chunk.row_start)?,
                    rows: u32_count(OP, "table rows", chunk.rows)?,
                };
                let key = key_16(packed.format == QuantFormat::Bf16);
                let grid = grid_1d((n * dim).div_ceil(WG as usize));
                rec.dispatch_bound(&key, &p, &[(4, &packed.codes), (2, ids), (3, &out)], grid)?;
            }
        }
    }
    Ok(out)
}

/// grad (vocab, dim) += the gradient of [`embedding_weight`] for dx (n,
/// dim) at the rows of ids (n) u32: each id's row gets the sum of its
/// tokens' rows of dx. `grad` is an f32 weight in row chunks (a trained
/// copy's gradient); ids ≥ vocab add nothing.
pub fn embedding_weight_backward(rec: &mut Recorder, grad: &QWeight, ids: &Tensor, dx: &Tensor) -> Result<()> {
    const OP: &str = "embedding backward";
    ids.expect_dtype(OP, "ids", DType::U32)?;
    all_f32(OP, &[("dx", dx)])?;
    let (n, dim) = (ids.numel(), grad.cols);
    if ids.shape().len() != 1 || dx.shape() != [n, dim] {
        return Err(Error::shape(
            OP,
            format!(
                "ids {:?} and dx {:?} must be (n) and (n, {dim}) for a table of rows of {dim}",
                ids.shape(),
                dx.shape()
            ),
        ));
    }
    let chunks = grad
        .chunks
        .iter()
        .map(|c| match &c.data {
            ChunkData::F32(t) if t.shape() == [c.rows, dim] => Ok((c.row_start, c.rows, t)),
            ChunkData::F32(t) => {
                Err(Error::shape(OP, format!("grad chunk {:?}, expected ({}, {dim})", t.shape(), c.rows)))
            }
            ChunkData::Quant(p) => {
                Err(Error::invalid(OP, format!("the gradient is stored as {}, expected f32", p.format)))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    u32_count(OP, "dx's element count", n * dim)?;
    let grid = grid_1d((n * dim).div_ceil(WG as usize));
    for (row_start, rows, t) in chunks {
        let p = Params {
            n: n as u32,
            dim: dim as u32,
            row_start: u32_count(OP, "row_start", row_start)?,
            rows: u32_count(OP, "table rows", rows)?,
        };
        rec.dispatch_bound(&backward_key(), &p, &[(2, ids), (5, dx), (6, t)], grid)?;
    }
    Ok(())
}

fn backward_key() -> PipelineKey {
    PipelineKey::new(Kernel::Embedding, "embedding_backward")
        .with("WG", Const::U32(WG))
        .with("BF16", Const::Bool(false))
}

fn key() -> PipelineKey {
    PipelineKey::new(Kernel::Embedding, "embedding_forward").with("WG", Const::U32(WG)).with("BF16", Const::Bool(false))
}

/// The gather from a 16-bit table: bf16, or f16.
fn key_16(bf16: bool) -> PipelineKey {
    PipelineKey::new(Kernel::Embedding, "embedding_forward_16")
        .with("WG", Const::U32(WG))
        .with("BF16", Const::Bool(bf16))
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    vec![key(), key_16(false), key_16(true), backward_key()]
}
