//! `adapter_config.json` of a PEFT LoRA adapter: parsed and validated into a
//! [`LoraConfig`], written back with the key set PEFT 0.21 writes, and its
//! `target_modules` resolved against a model [`Config`].
//!
//! Every failure is an [`Error::AdapterConfig`] naming the JSON field, or an
//! [`Error::AdapterUnsupported`] for options PEFT has but webpeft does not
//! implement (biases, modules other than the embedding and the head in
//! modules_to_save, …).

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::model::source::ModelFiles;
use crate::model::Config;
use crate::peft::module_names::{llama_module_names, suffix_match, FullMatch};
use crate::peft::peft_config::{config_object, parse_config, peft_task, read_config};
use crate::peft::TaskType;
use crate::util::json::{brief, int_if_whole, Fields};
use crate::{Error, Result};

/// What `peft_version` webpeft writes (the PEFT the fixtures were made with).
pub const PEFT_VERSION: &str = "0.21.2";

/// The Linear layers LoRA can adapt in a Llama-family block, in model order
/// ("all-linear" selects all of them; `lm_head` never).
pub const LORA_MODULES: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// `target_modules`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetModules {
    /// Module-name suffixes: a module is targeted when its name equals one or
    /// ends with `.` + one (`q_proj`, `self_attn.q_proj`).
    List(Vec<String>),
    /// `"all-linear"`: every Linear but the output head.
    AllLinear,
    /// A regex PEFT matches with `re.fullmatch` against every module name.
    Regex(String),
}

/// `init_lora_weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitLoraWeights {
    /// `true`: A kaiming-uniform (a = √5), B zeros.
    Kaiming,
    /// `"gaussian"`: A ~ N(0, 1/r), B zeros.
    Gaussian,
    /// `false`: random A and B (PEFT: the layer's own init; a no-op adapter is not guaranteed).
    Random,
    /// `"pissa"`: A and B from W's top-r singular triplets, W replaced by the
    /// residual (see [`super::init_weight`]).
    Pissa,
    /// `"pissa_niter_K"`: PiSSA from a randomized SVD with K subspace
    /// iterations (`torch.svd_lowrank(W, r, niter=K)`).
    PissaNiter(usize),
    /// `"olora"`: A and B from W's QR factors, W replaced by the residual.
    Olora,
    /// `"loftq"` with `loftq_config` {loftq_bits: 4, loftq_iter}: W replaced
    /// by NF4(W − B·A), A and B by the SVD of what NF4 lost, alternated
    /// `loftq_iter` times.
    Loftq { iter: usize },
}

impl InitLoraWeights {
    /// Whether the init reads the base weight and replaces it (PiSSA, OLoRA, LoftQ).
    pub fn adjusts_base(self) -> bool {
        matches!(
            self,
            InitLoraWeights::Pissa
                | InitLoraWeights::PissaNiter(_)
                | InitLoraWeights::Olora
                | InitLoraWeights::Loftq { .. }
        )
    }

    /// Whether a trained adapter is saved converted to a rank-2r LoRA on the
    /// original base (PiSSA, OLoRA: PEFT's `path_initial_model_for_weight_conversion`).
    pub fn converts_on_save(self) -> bool {
        matches!(self, InitLoraWeights::Pissa | InitLoraWeights::PissaNiter(_) | InitLoraWeights::Olora)
    }

    /// The value as `adapter_config.json` spells it.
    pub fn to_value(self) -> Value {
        match self {
            InitLoraWeights::Kaiming => json!(true),
            InitLoraWeights::Random => json!(false),
            InitLoraWeights::Gaussian => json!("gaussian"),
            InitLoraWeights::Pissa => json!("pissa"),
            InitLoraWeights::PissaNiter(k) => json!(format!("pissa_niter_{k}")),
            InitLoraWeights::Olora => json!("olora"),
            InitLoraWeights::Loftq { .. } => json!("loftq"),
        }
    }

    /// Parses a name as the CLI and the browser take it ("kaiming" for
    /// `true`, "random" for `false`, else `adapter_config.json`'s string);
    /// LoftQ with `loftq_iter` iterations.
    pub fn from_name(name: &str, loftq_iter: usize) -> Result<InitLoraWeights> {
        match name {
            "kaiming" | "true" => Ok(InitLoraWeights::Kaiming),
            "random" | "false" => Ok(InitLoraWeights::Random),
            "loftq" => Ok(InitLoraWeights::Loftq { iter: loftq_iter }),
            other => parse_init_name(other),
        }
    }
}

/// The string values of `init_lora_weights` but "loftq" (which needs its config).
fn parse_init_name(s: &str) -> Result<InitLoraWeights> {
    match s {
        "gaussian" => Ok(InitLoraWeights::Gaussian),
        "pissa" => Ok(InitLoraWeights::Pissa),
        "olora" => Ok(InitLoraWeights::Olora),
        _ => match s.strip_prefix("pissa_niter_").map(str::parse::<usize>) {
            Some(Ok(k)) => Ok(InitLoraWeights::PissaNiter(k)),
            Some(Err(_)) => Err(err("init_lora_weights", format!("\"{s}\": expected pissa_niter_<number of iterations>"))),
            None => Err(unsupported(
                "init_lora_weights",
                format!("\"{s}\": webpeft implements true, false, \"gaussian\", \"pissa\", \"pissa_niter_[K]\", \"olora\" and \"loftq\""),
            )),
        },
    }
}

/// `loftq_config` for `init_lora_weights: "loftq"`: PEFT's LoftQConfig
/// (loftq_bits 4, loftq_iter 1 by default); webpeft does the 4-bit (NF4) one.
fn parse_loftq(f: &Fields) -> Result<InitLoraWeights> {
    let cfg = match f.get("loftq_config") {
        Some(Value::Object(m)) if !m.is_empty() => m,
        _ => {
            return Err(err(
                "loftq_config",
                "must be given when init_lora_weights is \"loftq\" (PEFT: {\"loftq_bits\": 4, \"loftq_iter\": 1})",
            ))
        }
    };
    let g = Fields::of(cfg, "loftq_config.", err);
    match g.opt_usize("loftq_bits")?.unwrap_or(4) {
        4 => {}
        bits => return Err(unsupported("loftq_config.loftq_bits", format!("{bits}: only 4 (NF4) is supported"))),
    }
    let iter = g.opt_usize("loftq_iter")?.unwrap_or(1);
    if iter == 0 {
        return Err(err("loftq_config.loftq_iter", "must be at least 1, got 0"));
    }
    Ok(InitLoraWeights::Loftq { iter })
}

/// A validated PEFT LoRA configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// Rank, at least 1.
    pub r: usize,
    /// `lora_alpha`, default 8.
    pub lora_alpha: f64,
    /// `lora_dropout` in [0, 1), default 0.
    pub lora_dropout: f64,
    pub target_modules: TargetModules,
    /// Scaling alpha/√r instead of alpha/r.
    pub use_rslora: bool,
    /// DoRA: each adapted Linear also has a magnitude vector m (out) and
    /// computes `(m / ‖W + s·B·A‖)`-scaled outputs (see [`super::dora`]).
    pub use_dora: bool,
    pub init_lora_weights: InitLoraWeights,
    /// Only these layer indices are adapted (`None`: all).
    pub layers_to_transform: Option<Vec<usize>>,
    pub base_model_name_or_path: Option<String>,
    /// Written as PEFT writes it (true after `save_pretrained`); informational.
    pub inference_mode: bool,
    /// PEFT's `trainable_token_indices`: these ids' rows of `embed_tokens`
    /// are trained beside the LoRA (and, on a model with tied embeddings,
    /// the same rows of `lm_head`; see [`crate::peft::trainable_tokens`]).
    pub trainable_token_indices: Option<Vec<u32>>,
    /// The dict form's `"lm_head"`: these ids' rows of an untied head are
    /// trained too, rows of their own.
    pub trainable_head_token_indices: Option<Vec<u32>>,
    /// PEFT's `modules_to_save`: `embed_tokens` and/or `lm_head`, trained
    /// as whole modules beside the LoRA (see [`crate::peft::modules_to_save`]).
    pub modules_to_save: Option<Vec<String>>,
    /// PEFT's `ensure_weight_tying`: on a model whose head is its
    /// embedding, one trained copy for both.
    pub ensure_weight_tying: bool,
    /// PEFT's `exclude_modules`: modules left out of `target_modules`' match
    /// (a list of names or suffixes, or a regex `re.fullmatch`ed).
    pub exclude_modules: Option<TargetModules>,
    /// PEFT's `rank_pattern`: a module's rank where a key matches its name
    /// (a regex for the name's tail, see [`FullMatch::tail`]), else `r`.
    /// Keys are tried in sorted order, the order PEFT reads them back from
    /// the file it saved.
    pub rank_pattern: BTreeMap<String, usize>,
    /// PEFT's `alpha_pattern`: a module's `lora_alpha`, matched as `rank_pattern`.
    pub alpha_pattern: BTreeMap<String, f64>,
    /// PEFT's `task_type`: CAUSAL_LM, or SEQ_CLS for a sequence classifier
    /// or reward model (a `score` head trained through `modules_to_save`).
    pub task_type: TaskType,
    /// A SEQ_CLS adapter's labels, the rows of its `score` head
    /// (transformers' `num_labels`; 1 for a reward model). PEFT's
    /// adapter_config.json has no such key: a loaded adapter takes it from
    /// its file's score weight. 1 for every other task.
    pub num_labels: usize,
}

fn err(field: &str, detail: impl Into<String>) -> Error {
    Error::AdapterConfig { field: field.to_string(), detail: detail.into() }
}

fn unsupported(field: &str, detail: impl Into<String>) -> Error {
    Error::AdapterUnsupported { field: field.to_string(), detail: detail.into() }
}

impl LoraConfig {
    /// A config as `LoraConfig(r, lora_alpha, target_modules, task_type="CAUSAL_LM")`
    /// with PEFT's other defaults.
    pub fn new(r: usize, lora_alpha: f64, target_modules: TargetModules) -> Result<LoraConfig> {
        let c = LoraConfig {
            r,
            lora_alpha,
            lora_dropout: 0.0,
            target_modules,
            use_rslora: false,
            use_dora: false,
            init_lora_weights: InitLoraWeights::Kaiming,
            layers_to_transform: None,
            base_model_name_or_path: None,
            inference_mode: false,
            trainable_token_indices: None,
            trainable_head_token_indices: None,
            modules_to_save: None,
            ensure_weight_tying: false,
            exclude_modules: None,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            task_type: TaskType::CausalLm,
            num_labels: 1,
        };
        c.validate()?;
        Ok(c)
    }

    /// The config as `get_peft_model` makes it with `task_type="SEQ_CLS"`
    /// (a reward model): PEFT's `PeftModelForSequenceClassification` appends
    /// `classifier` and `score` to `modules_to_save` (as given: an entry
    /// already there is listed twice, as PEFT lists it).
    pub fn for_sequence_classification(mut self) -> Result<LoraConfig> {
        let list = self.modules_to_save.get_or_insert_with(Vec::new);
        list.extend(crate::peft::modules_to_save::CLASSIFIER_MODULES.map(String::from));
        self.task_type = TaskType::SeqCls;
        self.validate()?;
        Ok(self)
    }

    /// Checks the numeric options (what [`from_value`](Self::from_value) checks too).
    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(err("r", "must be at least 1, got 0"));
        }
        if self.num_labels == 0 || (self.num_labels > 1 && self.task_type != TaskType::SeqCls) {
            return Err(err(
                "num_labels",
                format!("{}: a SEQ_CLS adapter's score head has 1 or more labels, other tasks none", self.num_labels),
            ));
        }
        if !self.lora_alpha.is_finite() {
            return Err(err("lora_alpha", format!("must be finite, got {}", self.lora_alpha)));
        }
        for (key, &r) in &self.rank_pattern {
            FullMatch::tail(&format!("rank_pattern.{key}"), key)?;
            if r == 0 {
                return Err(err(&format!("rank_pattern.{key}"), "must be at least 1, got 0"));
            }
        }
        for (key, &alpha) in &self.alpha_pattern {
            FullMatch::tail(&format!("alpha_pattern.{key}"), key)?;
            if !alpha.is_finite() {
                return Err(err(&format!("alpha_pattern.{key}"), format!("must be finite, got {alpha}")));
            }
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Err(err("lora_dropout", format!("must be in [0, 1), got {}", self.lora_dropout)));
        }
        if self.use_rslora && self.has_patterns() && self.init_lora_weights.converts_on_save() {
            // PEFT's save_pretrained refuses the conversion webpeft always does for these.
            return Err(unsupported(
                "rank_pattern",
                format!(
                    "init_lora_weights {} with rsLoRA and rank_pattern/alpha_pattern: the adapter could not be saved \
                     converted to the original base (PEFT refuses it too)",
                    self.init_lora_weights.to_value()
                ),
            ));
        }
        if self.use_dora && self.init_lora_weights.adjusts_base() {
            return Err(unsupported(
                "use_dora",
                format!("DoRA with init_lora_weights {} is not supported", self.init_lora_weights.to_value()),
            ));
        }
        if let TargetModules::List(l) = &self.target_modules {
            if l.is_empty() {
                return Err(err("target_modules", "is empty: no module to adapt"));
            }
        }
        if self.layers_to_transform.is_some() && !matches!(self.target_modules, TargetModules::List(_)) {
            // PEFT's LoraConfig.__post_init__ refuses it for any string ("all-linear" too).
            return Err(err(
                "layers_to_transform",
                "cannot be used when target_modules is a string (a regex or \"all-linear\"): list the modules",
            ));
        }
        for (field, t) in
            [("target_modules", Some(&self.target_modules)), ("exclude_modules", self.exclude_modules.as_ref())]
        {
            if let Some(TargetModules::Regex(r)) = t {
                FullMatch::new(field, r)?;
            }
        }
        let outer = self.outer_targets();
        let name = |m: OuterModule| m.name().rsplit('.').next().unwrap_or_default();
        if let Some(&m) = outer.first().filter(|_| self.use_dora || self.init_lora_weights.adjusts_base()) {
            return Err(unsupported(
                "target_modules",
                format!(
                    "{}: LoRA on the embedding or the head with DoRA, PiSSA, OLoRA or LoftQ is not supported",
                    name(m)
                ),
            ));
        }
        if outer.contains(&OuterModule::Embedding) && self.trainable_token_indices.is_some() {
            return Err(err(
                "trainable_token_indices",
                "embed_tokens is a LoRA target too: train its rows either way, not both (PEFT's wrappers would nest)",
            ));
        }
        if self.task_type == TaskType::SeqCls {
            if self.modules_to_save.is_none() {
                return Err(err("modules_to_save", "a SEQ_CLS adapter trains its `score` head whole: list `score`"));
            }
            if outer.contains(&OuterModule::Head) || self.trainable_head_token_indices.is_some() {
                return Err(err(
                    "target_modules",
                    "lm_head under SEQ_CLS: a sequence classifier has a `score` head, no lm_head",
                ));
            }
        }
        if let Some(list) = &self.modules_to_save {
            crate::peft::modules_to_save::check(list, self.task_type)?;
            // A module in both lists is trained whole: PEFT's match skips modules_to_save (outer_targets too).
            for m in crate::peft::modules_to_save::modules(list) {
                if m == OuterModule::Embedding && self.trainable_token_indices.is_some() {
                    return Err(err(
                        "trainable_token_indices",
                        "embed_tokens is in modules_to_save: its whole table is trained, rows included",
                    ));
                }
            }
        }
        if self.trainable_head_token_indices.is_some() {
            let head_too = outer.contains(&OuterModule::Head)
                || self
                    .modules_to_save
                    .as_deref()
                    .is_some_and(|l| crate::peft::modules_to_save::modules(l).contains(&OuterModule::Head));
            if head_too {
                return Err(err(
                    "trainable_token_indices.lm_head",
                    "lm_head is a LoRA target or in modules_to_save too: train its rows either way, not both",
                ));
            }
        }
        if outer.contains(&OuterModule::Head) && self.lora_dropout > 0.0 {
            return Err(unsupported(
                "lora_dropout",
                format!(
                    "{}: LoRA dropout on lm_head is not supported (the head runs in row chunks): use 0",
                    self.lora_dropout
                ),
            ));
        }
        Ok(())
    }

    /// Module `name`'s rank: `rank_pattern`'s value for the first key that
    /// matches it, else `r` (PEFT's `get_pattern_key`).
    pub fn rank_of(&self, name: &str) -> usize {
        pattern_value(&self.rank_pattern, "rank_pattern", name).unwrap_or(self.r)
    }

    /// Module `name`'s `lora_alpha`: `alpha_pattern`'s, else `lora_alpha`.
    pub fn alpha_of(&self, name: &str) -> f64 {
        pattern_value(&self.alpha_pattern, "alpha_pattern", name).unwrap_or(self.lora_alpha)
    }

    /// The factor on module `name`'s LoRA term: alpha/r, or alpha/√r with
    /// rsLoRA, from its own rank and alpha.
    pub fn scaling_of(&self, name: &str) -> f64 {
        let (alpha, r) = (self.alpha_of(name), self.rank_of(name) as f64);
        if self.use_rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }
    }

    /// Whether some module may differ from `r` and `lora_alpha`.
    pub fn has_patterns(&self) -> bool {
        !self.rank_pattern.is_empty() || !self.alpha_pattern.is_empty()
    }

    /// Parses and validates the bytes of an `adapter_config.json`.
    pub fn from_json(bytes: &[u8]) -> Result<LoraConfig> {
        LoraConfig::from_value(&parse_config(bytes)?)
    }

    /// Reads `adapter_config.json` from an adapter folder.
    pub async fn load<F: ModelFiles>(files: &F) -> Result<LoraConfig> {
        let bytes = read_config(files).await?;
        LoraConfig::from_json(&bytes)
    }

    /// Parses and validates a parsed `adapter_config.json`.
    pub fn from_value(value: &Value) -> Result<LoraConfig> {
        let map = config_object(value)?;
        let f = Fields::of(map, "", err);

        let task_type = peft_task(&f, "LORA", "a LoRA adapter")?;

        let r = f.opt_usize("r")?.unwrap_or(8);
        if r == 0 {
            return Err(err("r", "must be at least 1, got 0"));
        }
        let lora_alpha = f.opt_f64("lora_alpha")?.unwrap_or(8.0);
        let lora_dropout = f.opt_f64("lora_dropout")?.unwrap_or(0.0);

        let target_modules = match f.get("target_modules") {
            None => {
                return Err(err(
                    "target_modules",
                    "missing (PEFT has no default for llama here: give a list or \"all-linear\")",
                ))
            }
            Some(Value::String(s)) if s == "all-linear" => TargetModules::AllLinear,
            Some(Value::String(s)) => TargetModules::Regex(s.clone()),
            Some(Value::Array(items)) => TargetModules::List(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v.as_str() {
                        Some(s) if !s.is_empty() => Ok(s.to_string()),
                        _ => Err(err(
                            &format!("target_modules[{i}]"),
                            format!("expected a module name, got {}", brief(v)),
                        )),
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(v) => return Err(f.wrong("target_modules", "a list of module names or a string", v)),
        };

        let use_rslora = f.opt_bool("use_rslora")?.unwrap_or(false);
        let use_dora = f.opt_bool("use_dora")?.unwrap_or(false);
        match f.opt_str("bias")? {
            None | Some("none") => {}
            Some(other) => return Err(unsupported("bias", format!("\"{other}\": only \"none\" is supported"))),
        }
        if f.opt_bool("fan_in_fan_out")?.unwrap_or(false) {
            return Err(unsupported("fan_in_fan_out", "must be false (Llama-family Linears are not Conv1D)"));
        }
        if f.opt_bool("lora_bias")?.unwrap_or(false) {
            return Err(unsupported("lora_bias", "LoRA biases are not supported"));
        }
        for key in ["use_qalora", "use_bdlora"] {
            if f.opt_bool(key)?.unwrap_or(false) {
                return Err(unsupported(key, "must be false"));
            }
        }
        let init_lora_weights = match f.get("init_lora_weights") {
            None | Some(Value::Bool(true)) => InitLoraWeights::Kaiming,
            Some(Value::Bool(false)) => InitLoraWeights::Random,
            Some(Value::String(s)) if s == "loftq" => parse_loftq(&f)?,
            Some(Value::String(s)) => parse_init_name(s)?,
            Some(v) => return Err(f.wrong("init_lora_weights", "true, false or an initialisation's name", v)),
        };
        let layers_to_transform = match f.get("layers_to_transform") {
            None => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| {
                            err(
                                &format!("layers_to_transform[{i}]"),
                                format!("expected a layer index, got {}", brief(v)),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(v) => Some(vec![v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| f.wrong("layers_to_transform", "a layer index or a list of them", v))?]),
        };
        let modules_to_save = crate::peft::modules_to_save::parse(&f, task_type)?;
        let ensure_weight_tying = f.opt_bool("ensure_weight_tying")?.unwrap_or(false);
        let rank_pattern = parse_pattern(&f, "rank_pattern", |g, k| match g.opt_usize(k)? {
            Some(0) => Err(g.error(k, "must be at least 1, got 0")),
            r => Ok(r),
        })?;
        let alpha_pattern = parse_pattern(&f, "alpha_pattern", |g, k| g.opt_f64(k))?;
        let tokens = crate::peft::trainable_tokens::parse_indices(&f)?;
        let exclude_modules = match f.get("exclude_modules") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(TargetModules::Regex(s.clone())),
            Some(Value::Array(_)) => Some(TargetModules::List(f.strings("exclude_modules")?)),
            Some(v) => return Err(f.wrong("exclude_modules", "a list of module names or a regex", v)),
        };
        match f.get("layers_pattern") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() || s == "layers" => {}
            Some(Value::Array(items)) if items.iter().any(|v| v.as_str() == Some("layers")) || items.is_empty() => {}
            Some(v) => {
                return Err(err(
                    "layers_pattern",
                    format!("{}: a Llama-family model's layers are model.layers.N (\"layers\")", brief(v)),
                ))
            }
        }
        for key in ["layer_replication", "target_parameters"] {
            if !f.is_empty(key) {
                return Err(unsupported(key, "must be null"));
            }
        }
        let base_model_name_or_path = f.opt_str("base_model_name_or_path")?.map(str::to_string);
        let inference_mode = f.opt_bool("inference_mode")?.unwrap_or(false);

        let c = LoraConfig {
            r,
            lora_alpha,
            lora_dropout,
            target_modules,
            use_rslora,
            use_dora,
            init_lora_weights,
            layers_to_transform,
            base_model_name_or_path,
            inference_mode,
            trainable_token_indices: tokens.embed,
            trainable_head_token_indices: tokens.head,
            modules_to_save,
            ensure_weight_tying,
            exclude_modules,
            rank_pattern,
            alpha_pattern,
            task_type,
            num_labels: 1,
        };
        c.validate()?;
        Ok(c)
    }

    /// The JSON PEFT 0.21.2's `save_pretrained` writes for this config (same
    /// key set as PEFT's, keys sorted), so `PeftModel.from_pretrained` loads it.
    pub fn to_value(&self) -> Value {
        let num = int_if_whole;
        let target_modules = match &self.target_modules {
            TargetModules::List(l) => {
                // PEFT stores a set; it comes out in arbitrary order. Sorted here.
                let mut l = l.clone();
                l.sort();
                l.dedup();
                json!(l)
            }
            TargetModules::AllLinear => json!("all-linear"),
            TargetModules::Regex(s) => json!(s),
        };
        let init = self.init_lora_weights.to_value();
        let loftq_config = match self.init_lora_weights {
            InitLoraWeights::Loftq { iter } => json!({"loftq_bits": 4, "loftq_iter": iter}),
            _ => json!({}),
        };
        // serde_json's Map is a BTreeMap here (no preserve_order): keys come out sorted.
        json!({
            "alora_invocation_tokens": null,
            "alpha_pattern": self.alpha_pattern.iter().map(|(k, &a)| (k.clone(), num(a))).collect::<serde_json::Map<_, _>>(),
            "arrow_config": null,
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "corda_config": null,
            "ensure_weight_tying": self.ensure_weight_tying,
            "eva_config": null,
            "exclude_modules": match &self.exclude_modules {
                Some(TargetModules::List(l)) => json!(l),
                Some(TargetModules::Regex(r)) => json!(r),
                _ => Value::Null,
            },
            "fan_in_fan_out": false,
            "inference_mode": self.inference_mode,
            "init_lora_weights": init,
            "kasa_config": null,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": self.layers_to_transform,
            "loftq_config": loftq_config,
            "lora_alpha": num(self.lora_alpha),
            "lora_bias": false,
            "lora_dropout": self.lora_dropout,
            "lora_ga_config": null,
            "megatron_config": null,
            "megatron_core": "megatron.core",
            "modules_to_save": self.modules_to_save,
            "monteclora_config": null,
            "peft_type": "LORA",
            "peft_version": PEFT_VERSION,
            "qalora_group_size": 16,
            "r": self.r,
            "rank_pattern": self.rank_pattern,
            "revision": null,
            "target_modules": target_modules,
            "target_parameters": null,
            "task_type": self.task_type.name(),
            "trainable_token_indices": match &self.trainable_head_token_indices {
                // The dict form, with the keys it had.
                Some(head) => {
                    let mut m = serde_json::Map::new();
                    if let Some(e) = &self.trainable_token_indices {
                        m.insert("embed_tokens".into(), json!(e));
                    }
                    m.insert("lm_head".into(), json!(head));
                    Value::Object(m)
                }
                None => json!(self.trainable_token_indices),
            },
            "use_bdlora": null,
            "use_dora": self.use_dora,
            "use_qalora": false,
            "use_rslora": self.use_rslora,
            "velora_config": null
        })
    }

    /// [`to_value`](Self::to_value) as pretty JSON (two-space indent, as PEFT).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a JSON value serializes")
    }

    /// The modules outside the layers this config adapts (`embed_tokens`,
    /// `lm_head`): named in `target_modules` ("all-linear" leaves the head
    /// out, as PEFT does), and neither excluded (`exclude_modules`) nor
    /// trained whole (`modules_to_save`, which PEFT's match skips).
    pub fn outer_targets(&self) -> Vec<OuterModule> {
        let saved = self.modules_to_save.as_deref().map(crate::peft::modules_to_save::modules).unwrap_or_default();
        let matched = self.matcher();
        OUTER_MODULES
            .into_iter()
            .filter(|m| !matches!(self.target_modules, TargetModules::AllLinear) && matched(m.name()))
            .filter(|m| !saved.contains(m))
            // PEFT's layers_to_transform keeps a module by its layer index, which these have none of,
            // unless the list names it whole ("lm_head", "model.embed_tokens").
            .filter(|m| self.layers_to_transform.is_none() || self.named_whole(m.name()))
            .collect()
    }

    /// Whether a list of `target_modules` holds `name` itself (PEFT then
    /// skips its layers_to_transform check).
    fn named_whole(&self, name: &str) -> bool {
        matches!(&self.target_modules, TargetModules::List(l) if l.iter().any(|e| e == name))
    }

    /// PEFT's match, as a test of a module name: `target_modules` (a list's
    /// names or suffixes, or a regex's full match; "all-linear" every Linear
    /// of the layers) and not `exclude_modules`. The regexes are compiled
    /// once; one that does not compile matches nothing
    /// ([`LoraConfig::validate`] reports it).
    fn matcher(&self) -> impl Fn(&str) -> bool + '_ {
        let compile = |t: Option<&TargetModules>, field: &str| match t {
            Some(TargetModules::Regex(r)) => FullMatch::new(field, r).ok(),
            _ => None,
        };
        let target = compile(Some(&self.target_modules), "target_modules");
        let exclude = compile(self.exclude_modules.as_ref(), "exclude_modules");
        move |name: &str| {
            let by = |t: &TargetModules, re: &Option<FullMatch>| match t {
                TargetModules::AllLinear => {
                    LORA_MODULES.iter().any(|p| suffix_match(name, p)) && name.starts_with("model.layers.")
                }
                TargetModules::List(list) => list.iter().any(|e| suffix_match(name, e)),
                TargetModules::Regex(_) => re.as_ref().is_some_and(|re| re.matches(name)),
            };
            by(&self.target_modules, &target) && !self.exclude_modules.as_ref().is_some_and(|x| by(x, &exclude))
        }
    }

    /// Whether a fresh adapter takes values from the model's weights
    /// besides DoRA's magnitudes: trainable token rows, modules_to_save's copies.
    pub fn starts_from_model(&self) -> bool {
        self.trainable_token_indices.is_some()
            || self.trainable_head_token_indices.is_some()
            || self.modules_to_save.is_some()
    }

    /// Whether layer `layer` is adapted (`layers_to_transform`).
    pub fn adapts_layer(&self, layer: usize) -> bool {
        self.layers_to_transform.as_ref().is_none_or(|l| l.contains(&layer))
    }

    /// The concrete module names this config adapts in a model of `config`
    /// (`model.layers.{i}.self_attn.q_proj`, …), in model order: per layer
    /// q, k, v, o, gate, up, down. A target that matches no module, a layer
    /// index out of range, or a regex target (not supported yet) is an error.
    pub fn targets(&self, config: &Config) -> Result<Vec<String>> {
        let layers = config.num_hidden_layers;
        if let Some(l) = &self.layers_to_transform {
            if let Some(&bad) = l.iter().find(|&&i| i >= layers) {
                return Err(err(
                    "layers_to_transform",
                    format!("layer {bad} does not exist (the model has {layers} layers)"),
                ));
            }
        }
        let all: Vec<String> = (0..layers).flat_map(|i| LORA_MODULES.map(|m| module_name(i, m))).collect();
        let names = llama_module_names(config);
        match &self.target_modules {
            TargetModules::List(list) => {
                // Every entry names some module (PEFT: "Target modules … not found in the base model").
                if let Some(t) = list.iter().find(|t| !names.iter().any(|n| suffix_match(n, t))) {
                    return Err(err(
                        "target_modules",
                        format!(
                            "\"{t}\" matches no module of the model (LoRA targets: {}, embed_tokens, lm_head)",
                            LORA_MODULES.join(", ")
                        ),
                    ));
                }
            }
            TargetModules::Regex(r) => {
                FullMatch::new("target_modules", r)?;
            }
            TargetModules::AllLinear => {}
        }
        if let Some(TargetModules::Regex(r)) = &self.exclude_modules {
            FullMatch::new("exclude_modules", r)?;
        }
        // A module PEFT's match takes that LoRA cannot adapt (attention, an MLP, a norm).
        let adaptable = |n: &str| all.iter().any(|a| a == n) || OUTER_MODULES.iter().any(|m| m.name() == n);
        let matched = self.matcher();
        if let Some(other) = names.iter().find(|n| !adaptable(n) && matched(n)) {
            return Err(unsupported(
                "target_modules",
                format!(
                    "it matches {other}, which is not a Linear: LoRA adapts the layers' Linears ({}), embed_tokens and lm_head",
                    LORA_MODULES.join(", ")
                ),
            ));
        }
        // layers_to_transform goes with a list (validate refuses it with a string).
        let in_layers = |n: &str| self.named_whole(n) || layer_of(n).is_some_and(|i| self.adapts_layer(i));
        let chosen: Vec<String> = all.into_iter().filter(|n| matched(n) && in_layers(n)).collect();
        if chosen.is_empty() && self.outer_targets().is_empty() {
            let why = match (&self.target_modules, &self.exclude_modules, &self.layers_to_transform) {
                (TargetModules::Regex(r), None, _) => format!("\"{r}\" matches no module of the model"),
                (_, Some(_), _) => "exclude_modules (or modules_to_save) leaves no module to adapt".to_string(),
                (_, None, Some(_)) => return Err(err("layers_to_transform", "selects no layer: no module to adapt")),
                _ => "no module to adapt (modules_to_save takes the ones named)".to_string(),
            };
            return Err(err("target_modules", why));
        }
        Ok(chosen)
    }
}

/// `rank_pattern` or `alpha_pattern` (`field`): an object of regex → value,
/// each value read by `value` (`None` for `null`, which is skipped).
fn parse_pattern<T>(
    f: &Fields,
    field: &str,
    value: impl Fn(&Fields, &str) -> Result<Option<T>>,
) -> Result<BTreeMap<String, T>> {
    let map = match f.get(field) {
        None => return Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m,
        Some(v) => return Err(f.wrong(field, "an object of module pattern → value", v)),
    };
    let prefix = format!("{field}.");
    let g = Fields::of(map, &prefix, err);
    let mut out = BTreeMap::new();
    for key in map.keys() {
        if let Some(v) = value(&g, key)? {
            out.insert(key.clone(), v);
        }
    }
    Ok(out)
}

/// The value of the first key of `pattern` (in sorted order) whose regex
/// matches `name`'s tail; a key that does not compile matches nothing
/// ([`LoraConfig::validate`] reports it).
fn pattern_value<T: Copy>(pattern: &BTreeMap<String, T>, field: &str, name: &str) -> Option<T> {
    pattern.iter().find(|(k, _)| FullMatch::tail(field, k).is_ok_and(|re| re.matches(name))).map(|(_, &v)| v)
}

/// A module outside the layers that LoRA can adapt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OuterModule {
    /// `model.embed_tokens`: PEFT's `lora.Embedding`, A (r, vocab) read by id and B (hidden, r).
    Embedding,
    /// `lm_head`: a Linear (vocab, hidden), A (r, hidden) and B (vocab, r).
    Head,
}

/// Both, in model order.
pub const OUTER_MODULES: [OuterModule; 2] = [OuterModule::Embedding, OuterModule::Head];

impl OuterModule {
    /// The checkpoint's module name.
    pub fn name(self) -> &'static str {
        match self {
            OuterModule::Embedding => "model.embed_tokens",
            OuterModule::Head => "lm_head",
        }
    }
}

/// `model.layers.{layer}.self_attn.q_proj` / `model.layers.{layer}.mlp.up_proj`.
pub(crate) fn module_name(layer: usize, proj: &str) -> String {
    let block = if matches!(proj, "gate_proj" | "up_proj" | "down_proj") { "mlp" } else { "self_attn" };
    format!("model.layers.{layer}.{block}.{proj}")
}

/// The layer index of a `model.layers.{i}.…` module name.
pub(crate) fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("model.layers.")?.split('.').next()?.parse().ok()
}
