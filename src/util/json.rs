//! Reading typed fields out of a JSON config object (a model's `config.json`,
//! an adapter's `adapter_config.json`), each failure a typed error naming the
//! field: the file's own error variant, given as a [`FieldError`]. These
//! files are written by Python, so a field may be absent, `null`, or of the
//! wrong type; "absent" and `null` are treated alike (transformers and PEFT
//! do the same: `None` means "use the default").

use serde_json::{Map, Value};

use crate::{Error, Result};

/// Builds the error for a bad field: (field name, what is wrong).
pub(crate) type FieldError = fn(&str, String) -> Error;

/// The object's fields, with lookups that name the field on failure.
pub(crate) struct Fields<'a> {
    map: &'a Map<String, Value>,
    /// Prefix for nested objects: "rope_scaling." (empty at the top level).
    prefix: &'a str,
    error: FieldError,
}

impl<'a> Fields<'a> {
    /// `value`'s fields, or an error naming `what` when it is not an object.
    pub fn new(value: &'a Value, prefix: &'a str, what: &str, error: FieldError) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Fields { map, prefix, error }),
            other => Err(error(what, format!("expected a JSON object, got {}", brief(other)))),
        }
    }

    /// The fields of an object already known to be one.
    pub fn of(map: &'a Map<String, Value>, prefix: &'a str, error: FieldError) -> Self {
        Fields { map, prefix, error }
    }

    /// The field's name in messages (`rope_scaling.factor`).
    pub fn field(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The error for field `key`.
    pub fn error(&self, key: &str, detail: impl Into<String>) -> Error {
        (self.error)(&self.field(key), detail.into())
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
            .map(|n| usize::try_from(n).map_err(|_| self.error(key, format!("{n} is too large"))))
            .transpose()
    }

    /// A required size that must be at least 1.
    pub fn size(&self, key: &str) -> Result<usize> {
        let n = self.opt_usize(key)?.ok_or_else(|| self.error(key, "missing"))?;
        if n == 0 {
            return Err(self.error(key, "must be at least 1, got 0"));
        }
        Ok(n)
    }

    /// A finite number, when present.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key).map(|v| v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))).transpose()? {
            Some(x) if !x.is_finite() => Err(self.error(key, format!("must be finite, got {x}"))),
            x => Ok(x),
        }
    }

    /// A required finite number.
    pub fn f64(&self, key: &str) -> Result<f64> {
        self.opt_f64(key)?.ok_or_else(|| self.error(key, "missing"))
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| self.wrong(key, "true or false", v))).transpose()
    }

    /// A token id that fits in u32.
    pub fn opt_token(&self, key: &str) -> Result<Option<u32>> {
        self.get(key).map(|v| self.token_id(&self.field(key), v)).transpose()
    }

    /// An int or a list of ints (`eos_token_id` in Llama 3 configs); empty when absent.
    pub fn tokens(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => {
                items.iter().enumerate().map(|(i, v)| self.token_id(&format!("{}[{i}]", self.field(key)), v)).collect()
            }
            Some(v) => Ok(vec![self.token_id(&self.field(key), v)?]),
        }
    }

    /// A list of lists of token ids (`bad_words_ids`); empty when absent.
    pub fn token_lists(&self, key: &str) -> Result<Vec<Vec<u32>>> {
        let Some(v) = self.get(key) else { return Ok(Vec::new()) };
        let items = v.as_array().ok_or_else(|| self.wrong(key, "a list of lists of token ids", v))?;
        let list = |(i, v): (usize, &Value)| -> Result<Vec<u32>> {
            let field = format!("{}[{i}]", self.field(key));
            let ids = v
                .as_array()
                .ok_or_else(|| (self.error)(&field, format!("expected a list of token ids, got {}", brief(v))))?;
            ids.iter().enumerate().map(|(j, t)| self.token_id(&format!("{field}[{j}]"), t)).collect()
        };
        items.iter().enumerate().map(list).collect()
    }

    /// A string or a list of strings (`stop_strings`); empty when absent.
    pub fn strings(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let field = format!("{}[{i}]", self.field(key));
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| (self.error)(&field, format!("expected a string, got {}", brief(v))))
                })
                .collect(),
            Some(Value::String(s)) => Ok(vec![s.clone()]),
            Some(v) => Err(self.wrong(key, "a string or a list of strings", v)),
        }
    }

    /// Absent, null, `{}`, `[]` or `""`.
    pub fn is_empty(&self, key: &str) -> bool {
        match self.get(key) {
            None => true,
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        }
    }

    fn token_id(&self, field: &str, v: &Value) -> Result<u32> {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| (self.error)(field, format!("expected a token id, got {}", brief(v))))
    }

    /// The error for a value of the wrong type.
    pub fn wrong(&self, key: &str, expected: &str, got: &Value) -> Error {
        self.error(key, format!("expected {expected}, got {}", brief(got)))
    }
}

/// A number as Python writes the config field it came from: an int when it
/// is whole (an int field such as `r` or `lora_alpha` read back as f64), a
/// float otherwise.
pub(crate) fn int_if_whole(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
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
