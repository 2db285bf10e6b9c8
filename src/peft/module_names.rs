//! The module names PEFT matches `target_modules` and `exclude_modules`
//! against: every entry of a Llama-family `ForCausalLM`'s `named_modules()`
//! (Llama, Mistral, Qwen2, Qwen3 and SmolLM name theirs alike), and PEFT's
//! two ways of matching one.
//!
//! ```text
//! a list:   name == entry, or name ends with "." + entry
//! a string: re.fullmatch(string, name)
//! ```
//!
//! and the third, of `rank_pattern` and `alpha_pattern` keys:
//! `re.match(r"(.*\.)?(key)$", name)`.

use fancy_regex::Regex;

use crate::error::{Error, Result};
use crate::model::Config;

/// Every module's name, parents before children, as PyTorch lists them
/// (the root's empty name left out).
pub fn llama_module_names(config: &Config) -> Vec<String> {
    let mut out = vec!["model".to_string(), "model.embed_tokens".to_string(), "model.layers".to_string()];
    for i in 0..config.num_hidden_layers {
        let l = format!("model.layers.{i}");
        out.push(l.clone());
        out.push(format!("{l}.self_attn"));
        for p in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            out.push(format!("{l}.self_attn.{p}"));
        }
        if config.qk_norm {
            out.extend([format!("{l}.self_attn.q_norm"), format!("{l}.self_attn.k_norm")]);
        }
        out.push(format!("{l}.mlp"));
        for p in ["gate_proj", "up_proj", "down_proj", "act_fn"] {
            out.push(format!("{l}.mlp.{p}"));
        }
        out.extend([format!("{l}.input_layernorm"), format!("{l}.post_attention_layernorm")]);
    }
    out.extend(["model.norm", "model.rotary_emb", "lm_head"].map(String::from));
    out
}

/// A list entry's match: the name itself, or its last `.`-separated parts.
pub fn suffix_match(name: &str, entry: &str) -> bool {
    name == entry || name.strip_suffix(entry).is_some_and(|rest| rest.ends_with('.'))
}

/// A config string as Python's `re.fullmatch` uses it; `field` names it in
/// the error for a pattern that does not compile.
pub struct FullMatch {
    re: Regex,
}

impl FullMatch {
    pub fn new(field: &str, pattern: &str) -> Result<FullMatch> {
        FullMatch::compile(field, pattern, format!("^(?:{pattern})$"))
    }

    /// A `rank_pattern` / `alpha_pattern` key as PEFT's `get_pattern_key`
    /// matches it: `re.match(r"(.*\.)?(key)$", name)`, the key a regex for
    /// the name's last `.`-separated parts (`q_proj`, `layers\.0\..*`).
    pub fn tail(field: &str, key: &str) -> Result<FullMatch> {
        FullMatch::compile(field, key, format!("^(?:.*\\.)?(?:{key})$"))
    }

    fn compile(field: &str, pattern: &str, anchored: String) -> Result<FullMatch> {
        Regex::new(&anchored).map(|re| FullMatch { re }).map_err(|e| Error::AdapterConfig {
            field: field.into(),
            detail: format!("\"{pattern}\" is not a regular expression webpeft can match: {e}"),
        })
    }

    /// Whether the whole of `name` matches (a match too costly to decide counts as none).
    pub fn matches(&self, name: &str) -> bool {
        self.re.is_match(name).unwrap_or(false)
    }
}
