//! The browser API's option objects (`LoraOptions`, `AdaLoraOptions`, `Ia3Options`, `BottleneckOptions`,
//! `TrainOptions`, `EvalOptions`, `PlanOptions`; their TypeScript declarations
//! are in `types.rs`) as serde structs, and their conversion into the library's
//! recipe. Plain Rust, compiled natively too, so tests can check that the
//! browser and the CLI make the same adapter from the same options.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::kernels::swiglu::Activation;
use crate::peft::prompt_tuning::PromptTuningInit;
use crate::peft::{InitLoraWeights, TargetModules};
use crate::train::data::LossMasks;
use crate::train::preference::{Objective, PreferenceOptions};
use crate::train::recipe::{
    AdaLoraRecipe, AdapterRecipe, BottleneckRecipe, Ia3Recipe, LoraRecipe, Method, PromptTuningRecipe, TrainRecipe,
    DEFAULT_SEED,
};
use crate::train::schedule::Schedule;
use crate::{Error, Result};

fn bad(option: &'static str, detail: impl Into<String>) -> Error {
    Error::TrainOption { option, detail: detail.into() }
}

/// `addLora`'s options.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct LoraOptions {
    pub r: Option<usize>,
    pub alpha: Option<f64>,
    pub dropout: Option<f64>,
    pub targets: Option<Value>,
    pub rslora: Option<bool>,
    pub use_dora: Option<bool>,
    pub init: Option<String>,
    /// LoftQ's alternating iterations (`loftq_config.loftq_iter`), with init "loftq".
    pub loftq_iter: Option<usize>,
    pub layers_to_transform: Option<Vec<usize>>,
    /// PEFT's `trainable_token_indices`: these ids' embedding rows are trained too.
    pub trainable_token_indices: Option<Vec<u32>>,
    /// The same by the tokens' text (each one token of the vocabulary), after those.
    pub trainable_tokens: Option<Vec<String>>,
    /// PEFT's `modules_to_save`: `embed_tokens`, `lm_head` trained whole.
    pub modules_to_save: Option<Vec<String>>,
    /// The trainable tokens' lm_head rows too, on a model with an untied head.
    pub lm_head_rows: Option<bool>,
    /// PEFT's `ensure_weight_tying`: one copy for a tied model's embedding and head.
    pub ensure_weight_tying: Option<bool>,
    /// PEFT's `exclude_modules`: names or suffixes, or a regex (a string).
    pub exclude_modules: Option<Value>,
    /// PEFT's `rank_pattern`: module pattern → rank.
    pub rank_pattern: Option<BTreeMap<String, usize>>,
    /// PEFT's `alpha_pattern`: module pattern → alpha.
    pub alpha_pattern: Option<BTreeMap<String, f64>>,
    /// PEFT's `task_type`: "CAUSAL_LM" (the default) or "SEQ_CLS", a reward
    /// model (its `score` head trained through `modules_to_save`).
    pub task_type: Option<String>,
    /// SEQ_CLS: the score head's labels (transformers' `num_labels`, default 1).
    pub num_labels: Option<usize>,
    pub seed: Option<u64>,
}

/// `addAdaLora`'s options (PEFT's `AdaLoraConfig` fields in camelCase).
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct AdaLoraOptions {
    pub init_r: Option<usize>,
    pub target_r: Option<usize>,
    pub alpha: Option<f64>,
    pub dropout: Option<f64>,
    pub targets: Option<Value>,
    pub tinit: Option<usize>,
    pub tfinal: Option<usize>,
    #[serde(rename = "deltaT")]
    pub delta_t: Option<usize>,
    pub beta1: Option<f64>,
    pub beta2: Option<f64>,
    pub orth_reg_weight: Option<f64>,
    /// The steps the budget schedule spans: the steps the run will take.
    pub total_step: Option<usize>,
    pub seed: Option<u64>,
}

impl AdaLoraOptions {
    /// The AdaLoRA recipe these options describe (the rest at PEFT's defaults).
    pub fn to_recipe(&self) -> Result<AdapterRecipe> {
        let mut a = AdaLoraRecipe::default();
        a.init_r = self.init_r.unwrap_or(a.init_r);
        a.target_r = self.target_r.unwrap_or(a.target_r);
        a.lora.alpha = self.alpha.unwrap_or(a.lora.alpha);
        a.lora.dropout = self.dropout.unwrap_or(a.lora.dropout);
        a.lora.targets = lora_targets(self.targets.as_ref())?.unwrap_or(a.lora.targets);
        a.tinit = self.tinit.unwrap_or(a.tinit);
        a.tfinal = self.tfinal.unwrap_or(a.tfinal);
        a.delta_t = self.delta_t.unwrap_or(a.delta_t);
        a.beta1 = self.beta1.unwrap_or(a.beta1);
        a.beta2 = self.beta2.unwrap_or(a.beta2);
        a.orth_reg_weight = self.orth_reg_weight.unwrap_or(a.orth_reg_weight);
        a.total_step = Some(self.total_step.ok_or_else(|| {
            bad(
                "total_step",
                "AdaLoRA's rank budget is scheduled over the run: give totalStep, the steps you will train",
            )
        })?);
        Ok(AdapterRecipe::AdaLora(a))
    }

    /// The seed of the adapter's initialisation.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }
}

/// `addIa3`'s options.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct Ia3Options {
    pub targets: Option<Value>,
    pub feedforward_modules: Option<Vec<String>>,
    pub seed: Option<u64>,
}

/// `addTrainableTokens`'s options.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct TrainableTokensOptions {
    pub token_indices: Option<Vec<u32>>,
    /// The same by the tokens' text (each one token of the vocabulary), after those.
    pub tokens: Option<Vec<String>>,
    /// The same ids' rows of an untied lm_head too (PEFT's target_modules ["embed_tokens", "lm_head"]).
    pub lm_head_rows: Option<bool>,
}

impl TrainableTokensOptions {
    /// The TRAINABLE_TOKENS recipe: the ids are required.
    pub fn to_recipe(&self) -> Result<AdapterRecipe> {
        let given = |v: Option<usize>| v.is_some_and(|n| n > 0);
        if !given(self.token_indices.as_ref().map(Vec::len)) && !given(self.tokens.as_ref().map(Vec::len)) {
            return Err(bad("token_indices", "addTrainableTokens needs tokenIndices or tokens, the rows it trains"));
        }
        Ok(AdapterRecipe::TrainableTokens {
            token_indices: self.token_indices.clone().unwrap_or_default(),
            lm_head_rows: self.lm_head_rows.unwrap_or(false),
        })
    }
}

/// `addPromptTuning`'s options.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct PromptTuningOptions {
    pub num_virtual_tokens: Option<usize>,
    /// "random", "sample_vocab" or "text".
    pub init: Option<String>,
    pub init_text: Option<String>,
    pub seed: Option<u64>,
}

/// `addPrefixTuning`'s options.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct PrefixTuningOptions {
    pub num_virtual_tokens: Option<usize>,
    pub prefix_projection: Option<bool>,
    pub encoder_hidden_size: Option<usize>,
    pub seed: Option<u64>,
}

impl PrefixTuningOptions {
    /// The prefix-tuning recipe these options describe (20 virtual tokens, no projection, unless told).
    pub fn to_recipe(&self) -> Result<AdapterRecipe> {
        Ok(AdapterRecipe::PrefixTuning {
            num_virtual_tokens: self.num_virtual_tokens.unwrap_or(20),
            prefix_projection: self.prefix_projection.unwrap_or(false),
            encoder_hidden_size: self.encoder_hidden_size,
        })
    }

    /// The seed of the adapter's initialisation.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }
}

/// `addPTuning`'s options.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct PTuningOptions {
    pub num_virtual_tokens: Option<usize>,
    pub encoder_hidden_size: Option<usize>,
    pub seed: Option<u64>,
}

impl PTuningOptions {
    /// The P-tuning recipe these options describe (20 virtual tokens, an MLP as wide as the model, unless told).
    pub fn to_recipe(&self) -> Result<AdapterRecipe> {
        let num_virtual_tokens = self.num_virtual_tokens.unwrap_or(20);
        Ok(AdapterRecipe::PTuning { num_virtual_tokens, encoder_hidden_size: self.encoder_hidden_size })
    }

    /// The seed of the adapter's initialisation.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }
}

/// `addBottleneck`'s options.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct BottleneckOptions {
    pub method: String,
    pub reduction_factor: Option<f64>,
    pub non_linearity: Option<String>,
    pub dropout: Option<f64>,
    pub seed: Option<u64>,
}

/// `startTraining`'s and `resumeTraining`'s options.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct TrainOptions {
    pub lr: f64,
    pub steps: Option<u64>,
    pub epochs: Option<f64>,
    pub batch_size: Option<usize>,
    pub seq_len: Option<usize>,
    pub grad_accum: Option<usize>,
    pub warmup: Option<u64>,
    pub warmup_ratio: Option<f64>,
    pub schedule: Option<String>,
    /// transformers' `lr_scheduler_kwargs`.
    pub schedule_kwargs: Option<serde_json::Value>,
    pub weight_decay: Option<f64>,
    pub max_grad_norm: Option<f32>,
    pub loraplus_lr_ratio: Option<f64>,
    pub loraplus_lr_embedding: Option<f64>,
    pub seed: Option<u64>,
    pub shuffle: Option<bool>,
    pub packing: Option<bool>,
    pub gradient_checkpointing: Option<bool>,
    /// NEFTune's noise on the embeddings (SFT; transformers' `neftune_noise_alpha`).
    pub neftune_noise_alpha: Option<f32>,
    /// TRL's `completion_only_loss` and `assistant_only_loss` (SFT; both on when left out).
    pub completion_only_loss: Option<bool>,
    pub assistant_only_loss: Option<bool>,
    /// DPO and KTO: TRL's `precompute_ref_log_probs`.
    pub precompute_ref_log_probs: Option<bool>,
    /// TRL's `disable_dropout` (left out: the objective's trainer's default).
    pub disable_dropout: Option<bool>,
    /// "sft" (the default), "dpo", "orpo", "cpo", "kto", "reward" or "classification".
    pub objective: Option<String>,
    /// Classification: transformers' `problem_type` (left out: inferred from the labels).
    pub problem_type: Option<String>,
    /// DPO's, ORPO's and CPO's settings: `beta`, `labelSmoothing`, `lossType`, `rpoAlpha`, `discopopTau`,
    /// `cpoAlpha`, `simpoGamma`.
    #[serde(flatten)]
    pub preference: PreferenceOptions,
}

/// `evaluate`'s options.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct EvalOptions {
    pub batch_size: Option<usize>,
    pub seq_len: Option<usize>,
    /// "sft" (the default), or a preference objective whose loss and TRL's
    /// metrics to measure on held-out pairs (with `beta`, `lossType`, …).
    pub objective: Option<String>,
    /// `evaluateClassifier`: transformers' `problem_type` (left out: inferred from the labels).
    pub problem_type: Option<String>,
    #[serde(flatten)]
    pub preference: PreferenceOptions,
}

/// `planMemory`'s options.
#[derive(Deserialize, Default, Debug)]
#[serde(rename_all = "camelCase", default)]
pub struct PlanOptions {
    pub quant: Option<String>,
    pub double_quant: Option<bool>,
    pub method: Option<String>,
    pub r: Option<usize>,
    pub targets: Option<Value>,
    pub feedforward_modules: Option<Vec<String>>,
    pub num_virtual_tokens: Option<usize>,
    pub prefix_projection: Option<bool>,
    pub encoder_hidden_size: Option<usize>,
    pub reduction_factor: Option<f64>,
    pub batch_size: Option<usize>,
    pub seq_len: Option<usize>,
    pub grad_accum: Option<usize>,
    pub lora_dropout: Option<f64>,
    pub use_dora: Option<bool>,
    pub gradient_checkpointing: Option<bool>,
    /// trainable_tokens' ids (and LoRA's trainable tokens).
    pub trainable_token_indices: Option<Vec<u32>>,
    /// LoRA's `modules_to_save` (their copies' memory counts).
    pub modules_to_save: Option<Vec<String>>,
    /// LoRA's `ensure_weight_tying`.
    pub ensure_weight_tying: Option<bool>,
}

/// `targets`: a list of module names, "all-linear", or another string: a
/// regex matched against whole module names, as PEFT takes a string (absent:
/// the default).
fn lora_targets(v: Option<&Value>) -> Result<Option<TargetModules>> {
    Ok(Some(match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) if s == "all-linear" => TargetModules::AllLinear,
        Some(Value::String(s)) => TargetModules::Regex(s.clone()),
        Some(Value::Array(a)) => TargetModules::List(
            a.iter()
                .map(|t| t.as_str().map(str::to_string).ok_or_else(|| bad("targets", "module names must be strings")))
                .collect::<Result<_>>()?,
        ),
        Some(other) => {
            return Err(bad(
                "targets",
                format!("must be a list of module names, \"all-linear\" or a regex, got {other}"),
            ))
        }
    }))
}

impl LoraOptions {
    /// The LoRA recipe these options describe (the rest at its defaults);
    /// the inits that replace the base weights are `initLora`'s.
    pub fn to_recipe(&self) -> Result<AdapterRecipe> {
        self.recipe(false)
    }

    /// The recipe of `initLora`: an init that replaces the base weights
    /// (PiSSA, pissa_niter_K, OLoRA, LoftQ), which it requires.
    pub fn to_base_recipe(&self) -> Result<AdapterRecipe> {
        let recipe = self.recipe(true)?;
        match &recipe {
            AdapterRecipe::Lora(l) if l.init.adjusts_base() => Ok(recipe),
            _ => Err(bad(
                "init",
                format!(
                    "initLora is for inits that replace the base weights (pissa, pissa_niter_K, olora, loftq), got {:?}; use addLora",
                    self.init.as_deref().unwrap_or("kaiming")
                ),
            )),
        }
    }

    fn recipe(&self, adjusting: bool) -> Result<AdapterRecipe> {
        let mut l = LoraRecipe::default();
        l.r = self.r.unwrap_or(l.r);
        l.alpha = self.alpha.unwrap_or(l.alpha);
        l.dropout = self.dropout.unwrap_or(l.dropout);
        l.targets = lora_targets(self.targets.as_ref())?.unwrap_or(l.targets);
        l.use_rslora = self.rslora.unwrap_or(l.use_rslora);
        l.use_dora = self.use_dora.unwrap_or(l.use_dora);
        l.init = match self.init.as_deref() {
            None => l.init,
            Some("kaiming") => InitLoraWeights::Kaiming,
            Some("gaussian") => InitLoraWeights::Gaussian,
            // Several adapters share the page's one base, which these replace: initLora's.
            Some(other) if InitLoraWeights::from_name(other, 1).is_ok_and(InitLoraWeights::adjusts_base) => {
                if !adjusting {
                    return Err(bad(
                        "init",
                        format!("{other:?} replaces the base weights, which the page's adapters share: use initLora"),
                    ));
                }
                InitLoraWeights::from_name(other, self.loftq_iter.unwrap_or(1))
                    .map_err(|e| bad("init", e.to_string()))?
            }
            Some(other) => return Err(bad("init", format!("must be \"kaiming\" or \"gaussian\", got {other:?}"))),
        };
        l.layers_to_transform = self.layers_to_transform.clone();
        l.trainable_token_indices = self.trainable_token_indices.clone();
        l.modules_to_save = self.modules_to_save.clone();
        l.ensure_weight_tying = self.ensure_weight_tying.unwrap_or(false);
        l.lm_head_rows = self.lm_head_rows.unwrap_or(false);
        l.exclude_modules = match &self.exclude_modules {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(TargetModules::Regex(s.clone())),
            Some(v) => match lora_targets(Some(v)) {
                Ok(Some(TargetModules::List(l))) => Some(TargetModules::List(l)),
                _ => return Err(bad("exclude_modules", format!("must be a list of module names or a regex, got {v}"))),
            },
        };
        l.rank_pattern = self.rank_pattern.clone().unwrap_or_default();
        l.alpha_pattern = self.alpha_pattern.clone().unwrap_or_default();
        l.task_type = match self.task_type.as_deref() {
            None | Some("CAUSAL_LM") => crate::peft::TaskType::CausalLm,
            Some("SEQ_CLS") => crate::peft::TaskType::SeqCls,
            Some(other) => {
                return Err(bad(
                    "task_type",
                    format!("must be \"CAUSAL_LM\" or \"SEQ_CLS\" (a classifier or reward model), got {other:?}"),
                ))
            }
        };
        l.num_labels = match self.num_labels {
            Some(0) => return Err(bad("num_labels", "must be at least 1")),
            Some(n) if l.task_type != crate::peft::TaskType::SeqCls => {
                return Err(bad("num_labels", format!("{n}: labels belong to a SEQ_CLS adapter's score head")))
            }
            n => n,
        };
        Ok(AdapterRecipe::Lora(l))
    }

    /// The seed of the adapter's initialisation.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }
}

impl Ia3Options {
    /// The (IA)³ recipe these options describe (the rest at PEFT's defaults for the model).
    pub fn to_recipe(&self) -> Result<AdapterRecipe> {
        Ok(AdapterRecipe::Ia3(Ia3Recipe {
            targets: lora_targets(self.targets.as_ref())?,
            feedforward: self.feedforward_modules.clone(),
        }))
    }

    /// The seed of the adapter's initialisation.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }
}

/// A prompt-tuning init by name ("random", "sample_vocab", "text" with its text).
pub fn prompt_init(name: &str, text: Option<&str>) -> Result<PromptTuningInit> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "random" => PromptTuningInit::Random,
        "sample_vocab" => PromptTuningInit::SampleVocab,
        "text" => PromptTuningInit::Text(
            text.ok_or_else(|| bad("init_text", "the text init needs the text to start from"))?.to_string(),
        ),
        _ => return Err(bad("init", format!("expected random, sample_vocab or text, got {name:?}"))),
    })
}

impl PromptTuningOptions {
    /// The prompt-tuning recipe these options describe (the rest at its defaults).
    pub fn to_recipe(&self) -> Result<AdapterRecipe> {
        let mut p = PromptTuningRecipe::default();
        p.num_virtual_tokens = self.num_virtual_tokens.unwrap_or(p.num_virtual_tokens);
        if let Some(init) = &self.init {
            p.init = prompt_init(init, self.init_text.as_deref())?;
        }
        Ok(AdapterRecipe::PromptTuning(p))
    }

    /// The seed of the adapter's initialisation.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }
}

impl BottleneckOptions {
    /// The bottleneck recipe these options describe (the rest at AdapterHub's preset).
    pub fn to_recipe(&self) -> Result<AdapterRecipe> {
        let Method::Bottleneck(kind) = Method::from_name(&self.method)? else {
            return Err(bad(
                "method",
                "must be seq_bn, double_seq_bn or par_bn (addLora, addIa3 and addPromptTuning add the others)",
            ));
        };
        let mut b = BottleneckRecipe::new(kind);
        b.reduction_factor = self.reduction_factor.unwrap_or(b.reduction_factor);
        if let Some(a) = &self.non_linearity {
            b.non_linearity = Activation::from_name(a)
                .ok_or_else(|| bad("non_linearity", format!("expected relu, silu, gelu or tanh, got {a:?}")))?;
        }
        b.dropout = self.dropout.unwrap_or(b.dropout);
        Ok(AdapterRecipe::Bottleneck(b))
    }

    /// The seed of the adapter's initialisation.
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(DEFAULT_SEED)
    }
}

impl TrainOptions {
    /// The training recipe these options describe (the rest at its defaults), validated.
    pub fn to_recipe(&self) -> Result<TrainRecipe> {
        let mut t = TrainRecipe { lr: self.lr, ..TrainRecipe::default() };
        t.steps = self.steps.or(t.steps);
        t.epochs = self.epochs.unwrap_or(t.epochs);
        t.batch_size = self.batch_size.unwrap_or(t.batch_size);
        t.seq_len = self.seq_len.unwrap_or(t.seq_len);
        t.grad_accum = self.grad_accum.unwrap_or(t.grad_accum);
        t.warmup_steps = self.warmup.unwrap_or(t.warmup_steps);
        t.warmup_ratio = self.warmup_ratio.unwrap_or(t.warmup_ratio);
        if self.schedule.is_some() || self.schedule_kwargs.is_some() {
            let name = self.schedule.as_deref().unwrap_or(t.schedule.name());
            t.schedule =
                Schedule::with_kwargs(name, self.schedule_kwargs.as_ref().unwrap_or(&serde_json::Value::Null))?;
        }
        t.optimizer.weight_decay = self.weight_decay.unwrap_or(t.optimizer.weight_decay);
        t.optimizer.max_grad_norm = self.max_grad_norm.unwrap_or(t.optimizer.max_grad_norm);
        t.optimizer.loraplus_lr_ratio = self.loraplus_lr_ratio.or(t.optimizer.loraplus_lr_ratio);
        t.optimizer.loraplus_lr_embedding = self.loraplus_lr_embedding.unwrap_or(t.optimizer.loraplus_lr_embedding);
        t.seed = self.seed.unwrap_or(t.seed);
        t.shuffle = self.shuffle.unwrap_or(t.shuffle);
        t.packing = self.packing.unwrap_or(t.packing);
        t.neftune_noise_alpha = self.neftune_noise_alpha;
        t.loss_masks = LossMasks {
            completion_only: self.completion_only_loss.unwrap_or(t.loss_masks.completion_only),
            assistant_only: self.assistant_only_loss.unwrap_or(t.loss_masks.assistant_only),
        };
        t.precompute_ref_log_probs = self.precompute_ref_log_probs.unwrap_or(t.precompute_ref_log_probs);
        t.gradient_checkpointing = self.gradient_checkpointing.unwrap_or(t.gradient_checkpointing);
        t.disable_dropout = self.disable_dropout;
        let objective = self.objective.as_deref().unwrap_or("sft");
        t.objective = Objective::from_options(objective, &self.preference)?;
        set_problem_type(&mut t.objective, self.problem_type.as_deref())?;
        t.validate()?;
        Ok(t)
    }
}

/// `problemType` on a classification objective (checked by name); an error on any other.
fn set_problem_type(objective: &mut Objective, name: Option<&str>) -> Result<()> {
    use crate::train::classification::ProblemType;
    let Some(name) = name else { return Ok(()) };
    let Objective::Classification(loss) = objective else {
        return Err(bad("problemType", "applies to objective \"classification\" only"));
    };
    loss.problem_type = Some(ProblemType::from_name(name).ok_or_else(|| {
        bad(
            "problemType",
            format!("must be \"regression\", \"single_label_classification\" or \"multi_label_classification\", got {name:?}"),
        )
    })?);
    Ok(())
}

impl EvalOptions {
    /// The recipe of the held-out rows: the training defaults' batch and row length unless given.
    pub fn to_recipe(&self) -> Result<TrainRecipe> {
        let mut t = TrainRecipe::default();
        t.batch_size = self.batch_size.unwrap_or(t.batch_size);
        t.seq_len = self.seq_len.unwrap_or(t.seq_len);
        t.objective = Objective::from_options(self.objective.as_deref().unwrap_or("sft"), &self.preference)?;
        set_problem_type(&mut t.objective, self.problem_type.as_deref())?;
        t.validate()?;
        Ok(t)
    }
}

impl PlanOptions {
    /// The adapter and the run the plan is for, with the recipe's defaults.
    pub fn to_recipe(&self) -> Result<(AdapterRecipe, TrainRecipe)> {
        let method = Method::from_name(self.method.as_deref().unwrap_or("lora"))?;
        let adapter = match AdapterRecipe::new(method) {
            AdapterRecipe::Lora(mut l) => {
                l.r = self.r.unwrap_or(l.r);
                l.targets = lora_targets(self.targets.as_ref())?.unwrap_or(l.targets);
                l.dropout = self.lora_dropout.unwrap_or(l.dropout);
                l.use_dora = self.use_dora.unwrap_or(l.use_dora);
                l.trainable_token_indices = self.trainable_token_indices.clone();
                l.modules_to_save = self.modules_to_save.clone();
                l.ensure_weight_tying = self.ensure_weight_tying.unwrap_or(false);
                AdapterRecipe::Lora(l)
            }
            AdapterRecipe::TrainableTokens { .. } => AdapterRecipe::TrainableTokens {
                token_indices: self.trainable_token_indices.clone().unwrap_or_default(),
                lm_head_rows: false,
            },
            AdapterRecipe::AdaLora(mut a) => {
                a.init_r = self.r.unwrap_or(a.init_r);
                a.target_r = a.target_r.min(a.init_r);
                a.lora.targets = lora_targets(self.targets.as_ref())?.unwrap_or(a.lora.targets);
                a.lora.dropout = self.lora_dropout.unwrap_or(a.lora.dropout);
                AdapterRecipe::AdaLora(a)
            }
            AdapterRecipe::Ia3(mut a) => {
                a.targets = lora_targets(self.targets.as_ref())?;
                a.feedforward = self.feedforward_modules.clone();
                AdapterRecipe::Ia3(a)
            }
            AdapterRecipe::PromptTuning(mut p) => {
                p.num_virtual_tokens = self.num_virtual_tokens.unwrap_or(p.num_virtual_tokens);
                AdapterRecipe::PromptTuning(p)
            }
            AdapterRecipe::PrefixTuning { num_virtual_tokens, prefix_projection, .. } => AdapterRecipe::PrefixTuning {
                num_virtual_tokens: self.num_virtual_tokens.unwrap_or(num_virtual_tokens),
                prefix_projection: self.prefix_projection.unwrap_or(prefix_projection),
                encoder_hidden_size: self.encoder_hidden_size,
            },
            AdapterRecipe::PTuning { num_virtual_tokens, .. } => AdapterRecipe::PTuning {
                num_virtual_tokens: self.num_virtual_tokens.unwrap_or(num_virtual_tokens),
                encoder_hidden_size: self.encoder_hidden_size,
            },
            AdapterRecipe::Bottleneck(mut b) => {
                b.reduction_factor = self.reduction_factor.unwrap_or(b.reduction_factor);
                AdapterRecipe::Bottleneck(b)
            }
        };
        let mut t = TrainRecipe::default();
        t.batch_size = self.batch_size.unwrap_or(t.batch_size);
        t.seq_len = self.seq_len.unwrap_or(t.seq_len);
        t.grad_accum = self.grad_accum.unwrap_or(t.grad_accum);
        t.gradient_checkpointing = self.gradient_checkpointing.unwrap_or(t.gradient_checkpointing);
        t.validate()?;
        Ok((adapter, t))
    }
}

/// `startGrpo`'s options: the run's optimizer and schedule as `TrainOptions`
/// names them, and TRL's `GRPOConfig` settings.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct GrpoOptions {
    pub lr: f64,
    pub steps: u64,
    pub batch_size: Option<usize>,
    pub grad_accum: Option<usize>,
    pub warmup: Option<u64>,
    pub warmup_ratio: Option<f64>,
    pub schedule: Option<String>,
    pub schedule_kwargs: Option<serde_json::Value>,
    pub weight_decay: Option<f64>,
    pub max_grad_norm: Option<f32>,
    pub seed: Option<u64>,
    pub shuffle: Option<bool>,
    pub gradient_checkpointing: Option<bool>,
    pub num_generations: Option<usize>,
    pub max_completion_length: Option<usize>,
    pub max_prompt_length: Option<usize>,
    pub reward_weights: Option<Vec<f32>>,
    pub scale_rewards: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub mask_truncated_completions: Option<bool>,
    pub beta: Option<f32>,
    pub loss_type: Option<String>,
    pub num_iterations: Option<usize>,
    pub steps_per_generation: Option<usize>,
    pub generation_batch_size: Option<usize>,
    pub importance_sampling_level: Option<String>,
    pub epsilon: Option<f32>,
    pub epsilon_high: Option<f32>,
    pub delta: Option<f32>,
    pub top_entropy_quantile: Option<f64>,
    /// "grpo" (TRL's GRPOTrainer, the default) or "rloo" (its RLOOTrainer).
    pub objective: Option<String>,
    pub normalize_advantages: Option<bool>,
    pub reward_clip_range: Option<(f32, f32)>,
    /// TRL's `disable_dropout` (GRPOConfig's and RLOOConfig's default: false).
    pub disable_dropout: Option<bool>,
}

/// A GRPO run's settings from [`GrpoOptions`].
#[derive(Clone, Debug)]
pub struct GrpoPlan {
    /// The optimizer, schedule, batch and seed (objective GRPO).
    pub recipe: TrainRecipe,
    pub loss: crate::train::grpo::GrpoLoss,
    /// The generations' settings, validated (the eos and pad ids are the tokenizer's, set at the start).
    pub settings: crate::train::grpo::GrpoSettings,
    pub max_prompt_length: usize,
    pub top_p: f32,
    pub top_k: usize,
}

impl GrpoOptions {
    /// The run these options describe for `rewards` reward functions, validated.
    pub fn to_plan(&self, rewards: usize) -> Result<GrpoPlan> {
        use crate::kernels::grpo::{Clip, ImportanceSampling};
        use crate::train::grpo::{Estimator, GrpoLoss, GrpoLossType, GrpoSettings, ScaleRewards};
        let estimator = match self.objective.as_deref().unwrap_or("grpo") {
            "grpo" => Estimator::Grpo,
            "rloo" => Estimator::Rloo,
            other => return Err(bad("objective", format!("expected grpo or rloo, got {other:?}"))),
        };
        let given = |set: bool, option: &'static str, owner: Estimator| match set && owner != estimator {
            true => Err(bad(option, format!("applies to {} only", owner.name()))),
            false => Ok(()),
        };
        given(self.loss_type.is_some(), "lossType", Estimator::Grpo)?;
        given(self.scale_rewards.is_some(), "scaleRewards", Estimator::Grpo)?;
        given(self.importance_sampling_level.is_some(), "importanceSamplingLevel", Estimator::Grpo)?;
        given(self.delta.is_some(), "delta", Estimator::Grpo)?;
        given(self.top_entropy_quantile.is_some(), "topEntropyQuantile", Estimator::Grpo)?;
        given(self.normalize_advantages.is_some(), "normalizeAdvantages", Estimator::Rloo)?;
        given(self.reward_clip_range.is_some(), "rewardClipRange", Estimator::Rloo)?;
        let defaults = match estimator {
            Estimator::Grpo => GrpoLoss::TRL,
            Estimator::Rloo => GrpoLoss::RLOO,
        };
        let train = TrainOptions {
            lr: self.lr,
            steps: Some(self.steps),
            epochs: None,
            batch_size: self.batch_size,
            seq_len: None,
            grad_accum: self.grad_accum,
            warmup: self.warmup,
            warmup_ratio: self.warmup_ratio,
            schedule: self.schedule.clone(),
            schedule_kwargs: self.schedule_kwargs.clone(),
            weight_decay: self.weight_decay,
            max_grad_norm: self.max_grad_norm,
            loraplus_lr_ratio: None,
            loraplus_lr_embedding: None,
            seed: self.seed,
            shuffle: self.shuffle,
            packing: None,
            gradient_checkpointing: self.gradient_checkpointing,
            neftune_noise_alpha: None,
            completion_only_loss: None,
            assistant_only_loss: None,
            precompute_ref_log_probs: None,
            disable_dropout: self.disable_dropout,
            objective: None,
            problem_type: None,
            preference: PreferenceOptions::default(),
        };
        let mut recipe = train.to_recipe()?;
        let loss = GrpoLoss {
            estimator,
            loss_type: GrpoLossType::from_name(self.loss_type.as_deref().unwrap_or("dapo"))?,
            beta: self.beta.unwrap_or(defaults.beta),
            temperature: self.temperature.unwrap_or(1.0),
            max_completion_length: self.max_completion_length.unwrap_or(256),
            clip: Clip {
                epsilon_low: self.epsilon.unwrap_or(0.2),
                epsilon_high: self.epsilon_high.or(self.epsilon).unwrap_or(0.2),
                delta: self.delta,
            },
            importance_sampling: ImportanceSampling::from_name(
                self.importance_sampling_level.as_deref().unwrap_or("token"),
            )?,
            top_entropy_quantile: self.top_entropy_quantile.unwrap_or(1.0),
        };
        loss.validate()?;
        recipe.objective = Objective::Grpo(loss);
        if rewards == 0 {
            return Err(bad("reward_funcs", "GRPO needs at least one reward function"));
        }
        let reward_weights = self.reward_weights.clone().unwrap_or_else(|| vec![1.0; rewards]);
        if reward_weights.len() != rewards {
            return Err(bad(
                "reward_weights",
                format!("{} weights for {rewards} reward functions", reward_weights.len()),
            ));
        }
        let settings = GrpoSettings {
            // TRL's GRPOConfig samples 8 a prompt, its RLOOConfig 2.
            num_generations: self.num_generations.unwrap_or(if estimator == Estimator::Rloo { 2 } else { 8 }),
            num_iterations: self.num_iterations.unwrap_or(1),
            gradient_accumulation_steps: recipe.grad_accum,
            steps_per_generation: GrpoSettings::steps_per_generation_of(
                (self.steps_per_generation, self.generation_batch_size),
                (recipe.batch_size, recipe.grad_accum),
            )?,
            scale_rewards: ScaleRewards::from_name(self.scale_rewards.as_deref().unwrap_or("group"))?,
            normalize_advantages: self.normalize_advantages.unwrap_or(false),
            reward_clip_range: self.reward_clip_range,
            mask_truncated_completions: self.mask_truncated_completions.unwrap_or(false),
            batch_size: recipe.batch_size,
            reward_weights,
            eos: Vec::new(),
            pad: 0,
            shuffle: None,
            max_steps: None,
        };
        settings.validate()?;
        settings.validate_for(estimator)?;
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(bad("top_p", format!("must be in (0, 1], got {top_p}")));
        }
        Ok(GrpoPlan {
            recipe,
            loss,
            settings,
            max_prompt_length: self.max_prompt_length.unwrap_or(512),
            top_p,
            top_k: self.top_k.unwrap_or(0),
        })
    }
}
