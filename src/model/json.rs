//! Reading typed fields out of a `config.json` object, each failure an
//! [`Error::Config`] naming the field. HF configs are written by Python, so a
//! field may be absent, `null`, or of the wrong type; "absent" and `null` are
//! treated alike (transformers does the same: `None` means "use the default").

use serde_json::{Map, Value};

use crate::{Error, Result};

pub(crate) fn config_error(field: &str, detail: impl Into<String>) -> Error {
    Error::Config { field: field.to_string(), detail: detail.into() }
}

/// The object's fields, with lookups that name the field on failure.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    /// Prefix for nested objects: "rope_scaling." (empty at the top level).
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    pub fn new(value: &'a Value, prefix: &'a str, what: &str) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Fields { map, prefix }),
            other => Err(config_error(what, format!("expected a JSON object, got {}", brief(other)))),
        }
    }

    pub fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The raw value; `None` when absent or `null`.
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Present and not `null`.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Present, possibly `null`.
    pub fn contains_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| self.wrong(key, "a string", v))).transpose()
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.get(key).map(|v| v.as_u64().ok_or_else(|| self.wrong(key, "a non-negative integer", v))).transpose()
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.opt_u64(key)?
            .map(|n| usize::try_from(n).map_err(|_| config_error(&self.field(key), format!("{n} is too large"))))
            .transpose()
    }

    /// A required size that must be at least 1.
    pub fn size(&self, key: &str) -> Result<usize> {
        let n = self.opt_usize(key)?.ok_or_else(|| config_error(&self.field(key), "missing"))?;
        positive(&self.field(key), n)
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.get(key).map(|v| v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))).transpose()
    }

    /// A required finite number.
    pub fn f64(&self, key: &str) -> Result<f64> {
        let x = self.opt_f64(key)?.ok_or_else(|| config_error(&self.field(key), "missing"))?;
        if !x.is_finite() {
            return Err(config_error(&self.field(key), format!("must be finite, got {x}")));
        }
        Ok(x)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "true or false", v))).transpose()
    }

    /// A token id that fits in u32.
    pub fn opt_token(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|v| token_id(&self.field(key), v)).transpose()
    }

    /// An int or a list of ints (`eos_token_id` in Llama 3 configs); empty when absent.
    pub fn tokens(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                items.iter().enumerate().map(|(i, v)| token_id(&format!("{}[{i}]", self.field(key)), v)).collect()
            }
            Some(v) => Ok(vec![token_id(&self.field(key), v)?]),
        }
    }

    fn wrong(&self, key: &str, expected: &str, got: &Value) -> Error {
        config_error(&self.field(key), format!("expected {expected}, got {}", brief(got)))
    }
}

pub(crate) fn positive(field: &str, n: usize) -> Result<usize> {
    if n == 0 {
        return Err(config_error(field, "must be at least 1, got 0"));
    }
    Ok(n)
}

fn token_id(field: &str, v: &Value) -> Result<u32> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| config_error(field, format!("expected a token id, got {}", brief(v))))
}

/// A short rendering of a JSON value for messages.
pub(crate) fn brief(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}
