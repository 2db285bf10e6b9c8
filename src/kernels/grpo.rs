//! GRPO's per-token loss (`shaders/grpo.wgsl`), with token- or sequence-level
//! (GSPO) importance ratios: from one
//! micro-batch's per-row cross-entropies (−log π at the sampling
//! temperature), the reference's (β > 0), the sampling policy's (old), each row's normaliser and its
//! sequence's advantage, the loss, KL and entropy sums (added into `stats`) and each
//! row's factor of (softmax − onehot) in the logits' gradient, for
//! [`cross_entropy_backward_rows_inplace`](super::cross_entropy::cross_entropy_backward_rows_inplace).

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, u32_count};
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    rows: u32,
    beta: f32,
    inv_temperature: f32,
    epsilon_low: f32,
    epsilon_high: f32,
    delta: f32,
    seq_len: u32,
    masks_entropy: u32,
    quantile: f32,
    share: f32,
    sequence_weight: f32,
    _pad: u32,
}

/// The importance ratio's clipping (TRL's `epsilon`, `epsilon_high`, `delta`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clip {
    pub epsilon_low: f32,
    pub epsilon_high: f32,
    /// The two-sided upper bound of c1 (`None`: TRL's default, no bound).
    pub delta: Option<f32>,
}

/// TRL's `importance_sampling_level`: what one ratio to the sampling policy covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportanceSampling {
    /// Each token its own ratio (GRPO; TRL's default).
    Token,
    /// One ratio a completion, e^(mean of its tokens' log-ratios) (GSPO).
    Sequence,
}

impl ImportanceSampling {
    pub fn name(self) -> &'static str {
        match self {
            ImportanceSampling::Token => "token",
            ImportanceSampling::Sequence => "sequence",
        }
    }

    pub fn from_name(name: &str) -> Result<ImportanceSampling> {
        match name {
            "token" => Ok(ImportanceSampling::Token),
            "sequence" => Ok(ImportanceSampling::Sequence),
            other => Err(Error::TrainOption {
                option: "importance_sampling_level",
                detail: format!("expected token or sequence, got {other:?}"),
            }),
        }
    }

    fn entry(self) -> &'static str {
        match self {
            ImportanceSampling::Token => "grpo_row_scale",
            ImportanceSampling::Sequence => "grpo_sequence_scale",
        }
    }
}

/// The entropy quantile a policy term needs to count, 1 − ρ for TRL's
/// `top_entropy_quantile` ρ, as Python computes it: ρ a double (as the user
/// wrote it, which is why every front end keeps it in f64), 1 − ρ in f64, then
/// f32 as `torch.quantile` takes it. Through an f32 ρ, 414 of the 999 ρ of
/// three decimals would land an f32 off (0.09: 0.90999997, not 0.91). `None`
/// at ρ = 1, where every token counts.
pub fn entropy_quantile(top_entropy_quantile: f64) -> Option<f32> {
    (top_entropy_quantile < 1.0).then_some((1.0 - top_entropy_quantile) as f32)
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Grpo, entry).with("WG", Const::U32(WG))
}

/// The rows' factors, (M), and the step's statistics, added into `stats`:
/// `Σ weight·ℓ`, then `share` × the micro-batch's means `[kl, entropy,
/// low-clipped, high-clipped, either]`, kl and entropy over the rows with
/// weight > 0, the clip indicators over those tokens (`Token`) or over the B
/// completions of T = M / B rows each (`Sequence`; `shaders/grpo.wgsl`). With
/// `share` = 1 / micro-batches, a step's stats hold TRL's logged metrics: the
/// mean over its micro-batches of each one's mean.
/// At `top_entropy_quantile` ρ < 1 the policy term counts only on the weighted
/// rows whose entropy reaches the (1 − ρ) quantile of theirs (TRL's
/// `get_high_entropy_mask`), found on the GPU first (`grpo_entropy_order`).
///
/// - token_loss, entropy, weight: (M) f32
/// - adv: (M) f32, one value over each completion's T rows
/// - ref_loss: (M), `None` when β = 0; old_loss: (M), `None` at one iteration (ratio 1)
/// - stats: (6) f32, added to
#[allow(clippy::too_many_arguments)] // the rows' inputs, the settings, and the sums
pub fn grpo_row_scale(
    rec: &mut Recorder,
    [token_loss, entropy]: [&Tensor; 2],
    (ref_loss, old_loss): (Option<&Tensor>, Option<&Tensor>),
    (weight, adv): (&Tensor, &Tensor),
    (beta, temperature): (f32, f32),
    (clip, level, completions, top_entropy_quantile): (Clip, ImportanceSampling, usize, f64),
    (stats, share): (&Tensor, f32),
) -> Result<Tensor> {
    const OP: &str = "grpo_row_scale";
    let reference = ref_loss.unwrap_or(token_loss);
    let old = old_loss.unwrap_or(token_loss);
    let named = [("token_loss", token_loss), ("ref_loss", reference), ("old_loss", old), ("entropy", entropy)];
    grpo_checks(OP, &named, (weight, adv), (beta, temperature, clip))?;
    check_stats(OP, stats, share)?;
    if beta != 0.0 && ref_loss.is_none() {
        return Err(Error::invalid(OP, format!("β = {beta} needs the reference's per-row losses")));
    }
    let rows = token_loss.numel();
    let delta = clip.delta.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&top_entropy_quantile) {
        return Err(Error::invalid(OP, format!("top_entropy_quantile {top_entropy_quantile} must be in [0, 1]")));
    }
    if completions == 0 || rows == 0 || rows % completions != 0 {
        return Err(Error::shape(OP, format!("{rows} rows do not make {completions} completions of equal length")));
    }
    let row_scale = rec.alloc(&[rows], DType::F32)?;
    let quantile = entropy_quantile(top_entropy_quantile);
    let p = Params {
        rows: rows as u32,
        beta,
        inv_temperature: 1.0 / temperature,
        epsilon_low: clip.epsilon_low,
        epsilon_high: clip.epsilon_high,
        delta,
        seq_len: (rows / completions) as u32,
        masks_entropy: quantile.is_some() as u32,
        quantile: quantile.unwrap_or(0.0),
        share,
        sequence_weight: 0.0,
        _pad: 0,
    };
    // (3): the order statistics and their weight; left unread without the mask.
    let order = rec.alloc(&[3], DType::F32)?;
    if quantile.is_some() {
        let groups = (rows as u32).div_ceil(WG);
        if groups > 65535 {
            return Err(Error::shape(OP, format!("{rows} rows are more than the entropy mask's one-row grid takes")));
        }
        rec.dispatch_bound(&key(ENTROPY_ORDER), &p, &[(3, weight), (7, entropy), (9, &order)], [groups, 1, 1])?;
    }
    let bound = [
        (1, token_loss),
        (2, reference),
        (3, weight),
        (4, adv),
        (5, &row_scale),
        (6, stats),
        (7, entropy),
        (8, old),
        (9, &order),
    ];
    rec.dispatch_bound(&key(level.entry()), &p, &bound, [1, 1, 1])?;
    Ok(row_scale)
}

/// RLOO's per-sequence loss (TRL's `RLOOTrainer._compute_loss`): one ratio a
/// completion, `e^(Σ_mask (lp − old))`, each completion's `−min(c1·A, c2·A)`
/// weighed by `sequence_weight` (1 / (B·K)) into `stats[0]`, whether or not a
/// token of it counts; `share` × the micro-batch's mean entropy (over the rows
/// with weight ≠ 0, the mask) and clip ratios (over the completions) into
/// `stats[2..6]` (`stats[1]`, GRPO's KL, gets 0: RLOO's β acts on the rewards).
/// Returns the rows' factors, `sequence_weight·∂min/∂s / T` on the mask.
///
/// - token_loss, entropy, weight: (M) f32, weight ≠ 0 marking the completion tokens
/// - adv: (M) f32, one value over each completion's T = M / completions rows
/// - old_loss: (M), `None` when the policy sampled them (ratio 1)
/// - stats: (6) f32, added to
pub fn rloo_row_scale(
    rec: &mut Recorder,
    [token_loss, entropy]: [&Tensor; 2],
    old_loss: Option<&Tensor>,
    (weight, adv): (&Tensor, &Tensor),
    (temperature, clip): (f32, Clip),
    (completions, sequence_weight): (usize, f32),
    (stats, share): (&Tensor, f32),
) -> Result<Tensor> {
    const OP: &str = "rloo_row_scale";
    if clip.delta.is_some() {
        return Err(Error::invalid(OP, "RLOO's ratios have no δ bound"));
    }
    if !(sequence_weight.is_finite() && sequence_weight > 0.0) {
        return Err(Error::invalid(OP, format!("a completion's weight {sequence_weight} must be > 0")));
    }
    // GRPO's checks (shapes, settings), its parameters with β 0, and RLOO's entry.
    let rows = token_loss.numel();
    let old = old_loss.unwrap_or(token_loss);
    let named = [("token_loss", token_loss), ("old_loss", old), ("entropy", entropy)];
    grpo_checks(OP, &named, (weight, adv), (0.0, temperature, clip))?;
    check_stats(OP, stats, share)?;
    if completions == 0 || rows == 0 || rows % completions != 0 {
        return Err(Error::shape(OP, format!("{rows} rows do not make {completions} completions of equal length")));
    }
    let p = Params {
        rows: rows as u32,
        beta: 0.0,
        inv_temperature: 1.0 / temperature,
        epsilon_low: clip.epsilon_low,
        epsilon_high: clip.epsilon_high,
        delta: 0.0,
        seq_len: (rows / completions) as u32,
        masks_entropy: 0,
        quantile: 0.0,
        share,
        sequence_weight,
        _pad: 0,
    };
    let row_scale = rec.alloc(&[rows], DType::F32)?;
    // (The entry reads neither a reference's losses (2) nor the entropy order (9).)
    let bound = [(1, token_loss), (3, weight), (4, adv), (5, &row_scale), (6, stats), (7, entropy), (8, old)];
    rec.dispatch_bound(&key(RLOO), &p, &bound, [1, 1, 1])?;
    Ok(row_scale)
}

/// The rows' tensors (`named`, token_loss first, then weight and adv) f32
/// and of one length, a finite β, a temperature > 0, finite clipping, and a
/// row count the kernel can index.
fn grpo_checks(
    op: &'static str,
    named: &[(&'static str, &Tensor)],
    (weight, adv): (&Tensor, &Tensor),
    (beta, temperature, clip): (f32, f32, Clip),
) -> Result<()> {
    let named: Vec<(&str, &Tensor)> = named.iter().copied().chain([("weight", weight), ("adv", adv)]).collect();
    all_f32(op, &named)?;
    let m = named[0].1.numel();
    for (name, t) in &named {
        if t.numel() != m {
            return Err(Error::shape(op, format!("{name} has {} rows, token_loss {m}", t.numel())));
        }
    }
    if !(temperature.is_finite() && temperature > 0.0 && beta.is_finite()) {
        return Err(Error::invalid(op, format!("temperature {temperature} must be > 0 and β {beta} finite")));
    }
    let delta = clip.delta.unwrap_or(0.0);
    if !(clip.epsilon_low.is_finite() && clip.epsilon_high.is_finite() && delta.is_finite() && delta >= 0.0) {
        return Err(Error::invalid(op, format!("clipping {clip:?} must be finite")));
    }
    u32_count(op, "rows", m).map(|_| ())
}

/// `stats` f32 with room for 6 values, and the micro-batch's share of the metrics > 0.
fn check_stats(op: &'static str, stats: &Tensor, share: f32) -> Result<()> {
    all_f32(op, &[("stats", stats)])?;
    if stats.numel() < 6 {
        return Err(Error::shape(op, format!("stats {:?} must hold 6 values", stats.shape())));
    }
    if !(share.is_finite() && share > 0.0) {
        return Err(Error::invalid(op, format!("the micro-batch's share {share} of the metrics must be > 0")));
    }
    Ok(())
}

/// The entry that finds the entropy quantile's order statistics.
const ENTROPY_ORDER: &str = "grpo_entropy_order";
/// RLOO's entry.
const RLOO: &str = "rloo_sequence_scale";

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    [ImportanceSampling::Token.entry(), ImportanceSampling::Sequence.entry(), ENTROPY_ORDER, RLOO].map(key).to_vec()
}
