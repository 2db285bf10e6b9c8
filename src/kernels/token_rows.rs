//! Trainable token rows (`shaders/token_rows.wgsl`): PEFT's
//! `trainable_token_indices`, k rows `delta` (k, dim) that replace rows
//! `indices` of the frozen embedding table, and of the head where the head
//! is the table (`tie_word_embeddings`).
//!
//! ```text
//! embedding:  x[t] = delta[j]            for ids[t] = indices[j]      (token_rows_forward)
//!             d_delta[j] += Σ dx[t]      over those t                 (token_rows_backward)
//! tied head:  logits[r, indices[j]] = x[r] · delta[j]                 (token_columns_forward)
//!             g = dlogits[:, indices], then those columns zeroed;
//!             dx += g · delta, d_delta += gᵀ · x                      (token_columns_backward)
//! ```
//!
//! LoRA on the embedding reads its A (r, V) by the ids' columns
//! ([`ids_gather`]) and adds its gradient back there ([`ids_scatter`]).
//!
//! `slots` (vocab) i32 maps an id to its row j or −1; ids ≥ vocab have no
//! row. The column backward runs before the frozen head's dx = dlogits·W,
//! which then sees zeros where the rows were replaced, as
//! PEFT's `index_copy` into W leaves the frozen rows out of the product.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, dims, u32_count};
use super::grid_1d;
use super::matmul::{gemm, Gemm};
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 256;
const OP: &str = "token_rows";

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    vocab: u32,
    k: u32,
}

/// The rows, their ids and the id → row map, checked together.
#[derive(Clone, Copy, Debug)]
pub struct TokenRows<'a> {
    /// (k, dim) f32: the rows.
    pub delta: &'a Tensor,
    /// (k) u32: the id each row stands for.
    pub indices: &'a Tensor,
    /// (vocab) i32: row j of each id, or −1.
    pub slots: &'a Tensor,
}

impl TokenRows<'_> {
    /// (k, dim, vocab), checked.
    fn dims(&self) -> Result<(usize, usize, usize)> {
        all_f32(OP, &[("delta", self.delta)])?;
        self.indices.expect_dtype(OP, "indices", DType::U32)?;
        self.slots.expect_dtype(OP, "slots", DType::I32)?;
        let [k, dim] = dims(OP, "delta", "(k, dim)", self.delta)?;
        let [vocab] = dims(OP, "slots", "(vocab)", self.slots)?;
        if self.indices.shape() != [k] {
            return Err(Error::shape(
                OP,
                format!("indices {:?} must be ({k}) for delta {:?}", self.indices.shape(), [k, dim]),
            ));
        }
        if k == 0 || dim == 0 {
            return Err(Error::shape(OP, format!("delta {:?} is empty", [k, dim])));
        }
        Ok((k, dim, vocab))
    }

    fn params(&self, n: usize) -> Result<Params> {
        let (k, dim, vocab) = self.dims()?;
        Ok(Params {
            n: u32_count(OP, "rows", n)?,
            dim: u32_count(OP, "dim", dim)?,
            vocab: u32_count(OP, "vocab", vocab)?,
            k: u32_count(OP, "trainable rows", k)?,
        })
    }
}

/// x (n, dim): the rows of tokens that have a trainable row replaced by it.
/// ids: (n) u32.
pub fn token_rows_forward(rec: &mut Recorder, rows: TokenRows, ids: &Tensor, x: &Tensor) -> Result<()> {
    let p = rows.params(ids.numel())?;
    check_ids(ids)?;
    all_f32(OP, &[("x", x)])?;
    expect_shape("x", x, &[ids.numel(), p.dim as usize])?;
    u32_count(OP, "x's element count", x.numel())?;
    let grid = grid_1d(x.numel().div_ceil(WG as usize));
    rec.dispatch_bound(&key("rows_forward"), &p, &[(1, ids), (2, rows.slots), (4, rows.delta), (6, x)], grid)
}

/// grad (k, dim) += each trainable row's share of dx (n, dim), the
/// gradient at the embedding's output for ids (n) u32.
pub fn token_rows_backward(
    rec: &mut Recorder,
    rows: TokenRows,
    ids: &Tensor,
    dx: &Tensor,
    grad: &Tensor,
) -> Result<()> {
    let p = rows.params(ids.numel())?;
    check_ids(ids)?;
    all_f32(OP, &[("dx", dx), ("grad", grad)])?;
    expect_shape("dx", dx, &[ids.numel(), p.dim as usize])?;
    expect_shape("grad", grad, rows.delta.shape())?;
    let grid = grid_1d((p.dim as usize).div_ceil(WG as usize));
    rec.dispatch_bound(&key("rows_backward"), &p, &[(1, ids), (2, rows.slots), (5, dx), (7, grad)], grid)
}

/// logits (n, vocab): the trainable ids' columns set to x (n, dim) · delta[j].
pub fn token_columns_forward(rec: &mut Recorder, rows: TokenRows, x: &Tensor, logits: &Tensor) -> Result<()> {
    let n = x.shape().first().copied().unwrap_or(0);
    let p = rows.params(n)?;
    all_f32(OP, &[("x", x), ("logits", logits)])?;
    expect_shape("x", x, &[n, p.dim as usize])?;
    expect_shape("logits", logits, &[n, p.vocab as usize])?;
    u32_count(OP, "logits' element count", logits.numel())?;
    let grid = grid_1d((n * p.k as usize).div_ceil(WG as usize));
    let bound = [(3, rows.indices), (4, rows.delta), (5, x), (8, logits)];
    rec.dispatch_bound(&key("columns_forward"), &p, &bound, grid)
}

/// The backward of [`token_columns_forward`], before the frozen head's:
/// takes the trainable ids' columns out of dlogits (n, vocab), zeroing
/// them, and adds their share into dx (n, dim) and grad (k, dim).
pub fn token_columns_backward(
    rec: &mut Recorder,
    rows: TokenRows,
    x: &Tensor,
    dlogits: &Tensor,
    dx: &Tensor,
    grad: &Tensor,
) -> Result<()> {
    let n = x.shape().first().copied().unwrap_or(0);
    let p = rows.params(n)?;
    let (k, dim) = (p.k as usize, p.dim as usize);
    all_f32(OP, &[("x", x), ("dlogits", dlogits), ("dx", dx), ("grad", grad)])?;
    expect_shape("x", x, &[n, dim])?;
    expect_shape("dlogits", dlogits, &[n, p.vocab as usize])?;
    expect_shape("dx", dx, &[n, dim])?;
    expect_shape("grad", grad, &[k, dim])?;
    let g = rec.alloc(&[n, k], DType::F32)?;
    let grid = grid_1d((n * k).div_ceil(WG as usize));
    rec.dispatch_bound(&key("columns_take"), &p, &[(3, rows.indices), (8, dlogits), (9, &g)], grid)?;
    gemm(rec, &Gemm::new(n, dim, k, false, false).accumulate(true), &g, rows.delta, dx)?; // dx += g·delta
    gemm(rec, &Gemm::new(k, dim, n, true, false).accumulate(true), &g, x, grad) // grad += gᵀ·x
}

/// out (n, r) = a[:, ids]ᵀ for a (r, V) (LoRA's `lora_embedding_A`) and ids
/// (n) u32; ids ≥ V gather zeros.
pub fn ids_gather(rec: &mut Recorder, a: &Tensor, ids: &Tensor) -> Result<Tensor> {
    all_f32(OP, &[("a", a)])?;
    check_ids(ids)?;
    let [r, vocab] = dims(OP, "a", "(r, vocab)", a)?;
    let n = ids.numel();
    let p = id_params(n, r, vocab)?;
    u32_count(OP, "the gathered element count", n * r)?;
    let out = rec.alloc(&[n, r], DType::F32)?;
    let grid = grid_1d((n * r).div_ceil(WG as usize));
    rec.dispatch_bound(&key("ids_gather"), &p, &[(1, ids), (5, a), (6, &out)], grid)?;
    Ok(out)
}

/// grad (r, V) += the columns `ids` (n) of g (n, r)ᵀ: the backward of
/// [`ids_gather`]; ids ≥ V add nothing.
pub fn ids_scatter(rec: &mut Recorder, g: &Tensor, ids: &Tensor, grad: &Tensor) -> Result<()> {
    all_f32(OP, &[("g", g), ("grad", grad)])?;
    check_ids(ids)?;
    let [r, vocab] = dims(OP, "grad", "(r, vocab)", grad)?;
    let n = ids.numel();
    expect_shape("g", g, &[n, r])?;
    let p = id_params(n, r, vocab)?;
    u32_count(OP, "grad's element count", r * vocab)?;
    let grid = grid_1d(r.div_ceil(WG as usize));
    rec.dispatch_bound(&key("ids_scatter"), &p, &[(1, ids), (5, g), (7, grad)], grid)
}

/// The id-indexed kernels' params: n ids, A's r rows of `vocab`.
fn id_params(n: usize, r: usize, vocab: usize) -> Result<Params> {
    Ok(Params { n: u32_count(OP, "ids", n)?, dim: u32_count(OP, "r", r)?, vocab: u32_count(OP, "vocab", vocab)?, k: 0 })
}

fn check_ids(ids: &Tensor) -> Result<()> {
    ids.expect_dtype(OP, "ids", DType::U32)?;
    if ids.shape().len() != 1 {
        return Err(Error::shape(OP, format!("ids {:?} must be (n)", ids.shape())));
    }
    Ok(())
}

fn expect_shape(arg: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.shape() != want {
        return Err(Error::shape(OP, format!("`{arg}` {:?} must be {want:?}", t.shape())));
    }
    Ok(())
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::TokenRows, entry).with("WG", Const::U32(WG))
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["rows_forward", "rows_backward", "columns_forward", "columns_take", "ids_gather", "ids_scatter"]
        .into_iter()
        .map(key)
        .collect()
}
