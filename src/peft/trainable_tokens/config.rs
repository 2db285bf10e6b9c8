//! `adapter_config.json` of PEFT's TRAINABLE_TOKENS method by itself
//! (`TrainableTokensConfig`): the ids whose embedding rows are trained, the
//! embedding they belong to, and whether the rows start as the embedding's
//! own (`init_weights`, PEFT's default) or at N(0, 1).

use serde_json::{json, Value};

use super::check_indices;
use crate::peft::lora::PEFT_VERSION;
use crate::peft::peft_config::{check_peft_type, config_object, field_error as err, parse_config, read_config};
use crate::util::json::Fields;
use crate::{Error, Result};

/// The module PEFT's TrainableTokensConfig targets for a Llama-family model.
const EMBEDDING: &str = "model.embed_tokens";

/// A validated `TrainableTokensConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainableTokensConfig {
    /// The ids, in order: row j of the trained rows is id `token_indices[j]`.
    pub token_indices: Vec<u32>,
    /// `true`: the rows start as the embedding's; `false`: N(0, 1) (PEFT's `torch.randn`).
    pub init_weights: bool,
    /// `target_modules` names `lm_head` too: on a model whose head is not its
    /// embedding, the head's rows of the ids are trained as well (rows of
    /// their own); on a tied model the head shares the embedding's.
    pub lm_head: bool,
    pub base_model_name_or_path: Option<String>,
    /// Written as PEFT writes it (true after `save_pretrained`); informational.
    pub inference_mode: bool,
}

impl TrainableTokensConfig {
    /// `TrainableTokensConfig(token_indices=…, task_type="CAUSAL_LM")`, checked.
    pub fn new(token_indices: Vec<u32>) -> Result<TrainableTokensConfig> {
        check_indices(&token_indices, usize::MAX)?;
        Ok(TrainableTokensConfig {
            token_indices,
            init_weights: true,
            lm_head: false,
            base_model_name_or_path: None,
            inference_mode: false,
        })
    }

    /// Parses and validates `adapter_config.json` bytes.
    pub fn from_json(bytes: &[u8]) -> Result<TrainableTokensConfig> {
        Self::from_value(&parse_config(bytes)?)
    }

    /// Reads `adapter_config.json` from an adapter folder.
    pub async fn load<F: crate::model::ModelFiles>(files: &F) -> Result<TrainableTokensConfig> {
        Self::from_json(&read_config(files).await?)
    }

    /// Parses and validates a parsed `adapter_config.json`.
    pub fn from_value(value: &Value) -> Result<TrainableTokensConfig> {
        let f = Fields::of(config_object(value)?, "", err);
        check_peft_type(&f, "TRAINABLE_TOKENS", "a trainable-tokens adapter")?;
        let named = crate::peft::module_names::suffix_match;
        let lm_head = match f.get("target_modules") {
            None => false,
            Some(Value::String(s)) if named(s, "embed_tokens") => false,
            Some(Value::Array(a))
                if a.iter().any(|v| v.as_str().is_some_and(|s| named(s, "embed_tokens")))
                    && a.iter()
                        .all(|v| v.as_str().is_some_and(|s| named(s, "embed_tokens") || named(s, "lm_head"))) =>
            {
                a.iter().any(|v| v.as_str().is_some_and(|s| named(s, "lm_head")))
            }
            Some(v) => {
                return Err(Error::AdapterUnsupported {
                    field: "target_modules".into(),
                    detail: format!(
                        "{}: webpeft trains token rows of embed_tokens, and of lm_head beside it",
                        crate::util::json::brief(v)
                    ),
                })
            }
        };
        let token_indices = match f.get("token_indices") {
            None => return Err(err("token_indices", "missing: the ids whose rows are trained")),
            Some(Value::Array(_)) => f.tokens("token_indices")?,
            Some(v) => return Err(f.wrong("token_indices", "a list of token ids", v)),
        };
        check_indices(&token_indices, usize::MAX).map_err(|e| match e {
            Error::AdapterConfig { field, detail } => {
                Error::AdapterConfig { field: field.replace("trainable_token_indices", "token_indices"), detail }
            }
            e => e,
        })?;
        Ok(TrainableTokensConfig {
            token_indices,
            init_weights: f.opt_bool("init_weights")?.unwrap_or(true),
            lm_head,
            base_model_name_or_path: f.opt_str("base_model_name_or_path")?.map(str::to_string),
            inference_mode: f.opt_bool("inference_mode")?.unwrap_or(false),
        })
    }

    /// The JSON PEFT 0.21.2's `save_pretrained` writes for
    /// `TrainableTokensConfig(task_type="CAUSAL_LM", …)` (keys sorted).
    pub fn to_value(&self) -> Value {
        json!({
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "inference_mode": self.inference_mode,
            "init_weights": self.init_weights,
            "peft_type": "TRAINABLE_TOKENS",
            "peft_version": PEFT_VERSION,
            "revision": null,
            "target_modules": if self.lm_head { json!(["embed_tokens", "lm_head"]) } else { json!(EMBEDDING) },
            "task_type": "CAUSAL_LM",
            "token_indices": self.token_indices,
        })
    }

    /// Whether a model of `model` gets rows of the head's own (an untied
    /// head named in `target_modules`).
    pub fn head_rows(&self, model: &crate::model::Config) -> bool {
        self.lm_head && !model.tie_word_embeddings
    }

    /// How many values the rows hold on a model of `model`: the embedding's
    /// (k, D), then the head's own where it has them.
    pub fn values_len(&self, model: &crate::model::Config) -> usize {
        self.token_indices.len() * model.hidden_size * if self.head_rows(model) { 2 } else { 1 }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a JSON value serializes")
    }
}
