//! `adapter_config.json` of a PEFT AdaLoRA adapter (`peft_type` "ADALORA"):
//! LoRA's fields (targets, `lora_alpha`, dropout, …; PEFT's `r` is written but
//! unused) and the rank allocator's schedule. PEFT 0.21's checks are made the
//! same way, each failure naming its field.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::model::Config;
use crate::peft::lora::{LoraConfig, LORA_MODULES};
use crate::peft::peft_config::{check_peft_type, config_object, field_error as err, parse_config};
use crate::util::json::{brief, int_if_whole, Fields};
use crate::{Error, Result};

/// The AdaLoRA-only fields, as PEFT names them.
const FIELDS: [&str; 10] = [
    "init_r",
    "target_r",
    "tinit",
    "tfinal",
    "deltaT",
    "beta1",
    "beta2",
    "orth_reg_weight",
    "total_step",
    "rank_pattern",
];

/// A validated AdaLoRA configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaLoraConfig {
    /// The LoRA fields (targets, `lora_alpha`, `lora_dropout`, …). `lora.r` is
    /// PEFT's `r`, which AdaLoRA ignores (kept to write it back).
    pub lora: LoraConfig,
    /// Every module's rank at the start (`init_r`, default 12).
    pub init_r: usize,
    /// The average rank the allocator ends with (`target_r`, default 8).
    pub target_r: usize,
    /// Steps before the first allocation (`tinit`).
    pub tinit: usize,
    /// Steps after the last one (`tfinal`).
    pub tfinal: usize,
    /// Steps between allocations (`deltaT`, default 1).
    pub delta_t: usize,
    /// EMA factors of the sensitivity and its uncertainty (0.85 each).
    pub beta1: f64,
    pub beta2: f64,
    /// The orthogonality regulariser's weight (0.5).
    pub orth_reg_weight: f64,
    /// Steps of the whole run (required).
    pub total_step: usize,
    /// The ranks each module keeps (`model.layers.{i}.….lora_E` → one flag a
    /// rank), as PEFT saves them after an allocation; `None` before one.
    pub rank_pattern: Option<BTreeMap<String, Vec<bool>>>,
}

impl AdaLoraConfig {
    /// `AdaLoraConfig(init_r, target_r, total_step, target_modules, task_type="CAUSAL_LM")`
    /// with PEFT's other defaults.
    pub fn new(lora: LoraConfig, init_r: usize, target_r: usize, total_step: usize) -> Result<AdaLoraConfig> {
        let c = AdaLoraConfig {
            lora,
            init_r,
            target_r,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
            total_step,
            rank_pattern: None,
        };
        c.validate()?;
        Ok(c)
    }

    /// PEFT's checks (`AdaLoraConfig.__post_init__`, `RankAllocator`), and
    /// those whose failure PEFT meets only in the middle of training.
    pub fn validate(&self) -> Result<()> {
        if let Some(m) = self.lora.outer_targets().first() {
            return Err(Error::AdapterUnsupported {
                field: "target_modules".into(),
                detail: format!("{}: AdaLoRA adapts the layers' Linears only", m.name()),
            });
        }
        if self.lora.trainable_token_indices.is_some() || self.lora.trainable_head_token_indices.is_some() {
            return Err(Error::AdapterUnsupported {
                field: "trainable_token_indices".into(),
                detail: "trainable tokens are trained beside a LoRA, not an AdaLoRA (must be null)".into(),
            });
        }
        if self.lora.modules_to_save.is_some() {
            return Err(Error::AdapterUnsupported {
                field: "modules_to_save".into(),
                detail: "whole modules are trained beside a LoRA, not an AdaLoRA (must be null)".into(),
            });
        }
        self.lora.validate()?;
        if self.lora.use_dora {
            // PEFT's AdaLoraConfig: "AdaLoRA does not support DoRA."
            return Err(Error::AdapterUnsupported {
                field: "use_dora".into(),
                detail: "AdaLoRA does not support DoRA (as PEFT)".into(),
            });
        }
        if self.total_step == 0 {
            return Err(err("total_step", "AdaLoRA needs the run's total number of steps (> 0)"));
        }
        if self.tinit + self.tfinal >= self.total_step {
            return Err(err(
                "tinit",
                format!(
                    "tinit {} + tfinal {} leave no budgeting phase in total_step {}: decrease tfinal/tinit or increase total_step",
                    self.tinit, self.tfinal, self.total_step
                ),
            ));
        }
        if self.init_r == 0 {
            return Err(err("init_r", "must be at least 1"));
        }
        if self.target_r > self.init_r {
            return Err(err(
                "target_r",
                format!("{} is above init_r {}: the allocator only removes ranks", self.target_r, self.init_r),
            ));
        }
        if self.delta_t == 0 {
            return Err(err("deltaT", "must be at least 1"));
        }
        for (field, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(b > 0.0 && b < 1.0) {
                return Err(err(field, format!("must be in (0, 1), got {b}")));
            }
        }
        if !(self.orth_reg_weight >= 0.0 && self.orth_reg_weight.is_finite()) {
            return Err(err("orth_reg_weight", format!("must be ≥ 0, got {}", self.orth_reg_weight)));
        }
        Ok(())
    }

    /// Parses and validates the bytes of an `adapter_config.json`.
    pub fn from_json(bytes: &[u8]) -> Result<AdaLoraConfig> {
        AdaLoraConfig::from_value(&parse_config(bytes)?)
    }

    /// Parses and validates a parsed `adapter_config.json`.
    pub fn from_value(value: &Value) -> Result<AdaLoraConfig> {
        let map = config_object(value)?;
        let f = Fields::of(map, "", err);
        check_peft_type(&f, "ADALORA", "an AdaLoRA adapter")?;
        let usize_or = |key: &str, default: usize| -> Result<usize> { Ok(f.opt_usize(key)?.unwrap_or(default)) };
        let f64_or = |key: &str, default: f64| -> Result<f64> { Ok(f.opt_f64(key)?.unwrap_or(default)) };
        let total_step = f
            .opt_usize("total_step")?
            .ok_or_else(|| err("total_step", "missing: AdaLoRA needs the run's total number of steps"))?;
        let rank_pattern = match f.get("rank_pattern") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(
                m.iter()
                    .map(|(k, v)| {
                        let flags = v.as_array().and_then(|a| a.iter().map(Value::as_bool).collect::<Option<Vec<_>>>());
                        flags.map(|fl| (k.clone(), fl)).ok_or_else(|| {
                            err(
                                &format!("rank_pattern.{k}"),
                                format!("expected a list of true/false, got {}", brief(v)),
                            )
                        })
                    })
                    .collect::<Result<BTreeMap<_, _>>>()?,
            ),
            Some(v) => return Err(f.wrong("rank_pattern", "an object of module → flags", v)),
        };
        // LoRA's own fields, through LoRA's parser (which knows no AdaLoRA field).
        let mut lora_map: Map<String, Value> =
            map.iter().filter(|(k, _)| !FIELDS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
        lora_map.insert("peft_type".into(), json!("LORA"));
        let c = AdaLoraConfig {
            lora: LoraConfig::from_value(&Value::Object(lora_map))?,
            init_r: usize_or("init_r", 12)?,
            target_r: usize_or("target_r", 8)?,
            tinit: usize_or("tinit", 0)?,
            tfinal: usize_or("tfinal", 0)?,
            delta_t: usize_or("deltaT", 1)?,
            beta1: f64_or("beta1", 0.85)?,
            beta2: f64_or("beta2", 0.85)?,
            orth_reg_weight: f64_or("orth_reg_weight", 0.5)?,
            total_step,
            rank_pattern,
        };
        c.validate()?;
        Ok(c)
    }

    /// The JSON PEFT 0.21.2's `save_pretrained` writes (keys sorted).
    pub fn to_value(&self) -> Value {
        let mut v = self.lora.to_value();
        let m = v.as_object_mut().expect("LoRA's config is an object");
        let num = int_if_whole;
        for (k, val) in [
            ("peft_type", json!("ADALORA")),
            ("init_r", json!(self.init_r)),
            ("target_r", json!(self.target_r)),
            ("tinit", json!(self.tinit)),
            ("tfinal", json!(self.tfinal)),
            ("deltaT", json!(self.delta_t)),
            ("beta1", num(self.beta1)),
            ("beta2", num(self.beta2)),
            ("orth_reg_weight", num(self.orth_reg_weight)),
            ("total_step", json!(self.total_step)),
            ("rank_pattern", json!(self.rank_pattern)),
        ] {
            m.insert(k.into(), val);
        }
        v
    }

    /// [`to_value`](Self::to_value) as pretty JSON (two-space indent, as PEFT).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a JSON value serializes")
    }

    /// The factor on every module's term: `lora_alpha / (ranknum + 1e-5)`,
    /// ranknum being `init_r` (PEFT keeps it when it resizes modules).
    pub fn scaling(&self) -> f32 {
        self.lora.lora_alpha as f32 / (self.init_r as f32 + 1e-5)
    }

    /// The module names adapted in a model of `config` (as LoRA resolves them).
    pub fn targets(&self, config: &Config) -> Result<Vec<String>> {
        self.lora.targets(config)
    }

    /// The rank a module has in the files: `init_r`, or what `rank_pattern` keeps.
    pub fn rank_of(&self, module: &str) -> usize {
        match self.rank_pattern.as_ref().and_then(|p| p.get(&pattern_key(module))) {
            Some(flags) => flags.iter().filter(|&&f| f).count(),
            None => self.init_r,
        }
    }
}

/// `rank_pattern`'s key of a module: `model.layers.0.self_attn.q_proj.lora_E`.
pub fn pattern_key(module: &str) -> String {
    format!("{module}.lora_E")
}

/// PEFT's default AdaLoRA targets for Llama and Qwen2: q_proj and v_proj.
pub fn default_targets() -> Vec<String> {
    [LORA_MODULES[0], LORA_MODULES[2]].map(String::from).to_vec()
}
