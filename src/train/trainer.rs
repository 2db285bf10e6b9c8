//! The training step: forward, loss, backward, clipping and AdamW for one
//! optimizer step over one or more micro-batches, recorded into one
//! submission and read back once (the loss and the gradient norm).
//!
//! ```text
//! N      = non-ignored targets of all the step's micro-batches
//! loss   = Σ_micro Σ_tokens CE / N              (transformers' num_items_in_batch)
//! g      = ∂loss/∂θ, summed over micro-batches
//! loss, g += the method's terms outside the model   (peft::step)
//! g     *= min(max_norm / (‖g‖ + 1e-6), 1)      (torch.nn.utils.clip_grad_norm_)
//! θ, m, v = AdamW(θ, g, m, v, lr(step), step)   (torch.optim.AdamW)
//! the method's state from θ and g                (peft::step)
//! ```
//!
//! A step whose loss or gradient norm is NaN or infinite fails with
//! [`Error::NonFinite`] and leaves the adapter and optimizer state as they
//! were: the step copies θ, m and v aside on the GPU before updating them and
//! copies them back when the read-back numbers are not finite.

use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::adamw::{adamw_step, AdamWParams, GradScale};
use crate::kernels::elementwise::{copy, fill};
use crate::kernels::preference::{DpoLoss, DpoLossType, PreferenceLoss, STATS};
use crate::kernels::reduce::{clip_coefficient, sum_squares_many};
use crate::model::llama::loss::chunked_lm_loss;
use crate::model::llama::{shift_labels_after, EmbeddingNoise, Hooks, Model, SftLoss, IGNORE_INDEX};
use crate::peft::adapter::{hooks_of, Adapter};
use crate::peft::step::StepDone;
use crate::train::classification::{record_classification_micro, ClassificationLoss};
use crate::train::data::Batch;
use crate::train::grpo::{record_grpo_micro, Estimator, GrpoRows};
use crate::train::preference::Objective;
use crate::train::preference_loss::{record_preference_eval, record_preference_micro, PairRows};
use crate::train::reward::{record_reward_micro, RewardStats};
use crate::train::sft_metrics::metric_weights;
use crate::util::rng::Rng;

/// The optimizer's settings for a run (the learning rate comes per step,
/// from the schedule).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clipping; 0 turns it off.
    pub max_grad_norm: f32,
    /// LoRA+ (PEFT's `create_loraplus_optimizer`): B's learning rate is this
    /// many times A's. `None` trains every tensor at the same rate.
    pub loraplus_lr_ratio: Option<f64>,
    /// Under LoRA+, the learning rate of a LoRA on `embed_tokens` (both its
    /// factors; PEFT's `loraplus_lr_embedding`, default 1e-6) where the
    /// run's is [`Trainer::base_lr`]: it follows the schedule as the others.
    pub loraplus_lr_embedding: f64,
}

impl Default for OptimizerConfig {
    /// transformers' `TrainingArguments` defaults: betas (0.9, 0.999), eps
    /// 1e-8, weight decay 0, max_grad_norm 1.
    fn default() -> Self {
        OptimizerConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            loraplus_lr_ratio: None,
            loraplus_lr_embedding: 1e-6,
        }
    }
}

/// What one optimizer step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// 1-based: the number of optimizer steps done after this one.
    pub step: u64,
    /// The loss of this step's batch before its update (mean over its N targets).
    pub loss: f32,
    /// The learning rate this step used.
    pub lr: f64,
    /// ‖g‖ before clipping.
    pub grad_norm: f32,
    /// N: the targets the loss averages over (preference: the completion tokens).
    pub tokens: usize,
    /// The metrics TRL logs for a preference step (means over the step's pairs).
    pub preference: Option<PreferenceStats>,
    /// The metrics TRL's `KTOTrainer` logs for a KTO step.
    pub kto: Option<KtoStats>,
    /// GRPO with β > 0: TRL's `kl`, the mean per-token KL to the reference
    /// over the step's completion tokens.
    pub kl: Option<f32>,
    /// GRPO: TRL's `entropy`, the mean entropy of the policy's next-token
    /// distribution (at the temperature) over the step's completion tokens.
    /// SFT: `SFTTrainer`'s, the mean over each micro-batch's tokens (its
    /// attention mask) averaged over the micro-batches (`train::sft_metrics`).
    pub entropy: Option<f32>,
    /// SFT: TRL's `mean_token_accuracy`, the share of the labels the logits'
    /// argmax predicts, each micro-batch's averaged over the micro-batches.
    pub mean_token_accuracy: Option<f32>,
    /// SFT: TRL's `num_tokens`, the tokens trained on so far (attention
    /// masks' sums) in this run and the runs it resumes.
    pub num_tokens: Option<u64>,
    /// GRPO: TRL's `clip_ratio/low_mean`, `clip_ratio/high_mean` and
    /// `clip_ratio/region_mean`, the fractions of completion tokens (GSPO:
    /// of completions) whose ratio the clipping cut (0 at a generation's
    /// first step).
    pub clip_ratio: Option<[f32; 3]>,
    /// Reward modelling: what TRL's `RewardTrainer` logs beside the loss.
    pub reward: Option<RewardStats>,
}

/// What TRL's `KTOTrainer` logs for a step (sums over the step's examples;
/// with gradient accumulation, their mean over its micro-batches). The
/// browser's step event carries it as is (`kl`, `rewardsChosenSum`, …).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KtoStats {
    /// `kl`: the batch's KL estimate, max(0, mean of π − ref over the KL rows).
    pub kl: f32,
    /// `rewards/chosen_sum`, `rewards/rejected_sum`: β·(π − ref) summed over
    /// the desirable and the undesirable examples.
    pub rewards_chosen_sum: f32,
    pub rewards_rejected_sum: f32,
    /// `logps/chosen_sum`, `logps/rejected_sum`: π summed the same way.
    pub logps_chosen_sum: f32,
    pub logps_rejected_sum: f32,
    /// `count/chosen`, `count/rejected`.
    pub count_chosen: f32,
    pub count_rejected: f32,
}

/// What TRL's `DPOTrainer` and `ORPOTrainer` log for a step, as they name it.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferenceStats {
    /// `rewards/chosen`: β·(π − ref) of the chosen answers (ORPO: β·π, π the mean log-prob).
    pub rewards_chosen: f32,
    /// `rewards/rejected`.
    pub rewards_rejected: f32,
    /// `rewards/accuracies`: the share of pairs whose chosen reward is the larger.
    pub rewards_accuracies: f32,
    /// `rewards/margins`: chosen − rejected.
    pub rewards_margins: f32,
    /// ORPO: `nll_loss`, `log_odds_ratio` and `log_odds_chosen`.
    pub orpo: Option<[f32; 3]>,
    /// DPO with `rpo_alpha`, and CPO: `nll_loss`, the chosen completions' mean cross-entropy.
    pub nll_loss: Option<f32>,
    /// `logps/chosen`, `logps/rejected`: the policy's π of the chosen and the rejected answers (ORPO
    /// and IPO: per-token means), averaged over the pairs.
    pub logps_chosen: f32,
    pub logps_rejected: f32,
    /// DPO: `logits/chosen`, `logits/rejected`, the mean of the policy's
    /// logits over the chosen (rejected) completions' positions and the
    /// vocabulary. (ORPO's, CPO's and KTO's take in the padding's positions,
    /// whose logits depend on how the padding attends: not here.)
    pub logits: Option<[f32; 2]>,
}

impl PreferenceStats {
    fn from_stats(loss: PreferenceLoss, s: &[f32]) -> PreferenceStats {
        PreferenceStats {
            rewards_chosen: s[1],
            rewards_rejected: s[2],
            rewards_accuracies: s[3],
            rewards_margins: s[4],
            orpo: matches!(loss, PreferenceLoss::Orpo { .. }).then(|| [s[5], s[6], s[7]]),
            nll_loss: match loss {
                PreferenceLoss::Dpo(DpoLoss { rpo_alpha, loss_type, .. }) => {
                    (rpo_alpha.is_some() || loss_type.contains(DpoLossType::Sft)).then(|| s[5])
                }
                PreferenceLoss::Cpo(_) => Some(s[5]),
                _ => None,
            },
            logps_chosen: s[8],
            logps_rejected: s[9],
            logits: matches!(loss, PreferenceLoss::Dpo(_)).then(|| [s[10], s[11]]),
        }
    }

    /// Each metric by TRL's name (`rewards/chosen`, …, ORPO's and the NLL's where there are).
    pub fn metrics(&self) -> Vec<(&'static str, f32)> {
        let mut v = vec![
            ("rewards/chosen", self.rewards_chosen),
            ("rewards/rejected", self.rewards_rejected),
            ("rewards/accuracies", self.rewards_accuracies),
            ("rewards/margins", self.rewards_margins),
            ("logps/chosen", self.logps_chosen),
            ("logps/rejected", self.logps_rejected),
        ];
        if let Some([chosen, rejected]) = self.logits {
            v.extend([("logits/chosen", chosen), ("logits/rejected", rejected)]);
        }
        if let Some([nll, ratio, chosen]) = self.orpo {
            v.extend([("nll_loss", nll), ("log_odds_ratio", ratio), ("log_odds_chosen", chosen)]);
        }
        v.extend(self.nll_loss.map(|nll| ("nll_loss", nll)));
        v
    }
}

/// A tensor's AdamW settings under LoRA+, as PEFT's `create_loraplus_optimizer`
/// groups them: an embedding LoRA's factors at `embedding` (the learning rate
/// its group has now), `lora_B` and 1-D tensors at `ratio` times the learning
/// rate (biases without weight decay), everything else at the learning rate.
/// Each group's weight decay is the run's (PEFT's `loraplus_weight_decay`,
/// which replaces the optimizer's own).
fn loraplus_group(hp: &AdamWParams, (ratio, embedding): (f64, f64), key: &str, t: &Tensor) -> AdamWParams {
    if key.contains(".lora_embedding_") {
        AdamWParams { lr: embedding, ..*hp }
    } else if key.contains("lora_B") || t.shape().len() == 1 {
        let weight_decay = if key.contains("bias") { 0.0 } else { hp.weight_decay };
        AdamWParams { lr: hp.lr * ratio, weight_decay, ..*hp }
    } else {
        *hp
    }
}

/// What TRL's preference trainers report for an evaluation (`evaluate()`'s
/// `eval_loss` and `eval_`-prefixed metrics).
#[derive(Clone, Debug, PartialEq)]
pub struct PreferenceEval {
    /// `eval_loss`: each batch's loss weighted by its pairs (KTO: examples),
    /// as transformers' evaluation loop repeats it `batch_size` times.
    pub loss: f64,
    /// TRL's metrics by name (`rewards/chosen`, …). DPO, ORPO and CPO: each
    /// batch's value averaged over the batches, as their `log` does; KTO's
    /// `log`: rewards and log-probs summed over the batches and divided by
    /// the examples counted, `rewards/margins` their difference, `kl` the
    /// batches' mean.
    pub metrics: Vec<(&'static str, f64)>,
    pub batches: usize,
}

impl PreferenceEval {
    /// From each batch's units (pairs or examples) and STATS values.
    fn from_batches(loss: PreferenceLoss, batches: &[(usize, Vec<f32>)]) -> PreferenceEval {
        let units: usize = batches.iter().map(|(u, _)| u).sum();
        let weighted: f64 = batches.iter().map(|(u, s)| *u as f64 * s[0] as f64).sum();
        let total = |i: usize| batches.iter().map(|(_, s)| s[i] as f64).sum::<f64>();
        let mut metrics: Vec<(&'static str, f64)> = Vec::new();
        if let PreferenceLoss::Kto(_) = loss {
            let (count_chosen, count_rejected) = (total(6), total(7));
            if count_chosen > 0.0 {
                metrics.push(("rewards/chosen", total(1) / count_chosen));
                metrics.push(("logps/chosen", total(4) / count_chosen));
            }
            if count_rejected > 0.0 {
                metrics.push(("rewards/rejected", total(2) / count_rejected));
                metrics.push(("logps/rejected", total(5) / count_rejected));
            }
            if count_chosen > 0.0 && count_rejected > 0.0 {
                metrics.push(("rewards/margins", total(1) / count_chosen - total(2) / count_rejected));
            }
            metrics.push(("kl", total(3) / batches.len() as f64)); // the batches' mean
        } else {
            let named: Vec<_> = batches.iter().map(|(_, s)| PreferenceStats::from_stats(loss, s).metrics()).collect();
            for (k, (name, _)) in named[0].iter().enumerate() {
                metrics.push((name, named.iter().map(|m| m[k].1 as f64).sum::<f64>() / named.len() as f64));
            }
        }
        PreferenceEval { loss: weighted / units.max(1) as f64, metrics, batches: batches.len() }
    }
}

/// Loss and TRL's metrics over a held-out set, as `SFTTrainer.evaluate()`
/// reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalStats {
    /// `eval_loss`: each batch's mean cross-entropy (over its non-ignored
    /// targets), weighted by its rows, as transformers' evaluation loop. A
    /// batch without a target to predict is left out (transformers: NaN).
    pub loss: f32,
    /// exp(loss).
    pub perplexity: f64,
    /// The non-ignored targets.
    pub tokens: usize,
    /// `eval_entropy` and `eval_mean_token_accuracy`: each batch's, averaged
    /// over the batches (`train::sft_metrics`).
    pub entropy: f32,
    pub mean_token_accuracy: f32,
}

/// An adapter being trained: the parameters, their gradients, AdamW's two
/// moments, the step count and the dropout RNG.
#[derive(Debug)]
pub struct Trainer {
    pub adapter: Adapter,
    grads: Adapter,
    m: Adapter,
    v: Adapter,
    /// θ, m, v as they were before the step in flight (restored if it fails).
    backup: [Adapter; 3],
    /// The method's state across steps (AdaLoRA's allocator) before the step in flight.
    state_backup: Vec<Tensor>,
    /// The objective's state across steps: DPO's bco_pair running reward
    /// mean and its count (2), and its value before the step in flight.
    pub(crate) running: Tensor,
    running_backup: Tensor,
    pub optimizer: OptimizerConfig,
    /// Optimizer steps done.
    pub step: u64,
    /// Draws one dropout seed per micro-batch.
    rng: Rng,
    /// Recompute each layer's activations in the backward instead of keeping
    /// them (less memory, one more forward per step, the same gradients).
    pub gradient_checkpointing: bool,
    /// What the steps minimise: SFT's loss, or DPO or ORPO on batches of pairs.
    pub objective: Objective,
    /// NEFTune (transformers' `neftune_noise_alpha`): SFT steps add uniform
    /// noise of magnitude α / √(T·D) to the embeddings, from one seed a
    /// micro-batch drawn after the dropout seeds. `None`: off.
    pub neftune_noise_alpha: Option<f32>,
    /// TRL's `disable_dropout`: the steps apply no dropout, the adapter's
    /// included (TRL sets every Dropout's p to 0; DPO, ORPO, CPO, KTO and
    /// the reward trainer do by default, [`TrainRecipe::disables_dropout`](crate::train::recipe::TrainRecipe::disables_dropout)).
    pub disable_dropout: bool,
    /// TRL's `num_tokens`: the tokens (attention masks' sums) the SFT steps
    /// so far trained on, this run's and those of the runs it resumes.
    pub tokens_seen: u64,
    /// The run's peak learning rate (its schedule's base), which a step's
    /// `lr` is a fraction of: LoRA+'s embedding group is scaled by the same
    /// fraction, as PEFT's schedulers scale every group. `None`: each step's
    /// `lr` is taken as the peak.
    pub base_lr: Option<f64>,
}

fn check_optimizer(o: &OptimizerConfig) -> Result<()> {
    let hp = AdamWParams { lr: 0.0, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weight_decay: o.weight_decay };
    let ok = |v: f64| v.is_finite() && v >= 0.0;
    if !(ok(hp.eps) && ok(hp.weight_decay) && ok(hp.beta1) && ok(hp.beta2) && hp.beta1 < 1.0 && hp.beta2 < 1.0) {
        return Err(Error::invalid("Trainer", format!("eps and weight_decay must be ≥ 0 and betas in [0, 1): {o:?}")));
    }
    if let Some(ratio) = o.loraplus_lr_ratio.filter(|r| !(r.is_finite() && *r > 0.0)) {
        return Err(Error::invalid("Trainer", format!("loraplus_lr_ratio must be a finite number > 0, got {ratio}")));
    }
    if !(o.loraplus_lr_embedding.is_finite() && o.loraplus_lr_embedding >= 0.0) {
        return Err(Error::invalid(
            "Trainer",
            format!("loraplus_lr_embedding must be a finite number ≥ 0, got {}", o.loraplus_lr_embedding),
        ));
    }
    if !(o.max_grad_norm >= 0.0 && o.max_grad_norm.is_finite()) {
        return Err(Error::invalid("Trainer", format!("max_grad_norm must be ≥ 0 (0 = off), got {}", o.max_grad_norm)));
    }
    Ok(())
}

impl Trainer {
    /// Starts training `adapter` from step 0 with zero moments.
    pub fn new(gpu: &Gpu, mut adapter: Adapter, optimizer: OptimizerConfig, seed: u64) -> Result<Trainer> {
        check_optimizer(&optimizer)?;
        adapter.init_training_state(gpu)?;
        let zeros = || adapter.zeros_like(gpu);
        let state_backup = adapter
            .state_tensors()
            .iter()
            .map(|(_, t)| Tensor::zeros(gpu, t.shape(), DType::F32))
            .collect::<Result<_>>()?;
        Ok(Trainer {
            state_backup,
            running: Tensor::zeros(gpu, &[2], DType::F32)?,
            running_backup: Tensor::zeros(gpu, &[2], DType::F32)?,
            grads: zeros()?,
            m: zeros()?,
            v: zeros()?,
            backup: [zeros()?, zeros()?, zeros()?],
            adapter,
            optimizer,
            step: 0,
            rng: Rng::new(seed),
            gradient_checkpointing: false,
            objective: Objective::Sft(SftLoss::Nll),
            neftune_noise_alpha: None,
            disable_dropout: false,
            tokens_seen: 0,
            base_lr: None,
        })
    }

    /// Resumes from saved state (see `train::checkpoint`).
    pub(crate) fn from_parts(
        gpu: &Gpu,
        adapter: Adapter,
        m: Adapter,
        v: Adapter,
        optimizer: OptimizerConfig,
        step: u64,
        rng_state: u64,
    ) -> Result<Trainer> {
        let mut t = Trainer::new(gpu, adapter, optimizer, 0)?;
        t.rng = Rng::from_state(rng_state);
        t.m = m;
        t.v = v;
        t.step = step;
        Ok(t)
    }

    /// AdamW's first and second moments.
    pub fn moments(&self) -> (&Adapter, &Adapter) {
        (&self.m, &self.v)
    }

    /// The gradients of the last step (before clipping: clipping scales them
    /// on the fly inside AdamW).
    pub fn gradients(&self) -> &Adapter {
        &self.grads
    }

    /// The dropout RNG's state.
    pub fn rng_state(&self) -> u64 {
        self.rng.state()
    }

    /// GPU bytes of the training state: parameters, gradients, moments and backup.
    pub fn state_bytes(&self) -> u64 {
        self.adapter.bytes() * 7
    }

    /// One optimizer step over `micro` (gradient accumulation when more than
    /// one) at learning rate `lr`. On any error the trainer is as it was
    /// before the call: parameters, moments, step count and dropout RNG.
    pub async fn step(&mut self, gpu: &Gpu, model: &Model, micro: &[Batch], lr: f64) -> Result<StepStats> {
        let rng = self.rng.clone();
        let result = self.try_step(gpu, model, micro, lr).await;
        if result.is_err() {
            self.rng = rng;
        }
        result
    }

    async fn try_step(&mut self, gpu: &Gpu, model: &Model, micro: &[Batch], lr: f64) -> Result<StepStats> {
        const OP: &str = "Trainer::step";
        let number = self.step + 1;
        if micro.is_empty() {
            return Err(Error::invalid(OP, format!("step {number}: no micro-batch")));
        }
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::invalid(OP, format!("step {number}: the learning rate must be ≥ 0, got {lr}")));
        }
        if let Some(alpha) = self.neftune_noise_alpha {
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(Error::invalid(
                    OP,
                    format!("neftune_noise_alpha must be a finite number > 0, got {alpha}"),
                ));
            }
            if !self.objective.is_sft() {
                return Err(Error::invalid(
                    OP,
                    "NEFTune's noise is for SFT: the preference objectives train without it",
                ));
            }
        }
        if self.objective == Objective::Sft(SftLoss::Dft) && self.adapter.virtual_tokens() > 0 {
            return Err(Error::invalid(
                OP,
                "SFT's dft loss with virtual tokens: TRL's dft_loss cannot pair prompt tuning's longer logits with \
                 the labels, so there is nothing to match; train with nll",
            ));
        }
        let sft_loss = self.objective.sft_loss();
        let mut tokens = 0;
        let mut shifted = Vec::with_capacity(micro.len());
        let mut weights = Vec::with_capacity(micro.len()); // SFT's metrics (train::sft_metrics)
        let mut pairs = Vec::new();
        let mut groups = Vec::new();
        let virtual_tokens = self.adapter.virtual_tokens();
        // GRPO's dapo normaliser: the generation's generated tokens (TRL's num_items_in_batch), or the
        // step's labels where the batches do not say.
        let vocab = model.config.vocab_size;
        let generated = match micro.iter().map(|b| b.generated_tokens).max() {
            Some(n) if n > 0 => n,
            _ => micro.iter().flat_map(|b| b.labels.iter().flatten()).filter(|&&l| l != IGNORE_INDEX).count(),
        };
        crate::train::reward::check_adapter_for(&self.objective, &self.adapter)?;
        if let Objective::Reward(loss) = self.objective {
            loss.validate()?;
        }
        for b in micro {
            if let Objective::Classification(_) = self.objective {
                if b.position_ids.is_some() || virtual_tokens > 0 {
                    return Err(Error::invalid(
                        OP,
                        format!("step {number}: a classifier reads whole rows, never packed, without virtual tokens"),
                    ));
                }
                tokens += crate::train::classification::counted_rows(b);
                continue;
            }
            if let Objective::Reward(_) = self.objective {
                if b.position_ids.is_some() || virtual_tokens > 0 || b.input_ids.len() % 2 != 0 {
                    return Err(Error::invalid(
                        OP,
                        format!("step {number}: a reward batch's rows are whole pairs, never packed, without virtual tokens"),
                    ));
                }
                tokens += b.unpadded_tokens();
                continue;
            }
            if let Objective::Grpo(loss) = self.objective {
                if b.position_ids.is_some() || virtual_tokens > 0 {
                    return Err(Error::invalid(
                        OP,
                        format!("step {number}: GRPO trains on unpacked rows, without virtual tokens"),
                    ));
                }
                let rows = GrpoRows::new(b, vocab, &loss, micro.len(), generated)?;
                tokens += rows.tokens;
                groups.push(rows);
                continue;
            }
            if let Objective::Preference(loss) = self.objective {
                if b.position_ids.is_some() {
                    return Err(Error::invalid(
                        OP,
                        format!("step {number}: a preference batch's rows are whole pairs, never packed"),
                    ));
                }
                let rows = PairRows::new(b, model.config.vocab_size, virtual_tokens, loss)?;
                tokens += rows.completion_tokens;
                pairs.push(rows);
                continue;
            }
            let (targets, count) = shift_labels_after(&b.labels, model.config.vocab_size, virtual_tokens)?;
            tokens += count;
            weights.push(metric_weights(b, &targets, virtual_tokens, 1.0 / micro.len() as f32));
            shifted.push(targets);
        }
        // (GRPO's completions may all be masked, truncated ones with mask_truncated_completions: a step of
        // zero gradients, as TRL's.)
        if tokens == 0 && !matches!(self.objective, Objective::Grpo(_)) {
            return Err(Error::invalid(OP, format!("step {number}: no token of this batch has a label to learn")));
        }
        let dropout = self.dropout_active();
        let seeds: Vec<Option<u32>> = micro.iter().map(|_| dropout.then(|| self.rng.next_u32())).collect();
        let noise: Vec<Option<EmbeddingNoise>> = micro
            .iter()
            .map(|b| {
                let alpha = self.neftune_noise_alpha?;
                Some(EmbeddingNoise { alpha, seed: self.rng.next_u32(), tokens: b.noise_tokens() })
            })
            .collect();

        let mut rec = Recorder::new(gpu);
        for (_, g) in self.grads.tensors() {
            fill(&mut rec, g, 0.0)?;
        }
        if let Objective::Preference(PreferenceLoss::Dpo(d)) = self.objective {
            if d.loss_type.contains(DpoLossType::BcoPair) {
                copy(&mut rec, &self.running, &self.running_backup)?; // the loss below updates it
            }
        }
        // The loss, then (preference) TRL's metrics: STATS values, the loss first.
        let stats = Tensor::zeros(gpu, &[STATS], DType::F32)?;
        let loss = stats.reshape_prefix(&[1])?;
        let sft_metrics = Tensor::zeros(gpu, &[2], DType::F32)?; // entropy, mean_token_accuracy
        if let Objective::Preference(objective) = self.objective {
            let scale = 1.0 / micro.len() as f32; // the mean over micro-batches, as transformers' Trainer
            for ((b, rows), seed) in micro.iter().zip(&pairs).zip(&seeds) {
                let pass = self.adapter.pass(*seed, Some(&self.grads))?;
                let ckpt = self.gradient_checkpointing;
                let acc = (scale, &stats, &self.running);
                record_preference_micro(&mut rec, model, objective, b, rows, pass.hooks(), ckpt, acc)?;
            }
        }
        if let Objective::Reward(loss) = self.objective {
            let scale = 1.0 / micro.len() as f32; // the mean over micro-batches, of the loss and of each metric
            for (b, seed) in micro.iter().zip(&seeds) {
                let pass = self.adapter.pass(*seed, Some(&self.grads))?;
                let hooks = pass.hooks();
                record_reward_micro(
                    &mut rec,
                    model,
                    &loss,
                    b,
                    hooks,
                    self.gradient_checkpointing,
                    (&stats, scale),
                    true,
                )?;
            }
        }
        if let Objective::Classification(loss) = self.objective {
            for (b, seed) in micro.iter().zip(&seeds) {
                let pass = self.adapter.pass(*seed, Some(&self.grads))?;
                let stats = (&stats, ClassificationLoss::MICRO_SCALE);
                record_classification_micro(
                    &mut rec,
                    model,
                    &loss,
                    b,
                    pass.hooks(),
                    self.gradient_checkpointing,
                    stats,
                    true,
                )?;
            }
        }
        if let Objective::Grpo(loss) = self.objective {
            let share = 1.0 / micro.len() as f32; // TRL's metrics: the mean of the micro-batches' means
            for ((b, rows), seed) in micro.iter().zip(&groups).zip(&seeds) {
                let pass = self.adapter.pass(*seed, Some(&self.grads))?;
                record_grpo_micro(
                    &mut rec,
                    model,
                    &loss,
                    b,
                    rows,
                    (pass.hooks(), self.gradient_checkpointing, true),
                    (&stats, share),
                )?;
            }
        }
        for ((((b, targets), weights), seed), noise) in micro.iter().zip(&shifted).zip(&weights).zip(&seeds).zip(&noise)
        {
            let metrics = (weights.as_slice(), &sft_metrics);
            self.record_micro(&mut rec, model, b, (targets, tokens, sft_loss), (*seed, *noise), (&loss, metrics))?;
        }
        self.adapter.record_after_backward(&mut rec, &self.grads, &loss)?;

        let grads: Vec<&Tensor> = self.grads.tensors().into_iter().map(|(_, t)| t).collect();
        let sumsq = sum_squares_many(&mut rec, &grads)?;
        let clip_on = self.optimizer.max_grad_norm > 0.0;
        let clip = clip_coefficient(&mut rec, &sumsq, if clip_on { self.optimizer.max_grad_norm } else { f32::MAX })?;
        self.record_backup(&mut rec, false)?;
        let o = &self.optimizer;
        let hp = AdamWParams { lr, beta1: o.beta1, beta2: o.beta2, eps: o.eps, weight_decay: o.weight_decay };
        let scale = if clip_on { GradScale::Clip(&clip) } else { GradScale::None };
        let params = self.adapter.tensors();
        let (ms, vs) = (self.m.tensors(), self.v.tensors());
        let step = u32::try_from(number).map_err(|_| Error::invalid(OP, "more than 2³² steps"))?;
        for (((p, g), m), v) in params.iter().zip(&grads).zip(&ms).zip(&vs) {
            let hp = match o.loraplus_lr_ratio {
                Some(ratio) => {
                    let fraction = self.base_lr.map_or(1.0, |base| lr / base);
                    loraplus_group(&hp, (ratio, o.loraplus_lr_embedding * fraction), &p.0, p.1)
                }
                None => hp,
            };
            adamw_step(&mut rec, p.1, g, m.1, v.1, &hp, step, scale)?;
        }
        let done = StepDone { grads: &self.grads, clip: clip_on.then_some(&clip), step: number };
        self.adapter.record_after_update(&mut rec, done)?;
        // Read back: [the clipping pair (norm, coefficient), stats (the loss first), SFT's metrics].
        let out = Tensor::zeros(gpu, &[2 + STATS + 2], DType::F32)?;
        rec.copy(&clip, 0, &out, 0, 8)?;
        rec.copy(&stats, 0, &out, 8, STATS as u64 * 4)?;
        rec.copy(&sft_metrics, 0, &out, (2 + STATS as u64) * 4, 8)?;
        rec.submit()?;
        let read = match out.to_vec::<f32>(gpu).await {
            Ok(r) => r,
            Err(e) => {
                // The update may have run: put θ, m, v back (if the device still can).
                self.restore(gpu).await;
                return Err(e);
            }
        };
        let (grad_norm, loss) = (read[0], read[2]);
        let bad = if !loss.is_finite() {
            Some(("loss", loss))
        } else if !grad_norm.is_finite() {
            Some(("gradient norm", grad_norm))
        } else {
            None
        };
        if let Some((what, value)) = bad {
            self.restore(gpu).await;
            return Err(Error::NonFinite { step: number, what, value });
        }
        self.step = number;
        let sft = self.objective.is_sft();
        let reward = matches!(self.objective, Objective::Reward(_));
        if sft || reward {
            self.tokens_seen += micro.iter().map(|b| b.unpadded_tokens() as u64).sum::<u64>();
        }
        // Products of this step that the real-GPU kernels have no tuned block
        // for are timed now, once per shape class (kernels::tune): later steps
        // use the fastest. The step itself is done; were tuning to fail, the
        // fallback table's blocks stay, and they compute the same sums.
        if crate::kernels::tune::tuning_counts(gpu).1 > 0 {
            let _ = crate::kernels::tune::autotune_pending(gpu).await;
        }
        // The first step built every pipeline a step needs: keep them for the next run.
        if number == 1 {
            gpu.save_pipeline_cache();
        }
        let (preference, kto) = match self.objective {
            Objective::Preference(PreferenceLoss::Kto(_)) => {
                let s = &read[2..];
                let kto = KtoStats {
                    kl: s[3],
                    rewards_chosen_sum: s[1],
                    rewards_rejected_sum: s[2],
                    logps_chosen_sum: s[4],
                    logps_rejected_sum: s[5],
                    count_chosen: s[6],
                    count_rejected: s[7],
                };
                (None, Some(kto))
            }
            Objective::Preference(objective) => (Some(PreferenceStats::from_stats(objective, &read[2..])), None),
            Objective::Sft(_) | Objective::Grpo(_) | Objective::Reward(_) | Objective::Classification(_) => {
                (None, None)
            }
        };
        // GRPO's metrics, each the mean over the micro-batches of its mean there (the kernel's).
        let kl = match self.objective {
            // (RLOO's β acts on its rewards: its kl is the generation's, `GrpoStepStats::kl`.)
            Objective::Grpo(loss) if loss.beta != 0.0 && loss.estimator == Estimator::Grpo => Some(read[3]),
            _ => None,
        };
        let grpo = matches!(self.objective, Objective::Grpo(_));
        let entropy = if sft { Some(read[2 + STATS]) } else { grpo.then_some(read[4]) };
        let clip_ratio = grpo.then_some([read[5], read[6], read[7]]);
        Ok(StepStats {
            step: number,
            loss,
            lr,
            grad_norm,
            tokens,
            preference,
            kto,
            kl,
            entropy,
            clip_ratio,
            mean_token_accuracy: sft.then_some(read[3 + STATS]),
            num_tokens: (sft || reward).then_some(self.tokens_seen),
            reward: reward.then(|| RewardStats::from_stats(&read[2..])),
        })
    }

    /// Copies θ, m, v back from the copy taken before the failed step (and
    /// makes the adapter's derived prompt from θ again, `peft::step`).
    async fn restore(&self, gpu: &Gpu) {
        let mut rec = Recorder::new(gpu);
        let restored = self.record_backup(&mut rec, true).and_then(|_| self.adapter.record_derive(&mut rec));
        if restored.is_ok() && rec.submit().is_ok() {
            let _ = gpu.synchronize().await;
        }
    }

    fn dropout_active(&self) -> bool {
        self.adapter.has_dropout() && !self.disable_dropout
    }

    /// Copies θ, m, v and the method's state into the backup (or back, with `restore`).
    fn record_backup(&self, rec: &mut Recorder, restore: bool) -> Result<()> {
        let mut pairs: Vec<(&Tensor, &Tensor)> = Vec::new();
        for (live, saved) in [&self.adapter, &self.m, &self.v].into_iter().zip(&self.backup) {
            pairs.extend(live.tensors().into_iter().zip(saved.tensors()).map(|((_, a), (_, b))| (a, b)));
        }
        pairs.extend(self.adapter.state_tensors().into_iter().map(|(_, t)| t).zip(&self.state_backup));
        if restore {
            // (Taken at the step's start: its losses update it before this backup is recorded.)
            pairs.push((&self.running, &self.running_backup));
        }
        for (a, b) in pairs {
            if restore {
                copy(rec, b, a)?;
            } else {
                copy(rec, a, b)?;
            }
        }
        Ok(())
    }

    /// Forward, loss (added into `loss` as Σ CE / total) and backward of one
    /// micro-batch, gradients added into `self.grads`, its share of SFT's
    /// metrics into `metrics.1` (`train::sft_metrics`).
    fn record_micro(
        &self,
        rec: &mut Recorder,
        model: &Model,
        batch: &Batch,
        (targets, total, kind): (&[i32], usize, SftLoss),
        (seed, noise): (Option<u32>, Option<EmbeddingNoise>),
        (loss, metrics): (&Tensor, (&[[f32; 2]], &Tensor)),
    ) -> Result<()> {
        let gpu = rec.gpu();
        let ids = model.input_ids(gpu, &batch.input_ids)?;
        let pass = self.adapter.pass(seed, Some(&self.grads))?; // dropout from `seed`, gradients into `grads`
        let positions = batch.position_ids.as_deref(); // packed rows: attention within each example
        let ckpt = self.gradient_checkpointing;
        let (xn, saved) = model.hidden_packed(rec, &ids, positions, pass.hooks(), ckpt, noise)?; // (B, T, D)
        let d = model.config.hidden_size;
        if targets.len() * d != xn.numel() {
            return Err(Error::shape("Trainer::step", "labels must have the shape of input_ids (batch, seq)"));
        }
        let scale = 1.0 / total as f32;
        // Loss and dlogits in row chunks: the (B·T, V) logits never exist at once.
        let xn2 = xn.reshape(&[targets.len(), d])?;
        let head = model.head(pass.hooks())?;
        let dxn = chunked_lm_loss(rec, &xn2, head, (targets, scale, kind), loss, Some(metrics), true)?
            .ok_or_else(|| Error::invalid("Trainer::step", "the loss head returned no gradient"))?;
        model.backward_from_hidden(rec, &dxn.reshape(xn.shape())?, &saved, pass.hooks())
    }

    /// The preference objective's loss and TRL's metrics on held-out
    /// `batches` ([`evaluate_preference`]), bco_pair's running reward mean
    /// starting from the trainer's (on a copy: the training state is left as
    /// it was).
    pub async fn evaluate_preference(&self, gpu: &Gpu, model: &Model, batches: &[Batch]) -> Result<PreferenceEval> {
        let Objective::Preference(loss) = self.objective else {
            return Err(Error::invalid(
                "Trainer::evaluate_preference",
                "the objective is SFT: evaluate its loss with `evaluate`",
            ));
        };
        evaluate_preference(gpu, model, Some(&self.adapter), batches, loss, Some(&self.running)).await
    }

    /// Loss, perplexity and TRL's metrics of the adapted model on `batches`
    /// under the objective's SFT loss (no dropout, no update).
    pub async fn evaluate(&self, gpu: &Gpu, model: &Model, batches: &[Batch]) -> Result<EvalStats> {
        evaluate(gpu, model, Some(&self.adapter), batches, self.objective.sft_loss()).await
    }
}

/// A preference objective's loss and TRL's metrics for `model` (with
/// `adapter`, if any) on held-out `batches` (pairs, or KTO's examples with
/// their KL rows), as TRL's `evaluate()` reports them: no dropout, each batch
/// one submission and one read-back. bco_pair's running reward mean starts
/// from `running` (else 0) and moves batch by batch, as TRL's does in an
/// evaluation, on a copy.
pub async fn evaluate_preference(
    gpu: &Gpu,
    model: &Model,
    adapter: Option<&Adapter>,
    batches: &[Batch],
    loss: PreferenceLoss,
    running: Option<&Tensor>,
) -> Result<PreferenceEval> {
    if batches.is_empty() {
        return Err(Error::invalid("evaluate_preference", "no batch to evaluate"));
    }
    let scratch = Tensor::zeros(gpu, &[2], DType::F32)?;
    let mut per_batch = Vec::with_capacity(batches.len());
    for (i, b) in batches.iter().enumerate() {
        let mut rec = Recorder::new(gpu);
        if let Some(running) = running.filter(|_| i == 0) {
            copy(&mut rec, running, &scratch)?;
        }
        let stats = Tensor::zeros(gpu, &[STATS], DType::F32)?;
        record_preference_eval(&mut rec, model, loss, b, hooks_of(adapter), (&stats, &scratch))?;
        rec.submit()?;
        let units = match &b.desirable {
            Some(d) => d.len(),
            None => b.labels.len() / 2,
        };
        per_batch.push((units, stats.to_vec::<f32>(gpu).await?));
    }
    Ok(PreferenceEval::from_batches(loss, &per_batch))
}

/// `model`'s (with `adapter`, if any) loss (`kind`: TRL's SFT `loss_type`, which
/// its evaluation applies too), perplexity and TRL's metrics over `batches`,
/// as `SFTTrainer.evaluate()` reports them ([`EvalStats`]): one submission per
/// batch, one read-back at the end.
pub async fn evaluate(
    gpu: &Gpu,
    model: &Model,
    adapter: Option<&Adapter>,
    batches: &[Batch],
    kind: SftLoss,
) -> Result<EvalStats> {
    const OP: &str = "evaluate";
    let vocab = model.config.vocab_size;
    let virtual_tokens = hooks_of(adapter).virtual_tokens();
    let shifted =
        batches.iter().map(|b| shift_labels_after(&b.labels, vocab, virtual_tokens)).collect::<Result<Vec<_>>>()?;
    let tokens: usize = shifted.iter().map(|(_, n)| n).sum();
    if tokens == 0 {
        return Err(Error::invalid(OP, "the evaluation set has no token with a label"));
    }
    // transformers repeats each batch's mean loss once a row.
    let rows: usize = batches.iter().zip(&shifted).filter(|(_, (_, n))| *n > 0).map(|(b, _)| b.input_ids.len()).sum();
    let share = 1.0 / batches.len() as f32;
    let sum = Tensor::zeros(gpu, &[1], DType::F32)?;
    let metrics = Tensor::zeros(gpu, &[2], DType::F32)?;
    for (b, (targets, count)) in batches.iter().zip(&shifted) {
        let scale = if *count == 0 { 0.0 } else { b.input_ids.len() as f32 / (rows as f32 * *count as f32) };
        let weights = metric_weights(b, targets, virtual_tokens, share);
        let mut rec = Recorder::new(gpu);
        let ids = model.input_ids(gpu, &b.input_ids)?;
        // The logits in row chunks, as in training: never (B·T, V) at once.
        let (xn, _) = model.hidden_packed(&mut rec, &ids, b.position_ids.as_deref(), hooks_of(adapter), false, None)?; // (B, T, D)
        let d = model.config.hidden_size;
        if targets.len() * d != xn.numel() {
            return Err(Error::shape(OP, "labels must have the shape of input_ids (batch, seq)"));
        }
        let xn = xn.reshape(&[targets.len(), d])?;
        let head = model.head(hooks_of(adapter))?;
        chunked_lm_loss(&mut rec, &xn, head, (targets, scale, kind), &sum, Some((&weights, &metrics)), false)?;
        rec.submit()?;
    }
    let loss = sum.to_vec::<f32>(gpu).await?[0];
    let [entropy, mean_token_accuracy] = <[f32; 2]>::try_from(metrics.to_vec::<f32>(gpu).await?)
        .map_err(|v| Error::shape(OP, format!("read {} metrics, want 2", v.len())))?;
    Ok(EvalStats { loss, perplexity: (loss as f64).exp(), tokens, entropy, mean_token_accuracy })
}
