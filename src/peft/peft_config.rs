//! What every PEFT `adapter_config.json` shares, whatever its method: the
//! `peft_type` that names the method and the `task_type` (webpeft trains
//! causal LMs), checked the same way for each.

use crate::model::Config;
use crate::util::json::Fields;
use crate::{Error, Result};

/// The error of a PEFT config field (`Error::AdapterConfig`).
pub(crate) fn field_error(field: &str, detail: impl Into<String>) -> Error {
    Error::AdapterConfig { field: field.to_string(), detail: detail.into() }
}

/// A field PEFT allows that webpeft does not support (`Error::AdapterUnsupported`).
pub(crate) fn unsupported(field: &str, detail: impl Into<String>) -> Error {
    Error::AdapterUnsupported { field: field.to_string(), detail: detail.into() }
}

/// PEFT's `task_type`: what the adapted model is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TaskType {
    /// `CAUSAL_LM`: a `…ForCausalLM`, its `lm_head` predicting tokens.
    #[default]
    CausalLm,
    /// `SEQ_CLS`: a `…ForSequenceClassification` whose `score` head rates a
    /// whole sequence (a reward model); PEFT trains that head through
    /// `modules_to_save` (`classifier` and `score`, added to the list).
    SeqCls,
}

impl TaskType {
    /// The config's spelling: "CAUSAL_LM" or "SEQ_CLS".
    pub fn name(self) -> &'static str {
        match self {
            TaskType::CausalLm => "CAUSAL_LM",
            TaskType::SeqCls => "SEQ_CLS",
        }
    }
}

/// `peft_type` must be `expected` (`what` names the method in the error:
/// "a LoRA adapter"), and `task_type`, when given, "CAUSAL_LM".
pub(crate) fn check_peft_type(f: &Fields, expected: &str, what: &str) -> Result<()> {
    match peft_task(f, expected, what)? {
        TaskType::CausalLm => Ok(()),
        TaskType::SeqCls => Err(field_error(
            "task_type",
            format!("\"SEQ_CLS\" is not supported for {what} (expected \"CAUSAL_LM\"; reward models are LoRAs)"),
        )),
    }
}

/// [`check_peft_type`]'s check of `peft_type`, and the `task_type`:
/// "CAUSAL_LM" (or none) or "SEQ_CLS".
pub(crate) fn peft_task(f: &Fields, expected: &str, what: &str) -> Result<TaskType> {
    match f.opt_str("peft_type")? {
        None => return Err(field_error("peft_type", "missing")),
        Some(t) if t == expected => {}
        Some(other) => {
            return Err(field_error("peft_type", format!("\"{other}\" is not {what} (expected \"{expected}\")")))
        }
    }
    match f.opt_str("task_type")? {
        None | Some("CAUSAL_LM") => Ok(TaskType::CausalLm),
        Some("SEQ_CLS") => Ok(TaskType::SeqCls),
        Some(other) => Err(field_error(
            "task_type",
            format!("\"{other}\" is not supported (expected \"CAUSAL_LM\", or \"SEQ_CLS\" for a reward model)"),
        )),
    }
}

/// What a prompt-learning config (prompt, prefix or P-tuning) must say for a
/// causal LM: one transformer submodule, no `modules_to_save`.
pub(crate) fn check_prompt_learning(f: &Fields) -> Result<()> {
    if let Some(n) = f.opt_usize("num_transformer_submodules")? {
        if n != 1 {
            return Err(unsupported("num_transformer_submodules", format!("{n}: a causal LM has 1")));
        }
    }
    if !f.is_empty("modules_to_save") {
        return Err(unsupported("modules_to_save", "not supported (must be null)"));
    }
    Ok(())
}

/// `num_virtual_tokens` against `model`: at least one, and fewer than its positions.
pub(crate) fn check_virtual_tokens(v: usize, model: &Config) -> Result<()> {
    let max = model.max_position_embeddings;
    if v == 0 {
        return Err(field_error("num_virtual_tokens", "must be at least 1, got 0"));
    }
    if v >= max {
        return Err(field_error(
            "num_virtual_tokens",
            format!("{v} virtual tokens leave no position for the input (max_position_embeddings {max})"),
        ));
    }
    Ok(())
}

/// Virtual-token embeddings (`token_dim`) as wide as `model`'s.
pub(crate) fn check_prompt_width(token_dim: usize, model: &Config) -> Result<()> {
    if token_dim != model.hidden_size {
        return Err(field_error(
            "token_dim",
            format!(
                "{token_dim}, but the model's hidden_size is {} (an adapter for another model?)",
                model.hidden_size
            ),
        ));
    }
    Ok(())
}

/// The bytes of an `adapter_config.json`, parsed: an error names the file
/// when they are not JSON.
pub(crate) fn parse_config(bytes: &[u8]) -> Result<serde_json::Value> {
    serde_json::from_slice(bytes).map_err(|e| field_error("(file)", format!("not valid JSON: {e}")))
}

/// A parsed `adapter_config.json`'s top-level object.
pub(crate) fn config_object(value: &serde_json::Value) -> Result<&serde_json::Map<String, serde_json::Value>> {
    value.as_object().ok_or_else(|| {
        field_error("(file)", format!("expected a JSON object, got {}", crate::util::json::brief(value)))
    })
}

/// The bytes of `adapter_config.json` in an adapter folder.
pub(crate) async fn read_config<F: crate::model::ModelFiles>(files: &F) -> Result<Vec<u8>> {
    use crate::model::source::ByteSource;
    files.open(crate::peft::ADAPTER_CONFIG_FILE).await?.read_all().await
}
