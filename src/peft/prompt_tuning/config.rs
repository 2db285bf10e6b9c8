//! `adapter_config.json` of a PEFT prompt-tuning adapter (`PromptTuningConfig`,
//! `peft_type` "PROMPT_TUNING"): parsed and validated into a
//! [`PromptTuningConfig`], written back with the key set PEFT 0.21 writes.
//!
//! Prompt tuning (Lester et al. 2021) learns `num_virtual_tokens` embeddings
//! put before every input's; the model and its loss see only the input's
//! own positions. PEFT initialises them `RANDOM` (N(0, 1), `nn.Embedding`'s
//! init), `SAMPLE_VOCAB` (rows of the model's embedding table at random
//! token ids) or `TEXT` (the rows of `prompt_tuning_init_text`'s tokens,
//! repeated or cut to the number of virtual tokens).

use serde_json::{json, Value};

use crate::model::Config;
use crate::peft::lora::PEFT_VERSION;
use crate::peft::peft_config::{
    check_peft_type, check_prompt_learning, check_prompt_width, check_virtual_tokens, config_object, parse_config,
    read_config,
};
use crate::util::json::Fields;
use crate::{Error, Result};

fn err(field: &str, detail: impl Into<String>) -> Error {
    Error::AdapterConfig { field: field.to_string(), detail: detail.into() }
}

/// `prompt_tuning_init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptTuningInit {
    /// N(0, 1), as `nn.Embedding`.
    Random,
    /// The embedding rows of random token ids.
    SampleVocab,
    /// The embedding rows of this text's tokens (with the tokenizer's
    /// special tokens, as `tokenizer(text)["input_ids"]`), repeated or cut to
    /// `num_virtual_tokens`.
    Text(String),
}

/// A validated PEFT prompt-tuning configuration for a causal LM.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTuningConfig {
    /// V ≥ 1.
    pub num_virtual_tokens: usize,
    pub init: PromptTuningInit,
    /// The model's hidden size (PEFT's `token_dim`).
    pub token_dim: usize,
    /// The model's layers and heads, as PEFT records them.
    pub num_layers: usize,
    pub num_attention_heads: usize,
    /// Where `TEXT`'s tokenizer came from (PEFT records it; webpeft uses the model's).
    pub tokenizer_name_or_path: Option<String>,
    pub base_model_name_or_path: Option<String>,
}

impl PromptTuningConfig {
    /// `PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=v,
    /// prompt_tuning_init=init)` as `get_peft_model` completes it for `model`.
    pub fn new(num_virtual_tokens: usize, init: PromptTuningInit, model: &Config) -> Result<PromptTuningConfig> {
        let c = PromptTuningConfig {
            num_virtual_tokens,
            init,
            token_dim: model.hidden_size,
            num_layers: model.num_hidden_layers,
            num_attention_heads: model.num_attention_heads,
            tokenizer_name_or_path: None,
            base_model_name_or_path: None,
        };
        c.check(model)?;
        Ok(c)
    }

    pub fn from_json(bytes: &[u8]) -> Result<PromptTuningConfig> {
        Self::from_value(&parse_config(bytes)?)
    }

    /// Reads `adapter_config.json` from an adapter folder.
    pub async fn load<F: crate::model::ModelFiles>(files: &F) -> Result<PromptTuningConfig> {
        let bytes = read_config(files).await?;
        Self::from_json(&bytes)
    }

    pub fn from_value(value: &Value) -> Result<PromptTuningConfig> {
        let map = config_object(value)?;
        let f = Fields::of(map, "", err);
        check_peft_type(&f, "PROMPT_TUNING", "a prompt-tuning adapter")?;
        let num_virtual_tokens =
            f.opt_usize("num_virtual_tokens")?.ok_or_else(|| err("num_virtual_tokens", "missing"))?;
        let init = match f.opt_str("prompt_tuning_init")?.unwrap_or("RANDOM") {
            "RANDOM" => PromptTuningInit::Random,
            "SAMPLE_VOCAB" => PromptTuningInit::SampleVocab,
            "TEXT" => PromptTuningInit::Text(
                f.opt_str("prompt_tuning_init_text")?
                    .ok_or_else(|| err("prompt_tuning_init_text", "missing: TEXT initialisation needs a text"))?
                    .to_string(),
            ),
            other => {
                return Err(err("prompt_tuning_init", format!("\"{other}\" (expected RANDOM, SAMPLE_VOCAB or TEXT)")))
            }
        };
        check_prompt_learning(&f)?;
        let token_dim = f.opt_usize("token_dim")?.ok_or_else(|| err("token_dim", "missing"))?;
        Ok(PromptTuningConfig {
            num_virtual_tokens,
            init,
            token_dim,
            num_layers: f.opt_usize("num_layers")?.unwrap_or(0),
            num_attention_heads: f.opt_usize("num_attention_heads")?.unwrap_or(0),
            tokenizer_name_or_path: f.opt_str("tokenizer_name_or_path")?.map(str::to_string),
            base_model_name_or_path: f.opt_str("base_model_name_or_path")?.map(str::to_string),
        })
    }

    /// Checks the config against a model: at least one virtual token, fewer
    /// than the model's positions, and prompts as wide as its embeddings.
    pub fn check(&self, model: &Config) -> Result<()> {
        check_virtual_tokens(self.num_virtual_tokens, model)?;
        check_prompt_width(self.token_dim, model)?;
        Ok(())
    }

    /// The JSON PEFT 0.21.2's `save_pretrained` writes (keys sorted).
    pub fn to_value(&self) -> Value {
        let (init, text) = match &self.init {
            PromptTuningInit::Random => ("RANDOM", None),
            PromptTuningInit::SampleVocab => ("SAMPLE_VOCAB", None),
            PromptTuningInit::Text(t) => ("TEXT", Some(t.as_str())),
        };
        json!({
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "inference_mode": true,
            "modules_to_save": null,
            "num_attention_heads": self.num_attention_heads,
            "num_layers": self.num_layers,
            "num_transformer_submodules": 1,
            "num_virtual_tokens": self.num_virtual_tokens,
            "peft_type": "PROMPT_TUNING",
            "peft_version": PEFT_VERSION,
            "prompt_tuning_init": init,
            "prompt_tuning_init_text": text,
            "revision": null,
            "task_type": "CAUSAL_LM",
            "token_dim": self.token_dim,
            "tokenizer_kwargs": null,
            "tokenizer_name_or_path": if text.is_some() { self.tokenizer_name_or_path.clone().or(self.base_model_name_or_path.clone()) } else { None },
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a JSON value serializes")
    }
}
