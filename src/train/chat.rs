//! Chat templates: a list of messages rendered into one string by the
//! tokenizer's Jinja `chat_template`, as transformers' `apply_chat_template(…,
//! tokenize=False)` does.
//!
//! transformers renders with jinja2's `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True, extensions=[loopcontrols])` (so `keep_trailing_newline` is
//! false), adds a `raise_exception(message)` function, replaces `tojson` with
//! Python's `json.dumps` (no HTML escaping, `", "` and `": "` separators) and
//! adds `strftime_now(format)`. Its variables are `messages`,
//! `add_generation_prompt`, the special tokens, and `tools` and `documents`
//! (none unless given: defined, so `tools is not none` is false, as there),
//! with the caller's kwargs over them. The same environment is built
//! here with minijinja; Python string methods that templates call (`.strip()`,
//! `.startswith()`, `.split()`) come from `minijinja_contrib::pycompat`.
//!
//! Differences: `strftime_now` formats the current time in UTC (Python uses
//! local time) and knows the common directives only (`%Y %y %m %d %-d %e %b %B
//! %a %A %H %I %M %S %p %j %%`); tools are given as JSON schemas (a kwarg
//! `tools`, or a training line's `tools`), never as Python functions.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{context, Environment, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::model::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The name errors give for a template: where transformers keeps it.
pub const TEMPLATE_FILE: &str = "tokenizer_config.json (chat_template)";
const NAME: &str = "chat_template";
/// Marks a `raise_exception` error, so that it is reported as the template's own message.
const RAISED: &str = "raise_exception: ";

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message { role: role.into(), content: content.into() }
    }
}

/// The variables every render sets itself.
const OWN: [&str; 4] = ["messages", "add_generation_prompt", "bos_token", "eos_token"];

/// Refuses the names a render sets itself, as Python refuses a keyword given twice.
fn check_kwargs(kwargs: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    match kwargs.keys().find(|k| OWN.contains(&k.as_str())) {
        Some(k) => {
            let detail = format!("chat template kwarg {k:?} is one the render sets itself ({})", OWN.join(", "));
            Err(Error::invalid("apply_chat_template", detail))
        }
        None => Ok(()),
    }
}

/// A chat template compiled once, with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Extra variables of every render ([`ChatTemplate::with_kwargs`]).
    kwargs: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("kwargs", &self.kwargs)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`. An absent bos or eos token renders as the empty string.
    /// A syntax error is an [`Error::Tokenizer`] naming [`TEMPLATE_FILE`].
    pub fn new(source: &str, bos_token: Option<&str>, eos_token: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        // transformers' environment does not autoescape.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        // A template comes from a file anyone can write: bound its work (no
        // file or network access exists in this environment to begin with).
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| template_error(format!("the template does not compile: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.unwrap_or_default().to_string(),
            eos_token: eos_token.unwrap_or_default().to_string(),
            kwargs: serde_json::Map::new(),
        })
    }

    /// The template with extra variables for every render, as
    /// `apply_chat_template(…, **kwargs)` passes them (Qwen3's
    /// `enable_thinking`). The names the render sets itself (`messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token`) are refused, as
    /// Python refuses a keyword given twice.
    pub fn with_kwargs(mut self, kwargs: &serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        check_kwargs(kwargs)?;
        self.kwargs = kwargs.clone();
        Ok(self)
    }

    /// [`render`](Self::render) with `kwargs` over the template's own (a
    /// training example's `chat_template_kwargs`, as TRL passes them).
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        if kwargs.is_empty() {
            return self.render(messages, add_generation_prompt);
        }
        check_kwargs(kwargs)?;
        let mut merged = self.kwargs.clone();
        merged.extend(kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.render_in(messages, add_generation_prompt, &merged)
    }

    /// The variables the template reads that a render does not set (nor the
    /// environment's functions): what kwargs may set, such as Qwen3's
    /// `enable_thinking` (and `tools`), sorted.
    pub fn variables(&self) -> Vec<String> {
        let Ok(template) = self.env.get_template(NAME) else { return Vec::new() };
        let globals: std::collections::HashSet<&str> = self.env.globals().map(|(name, _)| name).collect();
        // minijinja's analysis counts a name set in both branches of an `if`
        // (Qwen3's `content`) as read before it is set: a name the template
        // sets is its own, not the caller's.
        let source = template.source();
        let set_here = |v: &str| source.contains(&format!("set {v} ")) || source.contains(&format!("set {v}="));
        let mut out: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !OWN.contains(&v.as_str()) && !globals.contains(v.as_str()) && !set_here(v))
            .collect();
        out.sort();
        out
    }

    /// The tokenizer's template with its bos and eos tokens; `None` when the
    /// tokenizer has no template.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Option<Self>> {
        let Some(source) = tokenizer.chat_template() else { return Ok(None) };
        let bos = tokenizer.bos_token().map(|t| t.content.as_str());
        let eos = tokenizer.eos_token().map(|t| t.content.as_str());
        Self::new(source, bos, eos).map(Some)
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=…)`.
    /// A failure (`raise_exception`, an undefined method, a type error) is an
    /// [`Error::Tokenizer`] naming [`TEMPLATE_FILE`]; training data turns it into
    /// an [`Error::Data`] naming the line.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_in(messages, add_generation_prompt, &self.kwargs)
    }

    fn render_in(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let template = self.env.get_template(NAME).map_err(|e| template_error(e.to_string()))?;
        // transformers passes tools=None and documents=None where it is given none.
        let mut variables =
            serde_json::Map::from_iter(["tools", "documents"].map(|name| (name.to_string(), serde_json::Value::Null)));
        variables.extend(kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            ..minijinja::Value::from_serialize(&variables)
        };
        let out = template.render(ctx).map_err(|e| {
            let detail = match e.detail() {
                Some(d) if e.kind() == ErrorKind::InvalidOperation && d.starts_with(RAISED) => {
                    format!("the template raised an exception: {}", &d[RAISED.len()..])
                }
                _ => format!("rendering failed: {e}"),
            };
            template_error(detail)
        })?;
        if out.len() > MAX_RENDERED_BYTES {
            return Err(template_error(format!(
                "the rendered chat is {} bytes, over the {MAX_RENDERED_BYTES}-byte limit",
                out.len()
            )));
        }
        Ok(out)
    }
}

/// The roles a conversation given to generation may hold (transformers' and
/// OpenAI's: a template may know fewer, and then raises).
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

impl ChatTemplate {
    /// The prompt that continues `messages` with the assistant's turn:
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`,
    /// after checking the conversation: at least one message, every role one of
    /// [`ROLES`], and the last one not the assistant's (its answer is what
    /// generation writes). A bad conversation is an [`Error::InvalidArgument`]
    /// naming the message.
    pub fn generation_prompt(&self, messages: &[Message]) -> Result<String> {
        const OP: &str = "generate";
        let Some(last) = messages.last() else {
            return Err(Error::invalid(OP, "the conversation is empty: give at least one user message"));
        };
        if let Some((i, m)) = messages.iter().enumerate().find(|(_, m)| !ROLES.contains(&m.role.as_str())) {
            return Err(Error::invalid(
                OP,
                format!("message {i} has role {:?}: expected one of {}", m.role, ROLES.join(", ")),
            ));
        }
        if last.role == "assistant" {
            return Err(Error::invalid(
                OP,
                format!(
                    "message {} is the assistant's: the conversation must end with a user (or system, tool) turn for the model to answer",
                    messages.len() - 1
                ),
            ));
        }
        self.render(messages, true)
    }
}

/// Template instructions one render may run (minijinja's fuel): far above
/// what real chat templates use for long conversations, far below a hang.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// The longest rendered chat accepted.
pub const MAX_RENDERED_BYTES: usize = 16 << 20;

fn template_error(detail: String) -> Error {
    Error::Tokenizer { file: TEMPLATE_FILE.to_string(), detail }
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None, separators=None,
/// sort_keys=False)`, which is Python's `json.dumps`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let json = Json { indent, sort_keys: sort_keys.unwrap_or(false), ensure_ascii: ensure_ascii.unwrap_or(false) };
    let mut out = String::new();
    json.write(&mut out, value, 0)?;
    Ok(Value::from_safe_string(out))
}

/// The options of Python's `json.dumps` that `tojson` passes on.
struct Json {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

impl Json {
    fn write(&self, out: &mut String, value: &Value, level: usize) -> std::result::Result<(), minijinja::Error> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => match f64::try_from(value.clone()) {
                _ if value.is_integer() => out.push_str(&value.to_string()),
                Ok(f) if f.is_nan() => out.push_str("NaN"),
                Ok(f) if f.is_infinite() => out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" }),
                // Python's repr keeps a ".0" on whole floats.
                Ok(f) if f.fract() == 0.0 && f.abs() < 1e16 => out.push_str(&format!("{f:.1}")),
                _ => out.push_str(&value.to_string()),
            },
            ValueKind::String | ValueKind::Plain | ValueKind::Bytes => {
                self.string(out, value.as_str().map_or_else(|| value.to_string(), str::to_string).as_str())
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if self.sort_keys {
                    keys.sort();
                }
                let items =
                    keys.into_iter().map(|k| value.get_item(&k).map(|v| (k, v))).collect::<Result<Vec<_>, _>>()?;
                self.container(out, '{', '}', items.len(), level, |out, i| {
                    let (key, item) = &items[i];
                    self.string(out, key.as_str().map_or_else(|| key.to_string(), str::to_string).as_str());
                    out.push_str(": ");
                    self.write(out, item, level + 1)
                })?;
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                self.container(out, '[', ']', items.len(), level, |out, i| self.write(out, &items[i], level + 1))?;
            }
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: cannot serialize a value of kind {}", value.kind()),
                ))
            }
        }
        Ok(())
    }

    fn container(
        &self,
        out: &mut String,
        open: char,
        close: char,
        len: usize,
        level: usize,
        mut item: impl FnMut(&mut String, usize) -> std::result::Result<(), minijinja::Error>,
    ) -> std::result::Result<(), minijinja::Error> {
        out.push(open);
        if len == 0 {
            out.push(close);
            return Ok(());
        }
        for i in 0..len {
            match self.indent {
                Some(n) => {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    out.push_str(&" ".repeat(n * (level + 1)));
                }
                None if i > 0 => out.push_str(", "),
                None => {}
            }
            item(out, i)?;
        }
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
        out.push(close);
        Ok(())
    }

    fn string(&self, out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// transformers' `strftime_now(format)`: the current time, here in UTC.
fn strftime_now(format: String) -> String {
    strftime(&format, unix_seconds())
}

#[cfg(not(target_arch = "wasm32"))]
fn unix_seconds() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(target_arch = "wasm32")]
fn unix_seconds() -> i64 {
    (js_sys::Date::now() / 1000.0) as i64
}

/// C's `strftime` for a UTC time, with the common directives; others are kept as written.
fn strftime(format: &str, unix: i64) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let is_leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][(month - 1) as usize];
    let yday = before + day + i64::from(is_leap && month > 2);
    let month_name = MONTHS[(month - 1) as usize];

    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (no_pad, spec) = match chars.next() {
            Some('-') => (true, chars.next()),
            other => (false, other),
        };
        let num = |n: i64| if no_pad { n.to_string() } else { format!("{n:02}") };
        match spec {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100))),
            Some('m') => out.push_str(&num(month)),
            Some('d') => out.push_str(&num(day)),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('j') => out.push_str(&if no_pad { yday.to_string() } else { format!("{yday:03}") }),
            Some('H') => out.push_str(&num(hour)),
            Some('I') => out.push_str(&num(if hour % 12 == 0 { 12 } else { hour % 12 })),
            Some('M') => out.push_str(&num(minute)),
            Some('S') => out.push_str(&num(second)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                if no_pad {
                    out.push('-');
                }
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::strftime;

    #[test]
    fn strftime_known_dates() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(strftime("%A %-d %B, %I %p, day %j, %%", t), "Thursday 29 February, 01 PM, day 060, %");
        assert_eq!(strftime("%a %y %e", 0), "Thu 70  1");
    }
}
