//! `adapter_config.json` of a PEFT prefix-tuning adapter (`PrefixTuningConfig`,
//! `peft_type` "PREFIX_TUNING"), with the shapes PEFT gives grouped-query
//! models: `token_dim` = KV heads × head_dim and `num_attention_heads` = KV
//! heads, so every layer's prefix keys and values are (P, KV, head_dim).
//!
//! Prefix tuning (Li and Liang 2021) learns, for every layer, P keys and
//! values that attention sees before the row's own, as a KV cache's first
//! entries (not rotated by RoPE); the row's tokens then sit at positions
//! P..P+T. Without `prefix_projection` the prefix is learned directly, as an
//! embedding of (P, layers × 2 × token_dim) floats, N(0, 1) at first
//! (`nn.Embedding`'s init). With it, a fresh adapter trains PEFT's MLP
//! (`PrefixEncoder`: Embedding(P, token_dim) → Linear(token_dim,
//! encoder_hidden_size) → Tanh → Linear(encoder_hidden_size, layers × 2 ×
//! token_dim)) that makes the prefix; PEFT saves only the prefix it made, so
//! such a folder loads (and trains on) as a plain prefix.

use serde_json::{json, Value};

use crate::model::Config;
use crate::peft::lora::PEFT_VERSION;
use crate::peft::peft_config::{
    check_peft_type, check_prompt_learning, check_virtual_tokens, config_object, field_error as err, parse_config,
    read_config,
};
use crate::util::json::Fields;
use crate::Result;

/// A validated PEFT prefix-tuning configuration for a causal LM.
#[derive(Debug, Clone, PartialEq)]
pub struct PrefixTuningConfig {
    /// P ≥ 1.
    pub num_virtual_tokens: usize,
    /// KV heads × head_dim.
    pub token_dim: usize,
    pub num_layers: usize,
    /// The KV heads (PEFT's value for grouped-query models).
    pub num_attention_heads: usize,
    /// The projection MLP's width (`token_dim` by default).
    pub encoder_hidden_size: usize,
    /// The prefix comes from PEFT's MLP reparametrisation (a folder's file
    /// holds the projected prefix; kept so the config is written back as read).
    pub prefix_projection: bool,
    pub base_model_name_or_path: Option<String>,
}

impl PrefixTuningConfig {
    /// `PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=p)` as
    /// `get_peft_model` completes it for `model`.
    pub fn new(num_virtual_tokens: usize, model: &Config) -> Result<PrefixTuningConfig> {
        let token_dim = model.kv_dim();
        let c = PrefixTuningConfig {
            num_virtual_tokens,
            token_dim,
            num_layers: model.num_hidden_layers,
            num_attention_heads: model.num_key_value_heads,
            encoder_hidden_size: token_dim,
            prefix_projection: false,
            base_model_name_or_path: None,
        };
        c.check(model)?;
        Ok(c)
    }

    pub fn from_json(bytes: &[u8]) -> Result<PrefixTuningConfig> {
        Self::from_value(&parse_config(bytes)?)
    }

    /// Reads `adapter_config.json` from an adapter folder.
    pub async fn load<F: crate::model::ModelFiles>(files: &F) -> Result<PrefixTuningConfig> {
        let bytes = read_config(files).await?;
        Self::from_json(&bytes)
    }

    pub fn from_value(value: &Value) -> Result<PrefixTuningConfig> {
        let map = config_object(value)?;
        let f = Fields::of(map, "", err);
        check_peft_type(&f, "PREFIX_TUNING", "a prefix-tuning adapter")?;
        check_prompt_learning(&f)?;
        let required = |key: &str| f.opt_usize(key)?.ok_or_else(|| err(key, "missing"));
        let token_dim = required("token_dim")?;
        Ok(PrefixTuningConfig {
            num_virtual_tokens: required("num_virtual_tokens")?,
            token_dim,
            num_layers: required("num_layers")?,
            num_attention_heads: required("num_attention_heads")?,
            encoder_hidden_size: f.opt_usize("encoder_hidden_size")?.unwrap_or(token_dim),
            prefix_projection: f.opt_bool("prefix_projection")?.unwrap_or(false),
            base_model_name_or_path: f.opt_str("base_model_name_or_path")?.map(str::to_string),
        })
    }

    /// Checks the config against a model: at least one virtual token, fewer
    /// than the model's positions, and the model's layers and KV shapes.
    pub fn check(&self, model: &Config) -> Result<()> {
        check_virtual_tokens(self.num_virtual_tokens, model)?;
        let (kv, dim) = (model.num_key_value_heads, model.kv_dim());
        for (field, got, want) in [
            ("num_layers", self.num_layers, model.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads, kv),
            ("token_dim", self.token_dim, dim),
        ] {
            if got != want {
                return Err(err(field, format!("{got}, but the model's is {want} (an adapter for another model?)")));
            }
        }
        if self.prefix_projection && self.encoder_hidden_size == 0 {
            return Err(err("encoder_hidden_size", "must be at least 1 with prefix_projection, got 0"));
        }
        Ok(())
    }

    /// Floats of the whole prefix: P × layers × 2 × token_dim.
    pub fn numel(&self) -> usize {
        self.num_virtual_tokens * self.num_layers * 2 * self.token_dim
    }

    /// The JSON PEFT 0.21.2's `save_pretrained` writes (keys sorted).
    pub fn to_value(&self) -> Value {
        json!({
            "auto_mapping": null,
            "base_model_name_or_path": self.base_model_name_or_path,
            "encoder_hidden_size": self.encoder_hidden_size,
            "inference_mode": true,
            "init_weights": null,
            "modules_to_save": null,
            "num_attention_heads": self.num_attention_heads,
            "num_layers": self.num_layers,
            "num_transformer_submodules": 1,
            "num_virtual_tokens": self.num_virtual_tokens,
            "peft_type": "PREFIX_TUNING",
            "peft_version": PEFT_VERSION,
            "prefix_projection": self.prefix_projection,
            "revision": null,
            "task_type": "CAUSAL_LM",
            "token_dim": self.token_dim,
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("a JSON value serializes")
    }
}
