//! `adapter_config.json` of a PEFT P-tuning adapter (`PromptEncoderConfig`,
//! `peft_type` "P_TUNING"), with the key set PEFT 0.21 writes.
//!
//! PEFT's `PromptEncoder` with `encoder_reparameterization_type` "MLP" (the
//! default, the only one webpeft trains) is Embedding(V, token_dim) →
//! Linear(token_dim, hidden) → ReLU → Linear(hidden, hidden) → ReLU →
//! Linear(hidden, token_dim), hidden = `encoder_hidden_size` (token_dim by
//! default). PEFT ignores `encoder_num_layers` for the MLP (always these
//! three Linears, with a warning) and uses `encoder_dropout` only in the
//! LSTM; both are kept so the config is written back as read.

use serde_json::{json, Value};

use crate::model::Config;
use crate::peft::lora::PEFT_VERSION;
use crate::peft::peft_config::{
    check_peft_type, check_prompt_learning, check_prompt_width, check_virtual_tokens, config_object,
    field_error as err, parse_config, read_config, unsupported,
};
use crate::util::json::Fields;
use crate::Result;

/// A validated PEFT P-tuning configuration for a causal LM.
#[derive(Debug, Clone, PartialEq)]
pub struct PTuningConfig {
    /// V ≥ 1.
    pub num_virtual_tokens: usize,
    /// The model's hidden size.
    pub token_dim: usize,
    /// The model's layers and attention heads, as PEFT records them.
    pub num_layers: usize,
    pub num_attention_heads: usize,
    /// The MLP's width.
    pub encoder_hidden_size: usize,
    /// Recorded, unused by the MLP (as in PEFT).
    pub encoder_num_layers: usize,
    /// Recorded, unused by the MLP (as in PEFT).
    pub encoder_dropout: f64,
    pub base_model_name_or_path: Option<String>,
}

impl PTuningConfig {
    /// `PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=v,
    /// encoder_hidden_size=hidden)` as `get_peft_model` completes it for
    /// `model` (`hidden` None: the model's hidden size).
    pub fn new(num_virtual_tokens: usize, encoder_hidden_size: Option<usize>, model: &Config) -> Result<PTuningConfig> {
        let c = PTuningConfig {
            num_virtual_tokens,
            token_dim: model.hidden_size,
            num_layers: model.num_hidden_layers,
            num_attention_heads: model.num_attention_heads,
            encoder_hidden_size: encoder_hidden_size.unwrap_or(model.hidden_size),
            encoder_num_layers: 2,
            encoder_dropout: 0.0,
            base_model_name_or_path: None,
        };
        c.check(model)?;
        Ok(c)
    }

    pub fn from_json(bytes: &[u8]) -> Result<PTuningConfig> {
        Self::from_value(&parse_config(bytes)?)
    }

    /// Reads `adapter_config.json` from an adapter folder.
    pub async fn load<F: crate::model::ModelFiles>(files: &F) -> Result<PTuningConfig> {
        let bytes = read_config(files).await?;
        Self::from_json(&bytes)
    }

    pub fn from_value(value: &Value) -> Result<PTuningConfig> {
        let map = config_object(value)?;
        let f = Fields::of(map, "", err);
        check_peft_type(&f, "P_TUNING", "a P-tuning adapter")?;
        match f.opt_str("encoder_reparameterization_type")?.unwrap_or("MLP") {
            "MLP" => {}
            "LSTM" => {
                return Err(unsupported(
                    "encoder_reparameterization_type",
                    "\"LSTM\": webpeft trains P-tuning's MLP encoder (\"MLP\", PEFT's default)",
                ))
            }
            other => return Err(err("encoder_reparameterization_type", format!("\"{other}\" (expected MLP or LSTM)"))),
        }
        check_prompt_learning(&f)?;
        let required = |key: &str| f.opt_usize(key)?.ok_or_else(|| err(key, "missing"));
        let token_dim = required("token_dim")?;
        Ok(PTuningConfig {
            num_virtual_tokens: required("num_virtual_tokens")?,
            token_dim,
            num_layers: f.opt_usize("num_layers")?.unwrap_or(0),
            num_attention_heads: f.opt_usize("num_attention_heads")?.unwrap_or(0),
            encoder_hidden_size: f.opt_usize("encoder_hidden_size")?.unwrap_or(token_dim),
            encoder_num_layers: f.opt_usize("encoder_num_layers")?.unwrap_or(2),
            encoder_dropout: f.opt_f64("encoder_dropout")?.unwrap_or(0.0),
            base_model_name_or_path: f.opt_str("base_model_name_or_path")?.map(str::to_string),
        })
    }

    /// Checks the config against a model: at least one virtual token, fewer
    /// than the model's positions, prompts as wide as its embeddings, and an
    /// MLP at least 1 wide.
    pub fn check(&self, model: &Config) -> Result<()> {
        check_virtual_tokens(self.num_virtual_tokens, model)?;
        check_prompt_width(self.token_dim, model)?;
        if self.encoder_hidden_size == 0 {
            return Err(err("encoder_hidden_size", "must be at least 1, got 0"));
        }
        Ok(())
    }

    /// The JSON PEFT 0.21.2's `save_pretrained` writes (keys sorted).
    pub fn to_value(&self) -> Value {
        json!({
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "encoder_dropout": self.encoder_dropout,
            "encoder_hidden_size": self.encoder_hidden_size,
            "encoder_num_layers": self.encoder_num_layers,
            "encoder_reparameterization_type": "MLP",
            "inference_mode": true,
            "modules_to_save": null,
            "num_attention_heads": self.num_attention_heads,
            "num_layers": self.num_layers,
            "num_transformer_submodules": 1,
            "num_virtual_tokens": self.num_virtual_tokens,
            "peft_type": "P_TUNING",
            "peft_version": PEFT_VERSION,
            "revision": null,
            "task_type": "CAUSAL_LM",
            "token_dim": self.token_dim,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a JSON value serializes")
    }
}
