//! GRPO as TRL 0.24's `GRPOTrainer` computes it: a group of G completions
//! sampled for each prompt, each scored by reward functions, and the
//! policy-gradient steps on them. RLOO (its `RLOOTrainer`) shares all of it
//! but the advantages and the loss ([`Estimator::Rloo`], below the GRPO ones).
//!
//! ```text
//! r_i   = Σ_f w_f·reward_f(i)                         (nansum: a missing reward adds nothing)
//! A_i   = (r_i − mean_group(r)) / (std(r) + 1e-4)     std of the group ("group"), of the batch ("batch"),
//!                                                     or no division ("none"); std unbiased, as torch's
//! per token t of completion i (its mask: the tokens up to and including the first eos):
//!   lp_t  = log softmax(z_t / T)[token]               (T: the sampling temperature)
//!   kl_t  = e^(ref_t − lp_t) − (ref_t − lp_t) − 1     (β > 0: ref with the adapter off)
//!   ρ_t   = e^(lp_t − old_t)  (token level), or e^(mean_mask(lp − old)) over the completion (sequence, GSPO)
//!   ℓ_t   = −min(min(ρ_t, δ)·A_i, clamp(ρ_t, 1 − ε_low, 1 + ε_high)·A_i) + β·kl_t
//! loss  = Σ_t c_t·ℓ_t, c_t by the loss type:
//!   grpo    1 / (|i|·B·K)          |i| the completion's tokens, B rows a micro-batch, K micro-batches a step
//!   bnpo    1 / (N_m·K)            N_m the micro-batch's completion tokens
//!   dr_grpo 1 / (B·L·K)            L = max_completion_length
//!   dapo    1 / N                  N the generation's generated tokens (TRL's num_items_in_batch)
//! ```
//!
//! A generation is `steps_per_generation` micro-batches; it feeds
//! `steps_per_generation / K` optimizer steps a pass and `num_iterations`
//! passes. At a generation's first step old = lp in value (ρ = 1, the
//! clipping cannot bind, and the gradient is `c_t·(−A_i + β·(1 − e^(ref_t − lp_t)))·∇lp_t`
//! at either level); a generation of more steps is first scored by the
//! policy that sampled it (`old`). In each step's one submission: the
//! reference forward (β > 0), the adapter's forward, each row's
//! cross-entropy and entropy at temperature T, `grpo_row_scale` (the loss,
//! the KL and entropy sums and each row's factor), and the backward through
//! cross-entropy's per-row scale.
//!
//! ```text
//! RLOO (TRL 0.24's RLOOTrainer):
//! r_i   = clamp(Σ_f w_f·reward_f(i), reward_clip_range) − β·Σ_mask (old_t − ref_t)
//!                                                     (old: the policy as it sampled; β 0.05 by default)
//! A_i   = r_i − (Σ_group r − r_i) / (G − 1)           the leave-one-out baseline; with
//!                                                     normalize_advantages, (A − mean(A)) / (std(A) + 1e-4)
//! ρ_i   = e^(Σ_mask (lp_t − old_t))                   one ratio a completion, its tokens' log-ratios summed
//! ℓ_i   = −min(ρ_i·A_i, clamp(ρ_i, 1 − ε_low, 1 + ε_high)·A_i)
//! loss  = Σ_i ℓ_i / (B·K)                             every completion, one masked whole included
//! ```

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder, Tensor};
use crate::kernels::grpo::{grpo_row_scale, rloo_row_scale, Clip, ImportanceSampling};
use crate::model::llama::{shift_labels_after, GenerationConfig, Hooks, NoHooks, IGNORE_INDEX};
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;
use crate::train::data::{jsonl_lines, utf8_text, Batch, LossMasks, Parser};
use crate::train::preference_loss::{rows_backward, scored_rows, token_losses};
use crate::train::schedule::LrSchedule;
use crate::train::trainer::{StepStats, Trainer};
use crate::util::rng::Rng;

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

/// Which of TRL's trainers on sampled groups of completions a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Estimator {
    /// `GRPOTrainer`: group-normalised advantages, a ratio a token (or GSPO's
    /// a completion), β's KL in the loss.
    Grpo,
    /// `RLOOTrainer`: leave-one-out baselines, β's KL of each completion
    /// taken from its reward, a ratio a completion from its tokens' summed
    /// log-ratios, each completion's loss averaged. `loss_type`,
    /// `importance_sampling`, `top_entropy_quantile` and `delta` are GRPO's.
    Rloo,
}

impl Estimator {
    /// The objective's name: "grpo" or "rloo".
    pub fn name(self) -> &'static str {
        match self {
            Estimator::Grpo => "grpo",
            Estimator::Rloo => "rloo",
        }
    }
}

/// The step's settings (TRL's `GRPOConfig` fields of the same names, or its
/// `RLOOConfig`'s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GrpoLoss {
    pub estimator: Estimator,
    pub loss_type: GrpoLossType,
    /// The KL coefficient (0: no reference forward, TRL's default).
    pub beta: f32,
    /// The sampling temperature, which the log-probabilities are taken at.
    pub temperature: f32,
    /// The completions' cap (dr_grpo's constant).
    pub max_completion_length: usize,
    /// The importance ratio's clipping (`epsilon`, `epsilon_high`, `delta`):
    /// it binds only where the policy has moved since it sampled (more than
    /// one iteration a generation, or more steps a generation than one).
    pub clip: Clip,
    /// `importance_sampling_level`: a ratio each token (GRPO) or one a
    /// completion, the exponential of its tokens' mean log-ratio (GSPO).
    pub importance_sampling: ImportanceSampling,
    /// `top_entropy_quantile` ρ in [0, 1]: the policy term counts only on a
    /// micro-batch's completion tokens whose entropy reaches the (1 − ρ)
    /// quantile of theirs ("Beyond the 80/20 rule"; 1 keeps every token). A
    /// double, as Python's: 1 − ρ is taken in f64 (`kernels::grpo::entropy_quantile`).
    pub top_entropy_quantile: f64,
}

impl GrpoLoss {
    /// TRL 0.24's defaults: dapo, β 0, temperature 1, 256 tokens, ε 0.2 both ways, no δ.
    pub const TRL: GrpoLoss = GrpoLoss {
        estimator: Estimator::Grpo,
        loss_type: GrpoLossType::Dapo,
        beta: 0.0,
        temperature: 1.0,
        max_completion_length: 256,
        clip: Clip { epsilon_low: 0.2, epsilon_high: 0.2, delta: None },
        importance_sampling: ImportanceSampling::Token,
        top_entropy_quantile: 1.0,
    };

    /// TRL 0.24's `RLOOConfig` defaults: β 0.05, temperature 1, 256 tokens, ε 0.2 both ways.
    pub const RLOO: GrpoLoss = GrpoLoss { estimator: Estimator::Rloo, beta: 0.05, ..GrpoLoss::TRL };

    /// The prompt tokens a row keeps beside its completion: `max_prompt_length`,
    /// capped so that prompt and completion fit `max_positions`; an error
    /// where the completion alone fills them.
    pub fn prompt_budget(&self, max_prompt_length: usize, max_positions: usize) -> Result<usize> {
        match max_positions.checked_sub(self.max_completion_length).filter(|&n| n > 0) {
            Some(room) => Ok(max_prompt_length.min(room)),
            None => Err(Error::TrainOption {
                option: "max_completion_length",
                detail: format!(
                    "{} leaves no room for a prompt in the model's {max_positions} positions",
                    self.max_completion_length
                ),
            }),
        }
    }

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
        for (option, e) in [("epsilon", self.clip.epsilon_low), ("epsilon_high", self.clip.epsilon_high)] {
            if !(e.is_finite() && e >= 0.0) {
                return bad(option, format!("must be a finite number ≥ 0, got {e}"));
            }
        }
        if let Some(d) = self.clip.delta.filter(|d| !(d.is_finite() && *d > 0.0)) {
            return bad("delta", format!("must be a finite number > 0, got {d}"));
        }
        if !(0.0..=1.0).contains(&self.top_entropy_quantile) {
            return bad("top_entropy_quantile", format!("must be in [0, 1], got {}", self.top_entropy_quantile));
        }
        if self.estimator == Estimator::Rloo {
            let grpo_only = [
                ("delta", self.clip.delta.is_some()),
                ("top_entropy_quantile", self.top_entropy_quantile != 1.0),
                ("importance_sampling_level", self.importance_sampling != ImportanceSampling::Token),
            ];
            if let Some((option, _)) = grpo_only.iter().find(|(_, set)| *set) {
                return bad(option, "applies to grpo only (RLOO's ratio is a completion's, without δ)".into());
            }
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

/// RLOO's advantages for `rewards` (β's KL already taken from them) in
/// groups of `group` consecutive completions, as TRL's `RLOOTrainer`: each
/// reward less the mean of its group's others, `r_i − (Σ_group r − r_i) / (G − 1)`
/// in f32; with `normalize`, then less the batch's mean and over its std + 1e-4.
/// `reward`, `reward_std` and `frac_reward_zero_std` as GRPO's (of the groups'
/// means and unbiased standard deviations, through f64 as torch's CPU `std`).
pub fn rloo_advantages(rewards: &[f32], group: usize, normalize: bool) -> Result<Advantages> {
    if group < 2 || rewards.is_empty() || rewards.len() % group != 0 {
        return Err(Error::TrainOption {
            option: "num_generations",
            detail: format!("{} rewards do not make groups of {group} (RLOO needs at least 2)", rewards.len()),
        });
    }
    let stats = advantages(rewards, group, ScaleRewards::None)?;
    let mut out = Vec::with_capacity(rewards.len());
    for g in rewards.chunks(group) {
        let sum = g.iter().fold(0.0f32, |a, &b| a + b);
        out.extend(g.iter().map(|&r| r - (sum - r) / (group - 1) as f32));
    }
    if normalize {
        let n = out.len() as f64;
        let mean = out.iter().fold(0.0f32, |a, &b| a + b) / out.len() as f32;
        let m64 = out.iter().map(|&a| a as f64).sum::<f64>() / n;
        let std = (out.iter().map(|&a| (a as f64 - m64).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() as f32;
        for a in &mut out {
            *a = (*a - mean) / (std + 1e-4);
        }
    }
    Ok(Advantages { advantages: out, ..stats })
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
    /// (B·T) −log π_old of the row's target (the batch's `old_logps`
    /// shifted to the rows that predict them); `None`: the policy sampled
    /// them (ratio 1).
    pub old: Option<Vec<f32>>,
    /// Completion tokens (the mask's).
    pub tokens: usize,
    /// RLOO: each completion's share of the loss, 1 / (B·K).
    pub sequence_weight: f32,
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
                _ if loss.estimator == Estimator::Rloo => 1.0 / rows as f32 / k,
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
        let old = match &batch.old_logps {
            Some(rows_old) if rows_old.len() == rows && rows_old.iter().all(|r| r.len() == per) => {
                Some(rows_old.iter().flat_map(|r| r.iter().skip(1).map(|&lp| -lp).chain([0.0])).collect::<Vec<f32>>())
            }
            Some(_) => return Err(Error::shape(OP, "old_logps must have the shape of the labels (batch, seq)")),
            None => None,
        };
        let sequence_weight = 1.0 / rows.max(1) as f32 / k;
        Ok(GrpoRows { targets, weight, adv: row_adv, tokens, old, sequence_weight })
    }
}

/// Records one GRPO (or RLOO) micro-batch: the reference forward (GRPO's β >
/// 0, every adapter hook off), the adapter's forward, the loss (added into
/// `stats[0]`; `share` × the micro-batch's mean KL, entropy and clip ratios
/// into `stats[1..6]`, `kernels::grpo::grpo_row_scale` or `rloo_row_scale`)
/// and, with `backward`, the backward into the adapter's gradients through `hooks`.
pub(crate) fn record_grpo_micro(
    rec: &mut Recorder,
    model: &Model,
    loss: &GrpoLoss,
    batch: &Batch,
    rows: &GrpoRows,
    (hooks, checkpoint, backward): (&dyn Hooks, bool, bool),
    (stats, share): (&Tensor, f32),
) -> Result<()> {
    let gpu = rec.gpu();
    let ids = model.input_ids(gpu, &batch.input_ids)?;
    let m = rows.targets.len();
    let d = model.config.hidden_size;
    let targets = Tensor::from_slice(gpu, &[m], &rows.targets)?;
    let weight = Tensor::from_slice(gpu, &[m], &rows.weight)?;
    let adv = Tensor::from_slice(gpu, &[m], &rows.adv)?;
    let old = rows.old.as_ref().map(|o| Tensor::from_slice(gpu, &[m], o)).transpose()?;
    let flat = |xn: Tensor| -> Result<Tensor> {
        if xn.numel() != m * d {
            return Err(Error::shape("GRPO loss", "the model's rows do not match the batch's labels"));
        }
        xn.reshape(&[m, d])
    };
    let rloo = loss.estimator == Estimator::Rloo;
    let ref_loss = if loss.beta != 0.0 && !rloo {
        let (xr, _) = model.hidden_checkpointed(rec, &ids, &NoHooks, false)?;
        Some(token_losses(rec, &flat(xr)?, model.head(&NoHooks)?, &targets, loss.temperature)?.0)
    } else {
        None
    };
    let (xn, saved) = model.hidden_checkpointed(rec, &ids, hooks, checkpoint)?; // (B, T, D)
    let shape = xn.shape().to_vec();
    let xn = flat(xn)?;
    let s = scored_rows(rec, &xn, model.head(hooks)?, (&targets, loss.temperature), (true, false))?;
    let (token_loss, lse, entropy) = (s.token_loss, s.lse, s.entropy);
    let entropy = entropy.ok_or_else(|| Error::invalid("GRPO loss", "the rows' entropies went missing"))?;
    let completions = batch.labels.len();
    let row_scale = if rloo {
        rloo_row_scale(
            rec,
            [&token_loss, &entropy],
            old.as_ref(),
            (&weight, &adv),
            (loss.temperature, loss.clip),
            (completions, rows.sequence_weight),
            (stats, share),
        )?
    } else {
        grpo_row_scale(
            rec,
            [&token_loss, &entropy],
            (ref_loss.as_ref(), old.as_ref()),
            (&weight, &adv),
            (loss.beta, loss.temperature),
            (loss.clip, loss.importance_sampling, completions, loss.top_entropy_quantile),
            (stats, share),
        )?
    };
    if !backward {
        return Ok(()); // evaluation: the loss and the metrics only
    }
    let dxn = rows_backward(rec, &xn, model.head(hooks)?, &targets, (&lse, &row_scale), loss.temperature)?;
    model.backward_from_hidden(rec, &dxn.reshape(&shape)?, &saved, hooks)
}

/// A prompt of GRPO's data: its tokens, its text, and the line's fields
/// (the columns reward functions may read, TRL's `reward_kwargs`).
#[derive(Clone, Debug)]
pub struct GrpoPrompt {
    pub ids: Vec<u32>,
    pub text: String,
    pub fields: Map<String, Value>,
}

/// GRPO's prompts from JSONL bytes, one `{"prompt": …}` a line: a text, or
/// messages ending with a user turn, rendered by the chat template with the
/// generation prompt (TRL's `maybe_apply_chat_template`). Tokenized without
/// special tokens (the template writes its own) and cut to the first
/// `max_prompt_length` tokens, as `GRPOTrainer` tokenizes them.
pub fn grpo_prompts(
    source_name: &str,
    bytes: &[u8],
    tokenizer: &Tokenizer,
    max_prompt_length: usize,
) -> Result<Vec<GrpoPrompt>> {
    let text = utf8_text(source_name, bytes)?;
    let mut parser = Parser { source_name, tokenizer: Some(tokenizer), template: None, masks: LossMasks::default() };
    let mut prompts = Vec::new();
    for (n, line) in jsonl_lines(text) {
        let value: Value = serde_json::from_str(line).map_err(|e| parser.error(n, format!("not valid JSON: {e}")))?;
        let Value::Object(fields) = value else {
            return Err(parser.error(n, "expected a JSON object with a `prompt`"));
        };
        let text = match fields.get("prompt") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(_)) => {
                let messages = parser.message_list(n, &fields, "prompt")?;
                if messages.last().is_some_and(|m| m.role != "user") {
                    return Err(parser.error(n, "the `prompt` messages must end with a user turn"));
                }
                let kwargs = parser.template_kwargs(n, &fields)?;
                let (_, template) = parser.template(n, "conversational prompt")?;
                parser.render(n, &template, &messages, true, &kwargs)?
            }
            _ => return Err(parser.error(n, "GRPO's lines need a `prompt`: a text or a list of messages")),
        };
        let mut ids = parser.encode(n, tokenizer, &text, false)?;
        ids.truncate(max_prompt_length);
        if ids.is_empty() {
            return Err(parser.error(n, "the prompt has no token"));
        }
        prompts.push(GrpoPrompt { ids, text, fields });
    }
    if prompts.is_empty() {
        return Err(Error::EmptyDataset { source_name: source_name.to_string(), detail: "no JSON lines".into() });
    }
    Ok(prompts)
}

/// Which prompts each generation takes: epochs over the prompts, each in a
/// new order drawn from the run's generator when the run shuffles (as TRL's
/// sampler), an epoch's last generation running on into the next.
#[derive(Clone, Debug)]
pub struct PromptOrder {
    count: usize,
    shuffle: bool,
    /// The epoch's prompts still to take, taken from the end.
    left: Vec<usize>,
}

impl PromptOrder {
    pub fn new(count: usize, shuffle: bool) -> PromptOrder {
        PromptOrder { count, shuffle, left: Vec::new() }
    }

    /// The epoch's prompts still to take (a checkpoint keeps them).
    pub fn left(&self) -> &[usize] {
        &self.left
    }

    /// The order a checkpoint kept: `left` of `count` prompts still to take.
    pub fn resume(count: usize, shuffle: bool, left: Vec<usize>) -> Result<PromptOrder> {
        if left.iter().any(|&i| i >= count) || left.len() > count {
            return Err(Error::invalid(
                "GRPO prompts",
                format!("the checkpoint's prompt order ({} left) does not fit the data's {count} prompts", left.len()),
            ));
        }
        Ok(PromptOrder { count, shuffle, left })
    }

    /// The next `n` prompts' indices.
    pub fn take(&mut self, n: usize, rng: &mut Rng) -> Vec<usize> {
        let mut chosen = Vec::with_capacity(n);
        while chosen.len() < n && self.count > 0 {
            if self.left.is_empty() {
                self.left = (0..self.count).collect();
                if self.shuffle {
                    rng.shuffle(&mut self.left);
                }
                self.left.reverse();
            }
            chosen.extend(self.left.pop());
        }
        chosen
    }
}

/// One generation's prompts and completions, and the settings of its steps.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The prompts' indices, one a group of completions.
    pub chosen: Vec<usize>,
    /// `num_generations` completions a chosen prompt, group by group.
    pub completions: Vec<Vec<u32>>,
    /// The run's settings with this generation's row shuffle and its steps.
    pub settings: GrpoSettings,
}

/// A run's next generation: `settings.prompts()` prompts from `order`,
/// `num_generations` completions of each sampled through `hooks` (the
/// policy) with `config`, the k-th prompt's group from seed s + k·G (s drawn
/// from `rng`, as each prompt's group of [`Model::sample_group`]); and the
/// settings of its steps: the rows shuffled with a seed from `rng` when
/// `shuffle` (TRL shuffles them), at most `steps_left` steps.
pub async fn sample_generation(
    (gpu, model, hooks): (&Gpu, &Model, &dyn Hooks),
    (prompts, order, rng): (&[GrpoPrompt], &mut PromptOrder, &mut Rng),
    settings: &GrpoSettings,
    config: &GenerationConfig,
    (shuffle, steps_left): (bool, u64),
) -> Result<Generation> {
    let g = settings.num_generations;
    let chosen = order.take(settings.prompts(), rng);
    let seed = rng.next_u64();
    let settings = GrpoSettings {
        shuffle: shuffle.then(|| rng.next_u64()),
        max_steps: Some(usize::try_from(steps_left).unwrap_or(usize::MAX)),
        ..settings.clone()
    };
    let mut completions = Vec::with_capacity(chosen.len() * g);
    for (k, &p) in chosen.iter().enumerate() {
        let config = GenerationConfig { seed: seed.wrapping_add((k * g) as u64), ..config.clone() };
        completions.extend(model.sample_group(gpu, &prompts[p].ids, g, &config, hooks).await?);
    }
    Ok(Generation { chosen, completions, settings })
}

/// A GRPO run's progress for its checkpoint (`train::checkpoint`): the
/// schedule as [`Run::config_from`](crate::train::run::Run::config_from)
/// reads it, and under `"grpo"` the run's generator and the epoch's prompts
/// still to take. Taken between generations, it goes on exactly.
pub fn grpo_progress(schedule: &LrSchedule, grad_accum: usize, rng: &Rng, order: &PromptOrder) -> Value {
    serde_json::json!({
        "total_steps": schedule.total_steps,
        "lr": schedule.base_lr,
        "schedule": schedule.schedule.name(),
        "schedule_kwargs": schedule.schedule.kwargs(),
        "warmup_steps": schedule.warmup_steps,
        "grad_accum": grad_accum,
        "grpo": {"rng_state": rng.state(), "prompts_left": order.left()},
    })
}

/// The run's generator and prompt order a checkpoint's [`grpo_progress`]
/// holds, for `count` prompts (shuffled epochs or not).
pub fn grpo_resume_state(progress: &Value, count: usize, shuffle: bool) -> Result<(Rng, PromptOrder)> {
    let bad = |detail: &str| Error::invalid("GRPO checkpoint", detail.to_string());
    let state = progress.get("grpo").ok_or_else(|| bad("its progress holds no GRPO run (was it saved by one?)"))?;
    let rng = state.get("rng_state").and_then(Value::as_u64).ok_or_else(|| bad("grpo.rng_state is missing"))?;
    let left = state
        .get("prompts_left")
        .and_then(Value::as_array)
        .and_then(|l| l.iter().map(|i| i.as_u64().map(|i| i as usize)).collect::<Option<Vec<usize>>>())
        .ok_or_else(|| bad("grpo.prompts_left must be a list of prompt indices"))?;
    Ok((Rng::from_state(rng), PromptOrder::resume(count, shuffle, left)?))
}

/// TRL's `think_format_reward`: 1 when the completion is `<think>…</think>…`
/// with no second `<think>` (its regex `^<think>(?!.*<think>)(.*?)</think>.*$`,
/// DOTALL), else 0.
pub fn think_format_reward(completion: &str) -> f32 {
    let ok =
        completion.strip_prefix("<think>").is_some_and(|rest| !rest.contains("<think>") && rest.contains("</think>"));
    if ok {
        1.0
    } else {
        0.0
    }
}

/// Whether a completion ran out of tokens (TRL's `is_truncated`: its last
/// token is neither an eos nor the pad id).
pub fn is_truncated(completion: &[u32], eos: &[u32], pad: u32) -> bool {
    completion.last().is_none_or(|t| !eos.contains(t) && *t != pad)
}

/// The step's rows as micro-batches of `batch_size`: each row a prompt then
/// its completion, labelled with the completion's tokens (−100 on the prompt
/// and on a truncated completion when `mask_truncated`), right-padded with
/// `pad`; each carries its rows' advantages and the tokens generated for all
/// `rows` (dapo's normaliser).
pub fn completion_batches(
    rows: &[(&[u32], &[u32])],
    advantages: &[f32],
    (eos, pad): (&[u32], u32),
    mask_truncated: bool,
    batch_size: usize,
) -> Result<Vec<Batch>> {
    if rows.len() != advantages.len() || batch_size == 0 {
        return Err(Error::invalid(
            "GRPO batches",
            format!("{} rows, {} advantages, batch size {batch_size}", rows.len(), advantages.len()),
        ));
    }
    let generated: usize = rows.iter().map(|(_, c)| c.len()).sum();
    let mut out = Vec::new();
    for (chunk, adv) in rows.chunks(batch_size).zip(advantages.chunks(batch_size)) {
        let len = chunk.iter().map(|(p, c)| p.len() + c.len()).max().unwrap_or(0);
        let (mut input_ids, mut labels) = (Vec::new(), Vec::new());
        let lengths = chunk.iter().map(|(p, c)| p.len() + c.len()).collect();
        for (prompt, completion) in chunk {
            let masked = mask_truncated && is_truncated(completion, eos, pad);
            let mut ids: Vec<u32> = prompt.iter().chain(completion.iter()).copied().collect();
            let mut lab = vec![IGNORE_INDEX; prompt.len()];
            lab.extend(completion.iter().map(|&t| if masked { IGNORE_INDEX } else { t as i32 }));
            ids.resize(len, pad);
            lab.resize(len, IGNORE_INDEX);
            input_ids.push(ids);
            labels.push(lab);
        }
        let mut batch = Batch::new(input_ids, labels);
        batch.lengths = lengths;
        batch.advantages = Some(adv.to_vec());
        batch.generated_tokens = generated;
        out.push(batch);
    }
    Ok(out)
}

/// What one GRPO step did: the optimizer step's numbers and TRL's GRPO
/// metrics of its completions.
#[derive(Clone, Debug)]
pub struct GrpoStepStats {
    /// The optimizer steps taken on the completions (`num_iterations` of them).
    pub steps: Vec<StepStats>,
    /// RLOO's `kl` (β > 0): the mean over the completion tokens of the policy's
    /// log-probability (as it sampled) less the reference's. (GRPO's is each step's.)
    pub kl: Option<f32>,
    /// Each completion's reward, the functions' weighted sum (clamped to
    /// RLOO's `reward_clip_range`).
    pub rewards: Vec<f32>,
    /// `reward`, `reward_std`, `frac_reward_zero_std` and the advantages.
    pub advantages: Advantages,
    /// `rewards/<function>/mean` and `rewards/<function>/std`: each
    /// function's over the completions it scored (missing rewards left out,
    /// NaN where fewer than one and two remain), in the functions' order.
    pub reward_means: Vec<f32>,
    pub reward_stds: Vec<f32>,
    /// `completions/*`.
    pub lengths: CompletionLengths,
    /// `num_tokens`: the prompt and completion tokens of every generation so
    /// far ([`Trainer::tokens_seen`](crate::train::trainer::Trainer::tokens_seen)).
    pub num_tokens: u64,
}

/// TRL's metrics of one evaluation batch of a GRPO (or RLOO) run (its
/// `evaluate()`, logged with `eval_` before each name): the batch's loss
/// and its rows, and its generation's metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupEval {
    /// Rows (completions): the batch's weight in `eval_loss`.
    pub rows: usize,
    pub loss: f32,
    pub reward: f32,
    pub reward_std: f32,
    pub frac_reward_zero_std: f32,
    pub reward_means: Vec<f32>,
    pub reward_stds: Vec<f32>,
    pub lengths: CompletionLengths,
    /// With β: GRPO's over the batch's completion tokens, RLOO's of its rewards.
    pub kl: Option<f32>,
    pub entropy: f32,
    /// `clip_ratio/low_mean`, `high_mean`, `region_mean` (0 at evaluation's ratio of 1).
    pub clip_ratio: [f32; 3],
}

impl GroupEval {
    /// The evaluation's metrics from its batches', as transformers and TRL
    /// combine them: `eval_loss` the rows-weighted mean of the batches'
    /// losses, every other metric the mean of the batches' values.
    pub fn combine(batches: &[GroupEval]) -> Result<GroupEval> {
        let first = batches.first().ok_or_else(|| Error::invalid("GRPO evaluation", "no evaluation batch"))?;
        let n = batches.len() as f32;
        let mean = |f: &dyn Fn(&GroupEval) -> f32| batches.iter().map(f).sum::<f32>() / n;
        let means = |f: &dyn Fn(&GroupEval) -> &Vec<f32>| -> Vec<f32> {
            (0..f(first).len()).map(|i| batches.iter().map(|b| f(b)[i]).sum::<f32>() / n).collect()
        };
        let rows: usize = batches.iter().map(|b| b.rows).sum();
        let loss = (batches.iter().map(|b| b.loss as f64 * b.rows as f64).sum::<f64>() / rows.max(1) as f64) as f32;
        let l = |f: &dyn Fn(&CompletionLengths) -> f32| mean(&|b| f(&b.lengths));
        Ok(GroupEval {
            rows,
            loss,
            reward: mean(&|b| b.reward),
            reward_std: mean(&|b| b.reward_std),
            frac_reward_zero_std: mean(&|b| b.frac_reward_zero_std),
            reward_means: means(&|b| &b.reward_means),
            reward_stds: means(&|b| &b.reward_stds),
            lengths: CompletionLengths {
                mean: l(&|c| c.mean),
                min: l(&|c| c.min),
                max: l(&|c| c.max),
                clipped_ratio: l(&|c| c.clipped_ratio),
                mean_terminated: l(&|c| c.mean_terminated),
                min_terminated: l(&|c| c.min_terminated),
                max_terminated: l(&|c| c.max_terminated),
            },
            kl: first.kl.map(|_| mean(&|b| b.kl.unwrap_or(f32::NAN))),
            entropy: mean(&|b| b.entropy),
            clip_ratio: [0, 1, 2].map(|i| mean(&|b| b.clip_ratio[i])),
        })
    }
}

/// One evaluation batch of a GRPO (or RLOO) run, as TRL's `evaluate()` takes
/// it (`prediction_step`): `completions` (`num_generations` a prompt) of
/// `prompts`, scored by each reward function, their advantages, and the
/// loss of the batch through `adapter` without dropout and without a
/// backward (the ratio to the sampling policy is 1), in the prompts' order.
/// `settings.gradient_accumulation_steps` is the accumulation of the run
/// being evaluated: mid-training, TRL's GRPO divides its grpo, bnpo and
/// dr_grpo losses by it at evaluation too (RLOO's and dapo's are not).
pub async fn evaluate_group(
    (gpu, model, adapter): (&Gpu, &Model, &crate::peft::adapter::Adapter),
    loss: &GrpoLoss,
    settings: &GrpoSettings,
    (prompts, completions): (&[&[u32]], &[Vec<u32>]),
    rewards: &[Vec<Option<f32>>],
) -> Result<GroupEval> {
    settings.validate_for(loss.estimator)?;
    let g = settings.num_generations;
    if g < 2 || prompts.len() * g != completions.len() || completions.is_empty() {
        return Err(Error::invalid(
            "GRPO evaluation",
            format!("{} completions for {} prompts of {g} each (at least 2 each)", completions.len(), prompts.len()),
        ));
    }
    let mut combined = combine_rewards(rewards, &settings.reward_weights)?;
    if let Some((lo, hi)) = settings.reward_clip_range {
        combined.iter_mut().for_each(|r| *r = r.clamp(lo, hi));
    }
    let order: Vec<usize> = (0..completions.len()).collect();
    let rows: Vec<(&[u32], &[u32])> = order.iter().map(|&i| (prompts[i / g], completions[i].as_slice())).collect();
    let eos = (settings.eos.as_slice(), settings.pad);
    let mut batches =
        completion_batches(&rows, &vec![0.0; rows.len()], eos, settings.mask_truncated_completions, rows.len())?;
    let frozen = adapter.eval();
    let hooks = frozen.hooks();
    let scoring = (combined.as_slice(), order.as_slice(), false);
    let (advantages, rloo_kl) = score_generation((gpu, model, hooks), loss, settings, scoring, &mut batches).await?;
    let batch = &batches[0];
    // RLOO's loss is not divided by the accumulation at evaluation (its Trainer divides in training_step).
    let of = match loss.estimator {
        Estimator::Grpo => settings.gradient_accumulation_steps.max(1),
        Estimator::Rloo => 1,
    };
    let group_rows = GrpoRows::new(batch, model.config.vocab_size, loss, of, batch.generated_tokens)?;
    let stats = Tensor::zeros(gpu, &[6], crate::gpu::DType::F32)?;
    let mut rec = Recorder::new(gpu);
    record_grpo_micro(&mut rec, model, loss, batch, &group_rows, (hooks, false, false), (&stats, 1.0))?;
    rec.submit()?;
    let s = stats.to_vec::<f32>(gpu).await?;
    let (reward_means, reward_stds) = reward_stats(rewards).into_iter().unzip();
    let kl = match loss.estimator {
        Estimator::Grpo => (loss.beta != 0.0).then_some(s[1]),
        Estimator::Rloo => rloo_kl,
    };
    Ok(GroupEval {
        rows: completions.len(),
        loss: s[0],
        reward: advantages.reward,
        reward_std: advantages.reward_std,
        frac_reward_zero_std: advantages.frac_reward_zero_std,
        reward_means,
        reward_stds,
        lengths: CompletionLengths::of(completions, &settings.eos, settings.pad),
        kl,
        entropy: s[2],
        clip_ratio: [s[3], s[4], s[5]],
    })
}

/// TRL's `completions/*` metrics of one generation's completions (its
/// `_generate`), each an f32 as torch's float mean, min and max.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CompletionLengths {
    /// `mean_length`, `min_length`, `max_length`: completion tokens (up to
    /// and with the eos).
    pub mean: f32,
    pub min: f32,
    pub max: f32,
    /// `clipped_ratio`: the share that ran out of tokens ([`is_truncated`]).
    pub clipped_ratio: f32,
    /// `mean_terminated_length`, `min_…`, `max_…`: of the ones that ended (0
    /// when none did, as TRL's).
    pub mean_terminated: f32,
    pub min_terminated: f32,
    pub max_terminated: f32,
}

impl CompletionLengths {
    /// Each length by TRL's name (`completions/<name>`).
    pub fn named(&self) -> [(&'static str, f32); 7] {
        [
            ("mean_length", self.mean),
            ("min_length", self.min),
            ("max_length", self.max),
            ("clipped_ratio", self.clipped_ratio),
            ("mean_terminated_length", self.mean_terminated),
            ("min_terminated_length", self.min_terminated),
            ("max_terminated_length", self.max_terminated),
        ]
    }

    pub fn of(completions: &[Vec<u32>], eos: &[u32], pad: u32) -> CompletionLengths {
        // (mean, min, max) of lengths as f32; [0] for none, as TRL's torch.zeros(1).
        let summary = |lengths: &[usize]| {
            let lengths = if lengths.is_empty() { &[0][..] } else { lengths };
            let sum = lengths.iter().sum::<usize>() as f32;
            let (min, max) = (lengths.iter().min().copied(), lengths.iter().max().copied());
            (sum / lengths.len() as f32, min.unwrap_or(0) as f32, max.unwrap_or(0) as f32)
        };
        let all: Vec<usize> = completions.iter().map(Vec::len).collect();
        let ended: Vec<usize> = completions.iter().filter(|c| !is_truncated(c, eos, pad)).map(Vec::len).collect();
        let (mean, min, max) = summary(&all);
        let (mean_terminated, min_terminated, max_terminated) = summary(&ended);
        let clipped_ratio = (all.len() - ended.len()) as f32 / all.len().max(1) as f32;
        CompletionLengths { mean, min, max, clipped_ratio, mean_terminated, min_terminated, max_terminated }
    }
}

/// Each reward function's `(mean, std)` over the completions it scored, as
/// TRL's `nanmean` and `nanstd` (Bessel's correction): NaN for a mean of
/// none and a std of fewer than two.
pub fn reward_stats(rewards: &[Vec<Option<f32>>]) -> Vec<(f32, f32)> {
    rewards
        .iter()
        .map(|f| {
            let kept: Vec<f64> = f.iter().flatten().map(|&r| r as f64).collect();
            let n = kept.len() as f64;
            let mean = kept.iter().sum::<f64>() / n;
            let variance = kept.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / n * (n / (n - 1.0));
            (mean as f32, variance.sqrt() as f32)
        })
        .collect()
}

/// The settings of a GRPO run beyond the loss's.
#[derive(Clone, Debug)]
pub struct GrpoSettings {
    /// Completions a prompt (TRL's `num_generations`).
    pub num_generations: usize,
    /// Passes over each generation's micro-batches (TRL's `num_iterations`,
    /// μ); past the first, the ratio to the sampling policy moves and the
    /// clipping binds.
    pub num_iterations: usize,
    /// Micro-batches an optimizer step (TRL's `gradient_accumulation_steps`).
    pub gradient_accumulation_steps: usize,
    /// Micro-batches a generation (TRL's `steps_per_generation`, whose
    /// default is the accumulation; here a multiple of it): a generation
    /// feeds `steps_per_generation / gradient_accumulation_steps` optimizer
    /// steps, each on its own rows, and past the first the policy has moved.
    pub steps_per_generation: usize,
    /// GRPO's `scale_rewards`.
    pub scale_rewards: ScaleRewards,
    /// RLOO's `normalize_advantages`: the advantages less their batch mean,
    /// over their std + 1e-4.
    pub normalize_advantages: bool,
    /// RLOO's `reward_clip_range`: each combined reward clamped to it (before β's KL).
    pub reward_clip_range: Option<(f32, f32)>,
    pub mask_truncated_completions: bool,
    /// Rows a micro-batch.
    pub batch_size: usize,
    /// Each reward function's weight.
    pub reward_weights: Vec<f32>,
    /// The eos ids that end a completion, and the pad id.
    pub eos: Vec<u32>,
    pub pad: u32,
    /// The seed of the generation's row order before it is cut into
    /// micro-batches (TRL shuffles it); `None` keeps the prompts' order.
    pub shuffle: Option<u64>,
    /// At most this many optimizer steps on the generation (a run's last);
    /// `None`: all of [`steps`](Self::steps).
    pub max_steps: Option<usize>,
}

impl GrpoSettings {
    /// TRL's `steps_per_generation` from the options given, as `GRPOConfig`
    /// settles it: itself; or `generation_batch_size / batch_size`, the
    /// completions a generation given instead; or, given neither,
    /// `gradient_accumulation_steps` (a generation an optimizer step).
    pub fn steps_per_generation_of(
        (steps_per_generation, generation_batch_size): (Option<usize>, Option<usize>),
        (batch_size, gradient_accumulation_steps): (usize, usize),
    ) -> Result<usize> {
        let bad = |detail: String| Err(Error::TrainOption { option: "generation_batch_size", detail });
        match (steps_per_generation, generation_batch_size) {
            (Some(_), Some(_)) => bad("give it or steps_per_generation, not both".into()),
            (Some(steps), None) => Ok(steps),
            (None, Some(rows)) if batch_size == 0 || rows == 0 || rows % batch_size != 0 => {
                bad(format!("{rows} must be a positive multiple of batch_size ({batch_size})"))
            }
            (None, Some(rows)) => Ok(rows / batch_size),
            (None, None) => Ok(gradient_accumulation_steps),
        }
    }

    /// Completions a generation: `batch_size × steps_per_generation`.
    pub fn rows(&self) -> usize {
        self.batch_size * self.steps_per_generation
    }

    /// Prompts a generation.
    pub fn prompts(&self) -> usize {
        self.rows() / self.num_generations.max(1)
    }

    /// Optimizer steps a generation: `steps_per_generation / gradient_accumulation_steps × num_iterations`.
    pub fn steps(&self) -> usize {
        self.steps_per_generation / self.gradient_accumulation_steps.max(1) * self.num_iterations
    }

    /// Optimizer steps this generation takes: [`steps`](Self::steps), at most `max_steps`.
    pub fn steps_taken(&self) -> usize {
        self.max_steps.map_or(self.steps(), |n| n.min(self.steps()))
    }

    /// Whether the completions must first be scored by the policy that
    /// sampled them (TRL's condition for `old_per_token_logps`): a step
    /// past a generation's first sees a moved policy.
    pub fn scores_old_policy(&self) -> bool {
        self.steps_taken() > 1
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |option, detail: String| Err(Error::TrainOption { option, detail });
        let (g, ga, spg) = (self.num_generations, self.gradient_accumulation_steps, self.steps_per_generation);
        if self.batch_size == 0 || ga == 0 {
            return bad("batch_size", "batch_size and gradient_accumulation_steps must be at least 1".into());
        }
        if spg == 0 || spg % ga != 0 {
            return bad(
                "steps_per_generation",
                format!("{spg} must be a positive multiple of gradient_accumulation_steps ({ga})"),
            );
        }
        if g < 2 || self.rows() % g != 0 {
            return bad(
                "num_generations",
                format!(
                    "GRPO needs at least 2 completions a prompt (got {g}), and a generation's {} rows \
                     (batch_size × steps_per_generation) a multiple of them",
                    self.rows()
                ),
            );
        }
        if self.num_iterations == 0 {
            return bad("num_iterations", "must be at least 1".into());
        }
        if self.reward_weights.is_empty() || self.reward_weights.iter().any(|w| !w.is_finite()) {
            return bad("reward_weights", format!("{:?}: one finite weight a reward function", self.reward_weights));
        }
        if self.max_steps == Some(0) {
            return bad("max_steps", "must be at least 1".into());
        }
        if let Some((lo, hi)) =
            self.reward_clip_range.filter(|(lo, hi)| !(lo.is_finite() && hi.is_finite() && lo <= hi))
        {
            return bad("reward_clip_range", format!("({lo}, {hi}): two finite numbers, the first ≤ the second"));
        }
        Ok(())
    }

    /// The settings that belong to one estimator given to the other: a
    /// `TrainOption` error naming it.
    pub fn validate_for(&self, estimator: Estimator) -> Result<()> {
        let bad = |option, owner: &str| Err(Error::TrainOption { option, detail: format!("applies to {owner} only") });
        match estimator {
            Estimator::Grpo if self.normalize_advantages => bad("normalize_advantages", "rloo"),
            Estimator::Grpo if self.reward_clip_range.is_some() => bad("reward_clip_range", "rloo"),
            Estimator::Rloo if self.scale_rewards != ScaleRewards::Group => bad("scale_rewards", "grpo"),
            _ => Ok(()),
        }
    }
}

/// −log π of each label of `batch` under `hooks` at `temperature`, (B, T)
/// as log-probabilities at the label positions (0 elsewhere): the sampling
/// policy's scores (TRL's `old_per_token_logps`), without dropout.
pub async fn label_logps(
    gpu: &Gpu,
    model: &Model,
    hooks: &dyn Hooks,
    batch: &Batch,
    temperature: f32,
) -> Result<Vec<Vec<f32>>> {
    let (targets, _) = shift_labels_after(&batch.labels, model.config.vocab_size, 0)?;
    let (b, m, d) = (batch.labels.len(), targets.len(), model.config.hidden_size);
    let per = m / b.max(1);
    let mut rec = Recorder::new(gpu);
    let ids = model.input_ids(gpu, &batch.input_ids)?;
    let (xn, _) = model.hidden_checkpointed(&mut rec, &ids, hooks, false)?;
    let t = Tensor::from_slice(gpu, &[m], &targets)?;
    let (token_loss, _) = token_losses(&mut rec, &xn.reshape(&[m, d])?, model.head(hooks)?, &t, temperature)?;
    rec.submit()?;
    let losses = token_loss.to_vec::<f32>(gpu).await?;
    Ok(losses.chunks(per).map(|row| std::iter::once(0.0).chain(row[..per - 1].iter().map(|&l| -l)).collect()).collect())
}

/// A generation's advantages and its batches' scores: with `keep_old` (a
/// step will see a moved policy), or under RLOO with β > 0, each batch is
/// scored by the policy that sampled it (`adapter`; kept as `old_logps` for
/// the ratio with `keep_old`);
/// under RLOO with β > 0 also by the reference (every hook off), and each
/// completion's summed KL is taken from its reward. The advantages of the
/// completions (`combined` rewards, `order`: each batch row's completion)
/// are set on the batches' rows; returns them with RLOO's generation `kl`.
async fn score_generation(
    (gpu, model, adapter): (&Gpu, &Model, &dyn Hooks),
    loss: &GrpoLoss,
    settings: &GrpoSettings,
    (combined, order, keep_old): (&[f32], &[usize], bool),
    batches: &mut [Batch],
) -> Result<(Advantages, Option<f32>)> {
    let g = settings.num_generations;
    let rloo_kl = loss.estimator == Estimator::Rloo && loss.beta != 0.0;
    // RLOO's KL of each row's completion, and the generation's Σ of it and its tokens.
    let mut row_kl = Vec::with_capacity(order.len());
    let (mut kl_sum, mut kl_tokens) = (0.0f64, 0usize);
    if keep_old || rloo_kl {
        for b in batches.iter_mut() {
            let old = label_logps(gpu, model, adapter, b, loss.temperature).await?;
            if rloo_kl {
                let reference = label_logps(gpu, model, &NoHooks, b, loss.temperature).await?;
                for ((old, reference), labels) in old.iter().zip(&reference).zip(&b.labels) {
                    let masked = labels.iter().enumerate().filter(|(_, &l)| l != IGNORE_INDEX).map(|(t, _)| t);
                    let kl = masked.map(|t| old[t] - reference[t]).fold(0.0f32, |a, d| a + d);
                    kl_sum += kl as f64;
                    kl_tokens += labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
                    row_kl.push(kl);
                }
            }
            if keep_old {
                b.old_logps = Some(old);
            }
        }
    }
    let advantages = match loss.estimator {
        Estimator::Grpo => advantages(combined, g, settings.scale_rewards)?,
        Estimator::Rloo => {
            let mut penalised = combined.to_vec();
            for (&i, kl) in order.iter().zip(&row_kl) {
                penalised[i] -= loss.beta * kl;
            }
            rloo_advantages(&penalised, g, settings.normalize_advantages)?
        }
    };
    let mut row_advantages = order.iter().map(|&i| advantages.advantages[i]);
    for b in batches.iter_mut() {
        b.advantages = Some(row_advantages.by_ref().take(b.labels.len()).collect());
    }
    // RLOO's kl metric: the generation's mean over its completion tokens (TRL's clamp(min=1)).
    let kl = rloo_kl.then(|| (kl_sum / kl_tokens.max(1) as f64) as f32);
    Ok((advantages, kl))
}

/// One generation's GRPO (or RLOO): `completions` (`num_generations` a prompt, in the
/// prompts' order) of `prompts`, scored by each reward function
/// (`rewards[f][i]`, `None` where a function gives none): the rewards
/// combined, the advantages, the rows (shuffled with `settings.shuffle`) cut
/// into micro-batches, and [`steps`](GrpoSettings::steps) of `trainer`'s
/// optimizer steps on them at `schedule`'s rates (its objective must be
/// [`Objective::Grpo`](crate::train::preference::Objective::Grpo)): each
/// pass over the generation (`num_iterations`) steps on consecutive
/// `gradient_accumulation_steps` micro-batches. Where a step sees a moved
/// policy, the completions are first scored by the policy that sampled them;
/// under RLOO with β > 0 they are, and by the reference (every adapter hook
/// off), and each completion's KL is taken from its reward.
pub async fn grpo_step(
    gpu: &Gpu,
    model: &Model,
    trainer: &mut Trainer,
    (prompts, completions): (&[&[u32]], &[Vec<u32>]),
    rewards: &[Vec<Option<f32>>],
    settings: &GrpoSettings,
    schedule: &LrSchedule,
) -> Result<GrpoStepStats> {
    let crate::train::preference::Objective::Grpo(loss) = trainer.objective else {
        return Err(Error::invalid("GRPO step", format!("the trainer's objective is {}", trainer.objective.name())));
    };
    settings.validate()?;
    settings.validate_for(loss.estimator)?;
    let g = settings.num_generations;
    if prompts.len() * g != completions.len() || completions.len() != settings.rows() {
        return Err(Error::invalid(
            "GRPO step",
            format!(
                "{} completions for {} prompts of {g} each; a generation is {} rows",
                completions.len(),
                prompts.len(),
                settings.rows()
            ),
        ));
    }
    let mut combined = combine_rewards(rewards, &settings.reward_weights)?;
    if let Some((lo, hi)) = settings.reward_clip_range {
        combined.iter_mut().for_each(|r| *r = r.clamp(lo, hi));
    }
    let mut order: Vec<usize> = (0..completions.len()).collect();
    if let Some(seed) = settings.shuffle {
        Rng::new(seed).shuffle(&mut order);
    }
    let rows: Vec<(&[u32], &[u32])> = order.iter().map(|&i| (prompts[i / g], completions[i].as_slice())).collect();
    // The advantages come in below, once the rows have been scored.
    let mut batches = completion_batches(
        &rows,
        &vec![0.0; rows.len()],
        (&settings.eos, settings.pad),
        settings.mask_truncated_completions,
        settings.batch_size,
    )?;
    let scoring = (combined.as_slice(), order.as_slice(), settings.scores_old_policy());
    let (advantages, kl) =
        score_generation((gpu, model, &trainer.adapter), &loss, settings, scoring, &mut batches).await?;
    let ga = settings.gradient_accumulation_steps;
    let mut steps = Vec::with_capacity(settings.steps_taken());
    for micro in batches.chunks(ga).cycle().take(settings.steps_taken()) {
        let lr = schedule.lr(trainer.step);
        steps.push(trainer.step(gpu, model, micro, lr).await?);
    }
    // TRL's num_tokens: every row's prompt and completion, once a generation.
    let generation_tokens: usize = completions.iter().enumerate().map(|(i, c)| prompts[i / g].len() + c.len()).sum();
    trainer.tokens_seen += generation_tokens as u64;
    let (reward_means, reward_stds) = reward_stats(rewards).into_iter().unzip();
    Ok(GrpoStepStats {
        steps,
        kl,
        rewards: combined,
        advantages,
        reward_means,
        reward_stds,
        lengths: CompletionLengths::of(completions, &settings.eos, settings.pad),
        num_tokens: trainer.tokens_seen,
    })
}
