//! GRPO in the browser: `model.startGrpo(name, prompts, options, rewardFuncs)`
//! and the `GrpoRun` it returns. Each step samples `numGenerations`
//! completions of its prompts through the adapter being trained, hands them
//! to each JS reward function (which may be async), and takes the library's
//! GRPO step (`train::grpo`).

// Borrows of the model and the run are held across awaits on purpose, as in
// `api`: taken with `try_borrow`, a conflicting call gets a "busy" error.
#![allow(clippy::await_holding_refcell_ref)]

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use js_sys::{Array, Function, Promise, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

use super::api::{busy, busy_mut, data_text, drive, err, now_seconds, to_js, ModelState, WebModel};
use super::options::{GrpoOptions, GrpoPlan};
use super::types::TrainSummary;
use crate::model::llama::{GenerationConfig, Hooks};
use crate::peft::adapter::hooks_of;
use crate::train::checkpoint::{load_checkpoint, save_checkpoint};
use crate::train::eta::StepClock;
use crate::train::grpo::{
    evaluate_group, grpo_progress, grpo_prompts, grpo_resume_state, grpo_step, sample_generation, Advantages,
    CompletionLengths, Generation, GroupEval, GrpoPrompt, GrpoSettings, PromptOrder,
};
use crate::train::preference::Objective;
use crate::train::recipe::pad_id;
use crate::train::reward::reward_model_scores;
use crate::train::schedule::LrSchedule;
use crate::train::trainer::Trainer;
use crate::util::rng::Rng;

type JsResult<T> = std::result::Result<T, JsValue>;

/// A run's state between steps.
struct GrpoState {
    trainer: Trainer,
    prompts: Vec<GrpoPrompt>,
    plan: GrpoPlan,
    settings: GrpoSettings,
    generation: GenerationConfig,
    schedule: LrSchedule,
    rewards: Vec<WebReward>,
    rng: Rng,
    order: PromptOrder,
}

/// A reward of `startGrpo`'s list: a JS function, or the name of a reward
/// model among the model's adapters (a SEQ_CLS LoRA trained with objective
/// "reward"), which scores as TRL's GRPOTrainer scores with one.
enum WebReward {
    Js(Function),
    Model(String),
}

/// A GRPO run over one adapter. Drive it with `step()` or `train()`;
/// `pause()`, `resume()` and `cancel()` act between steps.
#[wasm_bindgen]
pub struct GrpoRun {
    model: Rc<RefCell<ModelState>>,
    state: Rc<RefCell<GrpoState>>,
    name: String,
    paused: Rc<Cell<bool>>,
    cancelled: Rc<Cell<bool>>,
    seconds: Rc<Cell<StepClock>>,
}

/// What `evaluate()` reports: TRL's eval_ metrics without the prefix, in camelCase.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GrpoEvalResult {
    loss: f32,
    #[serde(flatten)]
    metrics: GenerationMetrics,
    /// The completions evaluated.
    completions: usize,
}

/// A generation's metrics (TRL's names in camelCase), in a step's event and
/// an evaluation's result.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationMetrics {
    reward: f32,
    reward_std: f32,
    frac_reward_zero_std: f32,
    reward_means: Vec<f32>,
    reward_stds: Vec<f32>,
    mean_length: f32,
    min_length: f32,
    max_length: f32,
    clipped_ratio: f32,
    mean_terminated_length: f32,
    min_terminated_length: f32,
    max_terminated_length: f32,
    num_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    kl: Option<f32>,
    entropy: f32,
    /// TRL's clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean.
    clip_ratio: [f32; 3],
}

impl GenerationMetrics {
    fn of(a: &Advantages, (reward_means, reward_stds): (Vec<f32>, Vec<f32>), l: &CompletionLengths) -> Self {
        GenerationMetrics {
            reward: a.reward,
            reward_std: a.reward_std,
            frac_reward_zero_std: a.frac_reward_zero_std,
            reward_means,
            reward_stds,
            mean_length: l.mean,
            min_length: l.min,
            max_length: l.max,
            clipped_ratio: l.clipped_ratio,
            mean_terminated_length: l.mean_terminated,
            min_terminated_length: l.min_terminated,
            max_terminated_length: l.max_terminated,
            num_tokens: 0,
            kl: None,
            entropy: 0.0,
            clip_ratio: [0.0; 3],
        }
    }
}

/// A sampled completion as a reward function sees it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Completion<'a> {
    prompt: &'a str,
    completion: String,
    completion_ids: &'a [u32],
    fields: &'a serde_json::Map<String, serde_json::Value>,
}

/// What a GRPO step reports (TRL's metric names in camelCase).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GrpoStepEvent {
    step: u64,
    total_steps: u64,
    loss: f32,
    lr: f64,
    grad_norm: f32,
    #[serde(flatten)]
    metrics: GenerationMetrics,
    tokens: usize,
    step_seconds: f64,
    eta_seconds: f64,
    /// The step's completions with their combined rewards and advantages (for a page to show).
    completions: Vec<SampledCompletion>,
}

#[derive(Serialize)]
struct SampledCompletion {
    prompt: String,
    completion: String,
    reward: f32,
    advantage: f32,
}

#[wasm_bindgen(js_class = Model)]
impl WebModel {
    /// Starts GRPO on the adapter `name`: prompts ({prompt} records, text or
    /// messages), options (GrpoOptions) and one or more reward functions,
    /// each given the step's completions and returning (or resolving to) one
    /// number, or null, a completion, or the names of reward model adapters.
    #[wasm_bindgen(js_name = startGrpo)]
    pub fn start_grpo(
        &self,
        name: &str,
        #[wasm_bindgen(unchecked_param_type = "string | GrpoPromptRecord[]")] prompts: JsValue,
        #[wasm_bindgen(unchecked_param_type = "GrpoOptions")] opts: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Reward[]")] rewards: Array,
    ) -> JsResult<GrpoRun> {
        self.grpo_run(name, None, (prompts, opts, rewards))
    }

    /// Continues a GRPO run from its `saveCheckpoint()` bytes, with the
    /// prompts, options and reward functions it started with; the adapter is
    /// stored as `name` (replacing one of that name).
    #[wasm_bindgen(js_name = resumeGrpo)]
    pub fn resume_grpo(
        &self,
        name: &str,
        checkpoint: &[u8],
        #[wasm_bindgen(unchecked_param_type = "string | GrpoPromptRecord[]")] prompts: JsValue,
        #[wasm_bindgen(unchecked_param_type = "GrpoOptions")] opts: JsValue,
        #[wasm_bindgen(unchecked_param_type = "Reward[]")] rewards: Array,
    ) -> JsResult<GrpoRun> {
        self.grpo_run(name, Some(checkpoint), (prompts, opts, rewards))
    }

    /// A GRPO run on the adapter `name`, or on the one `checkpoint` holds.
    fn grpo_run(
        &self,
        name: &str,
        checkpoint: Option<&[u8]>,
        (prompts, opts, rewards): (JsValue, JsValue, Array),
    ) -> JsResult<GrpoRun> {
        let o: GrpoOptions = serde_wasm_bindgen::from_value(opts).map_err(|e| err(format!("invalid options: {e}")))?;
        let rewards: Vec<WebReward> = rewards
            .iter()
            .enumerate()
            .map(|(i, f)| match f.as_string() {
                Some(adapter) => Ok(WebReward::Model(adapter)),
                None => f.dyn_into::<Function>().map(WebReward::Js).map_err(|_| {
                    err(format!("rewardFuncs[{i}] is neither a function nor the name of a reward model adapter"))
                }),
            })
            .collect::<JsResult<_>>()?;
        let plan = o.to_plan(rewards.len()).map_err(err)?;
        let mut guard = busy_mut(self.state.try_borrow_mut())?;
        let st = &mut *guard;
        let tokenizer = st.tokenizer.as_ref().ok_or_else(|| err("GRPO needs the model's tokenizer"))?;
        let text = data_text(&prompts)?;
        let budget = plan.loss.prompt_budget(plan.max_prompt_length, st.model.config.max_position_embeddings);
        let prompts = grpo_prompts("prompts", text.as_bytes(), tokenizer, budget.map_err(err)?).map_err(err)?;
        let eos: Vec<u32> = match tokenizer.eos_token() {
            Some(t) => vec![t.id],
            None => st.model.config.eos_token_ids.clone(),
        };
        if eos.is_empty() {
            return Err(err("GRPO needs an eos token to end completions: the tokenizer and config.json name none"));
        }
        let pad = pad_id(Some(tokenizer));
        let recipe = &plan.recipe;
        let (mut trainer, resumed) = match checkpoint {
            Some(bytes) => {
                let (trainer, progress) = load_checkpoint(&st.gpu, bytes, &st.model.config).map_err(err)?;
                let state = grpo_resume_state(&progress, prompts.len(), recipe.shuffle).map_err(err)?;
                let total = progress.get("total_steps").and_then(serde_json::Value::as_u64);
                (trainer, Some((state, total)))
            }
            None => {
                let stored = st.adapters.get(name).ok_or_else(|| err(format!("no adapter named {name:?}")))?;
                let trainer = Trainer::new(&st.gpu, stored.clone(), recipe.optimizer.clone(), recipe.seed);
                (trainer.map_err(err)?, None)
            }
        };
        if trainer.adapter.virtual_tokens() + trainer.adapter.prefix_len() > 0 {
            return Err(err("GRPO trains methods without virtual tokens (not prompt, prefix or p-tuning)"));
        }
        for (i, r) in rewards.iter().enumerate() {
            let WebReward::Model(reward_model) = r else { continue };
            let found = st.adapters.get(reward_model).map(|a| (a.task_type(), a.num_labels()));
            if reward_model == name || found != Some((crate::peft::TaskType::SeqCls, 1)) {
                return Err(err(format!(
                    "rewardFuncs[{i}]: {reward_model:?} is not a reward model among the adapters (one added with \
                     taskType \"SEQ_CLS\", one label, and trained with objective \"reward\", not the adapter this run trains)"
                )));
            }
        }
        match st.adapters.get_mut(name) {
            Some(stored) if resumed.is_none() => *stored = trainer.adapter.clone(),
            _ => {
                let _ = st.adapters.remove(name);
                st.adapters.insert(name, trainer.adapter.clone()).map_err(err)?;
            }
        }
        trainer.gradient_checkpointing = recipe.gradient_checkpointing;
        trainer.disable_dropout = recipe.disables_dropout();
        trainer.objective = recipe.objective;
        let run = recipe.run_config();
        // A resumed run keeps its own step total (its schedule spans it).
        let total = resumed.as_ref().and_then(|(_, t)| *t).unwrap_or(plan.recipe.steps.unwrap_or(1));
        let warmup = run.warmup_steps_for(total).map_err(err)?;
        let schedule = LrSchedule::new(run.schedule, run.lr, warmup, total).map_err(err)?;
        let generation = GenerationConfig {
            max_new_tokens: plan.loss.max_completion_length,
            temperature: plan.loss.temperature,
            top_k: plan.top_k,
            top_p: plan.top_p,
            eos_token_ids: eos.clone(),
            greedy: false,
            ..GenerationConfig::default()
        };
        generation.validate().map_err(err)?;
        let settings = GrpoSettings { eos, pad, ..plan.settings.clone() };
        let (rng, order) = match resumed {
            Some((state, _)) => state,
            None => (Rng::new(recipe.seed), PromptOrder::new(prompts.len(), recipe.shuffle)),
        };
        let state = GrpoState { trainer, prompts, plan, settings, generation, schedule, rewards, rng, order };
        Ok(GrpoRun {
            model: self.state.clone(),
            state: Rc::new(RefCell::new(state)),
            name: name.to_string(),
            paused: Rc::new(Cell::new(false)),
            cancelled: Rc::new(Cell::new(false)),
            seconds: Rc::new(Cell::new(StepClock::default())),
        })
    }
}

/// Calls reward function `f` on the completions; its values (a number or
/// null each), awaited when it returns a promise.
async fn call_reward(f: &Function, index: usize, completions: &JsValue, n: usize) -> JsResult<Vec<Option<f32>>> {
    let mut value = f.call1(&JsValue::NULL, completions)?;
    if let Some(p) = value.dyn_ref::<Promise>() {
        value = JsFuture::from(p.clone()).await?;
    }
    let array = value
        .dyn_ref::<Array>()
        .ok_or_else(|| err(format!("rewardFuncs[{index}] must return an array of numbers (or null)")))?;
    if array.length() as usize != n {
        return Err(err(format!("rewardFuncs[{index}] returned {} rewards for {n} completions", array.length())));
    }
    array
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_f64() {
            Some(x) => Ok(Some(x as f32)),
            None if v.is_null() || v.is_undefined() => Ok(None),
            None => Err(err(format!("rewardFuncs[{index}]: reward {i} is not a number or null"))),
        })
        .collect()
}

/// `completions` (`g` of each of `prompts`, in order) decoded, handed to
/// each reward function as `Completion`s, and their values; returns each
/// completion's (prompt, completion) texts beside them.
async fn score_completions(
    st: &ModelState,
    (prompts, completions, g): (&[&GrpoPrompt], &[Vec<u32>], usize),
    functions: &[WebReward],
) -> JsResult<(Vec<(String, String)>, Vec<Vec<Option<f32>>>)> {
    let tokenizer = st.tokenizer.as_ref().ok_or_else(|| err("GRPO needs the model's tokenizer"))?;
    let texts: Vec<String> =
        completions.iter().map(|c| tokenizer.decode(c, true)).collect::<crate::Result<_>>().map_err(err)?;
    let shown: Vec<Completion> = completions
        .iter()
        .zip(&texts)
        .enumerate()
        .map(|(i, (ids, text))| {
            let prompt = prompts[i / g];
            Completion { prompt: &prompt.text, completion: text.clone(), completion_ids: ids, fields: &prompt.fields }
        })
        .collect();
    let js = to_js(&shown)?;
    let mut rewards = Vec::with_capacity(functions.len());
    for (i, f) in functions.iter().enumerate() {
        rewards.push(match f {
            WebReward::Js(f) => call_reward(f, i, &js, completions.len()).await?,
            WebReward::Model(name) => {
                let adapter = st.adapters.get(name).ok_or_else(|| err(format!("no adapter named {name:?}")))?;
                let own: Vec<&serde_json::Value> = (0..completions.len())
                    .map(|i| prompts[i / g].fields.get("prompt").unwrap_or(&serde_json::Value::Null))
                    .collect();
                let scores = reward_model_scores((&st.gpu, &st.model, Some(adapter)), tokenizer, &own, &texts).await;
                scores.map_err(err)?.into_iter().map(Some).collect()
            }
        });
    }
    let pairs = shown.into_iter().map(|c| (c.prompt.to_string(), c.completion)).collect();
    Ok((pairs, rewards))
}

async fn one_step(
    model: &Rc<RefCell<ModelState>>,
    state: &Rc<RefCell<GrpoState>>,
    seconds: &Rc<Cell<StepClock>>,
) -> JsResult<Option<GrpoStepEvent>> {
    let st = busy(model.try_borrow())?;
    let mut guard = state.try_borrow_mut().map_err(|_| err("this run is already taking a step"))?;
    let s = &mut *guard;
    let total = s.schedule.total_steps;
    if s.trainer.step >= total {
        return Ok(None);
    }
    let start = now_seconds();
    let g = s.settings.num_generations;
    // The run's last generation takes the steps it has left.
    let Generation { chosen, completions, settings } = sample_generation(
        (&st.gpu, &st.model, hooks_of(Some(&s.trainer.adapter))),
        (&s.prompts, &mut s.order, &mut s.rng),
        &s.settings,
        &s.generation,
        (s.plan.recipe.shuffle, total - s.trainer.step),
    )
    .await
    .map_err(err)?;
    let group_prompts: Vec<&GrpoPrompt> = chosen.iter().map(|&p| &s.prompts[p]).collect();
    let (shown, rewards) = score_completions(&st, (&group_prompts, &completions, g), &s.rewards).await?;
    let ids: Vec<&[u32]> = chosen.iter().map(|&p| s.prompts[p].ids.as_slice()).collect();
    let r = grpo_step(&st.gpu, &st.model, &mut s.trainer, (&ids, &completions), &rewards, &settings, &s.schedule)
        .await
        .map_err(err)?;
    let last = r.steps.last().ok_or_else(|| err("GRPO took no step"))?;
    let secs = (now_seconds() - start).max(1e-6);
    let mut clock = seconds.get();
    clock.record(secs);
    seconds.set(clock);
    Ok(Some(GrpoStepEvent {
        step: last.step,
        total_steps: total,
        loss: last.loss,
        lr: last.lr,
        grad_norm: last.grad_norm,
        metrics: GenerationMetrics {
            num_tokens: r.num_tokens,
            kl: last.kl.or(r.kl),
            entropy: last.entropy.unwrap_or(0.0),
            clip_ratio: last.clip_ratio.unwrap_or_default(),
            ..GenerationMetrics::of(&r.advantages, (r.reward_means.clone(), r.reward_stds.clone()), &r.lengths)
        },
        tokens: completions.iter().map(Vec::len).sum(),
        step_seconds: secs,
        eta_seconds: clock.eta(total.saturating_sub(last.step)),
        completions: shown
            .into_iter()
            .zip(r.rewards)
            .zip(r.advantages.advantages)
            .map(|(((prompt, completion), reward), advantage)| SampledCompletion {
                prompt,
                completion,
                reward,
                advantage,
            })
            .collect(),
    }))
}

#[wasm_bindgen]
impl GrpoRun {
    /// One step; resolves to its event, or undefined when the run is done.
    #[wasm_bindgen(unchecked_return_type = "Promise<GrpoStepEvent | undefined>")]
    pub fn step(&self) -> Promise {
        let (model, state, seconds) = (self.model.clone(), self.state.clone(), self.seconds.clone());
        future_to_promise(async move {
            match one_step(&model, &state, &seconds).await? {
                Some(e) => to_js(&e),
                None => Ok(JsValue::UNDEFINED),
            }
        })
    }

    /// Steps until done or cancelled, calling `onStep` after each; waits while paused.
    #[wasm_bindgen(unchecked_return_type = "Promise<TrainSummary>")]
    pub fn train(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: GrpoStepEvent) => void")] on_step: Option<Function>,
    ) -> Promise {
        let (model, state, seconds) = (self.model.clone(), self.state.clone(), self.seconds.clone());
        let (paused, cancelled) = (self.paused.clone(), self.cancelled.clone());
        future_to_promise(async move {
            let done = drive((&paused, &cancelled), on_step.as_ref(), || one_step(&model, &state, &seconds)).await?;
            let s = state.try_borrow().map_err(|_| err("this run is taking a step"))?;
            to_js(&TrainSummary { steps: s.trainer.step, total_steps: s.schedule.total_steps, state: done })
        })
    }

    pub fn pause(&self) {
        self.paused.set(true);
    }

    pub fn resume(&self) {
        self.paused.set(false);
    }

    /// Stops `train()` after the step in flight; the adapter keeps what it learned.
    pub fn cancel(&self) {
        self.cancelled.set(true);
    }

    #[wasm_bindgen(js_name = currentStep)]
    pub fn current_step(&self) -> JsResult<f64> {
        Ok(self.state.try_borrow().map_err(|_| err("this run is taking a step"))?.trainer.step as f64)
    }

    #[wasm_bindgen(js_name = totalSteps)]
    pub fn total_steps(&self) -> JsResult<f64> {
        Ok(self.state.try_borrow().map_err(|_| err("this run is taking a step"))?.schedule.total_steps as f64)
    }

    /// The run's checkpoint between steps (adapter, AdamW moments, step, the
    /// generators and the prompts' order), for `model.resumeGrpo`.
    #[wasm_bindgen(js_name = saveCheckpoint, unchecked_return_type = "Promise<Uint8Array>")]
    pub fn save_checkpoint(&self) -> Promise {
        let (model, state) = (self.model.clone(), self.state.clone());
        future_to_promise(async move {
            let st = busy(model.try_borrow())?;
            let s = state.try_borrow().map_err(|_| err("this run is taking a step"))?;
            let progress = grpo_progress(&s.schedule, s.settings.gradient_accumulation_steps, &s.rng, &s.order);
            let bytes = save_checkpoint(&st.gpu, &s.trainer, &st.model.config, &progress).await.map_err(err)?;
            Ok(Uint8Array::from(bytes.as_slice()).into())
        })
    }

    /// TRL's `evaluate()` on held-out prompts (text or {prompt} records, as
    /// `startGrpo` takes them): in batches of `batchSize` completions
    /// (`numGenerations` of each prompt, from seeds drawn from the run's seed
    /// and step, so the run's own sampling is left alone), scored by the run's
    /// reward functions, each batch's loss without dropout or a backward; the
    /// eval_ metrics, each the mean of the batches' as TRL's (`GrpoEvalResult`).
    #[wasm_bindgen(unchecked_return_type = "Promise<GrpoEvalResult>")]
    pub fn evaluate(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | GrpoPromptRecord[]")] prompts: JsValue,
    ) -> Promise {
        let (model, state) = (self.model.clone(), self.state.clone());
        future_to_promise(async move {
            let st = busy(model.try_borrow())?;
            let s = state.try_borrow().map_err(|_| err("this run is taking a step"))?;
            let tokenizer = st.tokenizer.as_ref().ok_or_else(|| err("GRPO needs the model's tokenizer"))?;
            let (g, rows) = (s.settings.num_generations, s.settings.batch_size);
            if rows % g != 0 {
                let detail =
                    format!("an evaluation batch (batchSize {rows}) must be a multiple of numGenerations ({g})");
                return Err(err(detail));
            }
            let text = data_text(&prompts)?;
            let budget = s.plan.loss.prompt_budget(s.plan.max_prompt_length, st.model.config.max_position_embeddings);
            let held_out = grpo_prompts("prompts", text.as_bytes(), tokenizer, budget.map_err(err)?).map_err(err)?;
            let Objective::Grpo(loss) = s.trainer.objective else { return Err(err("not a GRPO or RLOO run")) };
            let seed = s.plan.recipe.seed.wrapping_add(s.trainer.step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut batches = Vec::new();
            for (b, chunk) in held_out.chunks(rows / g).enumerate() {
                let mut completions = Vec::with_capacity(chunk.len() * g);
                for (k, p) in chunk.iter().enumerate() {
                    let k = (b * rows / g + k) as u64;
                    let config = GenerationConfig { seed: seed.wrapping_add(k * g as u64), ..s.generation.clone() };
                    let hooks = hooks_of(Some(&s.trainer.adapter));
                    completions.extend(st.model.sample_group(&st.gpu, &p.ids, g, &config, hooks).await.map_err(err)?);
                }
                let group_prompts: Vec<&GrpoPrompt> = chunk.iter().collect();
                let (_, rewards) = score_completions(&st, (&group_prompts, &completions, g), &s.rewards).await?;
                let ids: Vec<&[u32]> = chunk.iter().map(|p| p.ids.as_slice()).collect();
                let one = evaluate_group(
                    (&st.gpu, &st.model, &s.trainer.adapter),
                    &loss,
                    &s.settings,
                    (&ids, &completions),
                    &rewards,
                );
                batches.push(one.await.map_err(err)?);
            }
            let e = GroupEval::combine(&batches).map_err(err)?;
            let stats = Advantages {
                advantages: Vec::new(),
                reward: e.reward,
                reward_std: e.reward_std,
                frac_reward_zero_std: e.frac_reward_zero_std,
            };
            to_js(&GrpoEvalResult {
                loss: e.loss,
                metrics: GenerationMetrics {
                    num_tokens: s.trainer.tokens_seen,
                    kl: e.kl,
                    entropy: e.entropy,
                    clip_ratio: e.clip_ratio,
                    ..GenerationMetrics::of(&stats, (e.reward_means.clone(), e.reward_stds.clone()), &e.lengths)
                },
                completions: e.rows,
            })
        })
    }

    /// The adapter this run trains.
    #[wasm_bindgen(js_name = adapterName)]
    pub fn adapter_name(&self) -> String {
        self.name.clone()
    }
}
