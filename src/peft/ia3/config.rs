//! `adapter_config.json` of a PEFT (IA)³ adapter (`IA3Config`): parsed and
//! validated into an [`Ia3Config`], written back with the key set PEFT 0.21
//! writes, and its modules resolved against a model [`Config`].
//!
//! (IA)³ learns one vector per targeted Linear: a feed-forward module's input
//! is scaled by it (`x ⊙ l`, l of shape (1, in)), any other module's output
//! (`(x·Wᵀ + b) ⊙ l`, l of shape (out, 1)). PEFT's defaults for the models
//! webpeft loads: Llama and Mistral k_proj, v_proj, down_proj; Qwen2 and Qwen3 q_proj,
//! v_proj, down_proj; down_proj feed-forward.

use serde_json::{json, Value};

use crate::model::llama::Proj;
use crate::model::{Config, ModelType};
use crate::peft::lora::config::module_name;
use crate::peft::lora::{TargetModules, PEFT_VERSION};
use crate::peft::module_names::{suffix_match as suffix, FullMatch};
use crate::peft::peft_config::{check_peft_type, config_object, parse_config, read_config};
use crate::util::json::{brief, Fields};
use crate::{Error, Result};

fn err(field: &str, detail: impl Into<String>) -> Error {
    Error::AdapterConfig { field: field.to_string(), detail: detail.into() }
}

fn unsupported(field: &str, detail: impl Into<String>) -> Error {
    Error::AdapterUnsupported { field: field.to_string(), detail: detail.into() }
}

/// A validated PEFT (IA)³ configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Ia3Config {
    pub target_modules: TargetModules,
    /// Module-name suffixes whose input (not output) is scaled; each must
    /// name a targeted module.
    pub feedforward_modules: Vec<String>,
    /// `true`: the vectors start at ones (the model unchanged); `false`:
    /// N(0, 1), as PEFT's `torch.randn`.
    pub init_ia3_weights: bool,
    pub base_model_name_or_path: Option<String>,
    /// Written as PEFT writes it (true after `save_pretrained`); informational.
    pub inference_mode: bool,
}

/// One targeted Linear.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ia3Module {
    pub layer: usize,
    pub proj: Proj,
    /// Scales the input (shape (1, in)) instead of the output ((out, 1)).
    pub feedforward: bool,
}

impl Ia3Module {
    /// `model.layers.{i}.self_attn.k_proj`.
    pub fn name(&self) -> String {
        crate::peft::lora::config::module_name(self.layer, self.proj.name())
    }

    /// The vector's shape as PEFT stores it, for a model of `config`.
    pub fn shape(&self, config: &Config) -> [usize; 2] {
        let (out, inp) = linear_shape(self.proj, config);
        if self.feedforward {
            [1, inp]
        } else {
            [out, 1]
        }
    }
}

/// A Linear's (out, in) in a model of `config`.
fn linear_shape(proj: Proj, c: &Config) -> (usize, usize) {
    let (d, i, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
    match proj {
        Proj::Q => (q, d),
        Proj::K | Proj::V => (kv, d),
        Proj::O => (d, q),
        Proj::Gate | Proj::Up => (i, d),
        Proj::Down => (d, i),
    }
}

impl Ia3Config {
    /// `IA3Config(task_type="CAUSAL_LM")` as `get_peft_model` resolves it for
    /// a model of `model_type`. PEFT has no defaults for SmolLM3 (it asks for
    /// `target_modules`): webpeft gives it Llama's, and writes them out.
    pub fn default_for(model_type: ModelType) -> Ia3Config {
        let targets: &[&str] = match model_type {
            ModelType::Qwen2 | ModelType::Qwen3 => &["q_proj", "v_proj", "down_proj"],
            ModelType::Llama | ModelType::Mistral | ModelType::SmolLM3 => &["k_proj", "v_proj", "down_proj"],
        };
        Ia3Config {
            target_modules: TargetModules::List(targets.iter().map(|s| s.to_string()).collect()),
            feedforward_modules: vec!["down_proj".into()],
            init_ia3_weights: true,
            base_model_name_or_path: None,
            inference_mode: false,
        }
    }

    /// Parses and validates `adapter_config.json` bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Ia3Config> {
        Self::from_value(&parse_config(bytes)?)
    }

    /// Reads `adapter_config.json` from an adapter folder.
    pub async fn load<F: crate::model::ModelFiles>(files: &F) -> Result<Ia3Config> {
        let bytes = read_config(files).await?;
        Self::from_json(&bytes)
    }

    /// Parses and validates a parsed `adapter_config.json`.
    pub fn from_value(value: &Value) -> Result<Ia3Config> {
        let map = config_object(value)?;
        let f = Fields::of(map, "", err);
        check_peft_type(&f, "IA3", "an (IA)³ adapter")?;
        let names = |key: &str| -> Result<Option<Vec<String>>> {
            match f.get(key) {
                None => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v.as_str() {
                        Some(s) if !s.is_empty() => Ok(s.to_string()),
                        _ => Err(err(&format!("{key}[{i}]"), format!("expected a module name, got {}", brief(v)))),
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                Some(Value::String(s)) if key == "target_modules" && s == "all-linear" => Ok(None),
                Some(Value::String(s)) => {
                    Err(unsupported(key, format!("\"{s}\": a regex is not supported yet; give a list of module names")))
                }
                Some(v) => Err(f.wrong(key, "a list of module names", v)),
            }
        };
        let target_modules = match (f.get("target_modules"), names("target_modules")?) {
            (None, _) => {
                return Err(err(
                    "target_modules",
                    "missing (PEFT writes the resolved list: give one or \"all-linear\")",
                ))
            }
            (Some(Value::String(_)), None) => TargetModules::AllLinear,
            (_, Some(list)) => TargetModules::List(list),
            (_, None) => unreachable!("names() returns a list for every present non-string value"),
        };
        let feedforward_modules = names("feedforward_modules")?.unwrap_or_default();
        if f.opt_bool("fan_in_fan_out")? == Some(true) {
            return Err(unsupported("fan_in_fan_out", "Llama-family Linears store (out, in): must be false"));
        }
        for key in ["modules_to_save", "exclude_modules"] {
            if !f.is_empty(key) {
                return Err(unsupported(key, "not supported (must be null)"));
            }
        }
        let c = Ia3Config {
            target_modules,
            feedforward_modules,
            init_ia3_weights: f.opt_bool("init_ia3_weights")?.unwrap_or(true),
            base_model_name_or_path: f.opt_str("base_model_name_or_path")?.map(str::to_string),
            inference_mode: f.opt_bool("inference_mode")?.unwrap_or(false),
        };
        c.validate()?;
        Ok(c)
    }

    /// PEFT's own check: `feedforward_modules` must name targeted modules.
    pub fn validate(&self) -> Result<()> {
        if let TargetModules::List(list) = &self.target_modules {
            if list.is_empty() {
                return Err(err("target_modules", "is empty: no module to adapt"));
            }
            if let Some(ff) =
                self.feedforward_modules.iter().find(|ff| !list.iter().any(|t| suffix(t, ff) || suffix(ff, t)))
            {
                return Err(err(
                    "feedforward_modules",
                    format!(
                        "\"{ff}\" is not in target_modules: feedforward_modules should be a subset of target_modules"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The Linears this config adapts in a model of `config`, in model order
    /// (per layer q, k, v, o, gate, up, down).
    pub fn modules(&self, config: &Config) -> Result<Vec<Ia3Module>> {
        // A regex is matched against whole names, as PEFT's re.fullmatch.
        let regex = match &self.target_modules {
            TargetModules::Regex(r) => Some(FullMatch::new("target_modules", r)?),
            _ => None,
        };
        let targeted = |layer: usize, p: Proj| match &self.target_modules {
            TargetModules::AllLinear => true,
            TargetModules::List(list) => list.iter().any(|t| suffix(p.name(), t)),
            TargetModules::Regex(_) => regex.as_ref().is_some_and(|re| re.matches(&module_name(layer, p.name()))),
        };
        if let TargetModules::List(list) = &self.target_modules {
            if let Some(t) = list.iter().find(|t| !Proj::ALL.iter().any(|p| suffix(p.name(), t))) {
                let names: Vec<&str> = Proj::ALL.iter().map(|p| p.name()).collect();
                return Err(err(
                    "target_modules",
                    format!("\"{t}\" matches no module of the model ({})", names.join(", ")),
                ));
            }
        }
        let feedforward = |p: Proj| self.feedforward_modules.iter().any(|t| suffix(p.name(), t));
        let modules: Vec<Ia3Module> = (0..config.num_hidden_layers)
            .flat_map(|layer| {
                Proj::ALL.into_iter().filter(move |&p| targeted(layer, p)).map(move |proj| Ia3Module {
                    layer,
                    proj,
                    feedforward: feedforward(proj),
                })
            })
            .collect();
        if let (TargetModules::Regex(r), true) = (&self.target_modules, modules.is_empty()) {
            return Err(err("target_modules", format!("\"{r}\" matches no Linear of the model's layers")));
        }
        Ok(modules)
    }

    /// The JSON PEFT 0.21.2's `save_pretrained` writes for this config (keys
    /// sorted, lists sorted), so `PeftModel.from_pretrained` loads it.
    pub fn to_value(&self) -> Value {
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            json!(v)
        };
        let target_modules = match &self.target_modules {
            TargetModules::List(l) => sorted(l),
            TargetModules::AllLinear => json!("all-linear"),
            TargetModules::Regex(s) => json!(s),
        };
        json!({
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "feedforward_modules": sorted(&self.feedforward_modules),
            "inference_mode": true,
            "init_ia3_weights": self.init_ia3_weights,
            "modules_to_save": null,
            "peft_type": "IA3",
            "peft_version": PEFT_VERSION,
            "revision": null,
            "target_modules": target_modules,
            "task_type": "CAUSAL_LM",
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a JSON value serializes")
    }
}
