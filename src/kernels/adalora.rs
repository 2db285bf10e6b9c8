//! AdaLoRA's kernels (`shaders/adalora.wgsl`), PEFT's `ADALORA`
//! (peft/tuners/adalora/{layer,model}.py): the layer's `A ∘ E` and its
//! backward, `AdaLoraModel.forward`'s orthogonality regulariser, and
//! `RankAllocator`'s importance averages, triplet scores and budget mask.
//!
//! An AdaLoRA Linear holds lora_A (r, in), lora_E (r, 1) and lora_B (out, r);
//! its update is `B·(A∘E)·scaling/(ranknum + 1e-5)`. Everything is recorded
//! into the caller's [`Recorder`]: nothing is submitted or read back here.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, dims, same_shape, u32_count};
use super::grid_1d;
use super::matmul::{gemm, Gemm};
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

/// Invocations per workgroup.
const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable, Default)]
struct Params {
    rows: u32,
    cols: u32,
    out: u32,
    offset: u32,
    k: u32,
    factors: u32,
    weight: f32,
    count: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Adalora, entry).with("WG", Const::U32(WG))
}

/// Every pipeline this file's launchers request (`kernels::variants`); the
/// regulariser's products are `matmul`'s.
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    [
        "scale_rows_forward",
        "scale_rows_backward",
        "orth_norm",
        "orth_loss",
        "update_importance",
        "update_importance_clipped",
        "triplet_scores",
        "mask_to_budget",
        "apply_rank_mask",
    ]
    .map(key)
    .to_vec()
}

/// A typed error unless every written tensor has a buffer of its own: wgpu
/// rejects a buffer bound both for writing and for anything else in one dispatch.
fn distinct(op: &'static str, written: &[(&str, &Tensor)], all: &[(&str, &Tensor)]) -> Result<()> {
    for (wname, w) in written {
        for (name, t) in all {
            if wname != name && w.same_buffer(t) {
                return Err(Error::invalid(op, format!("`{wname}` and `{name}` share a buffer")));
            }
        }
    }
    Ok(())
}

/// (r, in) of a lora_A-shaped tensor and the check that `e` is (r, 1) or (r).
fn rows_and_e(op: &'static str, a: (&str, &Tensor), e: (&str, &Tensor)) -> Result<(usize, usize)> {
    let [r, cols] = dims::<2>(op, a.0, "(r, in)", a.1)?;
    if !(e.1.shape() == [r, 1] || e.1.shape() == [r]) {
        return Err(Error::shape(
            op,
            format!("`{}` {:?} must be ({r}, 1) for `{}` {:?}", e.0, e.1.shape(), a.0, a.1.shape()),
        ));
    }
    Ok((r, cols))
}

/// A' = A ∘ E (r, in): row i of A times E[i]; a (r, in), e (r, 1). Returns a new tensor (rec.alloc).
pub fn scale_rows(rec: &mut Recorder, a: &Tensor, e: &Tensor) -> Result<Tensor> {
    const OP: &str = "adalora scale_rows";
    all_f32(OP, &[("a", a), ("e", e)])?;
    let (r, cols) = rows_and_e(OP, ("a", a), ("e", e))?;
    u32_count(OP, "element count", r * cols)?;
    let scaled = rec.alloc(&[r, cols], DType::F32)?;
    let p = Params { rows: r as u32, cols: cols as u32, ..Params::default() };
    let groups = grid_1d((r * cols).div_ceil(WG as usize));
    rec.dispatch_bound(&key("scale_rows_forward"), &p, &[(1, a), (2, e), (3, &scaled)], groups)?;
    Ok(scaled)
}

/// The backward of scale_rows for d_scaled = dA' (r, in): da (r, in) += dA'∘E; de (r, 1) += Σ_j dA'[i,j]·A[i,j].
pub fn scale_rows_backward(
    rec: &mut Recorder,
    d_scaled: &Tensor,
    a: &Tensor,
    e: &Tensor,
    da: &Tensor,
    de: &Tensor,
) -> Result<()> {
    const OP: &str = "adalora scale_rows_backward";
    let all = [("d_scaled", d_scaled), ("a", a), ("e", e), ("da", da), ("de", de)];
    all_f32(OP, &all)?;
    let (r, cols) = rows_and_e(OP, ("a", a), ("e", e))?;
    same_shape(OP, ("a", a), ("d_scaled", d_scaled))?;
    same_shape(OP, ("a", a), ("da", da))?;
    same_shape(OP, ("e", e), ("de", de))?;
    distinct(OP, &[("da", da), ("de", de)], &all)?;
    u32_count(OP, "element count", r * cols)?;
    let p = Params { rows: r as u32, cols: cols as u32, ..Params::default() };
    rec.dispatch_bound(&key("scale_rows_backward"), &p, &[(1, a), (2, e), (4, d_scaled), (5, da), (6, de)], grid_1d(r))
}

/// Which product PEFT's orthogonality regulariser takes of a factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrthSide {
    /// lora_A (r, in): P·Pᵀ (r, r)
    Rows,
    /// lora_B (out, r): Pᵀ·P (r, r)
    Cols,
}

/// PEFT's AdaLoraModel.forward regulariser over `factors` (each: side, parameter P, its gradient dP):
/// for each, C = cov(P) − I (r×r), f = ‖C‖_F; loss[0] += weight/n · Σ f (n = factors.len());
/// dP += weight/n · 2·C·P / f (Rows) or weight/n · 2·P·C / f (Cols) — the gradient of the Frobenius norm —
/// and nothing where f = 0 (torch's norm backward gives 0 there). `loss` is a (1) tensor. n = 0 adds nothing.
///
/// In torch's order: the loss is `loss + weight · ((f_1 + … + f_n) / n)`, and
/// each factor's `C` is scaled by `2 · ((weight / n) / f)` before the product
/// with P. Per factor: a `gemm` for the covariance (an (r, r) scratch), one
/// workgroup for the norm and the scaled C, a `gemm` accumulating into dP; then
/// one invocation adds the loss.
pub fn orth_regularizer(
    rec: &mut Recorder,
    factors: &[(OrthSide, &Tensor, &Tensor)],
    weight: f32,
    loss: &Tensor,
) -> Result<()> {
    const OP: &str = "adalora orth_regularizer";
    loss.expect_dtype(OP, "loss", DType::F32)?;
    if loss.numel() != 1 {
        return Err(Error::shape(OP, format!("loss {:?} must hold one value", loss.shape())));
    }
    if !weight.is_finite() || weight < 0.0 {
        return Err(Error::invalid(
            OP,
            format!("weight must be finite and ≥ 0 (PEFT's orth_reg_weight), got {weight}"),
        ));
    }
    // Check everything before recording anything.
    let mut shapes = Vec::with_capacity(factors.len());
    for (i, &(side, param, dparam)) in factors.iter().enumerate() {
        all_f32(OP, &[("factor", param), ("factor gradient", dparam)])?;
        let [rows, cols] = dims::<2>(OP, "factor", "a matrix", param)?;
        same_shape(OP, ("factor", param), ("factor gradient", dparam))?;
        let named = [("factor gradient", dparam), ("factor", param), ("loss", loss)];
        distinct(OP, &[("factor gradient", dparam)], &named)?;
        distinct(OP, &[("loss", loss)], &named)?;
        let (r, inner) = match side {
            OrthSide::Rows => (rows, cols),
            OrthSide::Cols => (cols, rows),
        };
        u32_count(OP, "covariance size", r * r)?;
        u32_count(OP, "factor size", r * inner)?;
        if r == 0 || inner == 0 {
            return Err(Error::shape(OP, format!("factor {i} {:?} is empty", param.shape())));
        }
        shapes.push((r, inner));
    }
    let n = factors.len();
    if n == 0 {
        return Ok(());
    }
    let norms = rec.alloc(&[n], DType::F32)?;
    let base = Params { weight, count: n as f32, factors: u32_count(OP, "factor count", n)?, ..Params::default() };
    for (slot, (&(side, param, dparam), &(r, inner))) in factors.iter().zip(&shapes).enumerate() {
        let cov = rec.alloc(&[r, r], DType::F32)?;
        match side {
            OrthSide::Rows => gemm(rec, &Gemm::new(r, r, inner, false, true), param, param, &cov)?,
            OrthSide::Cols => gemm(rec, &Gemm::new(r, r, inner, true, false), param, param, &cov)?,
        }
        let p = Params { rows: r as u32, offset: slot as u32, ..base };
        rec.dispatch_bound(&key("orth_norm"), &p, &[(7, &cov), (8, &norms)], [1, 1, 1])?;
        // `cov` now holds 2·((w/n)/f)·C.
        match side {
            OrthSide::Rows => gemm(rec, &Gemm::new(r, inner, r, false, false).accumulate(true), &cov, param, dparam)?,
            OrthSide::Cols => gemm(rec, &Gemm::new(inner, r, r, false, false).accumulate(true), param, &cov, dparam)?,
        }
    }
    rec.dispatch_bound(&key("orth_loss"), &base, &[(9, &norms), (10, loss)], [1, 1, 1])
}

/// RankAllocator.update_ipt for one tensor p (any shape) with its gradient g: g is multiplied by clip[1]
/// first when `clip` is Some (a (2) tensor [norm, coefficient] from kernels::reduce::clip_coefficient,
/// i.e. the gradient as torch's clip_grad_norm_ left it), then
///   ipt = |p·g|;  ipt_avg = β1·ipt_avg + (1−β1)·ipt;  unc_avg = β2·unc_avg + (1−β2)·|ipt − ipt_avg (the new one)|
/// with β and 1−β each rounded to f32 as torch does with Python scalars (pass (1−β) computed in f64 then cast).
///
/// PEFT asserts 0 < β < 1; outside that is a typed error here.
#[allow(clippy::too_many_arguments)] // PEFT's state is two tensors beside the parameter and its gradient
pub fn update_importance(
    rec: &mut Recorder,
    p: &Tensor,
    g: &Tensor,
    clip: Option<&Tensor>,
    ipt_avg: &Tensor,
    unc_avg: &Tensor,
    beta1: f64,
    beta2: f64,
) -> Result<()> {
    const OP: &str = "adalora update_importance";
    let mut all = vec![("p", p), ("g", g), ("ipt_avg", ipt_avg), ("unc_avg", unc_avg)];
    all_f32(OP, &all)?;
    for (name, t) in [("g", g), ("ipt_avg", ipt_avg), ("unc_avg", unc_avg)] {
        same_shape(OP, ("p", p), (name, t))?;
    }
    if let Some(clip) = clip {
        clip.expect_dtype(OP, "clip", DType::F32)?;
        if clip.numel() != 2 {
            return Err(Error::shape(OP, format!("clip {:?} must be the (2) tensor [norm, factor]", clip.shape())));
        }
        all.push(("clip", clip));
    }
    distinct(OP, &[("ipt_avg", ipt_avg), ("unc_avg", unc_avg)], &all)?;
    for (name, beta) in [("beta1", beta1), ("beta2", beta2)] {
        if !(beta > 0.0 && beta < 1.0) {
            return Err(Error::invalid(OP, format!("{name} must lie in (0, 1), got {beta}")));
        }
    }
    let n = u32_count(OP, "element count", p.numel())?;
    let params = Params {
        cols: n,
        beta1: beta1 as f32,
        one_minus_beta1: (1.0 - beta1) as f32,
        beta2: beta2 as f32,
        one_minus_beta2: (1.0 - beta2) as f32,
        ..Params::default()
    };
    let groups = grid_1d(p.numel().div_ceil(WG as usize));
    let state = [(11, p), (12, g), (14, ipt_avg), (15, unc_avg)];
    match clip {
        None => rec.dispatch_bound(&key("update_importance"), &params, &state, groups),
        Some(clip) => {
            let bound = [state[0], state[1], (13, clip), state[2], state[3]];
            rec.dispatch_bound(&key("update_importance_clipped"), &params, &bound, groups)
        }
    }
}

/// RankAllocator.mask_to_budget's per-triplet score of one module, written to scores[offset .. offset + r]:
///   s(X) = ipt_avg(X)·unc_avg(X) elementwise;  score[i] = s(E)[i] + ( mean_j s(A)[i, j] + mean_k s(B)[k, i] )
/// (torch: ipt_E + (mean over A's row + mean over B's column); means as sum / count).
///
/// Each pair is (ipt_avg, unc_avg): a (r, in) each, e (r, 1), b (out, r).
pub fn triplet_scores(
    rec: &mut Recorder,
    a: (&Tensor, &Tensor),
    e: (&Tensor, &Tensor),
    b: (&Tensor, &Tensor),
    scores: &Tensor,
    offset: usize,
) -> Result<()> {
    const OP: &str = "adalora triplet_scores";
    let all = [
        ("ipt_a", a.0),
        ("unc_a", a.1),
        ("ipt_e", e.0),
        ("unc_e", e.1),
        ("ipt_b", b.0),
        ("unc_b", b.1),
        ("scores", scores),
    ];
    all_f32(OP, &all)?;
    let (r, cols) = rows_and_e(OP, ("ipt_a", a.0), ("ipt_e", e.0))?;
    same_shape(OP, ("ipt_a", a.0), ("unc_a", a.1))?;
    same_shape(OP, ("ipt_e", e.0), ("unc_e", e.1))?;
    same_shape(OP, ("ipt_b", b.0), ("unc_b", b.1))?;
    let [out, rb] = dims::<2>(OP, "ipt_b", "(out, r)", b.0)?;
    if rb != r {
        return Err(Error::shape(
            OP,
            format!("ipt_b {:?} must have r = {r} columns, as ipt_a {:?}", b.0.shape(), a.0.shape()),
        ));
    }
    if offset + r > scores.numel() {
        return Err(Error::shape(
            OP,
            format!("scores [{offset}, {}) of this module lie outside scores {:?}", offset + r, scores.shape()),
        ));
    }
    distinct(OP, &[("scores", scores)], &all)?;
    u32_count(OP, "ipt_a size", r * cols)?;
    u32_count(OP, "ipt_b size", out * r)?;
    u32_count(OP, "score count", scores.numel())?;
    if r == 0 {
        return Ok(());
    }
    if cols == 0 || out == 0 {
        return Err(Error::shape(OP, format!("ipt_a {:?} and ipt_b {:?} must not be empty", a.0.shape(), b.0.shape())));
    }
    let p = Params { rows: r as u32, cols: cols as u32, out: out as u32, offset: offset as u32, ..Params::default() };
    let bound = [(16, a.0), (17, a.1), (18, e.0), (19, e.1), (20, b.0), (21, b.1), (22, scores)];
    rec.dispatch_bound(&key("triplet_scores"), &p, &bound, grid_1d(r))
}

/// The k-th smallest of scores (n) (1-based k, as torch.kthvalue; 1 ≤ k ≤ n, else a typed error), and
/// keep[i] = 1.0 where scores[i] > threshold, else 0.0 (PEFT masks `score <= threshold`). keep (n) f32.
///
/// One invocation per score counts the scores below it (O(n²); n is a few
/// thousand at most): a score is above the k-th smallest exactly when at
/// least k scores are below it, so ties at the threshold are all pruned, as
/// in PEFT. Scores must be finite (torch ranks NaN last; this does not).
pub fn mask_to_budget(rec: &mut Recorder, scores: &Tensor, k: usize, keep: &Tensor) -> Result<()> {
    const OP: &str = "adalora mask_to_budget";
    all_f32(OP, &[("scores", scores), ("keep", keep)])?;
    same_shape(OP, ("scores", scores), ("keep", keep))?;
    distinct(OP, &[("keep", keep)], &[("scores", scores), ("keep", keep)])?;
    let n = scores.numel();
    if k == 0 || k > n {
        return Err(Error::invalid(OP, format!("k = {k} must lie in 1..={n} (torch.kthvalue over {n} scores)")));
    }
    let p = Params { cols: u32_count(OP, "score count", n)?, k: k as u32, ..Params::default() };
    rec.dispatch_bound(&key("mask_to_budget"), &p, &[(23, scores), (24, keep)], grid_1d(n.div_ceil(WG as usize)))
}

/// E (r, 1) *= keep[offset .. offset + r] (PEFT's masked_fill_ of the pruned singular values).
///
/// As `masked_fill_`: E[i] becomes +0 where keep is 0, whatever it held, and
/// is left as it is where keep is 1.
pub fn apply_rank_mask(rec: &mut Recorder, e: &Tensor, keep: &Tensor, offset: usize) -> Result<()> {
    const OP: &str = "adalora apply_rank_mask";
    all_f32(OP, &[("e", e), ("keep", keep)])?;
    let r = match e.shape() {
        [r, 1] | [r] => *r,
        s => return Err(Error::shape(OP, format!("`e` must be (r, 1), got {s:?}"))),
    };
    if offset + r > keep.numel() {
        return Err(Error::shape(
            OP,
            format!("keep [{offset}, {}) of this module lie outside keep {:?}", offset + r, keep.shape()),
        ));
    }
    distinct(OP, &[("e", e)], &[("e", e), ("keep", keep)])?;
    u32_count(OP, "keep size", keep.numel())?;
    let p = Params { rows: r as u32, offset: offset as u32, ..Params::default() };
    rec.dispatch_bound(&key("apply_rank_mask"), &p, &[(25, e), (26, keep)], grid_1d(r.div_ceil(WG as usize)))
}
