//! What every PEFT `adapter_config.json` shares, whatever its method: the
//! `peft_type` that names the method and the `task_type` (webpeft trains
//! causal LMs), checked the same way for each.

use crate::util::json::Fields;
use crate::{Error, Result};

/// The error of a PEFT config field (`Error::AdapterConfig`).
pub(crate) fn field_error(field: &str, detail: impl Into<String>) -> Error {
    Error::AdapterConfig { field: field.to_string(), detail: detail.into() }
}

/// `peft_type` must be `expected` (`what` names the method in the error:
/// "a LoRA adapter"), and `task_type`, when given, "CAUSAL_LM".
pub(crate) fn check_peft_type(f: &Fields, expected: &str, what: &str) -> Result<()> {
    match f.opt_str("peft_type")? {
        None => return Err(field_error("peft_type", "missing")),
        Some(t) if t == expected => {}
        Some(other) => {
            return Err(field_error("peft_type", format!("\"{other}\" is not {what} (expected \"{expected}\")")))
        }
    }
    match f.opt_str("task_type")? {
        None | Some("CAUSAL_LM") => Ok(()),
        Some(other) => Err(field_error("task_type", format!("\"{other}\" is not supported (expected \"CAUSAL_LM\")"))),
    }
}
