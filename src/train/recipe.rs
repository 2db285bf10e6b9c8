//! One training run's recipe, with one set of defaults: the adapter to train
//! ([`AdapterRecipe`]) and how to train it ([`TrainRecipe`]: optimizer,
//! schedule, steps, batching, data). The CLI and the browser API only parse
//! their input (flags, a JS options object) into these and call the same code,
//! so the same options make the same adapter and the same run.
//!
//! Defaults are the ones PEFT and transformers users expect: `LoraConfig`'s
//! r 8, alpha 8, dropout 0 on q_proj and v_proj; AdapterHub's preset for each
//! bottleneck method; `TrainingArguments`' AdamW (betas 0.9/0.999, eps 1e-8,
//! no weight decay, gradient norm clipped at 1) and linear schedule without
//! warmup; one epoch; seed 42.
//!
//! Options out of range are [`Error::TrainOption`] errors naming the option as
//! the recipe spells it (`seq_len`, `lr`); adapter options are checked by the
//! adapter's own config ([`Error::AdapterConfig`] naming the
//! `adapter_config.json` field), as a loaded adapter's would be.

use std::collections::BTreeMap;

use crate::kernels::swiglu::Activation;
use crate::model::llama::SftLoss;
use crate::model::tokenizer::Tokenizer;
use crate::model::Config;
use crate::peft::adalora::AdaLoraConfig;
use crate::peft::ia3::Ia3Config;
use crate::peft::p_tuning::PTuningConfig;
use crate::peft::prefix_tuning::PrefixTuningConfig;
use crate::peft::prompt_tuning::{PromptTuningConfig, PromptTuningInit};
use crate::peft::trainable_tokens::TrainableTokensConfig;
use crate::peft::{BottleneckConfig, BottleneckKind, InitLoraWeights, LoraConfig, TargetModules, LORA_MODULES};
use crate::train::plan::PlanAdapter;

use crate::kernels::preference::{DpoLossType, PreferenceLoss};
pub use crate::peft::adapter::AdapterConfig;
use crate::peft::TaskType;
use crate::train::classification::{classification_dataset, ClassificationLoss};
use crate::train::data::{parse_jsonl_masked, DataOptions, Dataset, LossMasks};
use crate::train::kto::kto_dataset;
use crate::train::preference::{preference_dataset, Objective};
use crate::train::reward::reward_dataset;
use crate::train::run::RunConfig;
use crate::train::schedule::Schedule;
use crate::train::trainer::OptimizerConfig;
use crate::{Error, Result};

/// The seed of the adapter's initialisation, the shuffling and the dropout
/// when none is given.
pub const DEFAULT_SEED: u64 = 42;

/// Tokens per training row when none is given (capped at the model's
/// `max_position_embeddings`).
pub const DEFAULT_SEQ_LEN: usize = 512;

fn bad(option: &'static str, detail: impl Into<String>) -> Error {
    Error::TrainOption { option, detail: detail.into() }
}

/// What a run trains: LoRA, (IA)³, prompt tuning, or one of AdapterHub's
/// bottleneck adapters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Lora,
    Ia3,
    PromptTuning,
    PrefixTuning,
    AdaLora,
    PTuning,
    TrainableTokens,
    Bottleneck(BottleneckKind),
}

impl Method {
    /// Every method's name, for messages.
    pub const NAMES: &'static str =
        "lora, adalora, ia3, prompt_tuning, prefix_tuning, p_tuning, trainable_tokens, seq_bn, double_seq_bn or par_bn";

    /// "lora", "ia3", "prompt_tuning", "prefix_tuning", "p_tuning", "trainable_tokens", "seq_bn",
    /// "double_seq_bn" or "par_bn".
    pub fn name(self) -> &'static str {
        match self {
            Method::Lora => "lora",
            Method::Ia3 => "ia3",
            Method::PromptTuning => "prompt_tuning",
            Method::PrefixTuning => "prefix_tuning",
            Method::AdaLora => "adalora",
            Method::PTuning => "p_tuning",
            Method::TrainableTokens => "trainable_tokens",
            Method::Bottleneck(kind) => kind.name(),
        }
    }

    /// The method of a [`name`](Self::name); anything else is a `method` error listing them.
    pub fn from_name(name: &str) -> Result<Method> {
        match name {
            "lora" => Ok(Method::Lora),
            "ia3" => Ok(Method::Ia3),
            "prompt_tuning" => Ok(Method::PromptTuning),
            "prefix_tuning" => Ok(Method::PrefixTuning),
            "adalora" => Ok(Method::AdaLora),
            "p_tuning" => Ok(Method::PTuning),
            "trainable_tokens" => Ok(Method::TrainableTokens),
            _ => BottleneckKind::from_name(name)
                .map(Method::Bottleneck)
                .ok_or_else(|| bad("method", format!("expected {}, got {name:?}", Self::NAMES))),
        }
    }
}

/// A LoRA adapter's options; the default is PEFT's `LoraConfig()` on
/// q_proj and v_proj.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraRecipe {
    pub r: usize,
    pub alpha: f64,
    /// Dropout on the adapter's input, in [0, 1).
    pub dropout: f64,
    pub targets: TargetModules,
    /// Scale by alpha/√r instead of alpha/r.
    pub use_rslora: bool,
    /// DoRA: a magnitude per adapted Linear (PEFT's `use_dora`).
    pub use_dora: bool,
    pub init: InitLoraWeights,
    /// Only these layers carry the adapter (`None`: all).
    pub layers_to_transform: Option<Vec<usize>>,
    /// These ids' embedding rows are trained too (PEFT's `trainable_token_indices`).
    pub trainable_token_indices: Option<Vec<u32>>,
    /// On a model with an untied head, the same ids' lm_head rows too (PEFT's
    /// `{"embed_tokens": ids, "lm_head": ids}`).
    pub lm_head_rows: bool,
    /// Whole modules trained beside the LoRA (PEFT's `modules_to_save`:
    /// `embed_tokens`, `lm_head`).
    pub modules_to_save: Option<Vec<String>>,
    /// One trained copy for a tied model's embedding and head (PEFT's `ensure_weight_tying`).
    pub ensure_weight_tying: bool,
    /// Per-module ranks and alphas (PEFT's `rank_pattern`, `alpha_pattern`:
    /// regex of the module name's tail → value).
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Modules left out of `targets`' match (PEFT's `exclude_modules`: names
    /// or suffixes, or a regex).
    pub exclude_modules: Option<TargetModules>,
    /// PEFT's `task_type`: SEQ_CLS makes a reward model, the `score` head
    /// added to `modules_to_save` (see [`LoraConfig::for_sequence_classification`]).
    pub task_type: TaskType,
    /// SEQ_CLS: the score head's labels (transformers' `num_labels`: 1 for a
    /// reward model or a regression, the classes of a classifier; `None`: a
    /// classifier checkpoint's own, else 1).
    pub num_labels: Option<usize>,
}

impl LoraRecipe {
    /// The LoRA config for `model`, checked against it.
    fn config(&self, model: &Config, model_name: Option<String>) -> Result<LoraConfig> {
        let mut c = LoraConfig::new(self.r, self.alpha, self.targets.clone())?;
        c.lora_dropout = self.dropout;
        c.use_rslora = self.use_rslora;
        c.use_dora = self.use_dora;
        c.init_lora_weights = self.init;
        c.layers_to_transform = self.layers_to_transform.clone();
        c.trainable_token_indices = self.trainable_token_indices.clone();
        if self.lm_head_rows {
            c.trainable_head_token_indices = Some(c.trainable_token_indices.clone().ok_or_else(|| {
                bad("lm_head_rows", "trains the head rows of the trainable tokens: name the tokens too")
            })?);
        }
        c.modules_to_save = self.modules_to_save.clone().filter(|l| !l.is_empty());
        c.ensure_weight_tying = self.ensure_weight_tying;
        c.rank_pattern = self.rank_pattern.clone();
        c.alpha_pattern = self.alpha_pattern.clone();
        c.exclude_modules = self.exclude_modules.clone();
        c.base_model_name_or_path = model_name;
        if self.task_type == TaskType::SeqCls {
            c = c.for_sequence_classification()?;
            c.num_labels = self.num_labels.or(model.head.num_labels()).unwrap_or(1);
        }
        c.validate()?;
        c.targets(model)?;
        if let Some(ids) = &c.trainable_token_indices {
            crate::peft::trainable_tokens::check_indices(ids, model.vocab_size)?;
        }
        if c.trainable_head_token_indices.is_some() && model.tie_word_embeddings {
            return Err(bad(
                "lm_head_rows",
                "this model's lm_head is its embedding, whose trainable rows it already shares",
            ));
        }
        Ok(c)
    }
}

impl Default for LoraRecipe {
    fn default() -> Self {
        LoraRecipe {
            r: 8,
            alpha: 8.0,
            dropout: 0.0,
            targets: TargetModules::List(vec!["q_proj".into(), "v_proj".into()]),
            use_rslora: false,
            use_dora: false,
            init: InitLoraWeights::Kaiming,
            layers_to_transform: None,
            trainable_token_indices: None,
            lm_head_rows: false,
            modules_to_save: None,
            ensure_weight_tying: false,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            exclude_modules: None,
            task_type: TaskType::CausalLm,
            num_labels: None,
        }
    }
}

/// An AdaLoRA adapter's options; the default is PEFT's `AdaLoraConfig()` on
/// q_proj and v_proj (init_r 12, target_r 8, no warm-up or final phase, an
/// allocation every step, β 0.85, orthogonality weight 0.5). `lora` holds the
/// LoRA options AdaLoRA shares (targets, alpha, dropout, layers; its `r` is
/// PEFT's unused `r`).
#[derive(Clone, Debug, PartialEq)]
pub struct AdaLoraRecipe {
    pub lora: LoraRecipe,
    pub init_r: usize,
    pub target_r: usize,
    pub tinit: usize,
    pub tfinal: usize,
    pub delta_t: usize,
    pub beta1: f64,
    pub beta2: f64,
    pub orth_reg_weight: f64,
    /// The steps the budget schedule spans; `None`: the run's own total,
    /// set by [`AdapterRecipe::for_run`].
    pub total_step: Option<usize>,
}

impl Default for AdaLoraRecipe {
    fn default() -> Self {
        AdaLoraRecipe {
            lora: LoraRecipe::default(),
            init_r: 12,
            target_r: 8,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
            total_step: None,
        }
    }
}

/// An (IA)³ adapter's options; the default is PEFT's `IA3Config()`, whose
/// modules depend on the model type (Llama, Mistral: k_proj, v_proj,
/// down_proj; Qwen2: q_proj, v_proj, down_proj; down_proj feed-forward).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ia3Recipe {
    /// Module names, or `None` for PEFT's default for the model type.
    pub targets: Option<TargetModules>,
    /// The modules whose input (not output) is scaled; `None`: PEFT's default.
    pub feedforward: Option<Vec<String>>,
}

/// A prompt-tuning adapter's options. PEFT has no default number of virtual
/// tokens; 20 is its documentation's example. The default init is PEFT's, `RANDOM`.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptTuningRecipe {
    pub num_virtual_tokens: usize,
    pub init: PromptTuningInit,
}

impl Default for PromptTuningRecipe {
    fn default() -> Self {
        PromptTuningRecipe { num_virtual_tokens: 20, init: PromptTuningInit::Random }
    }
}

/// A bottleneck adapter's options; [`new`](Self::new) gives AdapterHub's preset for the kind.
#[derive(Clone, Debug, PartialEq)]
pub struct BottleneckRecipe {
    pub kind: BottleneckKind,
    /// Bottleneck width = hidden_size / this.
    pub reduction_factor: f64,
    pub non_linearity: Activation,
    /// Dropout on the adapter's input, in [0, 1).
    pub dropout: f64,
}

impl BottleneckRecipe {
    /// AdapterHub's preset (`SeqBnConfig()`, `DoubleSeqBnConfig()`, `ParBnConfig()`).
    pub fn new(kind: BottleneckKind) -> BottleneckRecipe {
        let preset = BottleneckConfig::new(kind);
        BottleneckRecipe {
            kind,
            reduction_factor: preset.reduction_factor,
            non_linearity: preset.non_linearity,
            dropout: preset.dropout,
        }
    }

    /// The bottleneck width for a model of width `hidden`, as AdapterHub computes it.
    pub fn bottleneck_size(&self, hidden: usize) -> usize {
        BottleneckConfig { reduction_factor: self.reduction_factor, ..BottleneckConfig::new(self.kind) }
            .bottleneck_size(hidden)
    }
}

/// The adapter a run trains, with its options.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterRecipe {
    Lora(LoraRecipe),
    Ia3(Ia3Recipe),
    PromptTuning(PromptTuningRecipe),
    /// Prefix tuning with this many virtual tokens (PEFT has no default; 20, as for prompt tuning),
    /// trained directly or, with `prefix_projection`, through PEFT's MLP
    /// `encoder_hidden_size` wide (`None`: token_dim, PEFT's default).
    PrefixTuning {
        num_virtual_tokens: usize,
        prefix_projection: bool,
        encoder_hidden_size: Option<usize>,
    },
    /// P-tuning with this many virtual tokens (20, as for prompt tuning) and
    /// an MLP `encoder_hidden_size` wide (`None`: the model's hidden size, PEFT's default).
    PTuning {
        num_virtual_tokens: usize,
        encoder_hidden_size: Option<usize>,
    },
    Bottleneck(BottleneckRecipe),
    AdaLora(AdaLoraRecipe),
    /// PEFT's TRAINABLE_TOKENS by itself: these ids' embedding rows (no default: the ids must be given),
    /// and with `lm_head_rows` the same ids' rows of an untied lm_head (`target_modules`
    /// `["embed_tokens", "lm_head"]`).
    TrainableTokens {
        token_indices: Vec<u32>,
        lm_head_rows: bool,
    },
}

impl AdapterRecipe {
    /// The recipe for a run of `total_steps` optimizer steps: AdaLoRA's budget
    /// schedule spans the run unless its `total_step` was given.
    pub fn for_run(&self, total_steps: u64) -> AdapterRecipe {
        let mut r = self.clone();
        if let AdapterRecipe::AdaLora(a) = &mut r {
            a.total_step.get_or_insert(usize::try_from(total_steps).unwrap_or(usize::MAX));
        }
        r
    }

    /// `method` with its default options.
    pub fn new(method: Method) -> AdapterRecipe {
        match method {
            Method::Lora => AdapterRecipe::Lora(LoraRecipe::default()),
            Method::Ia3 => AdapterRecipe::Ia3(Ia3Recipe::default()),
            Method::PromptTuning => AdapterRecipe::PromptTuning(PromptTuningRecipe::default()),
            Method::AdaLora => AdapterRecipe::AdaLora(AdaLoraRecipe::default()),
            Method::PrefixTuning => AdapterRecipe::PrefixTuning {
                num_virtual_tokens: 20,
                prefix_projection: false,
                encoder_hidden_size: None,
            },
            Method::PTuning => AdapterRecipe::PTuning { num_virtual_tokens: 20, encoder_hidden_size: None },
            Method::TrainableTokens => {
                AdapterRecipe::TrainableTokens { token_indices: Vec::new(), lm_head_rows: false }
            }
            Method::Bottleneck(kind) => AdapterRecipe::Bottleneck(BottleneckRecipe::new(kind)),
        }
    }

    /// Positions the adapter puts before every row (prompt tuning's virtual tokens), 0 for the others.
    pub fn virtual_tokens(&self) -> usize {
        match self {
            AdapterRecipe::PromptTuning(p) => p.num_virtual_tokens,
            AdapterRecipe::PrefixTuning { num_virtual_tokens, .. }
            | AdapterRecipe::PTuning { num_virtual_tokens, .. } => *num_virtual_tokens,
            _ => 0,
        }
    }

    pub fn method(&self) -> Method {
        match self {
            AdapterRecipe::Lora(_) => Method::Lora,
            AdapterRecipe::Ia3(_) => Method::Ia3,
            AdapterRecipe::PromptTuning(_) => Method::PromptTuning,
            AdapterRecipe::PrefixTuning { .. } => Method::PrefixTuning,
            AdapterRecipe::AdaLora(_) => Method::AdaLora,
            AdapterRecipe::PTuning { .. } => Method::PTuning,
            AdapterRecipe::TrainableTokens { .. } => Method::TrainableTokens,
            AdapterRecipe::Bottleneck(b) => Method::Bottleneck(b.kind),
        }
    }

    /// The adapter's config for `model`, naming its base `model_name`
    /// (`base_model_name_or_path`, AdapterHub's `model_name`), checked against
    /// the model: targets that exist, a bottleneck that fits.
    pub fn config(&self, model: &Config, model_name: Option<String>) -> Result<AdapterConfig> {
        match self {
            AdapterRecipe::Lora(o) => Ok(AdapterConfig::Lora(o.config(model, model_name)?)),
            AdapterRecipe::AdaLora(o) => {
                let total_step = o.total_step.ok_or_else(|| {
                    bad("total_step", "AdaLoRA's budget schedule needs the run's steps (AdapterRecipe::for_run)")
                })?;
                let lora = LoraRecipe { r: 8, use_rslora: false, use_dora: false, ..o.lora.clone() }
                    .config(model, model_name)?;
                let mut c = AdaLoraConfig::new(lora, o.init_r, o.target_r, total_step.max(1))?;
                (c.tinit, c.tfinal, c.delta_t) = (o.tinit, o.tfinal, o.delta_t);
                (c.beta1, c.beta2, c.orth_reg_weight) = (o.beta1, o.beta2, o.orth_reg_weight);
                c.validate()?;
                Ok(AdapterConfig::AdaLora(c))
            }
            AdapterRecipe::Ia3(o) => {
                let mut c = Ia3Config::default_for(model.model_type);
                if let Some(t) = &o.targets {
                    c.target_modules = t.clone();
                }
                if let Some(ff) = &o.feedforward {
                    c.feedforward_modules = ff.clone();
                }
                c.base_model_name_or_path = model_name;
                c.validate()?;
                c.modules(model)?;
                Ok(AdapterConfig::Ia3(c))
            }
            AdapterRecipe::PromptTuning(o) => {
                let mut c = PromptTuningConfig::new(o.num_virtual_tokens, o.init.clone(), model)?;
                if matches!(o.init, PromptTuningInit::Text(_)) {
                    c.tokenizer_name_or_path = model_name.clone();
                }
                c.base_model_name_or_path = model_name;
                Ok(AdapterConfig::PromptTuning(c))
            }
            AdapterRecipe::PrefixTuning { num_virtual_tokens, prefix_projection, encoder_hidden_size } => {
                if encoder_hidden_size.is_some() && !prefix_projection {
                    return Err(bad(
                        "encoder_hidden_size",
                        "sets the width of the prefix_projection MLP, which is off",
                    ));
                }
                let mut c = PrefixTuningConfig::new(*num_virtual_tokens, model)?;
                c.prefix_projection = *prefix_projection;
                c.encoder_hidden_size = encoder_hidden_size.unwrap_or(c.token_dim);
                c.base_model_name_or_path = model_name;
                c.check(model)?;
                Ok(AdapterConfig::PrefixTuning(c))
            }
            AdapterRecipe::PTuning { num_virtual_tokens, encoder_hidden_size } => {
                let mut c = PTuningConfig::new(*num_virtual_tokens, *encoder_hidden_size, model)?;
                c.base_model_name_or_path = model_name;
                Ok(AdapterConfig::PTuning(c))
            }
            AdapterRecipe::TrainableTokens { token_indices, lm_head_rows } => {
                if token_indices.is_empty() {
                    return Err(bad("trainable_token_indices", "trainable_tokens needs the ids whose rows it trains"));
                }
                let mut c = TrainableTokensConfig::new(token_indices.clone())?;
                crate::peft::trainable_tokens::check_indices(&c.token_indices, model.vocab_size)?;
                if *lm_head_rows && model.tie_word_embeddings {
                    return Err(bad(
                        "lm_head_rows",
                        "this model's lm_head is its embedding, whose trainable rows it already shares",
                    ));
                }
                c.lm_head = *lm_head_rows;
                c.base_model_name_or_path = model_name;
                Ok(AdapterConfig::TrainableTokens(c))
            }
            AdapterRecipe::Bottleneck(o) => {
                let mut c = BottleneckConfig::new(o.kind);
                c.reduction_factor = o.reduction_factor;
                c.non_linearity = o.non_linearity;
                c.dropout = o.dropout;
                c.model_name = model_name;
                c.check(model)?;
                Ok(AdapterConfig::Bottleneck(c))
            }
        }
    }

    /// A fresh adapter on the GPU for a loaded model: [`config`](Self::config),
    /// initialised from `seed` (prompt tuning's `SAMPLE_VOCAB` and `TEXT` from
    /// the model's embeddings, through `tokenizer`).
    pub fn build(
        &self,
        gpu: &crate::Gpu,
        model: &crate::model::Model,
        tokenizer: Option<&Tokenizer>,
        model_name: Option<String>,
        seed: u64,
    ) -> Result<crate::peft::adapter::Adapter> {
        let config = self.config(&model.config, model_name)?;
        crate::peft::adapter::Adapter::new_for_model(gpu, config, model, tokenizer, seed)
    }

    /// [`build`](Self::build), and for a LoRA whose init starts from the base
    /// weights (PiSSA, OLoRA, LoftQ) the adapter with `model`'s adapted
    /// weights replaced as PEFT replaces them (`files`: the model's files,
    /// read again for the float weights of a quantized base).
    pub async fn build_adjusting_base<F: crate::model::ModelFiles>(
        &self,
        gpu: &crate::Gpu,
        model: &mut crate::model::Model,
        files: Option<&F>,
        tokenizer: Option<&Tokenizer>,
        model_name: Option<String>,
        seed: u64,
    ) -> Result<crate::peft::adapter::Adapter> {
        let config = self.config(&model.config, model_name)?;
        crate::peft::adapter::Adapter::new_adjusting_base(gpu, config, model, files, tokenizer, seed).await
    }

    /// The recipe with the tokens `texts` (as the vocabulary spells them:
    /// `"<|im_start|>"`) added to its trainable token rows, after the ids it
    /// has: a LoRA's `trainable_token_indices`, or trainable_tokens' own.
    /// Each text must be one token of `tokenizer`'s vocabulary.
    pub fn with_token_texts(mut self, texts: &[String], tokenizer: Option<&Tokenizer>) -> Result<AdapterRecipe> {
        if texts.is_empty() {
            return Ok(self);
        }
        let tokenizer = tokenizer
            .ok_or_else(|| bad("trainable_tokens", "tokens given by their text need the model's tokenizer"))?;
        let ids = tokenizer.single_token_ids(texts)?;
        match &mut self {
            AdapterRecipe::Lora(l) => l.trainable_token_indices.get_or_insert_with(Vec::new).extend(ids),
            AdapterRecipe::TrainableTokens { token_indices, .. } => token_indices.extend(ids),
            other => {
                return Err(bad(
                    "trainable_tokens",
                    format!("{} trains no token rows (lora and trainable_tokens do)", other.method().name()),
                ))
            }
        }
        Ok(self)
    }

    /// What the memory planner needs to know of this adapter on `model`.
    pub fn plan_adapter(&self, model: &Config) -> Result<PlanAdapter> {
        if let AdapterRecipe::TrainableTokens { token_indices, lm_head_rows } = self {
            // Planned before the rows are known (the page names them by text): k·D values a copy (two with the head's).
            return Ok(PlanAdapter::TrainableTokens { rows: token_indices.len() * (1 + usize::from(*lm_head_rows)) });
        }
        if let AdapterRecipe::AdaLora(o) = self {
            // The schedule does not change the memory: plan before the run's steps are known.
            let c = self.for_run(o.total_step.unwrap_or(o.tinit + o.tfinal + 1) as u64).config(model, None)?;
            let AdapterConfig::AdaLora(c) = c else { unreachable!("an AdaLoRA recipe makes an AdaLoRA config") };
            let targets =
                c.targets(model)?.into_iter().filter(|t| t.starts_with("model.layers.0.")).collect::<Vec<_>>();
            let targets = targets.iter().map(|t| t.rsplit('.').next().unwrap_or_default().to_string()).collect();
            return Ok(PlanAdapter::AdaLora { r: c.init_r, targets, dropout: c.lora.lora_dropout > 0.0 });
        }
        Ok(match self.config(model, None)? {
            AdapterConfig::Lora(c) => {
                let outer = c.outer_targets();
                let targets = match &c.target_modules {
                    TargetModules::List(l) => {
                        l.iter().filter(|t| LORA_MODULES.contains(&t.as_str())).cloned().collect()
                    }
                    _ => LORA_MODULES.iter().map(|s| s.to_string()).collect(),
                };
                let tokens = [&c.trainable_token_indices, &c.trainable_head_token_indices]
                    .iter()
                    .map(|ids| ids.as_ref().map_or(0, Vec::len) as u64)
                    .sum::<u64>();
                let table = (model.vocab_size * model.hidden_size) as u64;
                let copies = match &c.modules_to_save {
                    Some(list) => crate::peft::modules_to_save::file_keys(list, c.ensure_weight_tying, model)
                        .iter()
                        .filter(|(k, m)| *k == crate::peft::modules_to_save::key(*m))
                        .count() as u64,
                    None => 0,
                };
                // With rank_pattern the layers are planned at their largest rank: an upper bound.
                let r = c.targets(model)?.iter().map(|t| c.rank_of(t)).max().unwrap_or(c.r);
                let outer_ranks: usize = outer.iter().map(|m| c.rank_of(m.name())).sum();
                PlanAdapter::Lora {
                    outer_params: (outer_ranks * (model.vocab_size + model.hidden_size)) as u64
                        + tokens * model.hidden_size as u64
                        + copies * table,
                    r,
                    targets,
                    dropout: c.lora_dropout > 0.0,
                    dora: c.use_dora,
                    adjusts_base: c.init_lora_weights.adjusts_base(),
                }
            }
            AdapterConfig::Ia3(c) => {
                let layer0 = c.modules(model)?.into_iter().filter(|m| m.layer == 0);
                PlanAdapter::Ia3 { modules: layer0.map(|m| (m.proj.name().to_string(), m.feedforward)).collect() }
            }
            AdapterConfig::PromptTuning(c) => PlanAdapter::PromptTuning { virtual_tokens: c.num_virtual_tokens },
            AdapterConfig::AdaLora(_) => unreachable!("planned above"),
            AdapterConfig::PrefixTuning(c) => PlanAdapter::PrefixTuning {
                virtual_tokens: c.num_virtual_tokens,
                encoder_hidden: c.prefix_projection.then_some(c.encoder_hidden_size),
            },
            AdapterConfig::PTuning(c) => {
                PlanAdapter::PTuning { virtual_tokens: c.num_virtual_tokens, encoder_hidden: c.encoder_hidden_size }
            }
            AdapterConfig::TrainableTokens(c) => {
                PlanAdapter::TrainableTokens { rows: c.values_len(model) / model.hidden_size }
            }
            AdapterConfig::Bottleneck(c) => PlanAdapter::Bottleneck {
                size: c.bottleneck_size(model.hidden_size),
                units_per_layer: if c.kind.has_attention_adapter() { 2 } else { 1 },
            },
        })
    }
}

/// How an adapter is trained: the optimizer, the schedule, how long, and how
/// the data becomes batches.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainRecipe {
    /// Peak learning rate.
    pub lr: f64,
    pub schedule: Schedule,
    /// Steps of warmup (linear from 0 but for the schedules with warmups of their own).
    pub warmup_steps: u64,
    /// The fraction of the run's steps that warm up when `warmup_steps` is 0
    /// (transformers' `warmup_ratio`, `ceil(steps · ratio)`).
    pub warmup_ratio: f64,
    /// Optimizer steps in the run; `None` takes them from `epochs`.
    pub steps: Option<u64>,
    /// Passes over the data (may be fractional) when `steps` is `None`.
    pub epochs: f64,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// AdamW's betas, eps and weight decay, and gradient clipping.
    pub optimizer: OptimizerConfig,
    /// Rows per micro-batch.
    pub batch_size: usize,
    /// Tokens per row, capped at the model's `max_position_embeddings`.
    pub seq_len: usize,
    /// Several whole examples per row of at most `seq_len` tokens, attention
    /// kept inside each (`train::data::pack`).
    pub packing: bool,
    /// Shuffle the rows in every epoch.
    pub shuffle: bool,
    /// Seeds the shuffling and the dropout (and, in the CLI, the adapter's initialisation).
    pub seed: u64,
    /// Recompute each layer's activations in the backward instead of keeping them.
    pub gradient_checkpointing: bool,
    /// SFT (the default), or DPO or ORPO on preference pairs (`train::preference`).
    pub objective: Objective,
    /// NEFTune's noise on the embeddings in SFT (transformers' `neftune_noise_alpha`; `None`: off).
    pub neftune_noise_alpha: Option<f32>,
    /// Which tokens of an SFT line are trained (TRL's `completion_only_loss`
    /// and `assistant_only_loss`).
    pub loss_masks: LossMasks,
    /// DPO and KTO: score the reference once for every row before the first
    /// step, not in every step (TRL's `precompute_ref_log_probs`).
    pub precompute_ref_log_probs: bool,
    /// TRL's `disable_dropout` (`None`: the objective's trainer's default,
    /// [`disables_dropout`](Self::disables_dropout)).
    pub disable_dropout: Option<bool>,
}

impl Default for TrainRecipe {
    fn default() -> Self {
        let run = RunConfig::default();
        TrainRecipe {
            lr: run.lr,
            schedule: run.schedule,
            warmup_steps: run.warmup_steps,
            warmup_ratio: run.warmup_ratio,
            steps: run.steps,
            epochs: run.epochs,
            grad_accum: run.grad_accum,
            optimizer: OptimizerConfig::default(),
            batch_size: 1,
            seq_len: DEFAULT_SEQ_LEN,
            packing: false,
            shuffle: true,
            seed: DEFAULT_SEED,
            gradient_checkpointing: false,
            objective: Objective::Sft(SftLoss::Nll),
            neftune_noise_alpha: None,
            loss_masks: LossMasks::default(),
            precompute_ref_log_probs: false,
            disable_dropout: None,
        }
    }
}

impl TrainRecipe {
    /// Whether the steps apply no dropout: `disable_dropout` where given,
    /// else TRL's default for the objective's trainer (DPOConfig, ORPOConfig,
    /// CPOConfig, KTOConfig and RewardConfig disable it; SFTConfig, GRPOConfig
    /// and RLOOConfig do not).
    pub fn disables_dropout(&self) -> bool {
        self.disable_dropout.unwrap_or(matches!(self.objective, Objective::Preference(_) | Objective::Reward(_)))
    }

    /// Checks every option's range; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return Err(bad("lr", format!("must be a finite number ≥ 0, got {}", self.lr)));
        }
        if self.steps == Some(0) {
            return Err(bad("steps", "must be at least 1, got 0"));
        }
        if self.steps.is_none() && !(self.epochs.is_finite() && self.epochs > 0.0) {
            return Err(bad("epochs", format!("must be a finite number > 0, got {}", self.epochs)));
        }
        if self.grad_accum == 0 {
            return Err(bad("grad_accum", "must be at least 1, got 0"));
        }
        if let Some(alpha) = self.neftune_noise_alpha {
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(bad("neftune_noise_alpha", format!("must be a finite number > 0, got {alpha}")));
            }
            if !self.objective.is_sft() {
                return Err(bad(
                    "neftune_noise_alpha",
                    format!("NEFTune's noise is for SFT, not {}", self.objective.name()),
                ));
            }
        }
        if self.precompute_ref_log_probs
            && !matches!(self.objective, Objective::Preference(loss) if loss.needs_reference())
        {
            return Err(bad(
                "precompute_ref_log_probs",
                format!(
                    "{} here has no reference model whose log-probabilities could be precomputed (DPO and KTO \
                     have, unless reference-free)",
                    self.objective.name()
                ),
            ));
        }
        if self.loss_masks != LossMasks::default() && !self.objective.is_sft() {
            let option = match self.loss_masks.completion_only {
                false => "completion_only_loss",
                true => "assistant_only_loss",
            };
            return Err(bad(
                option,
                format!("SFT's, not {}'s: the preference objectives train on the answers", self.objective.name()),
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_ratio) {
            return Err(bad("warmup_ratio", format!("must be in [0, 1], got {}", self.warmup_ratio)));
        }
        if self.warmup_ratio > 0.0 && self.warmup_steps > 0 {
            return Err(bad(
                "warmup_ratio",
                format!(
                    "give warmup_steps ({}) or warmup_ratio ({}), not both (transformers lets the steps win)",
                    self.warmup_steps, self.warmup_ratio
                ),
            ));
        }
        self.schedule.check_run(self.lr, self.warmup_steps > 0 || self.warmup_ratio > 0.0)?;
        if self.batch_size == 0 {
            return Err(bad("batch_size", "must be at least 1, got 0"));
        }
        if self.seq_len == 0 {
            return Err(bad("seq_len", "must be at least 1, got 0"));
        }
        let o = &self.optimizer;
        if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
            return Err(bad("weight_decay", format!("must be a finite number ≥ 0, got {}", o.weight_decay)));
        }
        if !(o.max_grad_norm.is_finite() && o.max_grad_norm >= 0.0) {
            return Err(bad(
                "max_grad_norm",
                format!("must be a finite number ≥ 0 (0 = off), got {}", o.max_grad_norm),
            ));
        }
        for (name, beta) in [("beta1", o.beta1), ("beta2", o.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(bad(name, format!("must be in [0, 1), got {beta}")));
            }
        }
        if let Some(r) = o.loraplus_lr_ratio.filter(|r| !(r.is_finite() && *r > 0.0)) {
            return Err(bad("loraplus_lr_ratio", format!("must be a finite number > 0, got {r}")));
        }
        if !(o.loraplus_lr_embedding.is_finite() && o.loraplus_lr_embedding >= 0.0) {
            return Err(bad(
                "loraplus_lr_embedding",
                format!("must be a finite number ≥ 0, got {}", o.loraplus_lr_embedding),
            ));
        }
        if !(o.eps.is_finite() && o.eps >= 0.0) {
            return Err(bad("eps", format!("must be a finite number ≥ 0, got {}", o.eps)));
        }
        if let Objective::Preference(loss) = self.objective {
            let beta = loss.beta();
            if !(beta.is_finite() && beta > 0.0) {
                return Err(bad("beta", format!("must be a finite number > 0, got {beta}")));
            }
            if let PreferenceLoss::Dpo(d) = loss {
                let (e, robust) = (d.label_smoothing, d.loss_type.contains(DpoLossType::Robust));
                if !(e >= 0.0 && (e < 0.5 || (e == 0.5 && !robust))) {
                    let range = if robust { "[0, 0.5) (robust divides by 1 − 2ε)" } else { "[0, 0.5] (cDPO)" };
                    return Err(bad("label_smoothing", format!("must be in {range}, got {e}")));
                }
                if let Some(a) = d.rpo_alpha.filter(|a| !(a.is_finite() && *a >= 0.0)) {
                    return Err(bad("rpo_alpha", format!("must be a finite number ≥ 0, got {a}")));
                }
                let tau = d.discopop_tau;
                if !(tau.is_finite() && tau > 0.0) {
                    return Err(bad("discopop_tau", format!("must be a finite number > 0, got {tau}")));
                }
            }
            if let PreferenceLoss::Kto(k) = loss {
                for (name, w) in
                    [("desirable_weight", k.desirable_weight), ("undesirable_weight", k.undesirable_weight)]
                {
                    if !(w.is_finite() && w > 0.0) {
                        return Err(bad(name, format!("must be a finite number > 0, got {w}")));
                    }
                }
                // TRL: the KL term pairs each prompt with another example's completion in its batch.
                if self.batch_size < 2 && k.loss_type.uses_kl() {
                    return Err(bad(
                        "batch_size",
                        format!(
                            "KTO needs at least 2 examples a batch (its KL term pairs each prompt with another \
                             example's completion), got {}",
                            self.batch_size
                        ),
                    ));
                }
            }
            if let PreferenceLoss::Cpo(c) = loss {
                let e = c.label_smoothing;
                if !(0.0..=0.5).contains(&e) {
                    return Err(bad("label_smoothing", format!("must be in [0, 0.5], got {e}")));
                }
                if !(c.cpo_alpha.is_finite() && c.cpo_alpha >= 0.0) {
                    return Err(bad("cpo_alpha", format!("must be a finite number ≥ 0, got {}", c.cpo_alpha)));
                }
                if !c.alpha.is_finite() {
                    return Err(bad("alphapo_alpha", format!("must be a finite number, got {}", c.alpha)));
                }
                if !c.simpo_gamma.is_finite() {
                    return Err(bad("simpo_gamma", format!("must be a finite number, got {}", c.simpo_gamma)));
                }
            }
            if self.packing {
                return Err(bad("packing", format!("does not apply to {}: a pair's rows stay whole", loss_name(loss))));
            }
        }
        Ok(())
    }

    /// Packing against an adapter that puts `before` positions (prompt, prefix
    /// or p-tuning's virtual tokens) in front of every row: they would stand
    /// before a row's first example only, so the two do not go together; nor
    /// do they with SFT's dft loss, which TRL cannot compute beside them.
    pub fn check_positions_before(&self, before: usize) -> Result<()> {
        if self.packing && before > 0 {
            return Err(bad(
                "packing",
                format!(
                    "the adapter puts {before} virtual tokens before every row, which would precede only the \
                     first of a packed row's examples: train prompt, prefix and p-tuning unpacked"
                ),
            ));
        }
        if self.objective == Objective::Sft(SftLoss::Dft) && before > 0 {
            return Err(bad(
                "loss_type",
                format!(
                    "dft with the adapter's {before} virtual tokens: TRL's dft_loss cannot pair prompt tuning's \
                     longer logits with the labels, so there is nothing to match; train with nll"
                ),
            ));
        }
        Ok(())
    }

    /// The row length in effect for a model of `max_positions` positions.
    pub fn seq_len_for(&self, max_positions: usize) -> usize {
        self.seq_len.min(max_positions)
    }

    /// How the training data becomes rows and batches for a model of `max_positions` positions.
    pub fn data_options(&self, max_positions: usize) -> DataOptions {
        DataOptions {
            seq_len: self.seq_len_for(max_positions),
            packing: self.packing,
            batch_size: self.batch_size,
            shuffle: self.shuffle,
            seed: self.seed,
            drop_last: false,
        }
    }

    /// Held-out data: the training rows' shape, in file order.
    pub fn eval_data_options(&self, max_positions: usize) -> DataOptions {
        DataOptions { shuffle: false, ..self.data_options(max_positions) }
    }

    /// Sets what the tokenizer decides: a reward model's or a classifier's pad id (TRL's pad
    /// token, the tokenizer's or else its eos: the rows' padding too,
    /// [`pad_id`]), which the score head skips at each row's end.
    pub fn set_pad_id(&mut self, tokenizer: Option<&Tokenizer>) {
        match &mut self.objective {
            Objective::Reward(loss) => loss.pad_token_id = pad_id(tokenizer),
            Objective::Classification(loss) => loss.pad_token_id = pad_id(tokenizer),
            _ => {}
        }
    }

    /// The training set from JSONL bytes (`source_name` names them in errors),
    /// padded with [`pad_id`].
    pub fn dataset(
        &self,
        source_name: &str,
        jsonl: &[u8],
        tokenizer: Option<&Tokenizer>,
        opts: &DataOptions,
    ) -> Result<Dataset> {
        match self.objective {
            Objective::Preference(PreferenceLoss::Kto(k)) => {
                return kto_dataset(source_name, jsonl, tokenizer, opts, pad_id(tokenizer), k.loss_type.uses_kl())
            }
            Objective::Preference(loss) => {
                return preference_dataset(source_name, jsonl, tokenizer, opts, pad_id(tokenizer), loss.tokenization())
            }
            Objective::Grpo(_) => {
                return Err(Error::TrainOption {
                    option: "objective",
                    detail: "GRPO's data are prompts, which train::grpo reads (CLI `webpeft grpo`)".into(),
                })
            }
            Objective::Reward(_) => return reward_dataset(source_name, jsonl, tokenizer, opts, pad_id(tokenizer)),
            Objective::Classification(loss) => {
                let loss = ClassificationLoss { pad_token_id: pad_id(tokenizer), ..loss };
                return classification_dataset(source_name, jsonl, tokenizer, opts, &loss);
            }
            Objective::Sft(_) => {}
        }
        let examples = parse_jsonl_masked(source_name, jsonl, tokenizer, self.loss_masks)?;
        Dataset::new(source_name, examples, opts, pad_id(tokenizer))
    }

    /// The optimizer steps, accumulation and schedule.
    pub fn run_config(&self) -> RunConfig {
        RunConfig {
            steps: self.steps,
            epochs: self.epochs,
            grad_accum: self.grad_accum,
            lr: self.lr,
            schedule: self.schedule,
            warmup_steps: self.warmup_steps,
            warmup_ratio: self.warmup_ratio,
            precompute_ref_log_probs: self.precompute_ref_log_probs,
        }
    }
}

fn loss_name(loss: PreferenceLoss) -> &'static str {
    Objective::Preference(loss).name()
}

/// The token that fills a row past its example (its labels are ignored):
/// the tokenizer's pad token, else its first end-of-sequence token, else 0.
pub fn pad_id(tokenizer: Option<&Tokenizer>) -> u32 {
    tokenizer.and_then(|t| t.pad_id().or_else(|| t.eos_ids().first().copied())).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_peft_and_transformers() {
        let AdapterRecipe::Lora(l) = AdapterRecipe::new(Method::Lora) else { unreachable!() };
        assert_eq!((l.r, l.alpha, l.dropout, l.use_rslora), (8, 8.0, 0.0, false));
        let t = TrainRecipe::default();
        assert_eq!(t.optimizer, OptimizerConfig::default());
        assert_eq!((t.schedule, t.warmup_steps, t.epochs, t.seed), (Schedule::Linear, 0, 1.0, 42));
        t.validate().unwrap();
    }

    #[test]
    fn a_bad_option_is_named() {
        let e = TrainRecipe { seq_len: 0, ..Default::default() }.validate().unwrap_err();
        assert!(matches!(e, Error::TrainOption { option: "seq_len", .. }), "{e}");
        let e = Method::from_name("loha").unwrap_err();
        assert!(e.to_string().contains("seq_bn") && e.to_string().contains("p_tuning"), "{e}");
    }
}
