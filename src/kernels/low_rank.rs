//! LoRA's term `scale·h·Bᵀ` fused into the store of a Linear's forward
//! product (`shaders/low_rank.wgsl`), for both the f32 launchers
//! (`matmul`) and the quantized ones (`qmatmul`): what a launch binds and
//! the launch parameters it sets.

use bytemuck::{Pod, Zeroable};

use super::blocked::GemvTiles;
use super::matmul::{gemm, Gemm};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};

/// A low-rank term `scale·h·Bᵀ` to add to y = x·Wᵀ: LoRA's
/// `scaling·(drop(x)·Aᵀ)·Bᵀ` with h = drop(x)·Aᵀ. See
/// [`super::qmatmul::qlinear_low_rank`].
#[derive(Clone, Debug)]
pub struct LowRank {
    /// (M, r)
    pub h: Tensor,
    /// (out, r): lora_B
    pub b: Tensor,
    pub scale: f32,
}

/// The launch parameters' last four words (`lr_rank`, `lr_scale`, `lr_row`,
/// and padding), in both hosts' `Params`.
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
pub(crate) struct LowRankParams {
    rank: u32,
    scale: f32,
    row: u32,
    pad: u32,
}

impl LowRank {
    /// Products of at most this many rows add the term as they store y:
    /// decoding's, where launches and passes over y are what a token costs.
    /// Longer ones add it with a product of their own, whose tiles suit a
    /// long M better than one serial sum per output.
    pub const FUSED_ROWS: usize = GemvTiles::MAX_M;

    pub(crate) const OP: &'static str = "linear_low_rank";

    /// y (M, out) += scale·h·Bᵀ with a product of its own: the term of a
    /// product that does not fuse it.
    pub fn add_to(&self, rec: &mut Recorder, y: &Tensor) -> Result<()> {
        let (m, r, out) = match (self.h.shape(), self.b.shape()) {
            ([m, r], [out, _]) => (*m, *r, *out),
            (h, b) => return Err(Error::shape(Self::OP, format!("h {h:?} and B {b:?} are not (M, r) and (out, r)"))),
        };
        gemm(rec, &Gemm::new(m, out, r, false, true).alpha(self.scale).accumulate(true), &self.h, &self.b, y)
    }

    /// (M, r) for x (M, in) through a weight (out, in), checking h is (M, r)
    /// and B (out, r), both f32.
    pub(crate) fn check(&self, x: &Tensor, out: usize, inp: usize) -> Result<(usize, usize)> {
        if x.shape().last() != Some(&inp) {
            let detail = format!("input {:?} does not match a ({out}, {inp}) weight", x.shape());
            return Err(Error::shape(Self::OP, detail));
        }
        let m = x.numel() / inp.max(1);
        self.h.expect_dtype(Self::OP, "h", DType::F32)?;
        self.b.expect_dtype(Self::OP, "lora_B", DType::F32)?;
        match (self.h.shape(), self.b.shape()) {
            ([hm, r], [bo, br]) if *hm == m && *bo == out && br == r => Ok((m, *r)),
            (h, b) => Err(Error::shape(
                Self::OP,
                format!("low-rank term h {h:?} and B {b:?} do not fit ({m}, r) and ({out}, r) for this Linear"),
            )),
        }
    }
}

/// The term of one launch: the term and B's row of the launch's first output column.
pub(crate) type Fused<'a> = Option<(&'a LowRank, usize)>;

/// The launch parameters of `term` (zeros without one).
pub(crate) fn params(term: Fused) -> LowRankParams {
    term.map_or(LowRankParams::default(), |(t, row)| LowRankParams {
        rank: t.h.shape().get(1).copied().unwrap_or(0) as u32,
        scale: t.scale,
        row: row as u32,
        pad: 0,
    })
}

/// `bound` and, with a term, h and B at bindings 8 and 9.
pub(crate) fn with_bindings<'a>(bound: &[(u32, &'a Tensor)], term: Fused<'a>) -> Vec<(u32, &'a Tensor)> {
    let mut all = bound.to_vec();
    if let Some((t, _)) = term {
        all.extend([(8, &t.h), (9, &t.b)]);
    }
    all
}

/// A device's switch for the fusion: off, every term is added by a product
/// of its own (the benchmark times decoding both ways).
#[derive(Default)]
struct Unfused(bool);

/// Whether products of at most [`LowRank::FUSED_ROWS`] rows on `gpu` add a
/// term as they store y (on unless [`set_fused`] turned it off).
pub fn fused(gpu: &Gpu) -> bool {
    !gpu.with_state(|u: &mut Unfused| u.0)
}

/// Turns the fusion on or off for later launches on `gpu` (on by default;
/// `webpeft bench` times decoding through a LoRA both ways).
pub fn set_fused(gpu: &Gpu, on: bool) {
    gpu.with_state(|u: &mut Unfused| u.0 = !on);
}
