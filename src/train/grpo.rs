//! GRPO as TRL 0.24's `GRPOTrainer` computes it, with `num_iterations` 1
//! (TRL's default): a group of G completions sampled for each prompt, each
//! scored by reward functions, and the policy-gradient step on them.
//!
//! ```text
//! r_i   = Σ_f w_f·reward_f(i)                         (nansum: a missing reward adds nothing)
//! A_i   = (r_i − mean_group(r)) / (std(r) + 1e-4)     std of the group ("group"), of the batch ("batch"),
//!                                                     or no division ("none"); std unbiased, as torch's
//! per token t of completion i (its mask: the tokens up to and including the first eos):
//!   lp_t  = log softmax(z_t / T)[token]               (T: the sampling temperature)
//!   kl_t  = e^(ref_t − lp_t) − (ref_t − lp_t) − 1     (β > 0: ref with the adapter off)
//!   ℓ_t   = −A_i·ρ_t + β·kl_t,  ρ_t = e^(lp_t − sg(lp_t)) = 1   (sg: no gradient; ρ's clip never binds)
//! loss  = Σ_t c_t·ℓ_t, c_t by the loss type:
//!   grpo    1 / (|i|·B·K)          |i| the completion's tokens, B rows a micro-batch, K micro-batches
//!   bnpo    1 / (N_m·K)            N_m the micro-batch's completion tokens
//!   dr_grpo 1 / (B·L·K)            L = max_completion_length
//!   dapo    1 / N                  N the step's generated tokens (TRL's num_items_in_batch)
//! ```
//!
//! With one iteration the importance ratio is exactly 1 in value, so `epsilon`,
//! `delta` and the sequence-level ratio (GSPO) change nothing: the gradient is
//! `c_t·(−A_i + β·(1 − e^(ref_t − lp_t)))·∇lp_t`. In the step's one submission:
//! the reference forward (β > 0), the adapter's forward, each row's
//! cross-entropy at temperature T, `grpo_row_scale` (the loss, the KL sum and
//! each row's factor), and the backward through cross-entropy's per-row scale.

use crate::error::{Error, Result};
use crate::gpu::{Recorder, Tensor};
use crate::kernels::grpo::grpo_row_scale;
use crate::model::llama::{shift_labels_after, Hooks, NoHooks, IGNORE_INDEX};
use crate::model::Model;
use crate::train::data::Batch;
use crate::train::preference_loss::{rows_backward, token_losses};

/// TRL's `loss_type`: how the per-token losses are normalised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpoLossType {
    /// Each completion's mean, then the mean over the completions.
    Grpo,
    /// Over the micro-batch's completion tokens.
    Bnpo,
    /// Over rows × `max_completion_length`.
    DrGrpo,
    /// Over the step's generated tokens (TRL's default).
    Dapo,
}

impl GrpoLossType {
    pub const ALL: [GrpoLossType; 4] =
        [GrpoLossType::Grpo, GrpoLossType::Bnpo, GrpoLossType::DrGrpo, GrpoLossType::Dapo];

    pub fn name(self) -> &'static str {
        match self {
            GrpoLossType::Grpo => "grpo",
            GrpoLossType::Bnpo => "bnpo",
            GrpoLossType::DrGrpo => "dr_grpo",
            GrpoLossType::Dapo => "dapo",
        }
    }

    pub fn from_name(name: &str) -> Result<GrpoLossType> {
        Self::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| Error::TrainOption {
            option: "loss_type",
            detail: format!("expected grpo, bnpo, dr_grpo or dapo, got {name:?}"),
        })
    }
}

/// TRL's `scale_rewards`: what divides an advantage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleRewards {
    /// The group's standard deviation (TRL's default, `True`).
    Group,
    /// The whole batch's.
    Batch,
    /// Nothing (Dr. GRPO; `False`).
    None,
}

impl ScaleRewards {
    pub fn name(self) -> &'static str {
        match self {
            ScaleRewards::Group => "group",
            ScaleRewards::Batch => "batch",
            ScaleRewards::None => "none",
        }
    }

    pub fn from_name(name: &str) -> Result<ScaleRewards> {
        match name {
            "group" | "true" => Ok(ScaleRewards::Group),
            "batch" => Ok(ScaleRewards::Batch),
            "none" | "false" => Ok(ScaleRewards::None),
            other => Err(Error::TrainOption {
                option: "scale_rewards",
                detail: format!("expected group, batch or none, got {other:?}"),
            }),
        }
    }
}

/// The step's settings (TRL's `GRPOConfig` fields of the same names).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrpoLoss {
    pub loss_type: GrpoLossType,
    /// The KL coefficient (0: no reference forward, TRL's default).
    pub beta: f32,
    /// The sampling temperature, which the log-probabilities are taken at.
    pub temperature: f32,
    /// The completions' cap (dr_grpo's constant).
    pub max_completion_length: usize,
}

impl GrpoLoss {
    /// TRL 0.24's defaults: dapo, β 0, temperature 1, 256 tokens.
    pub const TRL: GrpoLoss =
        GrpoLoss { loss_type: GrpoLossType::Dapo, beta: 0.0, temperature: 1.0, max_completion_length: 256 };

    pub fn validate(&self) -> Result<()> {
        let bad = |option, detail: String| Err(Error::TrainOption { option, detail });
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            return bad("beta", format!("must be a finite number ≥ 0, got {}", self.beta));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", format!("must be a finite number > 0, got {}", self.temperature));
        }
        if self.max_completion_length == 0 {
            return bad("max_completion_length", "must be at least 1".into());
        }
        Ok(())
    }
}

/// Each completion's reward: `Σ_f w_f·rewards[f][i]` over the functions'
/// values, a missing one (`None`, TRL's NaN) left out as `nansum` leaves it.
/// Summed in f32 in the functions' order.
pub fn combine_rewards(per_function: &[Vec<Option<f32>>], weights: &[f32]) -> Result<Vec<f32>> {
    if per_function.len() != weights.len() || per_function.is_empty() {
        return Err(Error::TrainOption {
            option: "reward_weights",
            detail: format!("{} weights for {} reward functions", weights.len(), per_function.len()),
        });
    }
    let n = per_function[0].len();
    if per_function.iter().any(|f| f.len() != n) {
        return Err(Error::invalid("GRPO rewards", "every reward function must score every completion"));
    }
    Ok((0..n)
        .map(|i| per_function.iter().zip(weights).filter_map(|(f, &w)| f[i].map(|r| r * w)).fold(0.0f32, |a, b| a + b))
        .collect())
}

/// The group statistics TRL logs for a batch of rewards.
#[derive(Clone, Debug, PartialEq)]
pub struct Advantages {
    /// Each completion's advantage.
    pub advantages: Vec<f32>,
    /// `reward`: the mean of the groups' means.
    pub reward: f32,
    /// `reward_std`: the mean of the standard deviations used (the group's, or the batch's).
    pub reward_std: f32,
    /// `frac_reward_zero_std`: the fraction of completions whose std is 0.
    pub frac_reward_zero_std: f32,
}

/// TRL's advantages for `rewards` in groups of `group` consecutive
/// completions (one prompt's). Means in f32 (torch's `mean`), standard
/// deviations unbiased through f64 (torch's CPU `std`), the rest in f32.
pub fn advantages(rewards: &[f32], group: usize, scale: ScaleRewards) -> Result<Advantages> {
    if group == 0 || rewards.is_empty() || rewards.len() % group != 0 {
        return Err(Error::TrainOption {
            option: "num_generations",
            detail: format!("{} rewards do not make groups of {group}", rewards.len()),
        });
    }
    let std = |xs: &[f32]| -> f32 {
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
        (xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() as f32
    };
    let mean = |xs: &[f32]| xs.iter().fold(0.0f32, |a, &b| a + b) / xs.len() as f32;
    let batch_std = std(rewards);
    let mut out = Vec::with_capacity(rewards.len());
    let (mut means, mut stds, mut zero) = (0.0f32, 0.0f32, 0usize);
    for g in rewards.chunks(group) {
        let m = mean(g);
        let s = if scale == ScaleRewards::Batch { batch_std } else { std(g) };
        // torch.isclose(std, 0): |std| ≤ 1e-8.
        if s.abs() <= 1e-8 {
            zero += g.len();
        }
        means += m * g.len() as f32;
        stds += s * g.len() as f32;
        for &r in g {
            let a = r - m;
            out.push(if scale == ScaleRewards::None { a } else { a / (s + 1e-4) });
        }
    }
    let n = rewards.len() as f32;
    Ok(Advantages { advantages: out, reward: means / n, reward_std: stds / n, frac_reward_zero_std: zero as f32 / n })
}

/// A GRPO micro-batch's per-row targets, normalisers and advantages, in the
/// row layout of the model's output.
#[derive(Clone, Debug)]
pub struct GrpoRows {
    /// (B·T) the next token on completion rows, −100 elsewhere.
    pub targets: Vec<i32>,
    /// (B·T) c_t on completion rows, 0 elsewhere.
    pub weight: Vec<f32>,
    /// (B·T) the row's completion's advantage.
    pub adv: Vec<f32>,
    /// Completion tokens (the mask's).
    pub tokens: usize,
}

impl GrpoRows {
    /// `micro` of the step's `of` micro-batches, whose generated tokens are
    /// `step_tokens` (dapo's N). The batch's labels mark each completion's
    /// masked tokens (−100 elsewhere); `batch.advantages` holds one per row.
    pub fn new(batch: &Batch, vocab: usize, loss: &GrpoLoss, of: usize, step_tokens: usize) -> Result<GrpoRows> {
        const OP: &str = "GRPO loss";
        let rows = batch.labels.len();
        let adv = batch
            .advantages
            .as_ref()
            .filter(|a| a.len() == rows)
            .ok_or_else(|| Error::invalid(OP, format!("a GRPO batch needs one advantage a row ({rows} rows)")))?;
        let (targets, tokens) = shift_labels_after(&batch.labels, vocab, 0)?;
        let per = targets.len() / rows.max(1);
        let k = of.max(1) as f32;
        let mut weight = vec![0.0f32; targets.len()];
        let mut row_adv = vec![0.0f32; targets.len()];
        for (i, (w, t)) in weight.chunks_mut(per).zip(targets.chunks(per)).enumerate() {
            let n = t.iter().filter(|&&t| t != IGNORE_INDEX).count();
            let c = match loss.loss_type {
                GrpoLossType::Grpo => 1.0 / (n.max(1) as f32 * rows as f32) / k,
                GrpoLossType::Bnpo => 1.0 / tokens.max(1) as f32 / k,
                GrpoLossType::DrGrpo => 1.0 / (rows * loss.max_completion_length) as f32 / k,
                GrpoLossType::Dapo => 1.0 / step_tokens.max(1) as f32,
            };
            for (w, _) in w.iter_mut().zip(t).filter(|(_, &t)| t != IGNORE_INDEX) {
                *w = c;
            }
            row_adv[i * per..(i + 1) * per].fill(adv[i]);
        }
        Ok(GrpoRows { targets, weight, adv: row_adv, tokens })
    }
}

/// Records one GRPO micro-batch: the reference forward (β > 0, every adapter
/// hook off), the adapter's forward, the loss (added into `stats[0]`, the
/// KL sum into `stats[1]`) and the backward into the adapter's gradients
/// through `hooks`.
pub(crate) fn record_grpo_micro(
    rec: &mut Recorder,
    model: &Model,
    loss: &GrpoLoss,
    batch: &Batch,
    rows: &GrpoRows,
    (hooks, checkpoint): (&dyn Hooks, bool),
    stats: &Tensor,
) -> Result<()> {
    let gpu = rec.gpu();
    let ids = model.input_ids(gpu, &batch.input_ids)?;
    let m = rows.targets.len();
    let d = model.config.hidden_size;
    let targets = Tensor::from_slice(gpu, &[m], &rows.targets)?;
    let weight = Tensor::from_slice(gpu, &[m], &rows.weight)?;
    let adv = Tensor::from_slice(gpu, &[m], &rows.adv)?;
    let flat = |xn: Tensor| -> Result<Tensor> {
        if xn.numel() != m * d {
            return Err(Error::shape("GRPO loss", "the model's rows do not match the batch's labels"));
        }
        xn.reshape(&[m, d])
    };
    let ref_loss = if loss.beta != 0.0 {
        let (xr, _) = model.hidden_checkpointed(rec, &ids, &NoHooks, false)?;
        Some(token_losses(rec, &flat(xr)?, model.head(&NoHooks), &targets, loss.temperature)?.0)
    } else {
        None
    };
    let (xn, saved) = model.hidden_checkpointed(rec, &ids, hooks, checkpoint)?; // (B, T, D)
    let shape = xn.shape().to_vec();
    let xn = flat(xn)?;
    let (token_loss, lse) = token_losses(rec, &xn, model.head(hooks), &targets, loss.temperature)?;
    let row_scale =
        grpo_row_scale(rec, &token_loss, ref_loss.as_ref(), &weight, &adv, loss.beta, loss.temperature, stats)?;
    let dxn = rows_backward(rec, &xn, model.head(hooks), &targets, (&lse, &row_scale), loss.temperature)?;
    model.backward_from_hidden(rec, &dxn.reshape(&shape)?, &saved, hooks)
}
