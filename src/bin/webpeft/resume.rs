//! `train --resume`: a checkpoint knows its run. Every option that shapes it
//! (the method and its options, the base format and compute dtype, batch,
//! sequence length, packing, shuffling, seed, data, accumulation, schedule,
//! optimizer, the objective and its options, GRPO's sampling and rewards) is taken from the checkpoint; an option typed on the command
//! line that contradicts it is refused, naming both values, so a resumed run
//! cannot silently become another one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use webpeft::peft::TargetModules;
use webpeft::train::checkpoint::CheckpointData;
use webpeft::train::recipe::{AdapterConfig, Method};
use webpeft::train::run::Run;
use webpeft::Error;

use crate::train::{parse_method, schedule_of, TrainArgs};

/// What shapes a run besides the adapter's config, the optimizer and the
/// schedule (the checkpoint keeps those on their own): saved in the
/// checkpoint's progress JSON as `options`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RunOptions {
    pub quant: String,
    pub compute_dtype: String,
    pub batch_size: usize,
    /// The row length in effect (after capping at the model's maximum; 0 for GRPO, whose rows have none).
    pub seq_len: usize,
    pub packing: bool,
    pub shuffle: bool,
    pub seed: u64,
    /// The training data, as an absolute path.
    pub data: PathBuf,
    /// sft, dpo, orpo, cpo, kto, grpo, rloo or reward (checkpoints without it: sft), with the --beta, --label-smoothing,
    /// --loss-type, --rpo-alpha, --discopop-tau, --cpo-alpha, --simpo-gamma, --desirable-weight
    /// and --undesirable-weight given.
    #[serde(default = "sft")]
    pub objective: String,
    #[serde(default)]
    pub beta: Option<f32>,
    #[serde(default)]
    pub label_smoothing: Option<f32>,
    #[serde(default)]
    pub loss_type: Option<String>,
    #[serde(default)]
    pub loss_weights: Option<Vec<f32>>,
    #[serde(default)]
    pub rpo_alpha: Option<f32>,
    #[serde(default)]
    pub discopop_tau: Option<f32>,
    #[serde(default)]
    pub reference_free: bool,
    #[serde(default)]
    pub f_divergence_type: Option<String>,
    #[serde(default)]
    pub f_alpha_divergence_coef: Option<f32>,
    #[serde(default)]
    pub cpo_alpha: Option<f32>,
    #[serde(default)]
    pub simpo_gamma: Option<f32>,
    #[serde(default)]
    pub alphapo_alpha: Option<f32>,
    #[serde(default)]
    pub neftune_noise_alpha: Option<f32>,
    /// --completion-only-loss and --assistant-only-loss (checkpoints without them: both on).
    #[serde(default = "on")]
    pub completion_only_loss: bool,
    #[serde(default = "on")]
    pub assistant_only_loss: bool,
    #[serde(default)]
    pub precompute_ref_log_probs: bool,
    #[serde(default)]
    pub desirable_weight: Option<f32>,
    #[serde(default)]
    pub undesirable_weight: Option<f32>,
    /// Reward: --center-rewards-coefficient.
    #[serde(default)]
    pub center_rewards_coefficient: Option<f32>,
    /// --disable-dropout as given (checkpoints without it: the objective's default).
    #[serde(default)]
    pub disable_dropout: Option<bool>,
    /// Classification: --num-labels and --problem-type as given.
    #[serde(default)]
    pub num_labels: Option<usize>,
    #[serde(default)]
    pub problem_type: Option<String>,
    /// --bnb-4bit-quant-type and --double-quant (checkpoints without them: nf4, no double quantization).
    #[serde(default = "nf4")]
    pub bnb_4bit_quant_type: String,
    #[serde(default)]
    pub double_quant: bool,
    /// `--objective grpo`'s (or rloo's) own options (absent for the other objectives).
    #[serde(default)]
    pub grpo: Option<GrpoOptions>,
}

/// GRPO's options as typed (`None`: the default), kept so that a resumed run
/// samples, scores and steps as it started.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct GrpoOptions {
    pub num_generations: Option<usize>,
    pub max_completion_length: Option<usize>,
    pub max_prompt_length: Option<usize>,
    pub reward: Vec<String>,
    pub reward_weights: Option<Vec<f32>>,
    pub scale_rewards: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub mask_truncated_completions: bool,
    pub num_iterations: Option<usize>,
    pub steps_per_generation: Option<usize>,
    pub generation_batch_size: Option<usize>,
    pub importance_sampling_level: Option<String>,
    pub epsilon: Option<f32>,
    pub epsilon_high: Option<f32>,
    pub delta: Option<f32>,
    pub top_entropy_quantile: Option<f64>,
    #[serde(default)]
    pub normalize_advantages: bool,
    #[serde(default)]
    pub reward_clip_range: Option<Vec<f32>>,
}

impl GrpoOptions {
    fn of(a: &TrainArgs) -> GrpoOptions {
        GrpoOptions {
            num_generations: a.num_generations,
            max_completion_length: a.max_completion_length,
            max_prompt_length: a.max_prompt_length,
            reward: a.reward.clone(),
            reward_weights: a.reward_weights.clone(),
            scale_rewards: a.scale_rewards.clone(),
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            mask_truncated_completions: a.mask_truncated_completions,
            num_iterations: a.num_iterations,
            steps_per_generation: a.steps_per_generation,
            generation_batch_size: a.generation_batch_size,
            importance_sampling_level: a.importance_sampling_level.clone(),
            epsilon: a.epsilon,
            epsilon_high: a.epsilon_high,
            delta: a.delta,
            top_entropy_quantile: a.top_entropy_quantile,
            normalize_advantages: a.normalize_advantages,
            reward_clip_range: a.reward_clip_range.clone(),
        }
    }
}

/// The objective of the run saved in `dir` (its checkpoint's options), when it can be read.
pub fn saved_objective(dir: &Path) -> Option<String> {
    let bytes = std::fs::read(dir.join(webpeft::train::checkpoint::CHECKPOINT_FILE)).ok()?;
    let saved = webpeft::train::checkpoint::read_checkpoint(&bytes).ok()?;
    saved.progress.get("options")?.get("objective")?.as_str().map(str::to_string)
}

fn nf4() -> String {
    "nf4".into()
}

fn on() -> bool {
    true
}

fn sft() -> String {
    "sft".into()
}

impl RunOptions {
    pub fn of(a: &TrainArgs, seq_len: usize, data: &Path) -> RunOptions {
        RunOptions {
            quant: a.quant.name().into(),
            compute_dtype: a.compute_dtype.name().into(),
            batch_size: a.batch_size,
            seq_len,
            packing: a.packing,
            shuffle: !a.no_shuffle,
            seed: a.seed,
            data: std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf()),
            objective: a.objective.clone(),
            beta: a.beta,
            label_smoothing: a.label_smoothing,
            loss_type: a.loss_type.clone(),
            loss_weights: a.loss_weights.clone(),
            rpo_alpha: a.rpo_alpha,
            discopop_tau: a.discopop_tau,
            reference_free: a.reference_free,
            f_divergence_type: a.f_divergence_type.clone(),
            f_alpha_divergence_coef: a.f_alpha_divergence_coef,
            cpo_alpha: a.cpo_alpha,
            simpo_gamma: a.simpo_gamma,
            alphapo_alpha: a.alphapo_alpha,
            neftune_noise_alpha: a.neftune_noise_alpha,
            completion_only_loss: a.completion_only_loss,
            assistant_only_loss: a.assistant_only_loss,
            precompute_ref_log_probs: a.precompute_ref_log_probs,
            desirable_weight: a.desirable_weight,
            undesirable_weight: a.undesirable_weight,
            center_rewards_coefficient: a.center_rewards_coefficient,
            disable_dropout: a.disable_dropout,
            num_labels: a.num_labels,
            problem_type: a.problem_type.clone(),
            bnb_4bit_quant_type: a.bnb_4bit_quant_type.clone(),
            double_quant: a.double_quant,
            grpo: a.samples_groups().then(|| GrpoOptions::of(a)),
        }
    }
}

/// Sets `a` to the run `ckpt` holds (see the module comment).
pub fn settle(a: &mut TrainArgs, ckpt: &CheckpointData, dir: &Path) -> Result<(), Error> {
    let given = a.given.clone();
    let conflict = |flag: &str, mine: String, saved: String| {
        Error::InvalidArgument {
        op: "train --resume",
        detail: format!(
            "--{flag} {mine} contradicts the checkpoint in {}, whose run has {saved}; leave --{flag} out to go on as the run started",
            dir.display()
        ),
    }
    };
    // clap ids are the field names; flags are spelt with dashes.
    let typed = |id: &str| given.contains(id);
    fn settle_one<T: PartialEq + Clone>(
        typed: bool,
        mine: &mut T,
        saved: T,
        show: impl Fn(&T) -> String,
        err: impl FnOnce(String, String) -> Error,
    ) -> Result<(), Error> {
        if typed && *mine != saved {
            return Err(err(show(mine), show(&saved)));
        }
        *mine = saved;
        Ok(())
    }
    macro_rules! one {
        ($id:literal, $flag:literal, $field:expr, $saved:expr, $show:expr) => {
            settle_one(typed($id), &mut $field, $saved, $show, |m, s| conflict($flag, m, s))?
        };
    }

    let method = parse_method(&ckpt.method).map_err(|e| conflict("method", ckpt.method.clone(), e))?;
    let show_method = |m: &Option<Method>| m.map_or("none".into(), |m| m.name().to_string());
    one!("method", "method", a.method, Some(method), show_method);
    settle_adapter(a, &ckpt.config, &typed, &conflict)?;

    let o = &ckpt.optimizer;
    one!("weight_decay", "weight-decay", a.weight_decay, o.weight_decay, |v: &f64| v.to_string());
    one!("max_grad_norm", "max-grad-norm", a.max_grad_norm, o.max_grad_norm, |v: &f32| v.to_string());

    let p = &ckpt.progress;
    if let Ok(saved) = Run::config_from(p) {
        let total = saved.steps.unwrap_or(0);
        if typed("epochs") {
            return Err(conflict("epochs", a.epochs.unwrap_or(0.0).to_string(), format!("{total} steps")));
        }
        one!("steps", "steps", a.steps, Some(total), |v: &Option<u64>| v.map_or("-".into(), |v| v.to_string()));
        one!("lr", "lr", a.lr, Some(saved.lr), |v: &Option<f64>| v.map_or("-".into(), |v| format!("{v:e}")));
        one!("schedule", "schedule", a.schedule, saved.schedule.name().to_string(), |v: &String| v.clone());
        let saved_kwargs = saved.schedule.kwargs().to_string();
        if typed("schedule_kwargs") {
            let mine = schedule_of(&a.schedule, a.schedule_kwargs.as_deref()).map_err(|e| {
                conflict(
                    "schedule-kwargs",
                    a.schedule_kwargs.clone().unwrap_or_default(),
                    format!("{saved_kwargs} ({e})"),
                )
            })?;
            if mine != saved.schedule {
                return Err(conflict("schedule-kwargs", a.schedule_kwargs.clone().unwrap_or_default(), saved_kwargs));
            }
        }
        a.schedule_kwargs = Some(saved_kwargs);
        if typed("warmup_ratio") {
            let steps = (total as f64 * a.warmup_ratio).ceil() as u64;
            if steps != saved.warmup_steps {
                return Err(conflict(
                    "warmup-ratio",
                    format!("{} ({steps} steps)", a.warmup_ratio),
                    format!("--warmup {}", saved.warmup_steps),
                ));
            }
        }
        a.warmup_ratio = 0.0;
        one!("warmup", "warmup", a.warmup, saved.warmup_steps, |v: &u64| v.to_string());
        one!("grad_accum", "grad-accum", a.grad_accum, saved.grad_accum, |v: &usize| v.to_string());
    }

    // Checkpoints written before the options were kept: the command line's
    // options (or their defaults) go on, as before.
    let Some(saved) = p.get("options").and_then(|o| serde_json::from_value::<RunOptions>(o.clone()).ok()) else {
        eprintln!(
            "note: {} predates saved run options; the base, batch and data options given here apply",
            dir.display()
        );
        return Ok(());
    };
    let quant = saved.quant.parse().map_err(|e: webpeft::quant::QuantError| Error::from(e))?;
    one!("quant", "quant", a.quant, quant, |v: &webpeft::quant::QuantFormat| v.name().to_string());
    let compute = saved.compute_dtype.parse().map_err(|e: webpeft::quant::QuantError| Error::from(e))?;
    one!("compute_dtype", "compute-dtype", a.compute_dtype, compute, |v: &webpeft::quant::ComputeDtype| v
        .name()
        .to_string());
    one!(
        "bnb_4bit_quant_type",
        "bnb-4bit-quant-type",
        a.bnb_4bit_quant_type,
        saved.bnb_4bit_quant_type,
        |v: &String| v.clone()
    );
    one!("double_quant", "double-quant", a.double_quant, saved.double_quant, |v: &bool| v.to_string());
    one!("batch_size", "batch-size", a.batch_size, saved.batch_size, |v: &usize| v.to_string());
    if saved.grpo.is_none() {
        // (GRPO's rows have no --seq-len: its runs keep none.)
        one!("seq_len", "seq-len", a.seq_len, Some(saved.seq_len), |v: &Option<usize>| v
            .map_or("-".into(), |v| v.to_string()));
    }
    one!("packing", "packing", a.packing, saved.packing, |v: &bool| v.to_string());
    one!("no_shuffle", "no-shuffle", a.no_shuffle, !saved.shuffle, |v: &bool| v.to_string());
    one!("seed", "seed", a.seed, saved.seed, |v: &u64| v.to_string());
    one!("objective", "objective", a.objective, saved.objective, |v: &String| v.clone());
    let show = |v: &Option<f32>| v.map_or("-".into(), |v| v.to_string());
    one!("beta", "beta", a.beta, saved.beta, show);
    one!("label_smoothing", "label-smoothing", a.label_smoothing, saved.label_smoothing, show);
    one!("loss_type", "loss-type", a.loss_type, saved.loss_type, |v: &Option<String>| v
        .clone()
        .unwrap_or_else(|| "-".into()));
    one!("loss_weights", "loss-weights", a.loss_weights, saved.loss_weights, |v: &Option<Vec<f32>>| v
        .as_ref()
        .map_or("-".into(), |w| w.iter().map(f32::to_string).collect::<Vec<_>>().join(",")));
    one!("rpo_alpha", "rpo-alpha", a.rpo_alpha, saved.rpo_alpha, show);
    one!("discopop_tau", "discopop-tau", a.discopop_tau, saved.discopop_tau, show);
    one!("reference_free", "reference-free", a.reference_free, saved.reference_free, |v: &bool| v.to_string());
    let f = saved.f_divergence_type;
    one!("f_divergence_type", "f-divergence-type", a.f_divergence_type, f, |v: &Option<String>| v
        .clone()
        .unwrap_or_else(|| "-".into()));
    let coef = saved.f_alpha_divergence_coef;
    one!("f_alpha_divergence_coef", "f-alpha-divergence-coef", a.f_alpha_divergence_coef, coef, show);
    one!("cpo_alpha", "cpo-alpha", a.cpo_alpha, saved.cpo_alpha, show);
    one!("simpo_gamma", "simpo-gamma", a.simpo_gamma, saved.simpo_gamma, show);
    one!("alphapo_alpha", "alphapo-alpha", a.alphapo_alpha, saved.alphapo_alpha, show);
    one!("desirable_weight", "desirable-weight", a.desirable_weight, saved.desirable_weight, show);
    one!("undesirable_weight", "undesirable-weight", a.undesirable_weight, saved.undesirable_weight, show);
    let center = saved.center_rewards_coefficient;
    one!("center_rewards_coefficient", "center-rewards-coefficient", a.center_rewards_coefficient, center, show);
    let off = |v: &Option<bool>| v.map_or("-".into(), |v| v.to_string());
    one!("disable_dropout", "disable-dropout", a.disable_dropout, saved.disable_dropout, off);
    let count = |v: &Option<usize>| v.map_or("-".into(), |v| v.to_string());
    one!("num_labels", "num-labels", a.num_labels, saved.num_labels, count);
    one!("problem_type", "problem-type", a.problem_type, saved.problem_type, |v: &Option<String>| v
        .clone()
        .unwrap_or_else(|| "-".into()));
    one!("neftune_noise_alpha", "neftune-noise-alpha", a.neftune_noise_alpha, saved.neftune_noise_alpha, show);
    let flag = |v: &bool| v.to_string();
    one!("completion_only_loss", "completion-only-loss", a.completion_only_loss, saved.completion_only_loss, flag);
    one!("assistant_only_loss", "assistant-only-loss", a.assistant_only_loss, saved.assistant_only_loss, flag);
    let precompute = saved.precompute_ref_log_probs;
    one!("precompute_ref_log_probs", "precompute-ref-log-probs", a.precompute_ref_log_probs, precompute, flag);
    if let Some(g) = saved.grpo {
        let count = |v: &Option<usize>| v.map_or("-".into(), |v| v.to_string());
        let text = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let list = |v: &Vec<String>| v.join(" ");
        let weights = |v: &Option<Vec<f32>>| {
            v.as_ref().map_or("-".into(), |w| w.iter().map(f32::to_string).collect::<Vec<_>>().join(","))
        };
        one!("num_generations", "num-generations", a.num_generations, g.num_generations, count);
        one!("max_completion_length", "max-completion-length", a.max_completion_length, g.max_completion_length, count);
        one!("max_prompt_length", "max-prompt-length", a.max_prompt_length, g.max_prompt_length, count);
        one!("reward", "reward", a.reward, g.reward, list);
        one!("reward_weights", "reward-weights", a.reward_weights, g.reward_weights, weights);
        one!("scale_rewards", "scale-rewards", a.scale_rewards, g.scale_rewards, text);
        one!("temperature", "temperature", a.temperature, g.temperature, show);
        one!("top_p", "top-p", a.top_p, g.top_p, show);
        one!("top_k", "top-k", a.top_k, g.top_k, count);
        let masked = g.mask_truncated_completions;
        one!("mask_truncated_completions", "mask-truncated-completions", a.mask_truncated_completions, masked, flag);
        one!("num_iterations", "num-iterations", a.num_iterations, g.num_iterations, count);
        one!("steps_per_generation", "steps-per-generation", a.steps_per_generation, g.steps_per_generation, count);
        let rows = g.generation_batch_size;
        one!("generation_batch_size", "generation-batch-size", a.generation_batch_size, rows, count);
        let level = g.importance_sampling_level;
        one!("importance_sampling_level", "importance-sampling-level", a.importance_sampling_level, level, text);
        one!("epsilon", "epsilon", a.epsilon, g.epsilon, show);
        one!("epsilon_high", "epsilon-high", a.epsilon_high, g.epsilon_high, show);
        one!("delta", "delta", a.delta, g.delta, show);
        let rho = |v: &Option<f64>| v.map_or("-".into(), |v| v.to_string());
        one!("top_entropy_quantile", "top-entropy-quantile", a.top_entropy_quantile, g.top_entropy_quantile, rho);
        let normalize = g.normalize_advantages;
        one!("normalize_advantages", "normalize-advantages", a.normalize_advantages, normalize, flag);
        one!("reward_clip_range", "reward-clip-range", a.reward_clip_range, g.reward_clip_range, weights);
    }
    let canonical = |d: &Option<PathBuf>| d.as_ref().map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.clone()));
    let mut data = canonical(&a.data);
    one!("data", "data", data, Some(saved.data), |v: &Option<PathBuf>| v
        .as_ref()
        .map_or("-".into(), |p| p.display().to_string()));
    a.data = data;
    Ok(())
}

/// The adapter options: typed ones must agree with the checkpoint's config.
fn settle_adapter(
    a: &TrainArgs,
    config: &AdapterConfig,
    typed: &dyn Fn(&str) -> bool,
    conflict: &dyn Fn(&str, String, String) -> Error,
) -> Result<(), Error> {
    let check = |id: &str, flag: &str, mine: Option<String>, saved: String| match mine {
        Some(m) if typed(id) && m != saved => Err(conflict(flag, m, saved)),
        _ => Ok(()),
    };
    match config {
        AdapterConfig::Lora(c) => {
            check("r", "r", a.r.map(|v| v.to_string()), c.r.to_string())?;
            check("alpha", "alpha", a.alpha.map(|v| v.to_string()), c.lora_alpha.to_string())?;
            check("dropout", "dropout", a.dropout.map(|v| v.to_string()), c.lora_dropout.to_string())?;
            check("rslora", "rslora", Some(a.rslora.to_string()), c.use_rslora.to_string())?;
            check("use_dora", "use-dora", Some(a.use_dora.to_string()), c.use_dora.to_string())?;
            check("targets", "targets", a.targets.as_deref().map(sorted), targets(&c.target_modules))?;
            check("target_regex", "target-regex", a.target_regex.clone(), targets(&c.target_modules))?;
            let excluded = c.exclude_modules.as_ref().map_or("-".to_string(), targets);
            check("exclude_modules", "exclude-modules", a.exclude_modules.as_deref().map(sorted), excluded.clone())?;
            check("exclude_regex", "exclude-regex", a.exclude_regex.clone(), excluded)?;
            let pattern = |v: &Option<Vec<String>>| v.as_ref().map(|l| sorted(&l.join(",")));
            let saved = |m: Vec<String>| sorted(&m.join(","));
            let ranks = c.rank_pattern.iter().map(|(k, v)| format!("{k}={v}")).collect();
            check("rank_pattern", "rank-pattern", pattern(&a.rank_pattern), saved(ranks))?;
            let alphas = c.alpha_pattern.iter().map(|(k, v)| format!("{k}={v}")).collect();
            check("alpha_pattern", "alpha-pattern", pattern(&a.alpha_pattern), saved(alphas))?;
        }
        AdapterConfig::AdaLora(c) => {
            let pairs = [
                ("init_r", "init-r", a.init_r, c.init_r),
                ("target_r", "target-r", a.target_r, c.target_r),
                ("tinit", "tinit", a.tinit, c.tinit),
                ("tfinal", "tfinal", a.tfinal, c.tfinal),
                ("delta_t", "delta-t", a.delta_t, c.delta_t),
            ];
            for (id, flag, mine, saved) in pairs {
                check(id, flag, mine.map(|v| v.to_string()), saved.to_string())?;
            }
            check("alpha", "alpha", a.alpha.map(|v| v.to_string()), c.lora.lora_alpha.to_string())?;
            check("targets", "targets", a.targets.as_deref().map(sorted), targets(&c.lora.target_modules))?;
        }
        AdapterConfig::PrefixTuning(c) => {
            let saved = c.num_virtual_tokens.to_string();
            check("num_virtual_tokens", "num-virtual-tokens", a.num_virtual_tokens.map(|v| v.to_string()), saved)?;
            let projection = c.prefix_projection.to_string();
            check("prefix_projection", "prefix-projection", Some(a.prefix_projection.to_string()), projection)?;
            let hidden = c.encoder_hidden_size.to_string();
            check("encoder_hidden_size", "encoder-hidden-size", a.encoder_hidden_size.map(|v| v.to_string()), hidden)?;
        }
        AdapterConfig::TrainableTokens(c) => {
            let ids = |l: &[u32]| l.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let mine = a.trainable_token_indices.as_deref().map(ids);
            check("trainable_token_indices", "trainable-token-indices", mine, ids(&c.token_indices))?;
        }
        AdapterConfig::PTuning(c) => {
            let saved = c.num_virtual_tokens.to_string();
            check("num_virtual_tokens", "num-virtual-tokens", a.num_virtual_tokens.map(|v| v.to_string()), saved)?;
            let hidden = c.encoder_hidden_size.to_string();
            check("encoder_hidden_size", "encoder-hidden-size", a.encoder_hidden_size.map(|v| v.to_string()), hidden)?;
        }
        AdapterConfig::PromptTuning(c) => {
            let saved = c.num_virtual_tokens.to_string();
            check("num_virtual_tokens", "num-virtual-tokens", a.num_virtual_tokens.map(|v| v.to_string()), saved)?;
        }
        AdapterConfig::Ia3(c) => {
            check("targets", "targets", a.targets.as_deref().map(sorted), targets(&c.target_modules))?;
            check(
                "feedforward_modules",
                "feedforward-modules",
                a.feedforward_modules.as_deref().map(sorted),
                sorted(&c.feedforward_modules.join(",")),
            )?;
        }
        AdapterConfig::Bottleneck(c) => {
            check(
                "reduction_factor",
                "reduction-factor",
                a.reduction_factor.map(|v| v.to_string()),
                c.reduction_factor.to_string(),
            )?;
            let act = |v: &webpeft::kernels::swiglu::Activation| format!("{v:?}").to_lowercase();
            check("non_linearity", "non-linearity", a.non_linearity.as_ref().map(act), act(&c.non_linearity))?;
            check("dropout", "dropout", a.dropout.map(|v| v.to_string()), c.dropout.to_string())?;
        }
    }
    Ok(())
}

/// A config's targets as the flag spells them, sorted.
fn targets(t: &TargetModules) -> String {
    match t {
        TargetModules::AllLinear => "all-linear".to_string(),
        TargetModules::List(l) => sorted(&l.join(",")),
        TargetModules::Regex(r) => r.clone(),
    }
}

/// A comma-separated list, sorted, so the order typed does not matter.
fn sorted(list: &str) -> String {
    let mut l: Vec<&str> = list.split(',').map(str::trim).filter(|t| !t.is_empty()).collect();
    l.sort();
    l.join(",")
}
