//! LoRA's term `scale·h·Bᵀ` fused into the store of a Linear's forward
//! product (`shaders/low_rank.wgsl`), for both the f32 launchers
//! (`matmul`) and the quantized ones (`qmatmul`): what a launch binds and
//! the launch parameters it sets.

use bytemuck::{Pod, Zeroable};

use super::blocked::{is_real_gpu, GemvTiles};
use super::matmul::{gemm, Gemm};
use super::output_op::FusedOp;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};

/// A low-rank term `scale·h·Bᵀ` to add to a product's output: LoRA's
/// `scaling·(drop(x)·Aᵀ)·Bᵀ` to y = x·Wᵀ, with h = drop(x)·Aᵀ and B =
/// lora_B (out, r); or, going backward, the LoRA path's `d(xa)·A` to dx =
/// dy·W, with h = d(xa) and B given transposed as lora_A (r, in). See
/// [`super::qmatmul::qlinear_low_rank`] and
/// [`super::qmatmul::qlinear_backward_low_rank`].
#[derive(Clone, Debug)]
pub struct LowRank {
    /// (M, r), or a wider (M, ld) whose columns `h_col..h_col + r` are
    /// this term's: several Linears on one input (q, k and v) sharing one
    /// product x·[A_q; A_k; A_v]ᵀ, each reading its own columns.
    pub h: Tensor,
    /// The first of h's columns that are this term's, where h is shared
    /// ([`LowRank::columns`]); `None`: h is exactly (M, r).
    pub h_col: Option<usize>,
    /// (out, r), or with `transposed` Bᵀ (r, out)
    pub b: Tensor,
    pub scale: f32,
    /// `b` holds Bᵀ (r, out).
    pub transposed: bool,
}

/// The launch parameters' last eight words, what the store adds and does
/// (`lr_rank`, `lr_scale`, `lr_row`, `lr_ld`, `lr_h_ld`, `lr_h_col`, then
/// the output op's `op_col` and `op_ld`), in both hosts' `Params`.
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
pub(crate) struct StoreParams {
    rank: u32,
    scale: f32,
    row: u32,
    /// 0: B stored (out, r); else Bᵀ stored (r, ld).
    ld: u32,
    /// h's row stride and the first of its columns the term reads.
    h_ld: u32,
    h_col: u32,
    /// The output op's first column and its gate's row stride
    /// (`shaders/output_op.wgsl`).
    op_col: u32,
    op_ld: u32,
}

impl LowRank {
    /// The term `scale·h·Bᵀ` with h (M, r) and B (out, r).
    pub fn new(h: Tensor, b: Tensor, scale: f32) -> LowRank {
        LowRank { h, h_col: None, b, scale, transposed: false }
    }

    /// The term `scale·h·Bᵀ` with h (M, r) and B given as Bᵀ (r, out): the
    /// backward's `d(xa)·A` with `bt` = lora_A (r, in).
    pub fn new_transposed(h: Tensor, bt: Tensor, scale: f32) -> LowRank {
        LowRank { h, h_col: None, b: bt, scale, transposed: true }
    }

    /// The term `scale·h[:, col..col + r]·Bᵀ` with B (out, r): one Linear's
    /// share of an h (M, ld) that several compute together.
    pub fn columns(h: Tensor, col: usize, b: Tensor, scale: f32) -> LowRank {
        LowRank { h, h_col: Some(col), b, scale, transposed: false }
    }

    /// (M, r, ld): h's rows, the term's rank and h's row stride, where h
    /// (M, ld) holds the term's r columns from `h_col` and B is 2-D.
    pub(crate) fn h_dims(&self) -> Option<(usize, usize, usize)> {
        match (self.h.shape(), self.b_dims(), self.h_col) {
            ([m, ld], Some((_, r)), None) if r == *ld => Some((*m, r, *ld)),
            ([m, ld], Some((_, r)), Some(col)) if col + r <= *ld => Some((*m, r, *ld)),
            _ => None,
        }
    }

    /// What h is, for errors: its shape and the columns read.
    pub(crate) fn h_label(&self) -> String {
        match self.h_col {
            None => format!("h {:?}", self.h.shape()),
            Some(col) => format!("h {:?} (from column {col})", self.h.shape()),
        }
    }

    /// Products of at most this many rows add the term as they store their
    /// output on every adapter: decoding's, where launches and passes over y
    /// are what a token costs. On real GPUs longer ones fuse it too (the
    /// blocked GEMM adds it as outer products of its tile's rows of h and
    /// B); on CPU rasterizers they add it with a product of their own, which
    /// there beats one serial sum per output (see [`fuses`]).
    pub const FUSED_ROWS: usize = GemvTiles::MAX_M;

    pub(crate) const OP: &'static str = "linear_low_rank";

    /// (out, r) of B, whichever way it is stored; None unless 2-D.
    pub(crate) fn b_dims(&self) -> Option<(usize, usize)> {
        match (self.b.shape(), self.transposed) {
            ([out, r], false) | ([r, out], true) => Some((*out, *r)),
            _ => None,
        }
    }

    /// out (M, cols) += scale·h·Bᵀ with a product of its own: the term of
    /// a product that does not fuse it.
    pub fn add_to(&self, rec: &mut Recorder, out: &Tensor) -> Result<()> {
        let ((m, r, ld), (cols, _)) = match (self.h_dims(), self.b_dims()) {
            (Some(h), Some(b)) => (h, b),
            _ => {
                let (h, b) = (self.h_label(), self.b.shape());
                return Err(Error::shape(Self::OP, format!("{h} and B {b:?} are not (M, r) and (out, r)")));
            }
        };
        let g = Gemm { lda: ld, a_off: self.h_col.unwrap_or(0), ..Gemm::new(m, cols, r, false, !self.transposed) };
        gemm(rec, &g.alpha(self.scale).accumulate(true), &self.h, &self.b, out)
    }

    /// (M, r) for x (M, in) through a product to `out` columns, checking h is
    /// (M, r) and B (out, r) (or Bᵀ (r, out)), both f32.
    pub(crate) fn check(&self, x: &Tensor, out: usize, inp: usize) -> Result<(usize, usize)> {
        if x.shape().last() != Some(&inp) {
            let detail = format!("input {:?} does not match a product of {inp} to {out} columns", x.shape());
            return Err(Error::shape(Self::OP, detail));
        }
        let m = x.numel() / inp.max(1);
        self.h.expect_dtype(Self::OP, "h", DType::F32)?;
        self.b.expect_dtype(Self::OP, "B", DType::F32)?;
        match (self.h_dims(), self.b_dims()) {
            (Some((hm, r, _)), Some((bo, _))) if hm == m && bo == out => Ok((m, r)),
            _ => Err(Error::shape(
                Self::OP,
                format!(
                    "low-rank term {} and {} {:?} do not fit ({m}, r) and {} for this product",
                    self.h_label(),
                    if self.transposed { "Bᵀ" } else { "B" },
                    self.b.shape(),
                    if self.transposed { format!("(r, {out})") } else { format!("({out}, r)") }
                ),
            )),
        }
    }
}

/// The term of one launch: the term and B's row of the launch's first output column.
pub(crate) type Fused<'a> = Option<(&'a LowRank, usize)>;

/// The launch parameters of `term` and `op` (zeros without them).
pub(crate) fn store_params(term: Fused, op: FusedOp) -> StoreParams {
    let mut p = term.map_or(StoreParams::default(), |(t, row)| {
        let (_, rank, h_ld) = t.h_dims().unwrap_or_default();
        StoreParams {
            rank: rank as u32,
            scale: t.scale,
            row: row as u32,
            ld: if t.transposed { t.b_dims().map_or(0, |(out, _)| out as u32) } else { 0 },
            h_ld: h_ld as u32,
            h_col: t.h_col.unwrap_or(0) as u32,
            ..StoreParams::default()
        }
    });
    if let Some((op, col)) = op {
        (p.op_col, p.op_ld) = (col as u32, op.ld() as u32);
    }
    p
}

/// `bound` and, with a term, h and B at bindings 8 and 9, and with an
/// output op its operand at binding 11.
pub(crate) fn with_bindings<'a>(
    bound: &[(u32, &'a Tensor)],
    term: Fused<'a>,
    op: FusedOp<'a>,
) -> Vec<(u32, &'a Tensor)> {
    let mut all = bound.to_vec();
    if let Some((t, _)) = term {
        all.extend([(8, &t.h), (9, &t.b)]);
    }
    if let Some((op, _)) = op {
        all.push((11, op.operand()));
    }
    all
}

/// The shader's OUTPUT_OP of `op` (0: none).
pub(crate) fn op_code(op: FusedOp) -> u32 {
    op.map_or(0, |(op, _)| op.code())
}

/// A device's switch for the fusion: off, every term is added by a product
/// of its own (the benchmark times decoding both ways).
#[derive(Default)]
struct Unfused(bool);

/// Whether fusing is on for `gpu` (unless [`set_fused`] turned it off).
pub fn fused(gpu: &Gpu) -> bool {
    !gpu.with_state(|u: &mut Unfused| u.0)
}

/// Whether a product of `m` rows on `gpu` adds a term as it stores its
/// output: with fusing on, at most [`LowRank::FUSED_ROWS`] rows on every
/// adapter, and any rows with the kernels of real GPUs.
pub fn fuses(gpu: &Gpu, m: usize) -> bool {
    fused(gpu) && (m <= LowRank::FUSED_ROWS || is_real_gpu(gpu))
}

/// Turns the fusion on or off for later launches on `gpu` (on by default;
/// `webpeft bench` times decoding through a LoRA both ways).
pub fn set_fused(gpu: &Gpu, on: bool) {
    gpu.with_state(|u: &mut Unfused| u.0 = !on);
}
