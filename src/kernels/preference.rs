//! The DPO and ORPO losses on per-sequence log-probabilities
//! (`shaders/preference.wgsl`), for a micro-batch of P pairs laid out as TRL
//! concatenates them: S = 2P sequences (the chosen ones, then the rejected
//! ones), each T' rows long.
//!
//! ```text
//! sequence_logps:       logps[s] = −Σ_r lp_weight[r]·CE[r]     nll[s] = Σ_r nll_weight[r]·CE[r]
//! preference_loss:      stats += scale·[loss, rewards/chosen, rewards/rejected, rewards/accuracies,
//!                                       rewards/margins, nll_loss, log_odds_ratio, log_odds_chosen]
//!                       dlogp[s] = ∂(scale·loss)/∂logps[s]
//! preference_row_scale: row_scale[r] = scale·nll_weight[r] − dlogp[s(r)]·lp_weight[r]
//! ```
//!
//! DPO (TRL's `dpo_loss`, sigmoid): h = (π_c − π_r) − (ref_c − ref_r),
//! loss = mean −(1−ε)·logσ(β·h) − ε·logσ(−β·h), rewards β·(π − ref).
//! ORPO (TRL's `odds_ratio_loss`): π are mean completion log-probs,
//! lo = (π_c − π_r) − (log(1 − e^π_c) − log(1 − e^π_r)), loss = NLL − β·mean logσ(lo),
//! rewards β·π. The row factor is what multiplies (softmax − onehot) in the
//! logits' gradient: CE's own backward with a per-row scale
//! ([`cross_entropy_backward_rows_inplace`](super::cross_entropy::cross_entropy_backward_rows_inplace)).

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, u32_count};
use super::grid_1d;
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 64;

/// Values in a preference step's statistics (see the module docs for their order).
pub const STATS: usize = 8;

/// A preference loss and its settings, as TRL names them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PreferenceLoss {
    /// DPO's sigmoid loss against the reference model (the base with the adapter off).
    Dpo { beta: f32, label_smoothing: f32 },
    /// ORPO: NLL on the chosen rows plus β times the odds-ratio term; no reference.
    Orpo { beta: f32 },
}

impl PreferenceLoss {
    /// TRL's defaults: `DPOConfig.beta` 0.1, no label smoothing.
    pub const DPO: PreferenceLoss = PreferenceLoss::Dpo { beta: 0.1, label_smoothing: 0.0 };
    /// TRL's default `ORPOConfig.beta` (λ in the paper) 0.1.
    pub const ORPO: PreferenceLoss = PreferenceLoss::Orpo { beta: 0.1 };

    pub fn beta(self) -> f32 {
        match self {
            PreferenceLoss::Dpo { beta, .. } | PreferenceLoss::Orpo { beta } => beta,
        }
    }

    /// Whether the loss needs the reference log-probabilities.
    pub fn needs_reference(self) -> bool {
        matches!(self, PreferenceLoss::Dpo { .. })
    }

    /// Whether the sequence log-probabilities are means over the completion (ORPO) rather than sums.
    pub fn averages(self) -> bool {
        matches!(self, PreferenceLoss::Orpo { .. })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    seqs: u32,
    rows_per_seq: u32,
    objective: u32,
    pairs: u32,
    beta: f32,
    label_smoothing: f32,
    scale: f32,
    _pad: u32,
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Preference, entry).with("WG", Const::U32(WG))
}

fn params(seqs: usize, rows_per_seq: usize, loss: Option<PreferenceLoss>, scale: f32) -> Params {
    let (objective, beta, label_smoothing) = match loss {
        Some(PreferenceLoss::Dpo { beta, label_smoothing }) => (0, beta, label_smoothing),
        Some(PreferenceLoss::Orpo { beta }) => (1, beta, 0.0),
        None => (0, 0.0, 0.0),
    };
    Params {
        seqs: seqs as u32,
        rows_per_seq: rows_per_seq as u32,
        objective,
        pairs: (seqs / 2) as u32,
        beta,
        label_smoothing,
        scale,
        _pad: 0,
    }
}

/// The rows per sequence of `seqs` sequences over weights of `rows` rows, checked.
fn rows_per_seq(op: &'static str, rows: usize, seqs: usize) -> Result<usize> {
    if seqs == 0 || seqs % 2 != 0 || rows % seqs != 0 {
        return Err(Error::shape(
            op,
            format!("{rows} rows do not split into an even number {seqs} (> 0) of sequences"),
        ));
    }
    u32_count(op, "row count", rows)?;
    Ok(rows / seqs)
}

fn same_rows(op: &'static str, tensors: &[(&'static str, &Tensor)]) -> Result<usize> {
    all_f32(op, tensors)?;
    let rows = tensors[0].1.numel();
    for (name, t) in tensors {
        if t.shape() != [rows] {
            return Err(Error::shape(op, format!("{name} {:?} must be ({rows})", t.shape())));
        }
    }
    Ok(rows)
}

/// `(logps, nll)`, both (S): each sequence's weighted sums of its rows' cross-entropies.
///
/// - token_loss, lp_weight, nll_weight: (S·T')
pub fn sequence_logps(
    rec: &mut Recorder,
    token_loss: &Tensor,
    lp_weight: &Tensor,
    nll_weight: &Tensor,
    seqs: usize,
) -> Result<(Tensor, Tensor)> {
    const OP: &str = "sequence_logps";
    let rows = same_rows(OP, &[("token_loss", token_loss), ("lp_weight", lp_weight), ("nll_weight", nll_weight)])?;
    let per = rows_per_seq(OP, rows, seqs)?;
    let logps = rec.alloc(&[seqs], DType::F32)?;
    let nll = rec.alloc(&[seqs], DType::F32)?;
    let p = params(seqs, per, None, 0.0);
    let bound = [(1, token_loss), (2, lp_weight), (3, nll_weight), (4, &logps), (5, &nll)];
    rec.dispatch_bound(&key(OP), &p, &bound, grid_1d(seqs))?;
    Ok((logps, nll))
}

/// Records `loss` on a micro-batch's sequence log-probabilities: adds
/// `scale` times the loss and TRL's metrics into `stats` ([`STATS`]) and
/// returns dlogp (S) = ∂(scale·loss)/∂logps.
///
/// - policy, nll: (S), from [`sequence_logps`]
/// - reference: (S), the adapter-off log-probabilities (DPO; ORPO reads none)
pub fn preference_loss(
    rec: &mut Recorder,
    loss: PreferenceLoss,
    policy: &Tensor,
    reference: Option<&Tensor>,
    nll: &Tensor,
    scale: f32,
    stats: &Tensor,
) -> Result<Tensor> {
    const OP: &str = "preference_loss";
    let reference = match (loss.needs_reference(), reference) {
        (true, Some(r)) => r,
        (true, None) => return Err(Error::invalid(OP, "DPO needs the reference log-probabilities")),
        (false, _) => policy,
    };
    let seqs = same_rows(OP, &[("policy", policy), ("reference", reference), ("nll", nll)])?;
    rows_per_seq(OP, seqs, seqs)?;
    all_f32(OP, &[("stats", stats)])?;
    if stats.shape() != [STATS] {
        return Err(Error::shape(OP, format!("stats {:?} must be ({STATS})", stats.shape())));
    }
    let dlogp = rec.alloc(&[seqs], DType::F32)?;
    let p = params(seqs, 1, Some(loss), scale);
    let bound = [(6, policy), (7, reference), (8, nll), (9, stats), (10, &dlogp)];
    rec.dispatch_bound(&key(OP), &p, &bound, [1, 1, 1])?;
    Ok(dlogp)
}

/// row_scale (S·T') = scale·nll_weight − dlogp[s(r)]·lp_weight: each row's
/// factor of (softmax − onehot) in ∂(scale·loss)/∂logits.
pub fn preference_row_scale(
    rec: &mut Recorder,
    dlogp: &Tensor,
    lp_weight: &Tensor,
    nll_weight: &Tensor,
    scale: f32,
) -> Result<Tensor> {
    const OP: &str = "preference_row_scale";
    let rows = same_rows(OP, &[("lp_weight", lp_weight), ("nll_weight", nll_weight)])?;
    all_f32(OP, &[("dlogp", dlogp)])?;
    let seqs = dlogp.numel();
    let per = rows_per_seq(OP, rows, seqs)?;
    let row_scale = rec.alloc(&[rows], DType::F32)?;
    let p = params(seqs, per, None, scale);
    let bound = [(2, lp_weight), (3, nll_weight), (11, dlogp), (12, &row_scale)];
    rec.dispatch_bound(&key(OP), &p, &bound, grid_1d(rows.div_ceil(WG as usize)))?;
    Ok(row_scale)
}

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["sequence_logps", "preference_loss", "preference_row_scale"].map(key).to_vec()
}
