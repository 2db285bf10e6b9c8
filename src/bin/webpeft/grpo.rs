//! `webpeft train --objective grpo` (or `rloo`): TRL's GRPOTrainer (or
//! RLOOTrainer) loop. Each generation
//! takes (--batch-size × --steps-per-generation) / --num-generations prompts,
//! samples --num-generations completions of each through the adapter being
//! trained, scores them with each --reward, and takes its optimizer steps on
//! them: --steps-per-generation / --grad-accum a pass, --num-iterations
//! passes (`webpeft::train::grpo`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Map, Value};
use webpeft::kernels::grpo::{Clip, ImportanceSampling};
use webpeft::model::config::Config;
use webpeft::model::llama::GenerationConfig;
use webpeft::model::source::DirFiles;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::peft::adapter::{hooks_of, Adapter};
use webpeft::train::checkpoint::{load_checkpoint, read_checkpoint, save_checkpoint, CHECKPOINT_FILE};
use webpeft::train::grpo::{
    evaluate_group, grpo_progress, grpo_prompts, grpo_resume_state, grpo_step, sample_generation, think_format_reward,
    Estimator, Generation, GroupEval, GrpoLoss, GrpoLossType, GrpoPrompt, GrpoSettings, PromptOrder, ScaleRewards,
};
use webpeft::train::preference::Objective;
use webpeft::train::recipe::pad_id;
use webpeft::train::reward::reward_model_scores;
use webpeft::train::schedule::LrSchedule;
use webpeft::train::trainer::Trainer;
use webpeft::util::rng::Rng;

use crate::train::{flag_error, folder_virtual_tokens, init_adapter, Stopped, TrainArgs};
use crate::{cli_gpu, load_model_4bit, resume};

type BoxError = Box<dyn std::error::Error>;

/// A reward function of the command line.
enum Reward {
    /// TRL's `think_format_reward`.
    ThinkFormat,
    /// A shell command: JSON lines in, one number (or null) a line out.
    Command(String),
    /// A reward model: a SEQ_CLS LoRA folder on the same base (`train
    /// --objective reward`), or a reward model checkpoint of its own
    /// (`…ForSequenceClassification`, one label, with its tokenizer), loaded
    /// once the base is (`load_reward_models`).
    Model { dir: PathBuf, loaded: Option<RewardModel> },
}

/// A `model:DIR` reward, loaded.
enum RewardModel {
    /// A SEQ_CLS adapter on the policy's base.
    Adapter(Box<Adapter>),
    /// A checkpoint of its own and its tokenizer, as TRL loads a reward model
    /// named by its path (`AutoModelForSequenceClassification`, its own
    /// `reward_processing_class`).
    Checkpoint(Box<webpeft::model::Model>, Tokenizer),
}

impl Reward {
    fn parse(spec: &str) -> Result<Reward, String> {
        match spec {
            "think_format" => Ok(Reward::ThinkFormat),
            _ => match (spec.strip_prefix("cmd:"), spec.strip_prefix("model:")) {
                (Some(c), _) if !c.trim().is_empty() => Ok(Reward::Command(c.to_string())),
                (_, Some(d)) if !d.trim().is_empty() => Ok(Reward::Model { dir: PathBuf::from(d), loaded: None }),
                _ => Err(format!("--reward {spec:?}: expected think_format, cmd:COMMAND or model:DIR")),
            },
        }
    }

    /// TRL's name for the function, in the `rewards/<name>/mean` metric.
    fn name(&self, index: usize) -> String {
        match self {
            Reward::ThinkFormat => "think_format_reward".into(),
            Reward::Command(_) => format!("cmd_{index}"),
            // (TRL names a reward model by its config's name_or_path, here its folder.)
            Reward::Model { dir, .. } => {
                dir.file_name().map_or(format!("model_{index}"), |n| n.to_string_lossy().into())
            }
        }
    }

    /// Each completion's reward; `prompts` are the data lines' own `prompt`
    /// values (a reward model scores the conversation, not the rendered prompt).
    async fn score(
        &self,
        (gpu, model, tokenizer): (&webpeft::Gpu, &webpeft::model::Model, &Tokenizer),
        (lines, texts, prompts): (&[Value], &[String], &[&Value]),
    ) -> Result<Vec<Option<f32>>, BoxError> {
        match self {
            Reward::ThinkFormat => Ok(texts.iter().map(|t| Some(think_format_reward(t))).collect()),
            Reward::Command(command) => Ok(run_command(command, lines)?),
            Reward::Model { dir, loaded } => {
                let loaded = loaded.as_ref().ok_or_else(|| format!("--reward model:{}: not loaded", dir.display()))?;
                let scores = match loaded {
                    RewardModel::Adapter(adapter) => {
                        reward_model_scores((gpu, model, Some(&**adapter)), tokenizer, prompts, texts).await?
                    }
                    RewardModel::Checkpoint(own, own_tokenizer) => {
                        reward_model_scores((gpu, own, None), own_tokenizer, prompts, texts).await?
                    }
                };
                Ok(scores.into_iter().map(Some).collect())
            }
        }
    }
}

/// Loads each `model:DIR` reward: a folder with `adapter_config.json` a
/// reward model (SEQ_CLS) on `model`, whose weights no PiSSA, OLoRA or LoftQ
/// init replaced; one with `config.json` a reward model checkpoint of its
/// own, loaded as `format` with its tokenizer.
async fn load_reward_models(
    gpu: &webpeft::Gpu,
    model: &webpeft::model::Model,
    rewards: &mut [Reward],
    (base_replaced, format): (bool, webpeft::quant::QuantFormat),
) -> Result<(), BoxError> {
    for r in rewards {
        let Reward::Model { dir, loaded } = r else { continue };
        let what = format!("--reward model:{}", dir.display());
        let files = DirFiles::new(&*dir).map_err(|e| format!("{what}: {e}"))?;
        if !dir.join(webpeft::peft::ADAPTER_CONFIG_FILE).exists() && dir.join("config.json").exists() {
            let config = Config::load(&files).await.map_err(|e| format!("{what}: {e}"))?;
            if config.head.num_labels().is_none() {
                return Err(format!(
                    "{what}: a causal LM's folder, not a reward model (a …ForSequenceClassification checkpoint, or \
                     a SEQ_CLS adapter folder)"
                )
                .into());
            }
            let tokenizer = Tokenizer::load(&files).await.map_err(|e| format!("{what}: {e}"))?;
            tokenizer.check_model(&config).map_err(|e| format!("{what}: {e}"))?;
            let own = webpeft::model::Model::load(gpu, &files, format).await.map_err(|e| format!("{what}: {e}"))?;
            webpeft::train::reward::check_reward_model(&own, None, &what)?;
            *loaded = Some(RewardModel::Checkpoint(Box::new(own), tokenizer));
            continue;
        }
        if base_replaced {
            return Err(format!(
                "{what}: the policy's init (PiSSA, OLoRA or LoftQ) replaced the base weights the reward model scores with"
            )
            .into());
        }
        let adapter = Adapter::load(gpu, &files, &model.config).await.map_err(|e| format!("{what}: {e}"))?;
        webpeft::train::reward::check_reward_model(model, Some(&adapter), &what)?;
        *loaded = Some(RewardModel::Adapter(Box::new(adapter)));
    }
    Ok(())
}

impl Reward {}

/// Runs `command` through `sh -c` with `lines` as JSON lines on stdin; one
/// number or `null` a line back.
fn run_command(command: &str, lines: &[Value]) -> Result<Vec<Option<f32>>, String> {
    let what = format!("--reward cmd:{command}");
    let mut child = Command::new("sh")
        .args(["-c", command])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let mut input = String::new();
    for line in lines {
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().ok_or_else(|| format!("{what}: no stdin"))?;
    // Written from a thread: a command that answers as it reads must not block on a full pipe.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().map_err(|e| format!("{what}: {e}"))?;
    let _ = writer.join();
    if !out.status.success() {
        return Err(format!("{what}: exited with {}", out.status));
    }
    let text = String::from_utf8(out.stdout).map_err(|_| format!("{what}: its output is not UTF-8"))?;
    let values: Vec<Option<f32>> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| match serde_json::from_str::<Value>(l.trim()) {
            Ok(Value::Number(n)) => n.as_f64().map(|x| Some(x as f32)).ok_or_else(|| format!("line {}: {l}", i + 1)),
            Ok(Value::Null) => Ok(None),
            _ => Err(format!("{what}: output line {}: expected a number or null, got {l:?}", i + 1)),
        })
        .collect::<Result<_, _>>()?;
    if values.len() != lines.len() {
        return Err(format!("{what}: wrote {} rewards for {} completions", values.len(), lines.len()));
    }
    Ok(values)
}

/// The flags GRPO does not take, refused by name.
fn refuse_others(a: &TrainArgs) -> Result<(), String> {
    let others = [
        ("--early-stopping-patience", a.early_stopping_patience.is_some()),
        ("--load-best-at-end", a.load_best_at_end),
        ("--packing", a.packing),
        ("--precompute-ref-log-probs", a.precompute_ref_log_probs),
        ("--neftune-noise-alpha", a.neftune_noise_alpha.is_some()),
        ("--label-smoothing", a.label_smoothing.is_some()),
        ("--loss-weights", a.loss_weights.is_some()),
        ("--rpo-alpha", a.rpo_alpha.is_some()),
        ("--reference-free", a.reference_free),
    ];
    match others.iter().find(|f| f.1) {
        Some((flag, _)) => Err(format!("{flag} does not apply to --objective {}", a.objective)),
        None => Ok(()),
    }
}

pub async fn train_grpo(mut a: TrainArgs) -> Result<Stopped, BoxError> {
    refuse_others(&a)?;
    if a.seq_len.is_some() {
        eprintln!("note: --seq-len ignored: GRPO's rows are --max-prompt-length and --max-completion-length tokens");
    }
    // A resumed run is the run its checkpoint holds (resume.rs).
    let checkpoint = match a.resume.clone() {
        Some(dir) => {
            let path = dir.join(CHECKPOINT_FILE);
            let bytes = std::fs::read(&path).map_err(|e| format!("--resume: {}: {e}", path.display()))?;
            let saved = read_checkpoint(&bytes).map_err(|e| format!("--resume {}: {e}", dir.display()))?;
            resume::settle(&mut a, &saved, &dir)?;
            Some((dir, bytes))
        }
        None => None,
    };
    a.check_method_options()?;
    let virtual_tokens = match &a.init_adapter {
        Some(dir) => folder_virtual_tokens(dir),
        None => a.adapter_recipe()?.virtual_tokens(),
    };
    if virtual_tokens > 0 {
        return Err(format!(
            "--objective {} trains methods without virtual tokens (not prompt, prefix or p-tuning)",
            a.objective
        )
        .into());
    }
    let data_path = a.data.clone().ok_or("--data is required")?;
    // What a checkpoint keeps of the run (GRPO's rows have no --seq-len).
    let options = serde_json::to_value(resume::RunOptions::of(&a, 0, &data_path))?;
    // The optimizer, schedule and batch from the shared flags (SFT's recipe, whose checks they pass).
    let (beta, loss_type) = (a.beta.take(), a.loss_type.take());
    let objective = std::mem::replace(&mut a.objective, "sft".into());
    let recipe = a.train_recipe().map_err(flag_error)?;
    recipe.validate().map_err(flag_error)?;
    let estimator = if objective == "rloo" { Estimator::Rloo } else { Estimator::Grpo };
    let defaults = match estimator {
        Estimator::Grpo => GrpoLoss::TRL,
        Estimator::Rloo => GrpoLoss::RLOO,
    };
    if estimator == Estimator::Rloo {
        let grpo_only = [
            ("--loss-type", loss_type.is_some()),
            ("--scale-rewards", a.scale_rewards.is_some()),
            ("--importance-sampling-level", a.importance_sampling_level.is_some()),
            ("--delta", a.delta.is_some()),
            ("--top-entropy-quantile", a.top_entropy_quantile.is_some()),
        ];
        if let Some((flag, _)) = grpo_only.iter().find(|f| f.1) {
            return Err(format!("{flag} applies to --objective grpo, not rloo").into());
        }
    } else if let Some(flag) =
        [("--normalize-advantages", a.normalize_advantages), ("--reward-clip-range", a.reward_clip_range.is_some())]
            .iter()
            .find(|f| f.1)
    {
        return Err(format!("{} applies to --objective rloo, not grpo", flag.0).into());
    }
    if a.num_completions_to_print.is_some() && !a.log_completions {
        return Err("--num-completions-to-print: prints with --log-completions only".into());
    }
    let reward_clip_range = match a.reward_clip_range.as_deref() {
        None => None,
        Some(&[lo, hi]) => Some((lo, hi)),
        Some(other) => {
            return Err(format!("--reward-clip-range: expected LOW,HIGH, got {} numbers", other.len()).into())
        }
    };
    let loss = GrpoLoss {
        estimator,
        loss_type: GrpoLossType::from_name(loss_type.as_deref().unwrap_or("dapo")).map_err(flag_error)?,
        beta: beta.unwrap_or(defaults.beta),
        temperature: a.temperature.unwrap_or(1.0),
        max_completion_length: a.max_completion_length.unwrap_or(256),
        clip: Clip {
            epsilon_low: a.epsilon.unwrap_or(0.2),
            epsilon_high: a.epsilon_high.or(a.epsilon).unwrap_or(0.2),
            delta: a.delta,
        },
        importance_sampling: ImportanceSampling::from_name(a.importance_sampling_level.as_deref().unwrap_or("token"))
            .map_err(flag_error)?,
        top_entropy_quantile: a.top_entropy_quantile.unwrap_or(1.0),
    };
    loss.validate().map_err(flag_error)?;
    let scale = ScaleRewards::from_name(a.scale_rewards.as_deref().unwrap_or("group")).map_err(flag_error)?;
    if a.reward.is_empty() {
        return Err(format!(
            "--objective {} needs at least one --reward (think_format, cmd:COMMAND or model:DIR)",
            objective
        )
        .into());
    }
    let mut rewards: Vec<Reward> = a.reward.iter().map(|r| Reward::parse(r)).collect::<Result<_, _>>()?;
    let weights = a.reward_weights.clone().unwrap_or_else(|| vec![1.0; rewards.len()]);
    if weights.len() != rewards.len() {
        return Err(format!("--reward-weights: {} weights for {} --reward", weights.len(), rewards.len()).into());
    }
    // The eos and pad ids are the tokenizer's, set below.
    let mut settings = GrpoSettings {
        // TRL's GRPOConfig samples 8 a prompt, its RLOOConfig 2.
        num_generations: a.num_generations.unwrap_or(if estimator == Estimator::Rloo { 2 } else { 8 }),
        num_iterations: a.num_iterations.unwrap_or(1),
        gradient_accumulation_steps: a.grad_accum,
        steps_per_generation: GrpoSettings::steps_per_generation_of(
            (a.steps_per_generation, a.generation_batch_size),
            (a.batch_size, a.grad_accum),
        )
        .map_err(flag_error)?,
        scale_rewards: scale,
        normalize_advantages: a.normalize_advantages,
        reward_clip_range,
        mask_truncated_completions: a.mask_truncated_completions,
        batch_size: a.batch_size,
        reward_weights: weights,
        eos: Vec::new(),
        pad: 0,
        shuffle: None,
        max_steps: None,
    };
    settings.validate().map_err(flag_error)?;
    settings.validate_for(estimator).map_err(flag_error)?;
    let top_p = a.top_p.unwrap_or(1.0);

    let files = DirFiles::new(&a.model)?;
    let config = Config::load(&files).await?;
    let tokenizer = Tokenizer::load(&files).await?;
    tokenizer.check_model(&config)?;
    let bytes = std::fs::read(&data_path).map_err(|e| format!("{}: {e}", data_path.display()))?;
    let source = data_path.display().to_string();
    let budget = loss.prompt_budget(a.max_prompt_length.unwrap_or(512), config.max_position_embeddings);
    let budget = budget.map_err(flag_error)?;
    let prompts = grpo_prompts(&source, &bytes, &tokenizer, budget)?;
    // Held-out prompts: each evaluation samples --num-generations completions of each, in batches of --batch-size.
    let eval_prompts = match &a.eval_data {
        Some(path) => {
            if a.batch_size % settings.num_generations != 0 {
                return Err(format!(
                    "--eval-data: an evaluation batch (--batch-size {}) must be a multiple of --num-generations ({})",
                    a.batch_size, settings.num_generations
                )
                .into());
            }
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(grpo_prompts(&path.display().to_string(), &bytes, &tokenizer, budget)?)
        }
        None => None,
    };
    // An epoch: each prompt's generation once, and the steps each generation feeds (as TRL counts them).
    let per_generation = settings.prompts();
    let steps_per_epoch = (prompts.len().div_ceil(per_generation) * settings.steps()) as u64;
    let total = match a.steps {
        Some(n) => n,
        None => ((recipe.epochs * steps_per_epoch as f64).ceil() as u64).max(1),
    };

    let gpu = cli_gpu(webpeft::KernelFamily::Auto, true).await?;
    let mut model = load_model_4bit(&gpu, &files, (a.quant, a.compute_dtype), a.four_bit()).await?;
    let mut rng = Rng::new(recipe.seed);
    let mut order = PromptOrder::new(prompts.len(), recipe.shuffle);
    let mut trainer = match &checkpoint {
        Some((dir, bytes)) => {
            let (trainer, progress) =
                load_checkpoint(&gpu, bytes, &model.config).map_err(|e| format!("--resume {}: {e}", dir.display()))?;
            (rng, order) = grpo_resume_state(&progress, prompts.len(), recipe.shuffle)
                .map_err(|e| format!("--resume {}: {e}", dir.display()))?;
            trainer
        }
        None => {
            let adapter = match &a.init_adapter {
                Some(dir) => init_adapter(&gpu, dir, a.method(), &model).await?,
                None => a.new_adapter(&gpu, &mut model, &files, &tokenizer, total).await?,
            };
            Trainer::new(&gpu, adapter, recipe.optimizer.clone(), recipe.seed)?
        }
    };
    let base_replaced = matches!(&trainer.adapter, Adapter::Lora(l) if l.config.init_lora_weights.adjusts_base());
    load_reward_models(&gpu, &model, &mut rewards, (base_replaced, a.quant)).await?;
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    trainer.gradient_checkpointing = recipe.gradient_checkpointing;
    // (TRL's GRPOConfig and RLOOConfig keep dropout unless told.)
    trainer.disable_dropout = a.disable_dropout.unwrap_or(false);
    trainer.objective = Objective::Grpo(loss);
    let run = recipe.run_config();
    let schedule = LrSchedule::new(run.schedule, run.lr, run.warmup_steps_for(total)?, total)?;

    let eos: Vec<u32> = match tokenizer.eos_token() {
        Some(t) => vec![t.id],
        None => config.eos_token_ids.clone(),
    };
    if eos.is_empty() {
        return Err(format!(
            "{} needs an eos token to end completions: the tokenizer and config.json name none",
            objective.to_uppercase()
        )
        .into());
    }
    let pad = pad_id(Some(&tokenizer));
    let generation = GenerationConfig {
        max_new_tokens: loss.max_completion_length,
        temperature: loss.temperature,
        top_k: a.top_k.unwrap_or(0),
        top_p,
        eos_token_ids: eos.clone(),
        greedy: false,
        ..GenerationConfig::default()
    };
    generation.validate()?;
    settings.eos = eos.clone();
    settings.pad = pad;
    let loss_name = match estimator {
        Estimator::Grpo => format!("loss {} ({}-level ratios)", loss.loss_type.name(), loss.importance_sampling.name()),
        Estimator::Rloo => "leave-one-out advantages, a ratio a completion".to_string(),
    };
    eprintln!(
        "training {} ({} parameters) with {} on {} prompts of {}: {total} steps, generations of {per_generation} \
         prompts × {} completions ({} steps each), lr {:e} ({}), {loss_name}, β {}, {} base",
        trainer.adapter.method(),
        trainer.adapter.num_params(),
        objective.to_uppercase(),
        prompts.len(),
        data_path.display(),
        settings.num_generations,
        settings.steps(),
        run.lr,
        run.schedule.name(),
        loss.beta,
        model.format.name()
    );

    let mut stopped = Stopped::Done;
    let mut this_run = 0;
    while trainer.step < total {
        if a.stop_after.is_some_and(|n| this_run >= n) {
            stopped = Stopped::Paused;
            break;
        }
        let start = std::time::Instant::now();
        // The run's last generation takes the steps it has left.
        let sampled = sample_generation(
            (&gpu, &model, hooks_of(Some(&trainer.adapter))),
            (&prompts, &mut order, &mut rng),
            &settings,
            &generation,
            (recipe.shuffle, total - trainer.step),
        )
        .await?;
        let shown = a.log_completions.then(|| a.num_completions_to_print.unwrap_or(usize::MAX));
        let lines =
            cli_step((&gpu, &model, &tokenizer), &mut trainer, (&prompts, &sampled), (&rewards, shown), &schedule)
                .await;
        match lines {
            Ok(lines) => {
                let secs = start.elapsed().as_secs_f64() / lines.len().max(1) as f64;
                let (mut save, mut evaluate) = (false, false);
                for mut line in lines {
                    let tokens = line.get("tokens").and_then(Value::as_f64).unwrap_or(0.0);
                    line.insert("tokens_per_s".into(), json!(tokens / secs.max(1e-9)));
                    let step = line.get("step").and_then(Value::as_u64).unwrap_or(0);
                    out!("{}", Value::Object(line));
                    this_run += 1;
                    save |= a.save_steps.is_some_and(|n| n > 0 && step % n == 0);
                    evaluate |= a.eval_steps.is_some_and(|n| n > 0 && step % n == 0);
                }
                if let (Some(eval), true) = (&eval_prompts, evaluate) {
                    let held_out = (eval.as_slice(), &rewards[..], &generation);
                    out!(
                        "{}",
                        eval_line(
                            (&gpu, &model, &tokenizer),
                            &trainer,
                            held_out,
                            (&settings, recipe.seed),
                            Some(trainer.step)
                        )
                        .await?
                    );
                }
                // Saved between generations, where the run's state is whole: the checkpoint goes on from there.
                if save {
                    save_run(
                        &gpu,
                        &trainer,
                        &model.config,
                        &a.out,
                        (&schedule, &rng, &order),
                        (a.grad_accum, &options),
                    )
                    .await?;
                }
            }
            Err(e) => match e.downcast::<webpeft::Error>() {
                Ok(e) if matches!(*e, webpeft::Error::NonFinite { .. }) => {
                    eprintln!("error: {e}");
                    stopped = Stopped::NonFinite;
                    break;
                }
                Ok(e) => return Err(e),
                Err(e) => return Err(e),
            },
        }
    }
    if let (Some(eval), Stopped::Done, None) = (&eval_prompts, &stopped, a.eval_steps) {
        let held_out = (eval.as_slice(), &rewards[..], &generation);
        out!("{}", eval_line((&gpu, &model, &tokenizer), &trainer, held_out, (&settings, recipe.seed), None).await?);
    }
    save_run(&gpu, &trainer, &model.config, &a.out, (&schedule, &rng, &order), (a.grad_accum, &options)).await?;
    eprintln!("wrote the adapter and {CHECKPOINT_FILE} (step {}) to {}", trainer.step, a.out.display());
    Ok(stopped)
}

/// One generation: the chosen prompts' completions, their rewards, the
/// library's steps on them; a line for each optimizer step (TRL's metric
/// names; the generation's metrics on each).
async fn cli_step(
    (gpu, model, tokenizer): (&webpeft::Gpu, &webpeft::model::Model, &Tokenizer),
    trainer: &mut Trainer,
    (prompts, sampled): (&[GrpoPrompt], &Generation),
    (rewards, shown): (&[Reward], Option<usize>),
    schedule: &LrSchedule,
) -> Result<Vec<Map<String, Value>>, BoxError> {
    let Generation { chosen, completions, settings } = sampled;
    let g = settings.num_generations;
    let group_prompts: Vec<&GrpoPrompt> = chosen.iter().map(|&p| &prompts[p]).collect();
    let (lines, per_function) =
        score_completions((gpu, model, tokenizer), (&group_prompts, completions, g), rewards).await?;
    let ids: Vec<&[u32]> = chosen.iter().map(|&p| prompts[p].ids.as_slice()).collect();
    let first_step = trainer.step + 1;
    let s = grpo_step(gpu, model, trainer, (&ids, completions), &per_function, settings, schedule).await?;
    if let Some(n) = shown {
        let names: Vec<String> = rewards.iter().enumerate().map(|(i, r)| r.name(i)).collect();
        print_completions(first_step, &lines, &names, (&per_function, &s.advantages.advantages), n);
    }

    let mut generation_line = Map::new();
    generation_line.insert("tokens".into(), json!(completions.iter().map(Vec::len).sum::<usize>()));
    generation_line.insert("reward".into(), json!(s.advantages.reward));
    generation_line.insert("reward_std".into(), json!(s.advantages.reward_std));
    generation_line.insert("frac_reward_zero_std".into(), json!(s.advantages.frac_reward_zero_std));
    for (i, ((r, mean), std)) in rewards.iter().zip(&s.reward_means).zip(&s.reward_stds).enumerate() {
        generation_line.insert(format!("rewards/{}/mean", r.name(i)), json!(mean));
        generation_line.insert(format!("rewards/{}/std", r.name(i)), json!(std));
    }
    for (key, value) in s.lengths.named() {
        generation_line.insert(format!("completions/{key}"), json!(value));
    }
    generation_line.insert("num_tokens".into(), json!(s.num_tokens));
    if let Some(kl) = s.kl {
        generation_line.insert("kl".into(), json!(kl)); // RLOO's, of the generation
    }
    Ok(s.steps
        .iter()
        .map(|step| {
            let mut line = generation_line.clone();
            line.insert("step".into(), json!(step.step));
            line.insert("loss".into(), json!(step.loss));
            line.insert("lr".into(), json!(step.lr));
            line.insert("grad_norm".into(), json!(step.grad_norm));
            if let Some(kl) = step.kl {
                line.insert("kl".into(), json!(kl));
            }
            if let Some(entropy) = step.entropy {
                line.insert("entropy".into(), json!(entropy));
            }
            if let Some([low, high, region]) = step.clip_ratio {
                // On one device TRL's low_min and high_max (over the processes) are the means.
                line.insert("clip_ratio/low_mean".into(), json!(low));
                line.insert("clip_ratio/low_min".into(), json!(low));
                line.insert("clip_ratio/high_mean".into(), json!(high));
                line.insert("clip_ratio/high_max".into(), json!(high));
                line.insert("clip_ratio/region_mean".into(), json!(region));
            }
            line
        })
        .collect())
}

/// Each reward function's value for each completion (`None`: it gave none).
type Scores = Vec<Vec<Option<f32>>>;

/// Each reward function's scores of `completions` (`g` of each of
/// `prompts`, in order), with the JSON lines the reward commands read: the
/// prompt line's fields, its text, the completion's text and its ids.
async fn score_completions(
    (gpu, model, tokenizer): (&webpeft::Gpu, &webpeft::model::Model, &Tokenizer),
    (prompts, completions, g): (&[&GrpoPrompt], &[Vec<u32>], usize),
    rewards: &[Reward],
) -> Result<(Vec<Value>, Scores), BoxError> {
    let texts: Vec<String> = completions.iter().map(|c| tokenizer.decode(c, true)).collect::<webpeft::Result<_>>()?;
    let lines: Vec<Value> = completions
        .iter()
        .zip(&texts)
        .enumerate()
        .map(|(i, (ids, text))| {
            let prompt = prompts[i / g];
            let mut line = prompt.fields.clone();
            line.insert("prompt".into(), json!(prompt.text));
            line.insert("completion".into(), json!(text));
            line.insert("completion_ids".into(), json!(ids));
            Value::Object(line)
        })
        .collect();
    let own: Vec<&Value> =
        (0..completions.len()).map(|i| prompts[i / g].fields.get("prompt").unwrap_or(&Value::Null)).collect();
    let mut per_function = Vec::with_capacity(rewards.len());
    for r in rewards {
        per_function.push(r.score((gpu, model, tokenizer), (&lines, &texts, &own)).await?);
    }
    Ok((lines, per_function))
}

/// TRL's `evaluate()` on the held-out prompts as one line: in batches of
/// --batch-size completions (--num-generations a prompt), each prompt's
/// completions sampled through the adapter (its group from seed s + k·G, s
/// the run's seed and the step's, so that an evaluation leaves the run's own
/// generator alone), scored by every reward, each batch's loss and metrics
/// (`evaluate_group`), combined as TRL's (`GroupEval::combine`) under `eval_`.
async fn eval_line(
    (gpu, model, tokenizer): (&webpeft::Gpu, &webpeft::model::Model, &Tokenizer),
    trainer: &Trainer,
    (prompts, rewards, generation): (&[GrpoPrompt], &[Reward], &GenerationConfig),
    (settings, seed): (&GrpoSettings, u64),
    step: Option<u64>,
) -> Result<String, BoxError> {
    let Objective::Grpo(loss) = trainer.objective else { return Err("not a GRPO or RLOO run".into()) };
    let g = settings.num_generations;
    let seed = seed.wrapping_add(trainer.step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut batches = Vec::new();
    for (b, chunk) in prompts.chunks(settings.batch_size / g).enumerate() {
        let mut completions = Vec::with_capacity(chunk.len() * g);
        for (k, p) in chunk.iter().enumerate() {
            let k = (b * settings.batch_size / g + k) as u64;
            let config = GenerationConfig { seed: seed.wrapping_add(k * g as u64), ..generation.clone() };
            completions.extend(model.sample_group(gpu, &p.ids, g, &config, hooks_of(Some(&trainer.adapter))).await?);
        }
        let group_prompts: Vec<&GrpoPrompt> = chunk.iter().collect();
        let (_, per_function) =
            score_completions((gpu, model, tokenizer), (&group_prompts, &completions, g), rewards).await?;
        let ids: Vec<&[u32]> = chunk.iter().map(|p| p.ids.as_slice()).collect();
        let held_out = (ids.as_slice(), completions.as_slice());
        batches.push(evaluate_group((gpu, model, &trainer.adapter), &loss, settings, held_out, &per_function).await?);
    }
    let e = GroupEval::combine(&batches)?;
    let mut line = Map::new();
    if let Some(step) = step {
        line.insert("step".into(), json!(step));
    }
    line.insert("eval_loss".into(), json!(e.loss));
    line.insert("eval_reward".into(), json!(e.reward));
    line.insert("eval_reward_std".into(), json!(e.reward_std));
    line.insert("eval_frac_reward_zero_std".into(), json!(e.frac_reward_zero_std));
    for (i, ((r, mean), std)) in rewards.iter().zip(&e.reward_means).zip(&e.reward_stds).enumerate() {
        line.insert(format!("eval_rewards/{}/mean", r.name(i)), json!(mean));
        line.insert(format!("eval_rewards/{}/std", r.name(i)), json!(std));
    }
    for (key, value) in e.lengths.named() {
        line.insert(format!("eval_completions/{key}"), json!(value));
    }
    if let Some(kl) = e.kl {
        line.insert("eval_kl".into(), json!(kl));
    }
    line.insert("eval_entropy".into(), json!(e.entropy));
    for (key, value) in ["low_mean", "high_mean", "region_mean"].iter().zip(e.clip_ratio) {
        line.insert(format!("eval_clip_ratio/{key}"), json!(value));
    }
    line.insert("eval_num_tokens".into(), json!(trainer.tokens_seen));
    Ok(Value::Object(line).to_string())
}

/// TRL's `log_completions` table as lines on stderr: the generation's first
/// `n` completions (its `lines`, as the reward commands saw them), each with
/// its prompt, every reward function's value (`-` where it gave none) and its
/// advantage, under the step the generation starts at.
fn print_completions(
    step: u64,
    lines: &[Value],
    names: &[String],
    (rewards, advantages): (&[Vec<Option<f32>>], &[f32]),
    n: usize,
) {
    eprintln!("completions of step {step} (prompt → completion: rewards, advantage):");
    for (i, line) in lines.iter().enumerate().take(n) {
        let text = |key: &str| line.get(key).map_or_else(String::new, Value::to_string);
        let scores: Vec<String> = names
            .iter()
            .zip(rewards)
            .map(|(name, f)| format!("{name} {}", f[i].map_or("-".into(), |r| format!("{r:.4}"))))
            .collect();
        eprintln!(
            "  {} → {}: {}, advantage {:.4}",
            text("prompt"),
            text("completion"),
            scores.join(", "),
            advantages[i]
        );
    }
}

/// The adapter's files (PEFT's or AdapterHub's) and the run's checkpoint into
/// `out`: the trainer, and as its progress the schedule, the run's generator
/// and the epoch's prompts still to take, with the run's options.
async fn save_run(
    gpu: &webpeft::Gpu,
    trainer: &Trainer,
    config: &Config,
    out: &Path,
    (schedule, rng, order): (&LrSchedule, &Rng, &PromptOrder),
    (grad_accum, options): (usize, &Value),
) -> Result<(), BoxError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))
    };
    for (name, bytes) in trainer.adapter.to_files(gpu, config).await? {
        write(&name, &bytes)?;
    }
    let mut progress = grpo_progress(schedule, grad_accum, rng, order);
    progress["options"] = options.clone();
    write(CHECKPOINT_FILE, &save_checkpoint(gpu, trainer, config, &progress).await?)?;
    Ok(())
}
