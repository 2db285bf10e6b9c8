//! The tokenizer: a Hugging Face `tokenizer.json` run by the `tokenizers` crate,
//! the special tokens and chat template of `tokenizer_config.json`, and a
//! streaming decoder for generation.
//!
//! The aim is transformers' numbers, not just "a" tokenization: `encode(text, true)`
//! is `tokenizer(text)["input_ids"]`, `encode(text, false)` is
//! `tokenizer.encode(text, add_special_tokens=False)` and `decode` is
//! `tokenizer.decode(ids, skip_special_tokens=…)`, for the tokenizer that
//! `AutoTokenizer.from_pretrained` builds from the same folder (transformers 4.57).
//! Three things transformers does on top of `tokenizer.json` are repeated here:
//! - truncation and padding stored in `tokenizer.json` are switched off (transformers
//!   only applies them when a call asks);
//! - for `tokenizer_class` `LlamaTokenizer(Fast)` the post-processor is rebuilt from
//!   `add_bos_token` (default true) / `add_eos_token` (default false), as
//!   `LlamaTokenizerFast.update_post_processor` does; other classes keep
//!   `tokenizer.json`'s post-processor and ignore those flags, as
//!   `PreTrainedTokenizerFast` does;
//! - `clean_up_tokenization_spaces: true` (Llama 3's config) removes the spaces
//!   before `. ? ! ,` and English contractions after decoding, with transformers'
//!   `clean_up_tokenization` rules.
//!
//! On wasm32 the `tokenizers` crate (built with `unstable_wasm`: fancy-regex
//! instead of Oniguruma) asks `crypto.getRandomValues` once, at load, to seed
//! its hash maps; pages and workers both have it.
//!
//! Not covered: `special_tokens_map.json` (only read by transformers for legacy
//! folders whose config lacks `added_tokens_decoder`) and class-specific defaults
//! for a config that names no bos/eos token.

use std::sync::Arc;

use serde_json::Value;
use tokenizers::processors::template::TemplateProcessing;

use super::source::{ByteSource, ModelFiles};
use crate::{Error, Result};

const TOKENIZER_FILE: &str = "tokenizer.json";
const CONFIG_FILE: &str = "tokenizer_config.json";
/// Where recent transformers versions save the chat template; it wins over the config's.
const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

fn error(file: &str, detail: impl Into<String>) -> Error {
    Error::Tokenizer { file: file.to_string(), detail: detail.into() }
}

/// A special token named by `tokenizer_config.json`, with its id in the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialToken {
    pub content: String,
    pub id: u32,
}

/// A loaded tokenizer. Cloning is cheap (the vocabulary is shared).
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    /// Largest id of the vocabulary (model and added tokens) + 1.
    vocab_size: usize,
    bos: Option<SpecialToken>,
    eos: Option<SpecialToken>,
    pad: Option<SpecialToken>,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
    clean_up_tokenization_spaces: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .field("add_bos_token", &self.add_bos_token)
            .field("add_eos_token", &self.add_eos_token)
            .field("clean_up_tokenization_spaces", &self.clean_up_tokenization_spaces)
            .field("chat_template", &self.chat_template.as_ref().map(|t| t.len()))
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Reads `tokenizer.json` (required), `tokenizer_config.json` and
    /// `chat_template.jinja` (both optional) from a model folder.
    pub async fn load(files: &impl ModelFiles) -> Result<Self> {
        let json = files.open(TOKENIZER_FILE).await?.read_all().await?;
        let config = match files.try_open(CONFIG_FILE).await? {
            Some(source) => Some(source.read_all().await?),
            None => None,
        };
        let mut tokenizer = Self::from_bytes(&json, config.as_deref())?;
        if let Some(source) = files.try_open(CHAT_TEMPLATE_FILE).await? {
            let bytes = source.read_all().await?;
            let template =
                String::from_utf8(bytes).map_err(|e| error(CHAT_TEMPLATE_FILE, format!("not UTF-8: {e}")))?;
            tokenizer.chat_template = Some(template);
        }
        Ok(tokenizer)
    }

    /// From the bytes of `tokenizer.json` and, if the folder has one,
    /// `tokenizer_config.json`.
    pub fn from_bytes(tokenizer_json: &[u8], config_json: Option<&[u8]>) -> Result<Self> {
        // `tokenizers` 0.22 panics (`expect("Helper")` in its decoder's
        // deserializer) on some syntax errors instead of returning one, and a
        // panic cannot be caught on wasm32: check the JSON syntax first.
        // (Found by the `tokenizer` fuzz target.)
        let value: serde_json::Value =
            serde_json::from_slice(tokenizer_json).map_err(|e| error(TOKENIZER_FILE, format!("invalid JSON: {e}")))?;
        if let Some(post) = value.get("post_processor") {
            check_template_processing(post)?;
        }
        let mut inner = tokenizers::Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| explain_tokenizer_error(tokenizer_json, &*e))?;
        inner.with_truncation(None).map_err(|e| error(TOKENIZER_FILE, e.to_string()))?;
        inner.with_padding(None);

        let config = config_json.map(TokenizerConfig::parse).transpose()?.unwrap_or_default();

        let special = |field: &'static str, content: &Option<String>| -> Result<Option<SpecialToken>> {
            let Some(content) = content else { return Ok(None) };
            let id = inner.token_to_id(content).ok_or_else(|| {
                error(CONFIG_FILE, format!("`{field}` {content:?} is not a token of {TOKENIZER_FILE}"))
            })?;
            Ok(Some(SpecialToken { content: content.clone(), id }))
        };
        let bos = special("bos_token", &config.bos_token)?;
        let eos = special("eos_token", &config.eos_token)?;
        // Only training's padding uses it, so a pad token the vocabulary lacks is no reason to refuse the model.
        let pad = special("pad_token", &config.pad_token).ok().flatten();

        if config.is_llama_class() {
            // transformers' defaults for LlamaTokenizerFast; a flag without its token is an error there too.
            let flagged = |flag: bool, name: &str, token: &Option<SpecialToken>| -> Result<Option<SpecialToken>> {
                match (flag, token) {
                    (false, _) => Ok(None),
                    (true, Some(t)) => Ok(Some(t.clone())),
                    (true, None) => {
                        Err(error(CONFIG_FILE, format!("`add_{name}_token` is true but there is no `{name}_token`")))
                    }
                }
            };
            let add_bos = flagged(config.add_bos_token.unwrap_or(true), "bos", &bos)?;
            let add_eos = flagged(config.add_eos_token.unwrap_or(false), "eos", &eos)?;
            let post = llama_post_processor(add_bos.as_ref(), add_eos.as_ref())?;
            inner.with_post_processor(Some(post));
        }

        let vocab_size = inner.get_vocab(true).values().max().map_or(0, |&max| max as usize + 1);

        Ok(Tokenizer {
            inner: Arc::new(inner),
            vocab_size,
            bos,
            eos,
            pad,
            add_bos_token: config.add_bos_token,
            add_eos_token: config.add_eos_token,
            clean_up_tokenization_spaces: config.clean_up_tokenization_spaces,
            chat_template: config.chat_template,
        })
    }

    /// Token ids of `text`. With `add_special_tokens`, the post-processor's
    /// tokens (Llama's bos) are added, like transformers' `tokenizer(text)`.
    /// Special tokens written out in `text` (`<|end_of_text|>`) are always
    /// recognised as such, as in transformers.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| error(TOKENIZER_FILE, format!("encoding {:?}: {e}", truncate(text))))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `text`'s ids with special tokens, at most `max_length` of them, as
    /// transformers' `tokenizer(text, truncation=True, max_length=…)`: the
    /// text's own tokens cut from the right to leave room for the
    /// post-processor's (a Llama bos, an eos where it adds one), which are
    /// then added whole.
    pub fn encode_truncated(&self, text: &str, max_length: usize) -> Result<Vec<u32>> {
        use tokenizers::PostProcessor;
        let fail = |e: tokenizers::Error| error(TOKENIZER_FILE, format!("encoding {:?}: {e}", truncate(text)));
        let mut encoding = self.inner.encode_fast(text, false).map_err(fail)?;
        let added = self.inner.get_post_processor().map_or(0, |p| p.added_tokens(false));
        if max_length <= added {
            return Err(error(
                TOKENIZER_FILE,
                format!("max_length {max_length} leaves no room beside the {added} special token(s) it adds"),
            ));
        }
        encoding.truncate(max_length - added, 0, tokenizers::TruncationDirection::Right);
        let encoding = self.inner.post_process(encoding, None, true).map_err(fail)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// [`encode`](Self::encode) with each token's byte range in `text`
    /// (`(start, end)`, end exclusive), as transformers'
    /// `return_offsets_mapping=True` but in bytes rather than characters.
    /// Tokens that cover part of one character share that character's range;
    /// special tokens added by the post-processor have `(0, 0)`.
    #[allow(clippy::type_complexity)] // (ids, offsets): a pair the callers destructure at once.
    pub fn encode_with_offsets(&self, text: &str, add_special_tokens: bool) -> Result<(Vec<u32>, Vec<(usize, usize)>)> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| error(TOKENIZER_FILE, format!("encoding {:?}: {e}", truncate(text))))?;
        Ok((encoding.get_ids().to_vec(), encoding.get_offsets().to_vec()))
    }

    /// The text of `ids`, as transformers' `tokenizer.decode`. Byte sequences
    /// that are not valid UTF-8 become U+FFFD; ids outside the vocabulary are
    /// skipped (as in transformers).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let text = self.raw_decode(ids, skip_special_tokens)?;
        Ok(if self.clean_up_tokenization_spaces { clean_up_tokenization(&text) } else { text })
    }

    /// `tokenizer.json`'s decode, without the clean-up.
    fn raw_decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| error(TOKENIZER_FILE, format!("decoding {} ids: {e}", ids.len())))
    }

    /// `tokenizer.json`'s decoder run on token strings (transformers'
    /// `convert_tokens_to_string`); without a decoder, the tokens joined by
    /// spaces, as transformers joins them.
    pub fn decode_tokens(&self, tokens: Vec<String>) -> Result<String> {
        use tokenizers::Decoder;
        match self.inner.get_decoder() {
            Some(decoder) => {
                decoder.decode(tokens).map_err(|e| error(TOKENIZER_FILE, format!("decoding token strings: {e}")))
            }
            None => Ok(tokens.join(" ")),
        }
    }

    /// A decoder fed one generated id at a time; see [`StreamDecoder`].
    pub fn stream_decoder(&self, skip_special_tokens: bool) -> StreamDecoder {
        StreamDecoder::new(self.clone(), skip_special_tokens)
    }

    /// Largest token id (model vocabulary and added tokens) + 1: the number of
    /// rows an embedding needs to cover every id this tokenizer produces. A
    /// model's `vocab_size` may be larger (padded).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Checks that every id this tokenizer can produce has a row in the
    /// model's embedding (`vocab_size`); a model may have more rows (padding),
    /// never fewer.
    pub fn check_model(&self, config: &crate::model::Config) -> Result<()> {
        if self.vocab_size > config.vocab_size {
            return Err(Error::Tokenizer {
                file: "tokenizer.json".into(),
                detail: format!(
                    "has {} tokens but the model's embedding has {} rows (config.json vocab_size): \
                     this tokenizer belongs to another model",
                    self.vocab_size, config.vocab_size
                ),
            });
        }
        Ok(())
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The ids of tokens named by their text (`"<|im_start|>"`, as the
    /// vocabulary spells them, added tokens included), for trainable tokens:
    /// a text that is not one token is a typed error saying what it encodes as.
    pub fn single_token_ids(&self, texts: &[String]) -> Result<Vec<u32>> {
        texts
            .iter()
            .map(|t| {
                self.token_to_id(t).ok_or_else(|| {
                    let ids = self.encode(t, false).map(|ids| format!("{ids:?}")).unwrap_or_default();
                    Error::TrainOption {
                        option: "trainable_tokens",
                        detail: format!(
                            "{t:?} is not one token of the vocabulary (it encodes as {ids}): give its id instead"
                        ),
                    }
                })
            })
            .collect()
    }

    /// The token string of `id` as stored in the vocabulary (byte-level BPE
    /// tokens are in their `Ġ`-style alphabet, not decoded).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_token(&self) -> Option<&SpecialToken> {
        self.bos.as_ref()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }

    pub fn eos_token(&self) -> Option<&SpecialToken> {
        self.eos.as_ref()
    }

    /// The end-of-sequence ids the tokenizer files name (zero or one: the
    /// config's `eos_token`). A model's `config.json` / `generation_config.json`
    /// may add more; merging them is the model's job.
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos.iter().map(|t| t.id).collect()
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad.as_ref().map(|t| t.id)
    }

    /// `add_bos_token` as written in `tokenizer_config.json` (`None` if absent).
    /// It changes [`encode`](Self::encode) only for Llama tokenizer classes.
    pub fn add_bos_token(&self) -> Option<bool> {
        self.add_bos_token
    }

    pub fn add_eos_token(&self) -> Option<bool> {
        self.add_eos_token
    }

    pub fn clean_up_tokenization_spaces(&self) -> bool {
        self.clean_up_tokenization_spaces
    }

    /// The Jinja chat template (from `chat_template.jinja`, else the config's
    /// `chat_template`; of a list of named templates, the one named "default").
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// The fields of `tokenizer_config.json` that change what the tokenizer does.
#[derive(Debug, Default)]
struct TokenizerConfig {
    tokenizer_class: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    pad_token: Option<String>,
    add_bos_token: Option<bool>,
    add_eos_token: Option<bool>,
    clean_up_tokenization_spaces: bool,
    chat_template: Option<String>,
}

impl TokenizerConfig {
    fn parse(bytes: &[u8]) -> Result<Self> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| error(CONFIG_FILE, format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(error(CONFIG_FILE, "not a JSON object"));
        };
        let field_error = |field: &str, expected: &str| error(CONFIG_FILE, format!("`{field}` must be {expected}"));
        let string = |field: &str| -> Result<Option<String>> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(field_error(field, "a string")),
            }
        };
        // A special token is a string or a serialized `AddedToken` object.
        let token = |field: &str| -> Result<Option<String>> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(Value::Object(o)) => match o.get("content") {
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    _ => Err(field_error(field, "a string or an object with a string `content`")),
                },
                Some(_) => Err(field_error(field, "a string or an object with a string `content`")),
            }
        };
        let boolean = |field: &str| -> Result<Option<bool>> {
            match map.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Bool(b)) => Ok(Some(*b)),
                Some(_) => Err(field_error(field, "true or false")),
            }
        };
        let chat_template = match map.get("chat_template") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            // [{"name": "default", "template": "…"}, {"name": "tool_use", …}]
            Some(Value::Array(list)) => {
                let named = |item: &Value| -> Option<(String, String)> {
                    Some((item.get("name")?.as_str()?.to_string(), item.get("template")?.as_str()?.to_string()))
                };
                let list = list
                    .iter()
                    .map(|item| {
                        named(item)
                            .ok_or_else(|| field_error("chat_template", "a string or a list of {name, template}"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                list.into_iter().find(|(name, _)| name == "default").map(|(_, t)| t)
            }
            Some(_) => return Err(field_error("chat_template", "a string or a list of {name, template}")),
        };
        Ok(TokenizerConfig {
            tokenizer_class: string("tokenizer_class")?,
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            pad_token: token("pad_token")?,
            add_bos_token: boolean("add_bos_token")?,
            add_eos_token: boolean("add_eos_token")?,
            // transformers ≥ 4.45 defaults to false.
            clean_up_tokenization_spaces: boolean("clean_up_tokenization_spaces")?.unwrap_or(false),
            chat_template,
        })
    }

    /// The classes whose transformers implementation rebuilds the
    /// post-processor from `add_bos_token` / `add_eos_token`.
    fn is_llama_class(&self) -> bool {
        matches!(self.tokenizer_class.as_deref(), Some("LlamaTokenizer" | "LlamaTokenizerFast"))
    }
}

/// `LlamaTokenizerFast.update_post_processor`: single `[bos:0] $A:0 [eos:0]`,
/// pair that followed by `[bos:1] $B:1 [eos:1]`, each special token present
/// when its `add_*_token` flag is set.
fn llama_post_processor(bos: Option<&SpecialToken>, eos: Option<&SpecialToken>) -> Result<TemplateProcessing> {
    let sequence = |seq: &str, type_id: u32| {
        let mut parts = Vec::new();
        parts.extend(bos.map(|t| format!("{}:{type_id}", t.content)));
        parts.push(format!("${seq}:{type_id}"));
        parts.extend(eos.map(|t| format!("{}:{type_id}", t.content)));
        parts.join(" ")
    };
    let single = sequence("A", 0);
    let pair = format!("{single} {}", sequence("B", 1));
    let special: Vec<(String, u32)> = bos.iter().chain(eos.iter()).map(|t| (t.content.clone(), t.id)).collect();
    let post = || -> std::result::Result<TemplateProcessing, String> {
        TemplateProcessing::builder()
            .try_single(single.as_str())?
            .try_pair(pair.as_str())?
            .special_tokens(special)
            .build()
            .map_err(|e| e.to_string())
    };
    post().map_err(|e| {
        error(CONFIG_FILE, format!("building the Llama post-processor from `add_bos_token`/`add_eos_token`: {e}"))
    })
}

/// The typed error for a `tokenizer.json` the crate refused: its own message
/// says "did not match any variant of untagged enum" for an unknown component,
/// so the JSON is looked at again (only on this error path) to name it.
fn explain_tokenizer_error(bytes: &[u8], e: &dyn std::error::Error) -> Error {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(json) => return error(TOKENIZER_FILE, format!("invalid JSON: {json}")),
    };
    const KNOWN_MODELS: [&str; 4] = ["BPE", "Unigram", "WordLevel", "WordPiece"];
    let model_type = value.get("model").and_then(|m| m.get("type")).and_then(Value::as_str);
    let detail = match model_type {
        _ if !value.is_object() => "not a JSON object".to_string(),
        Some(t) if !KNOWN_MODELS.contains(&t) => {
            format!("model type {t:?} is not supported (known: {})", KNOWN_MODELS.join(", "))
        }
        _ => format!("not a tokenizer the `tokenizers` crate can read: {e}"),
    };
    error(TOKENIZER_FILE, detail)
}

/// transformers' `clean_up_tokenization`: the same ten replacements, in order.
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Every character that can be part of a [`clean_up_tokenization`] match, in
/// the text or in any intermediate string of its ten replacements. A character
/// outside this set splits the text into two halves cleaned independently:
/// `clean(L + c + R) == clean(L) + clean(c + R)` (every pattern starts with a
/// space, and only spaces are ever removed, so `c` survives every step and no
/// match can cross it).
fn cleanup_may_touch(c: char) -> bool {
    matches!(c, ' ' | '\'' | '.' | '?' | '!' | ',' | 'n' | 't' | 'm' | 's' | 'v' | 'e' | 'r')
}

fn truncate(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

/// Decodes generated ids one at a time into text pieces that are complete,
/// valid UTF-8.
///
/// A byte-level BPE token can end inside a multi-byte character (`日` is three
/// bytes, often three tokens); a SentencePiece decoder strips the space of the
/// first word only. So each new piece is found by decoding a short window of
/// recent ids and subtracting the text already returned for it, and the bytes
/// of an unfinished character are held back until it is complete (the
/// `tokenizers` crate's `DecodeStream` algorithm, whose state this type owns so
/// that it borrows nothing). [`flush`](Self::flush) returns what is still held
/// at the end, lossily.
///
/// Concatenating every piece and the flush gives exactly
/// [`Tokenizer::decode`] of all the ids. With `clean_up_tokenization_spaces`
/// the text since the last character that no clean-up rule can touch is held
/// back too, until later text shows whether a space goes.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    skip_special_tokens: bool,
    /// Recent ids: a "read" part that gives context, then the ids whose text
    /// has been returned (`prefix`), then ids not yet returned.
    ids: Vec<u32>,
    /// Decoded text of `ids[..prefix_index]`, already returned.
    prefix: String,
    prefix_index: usize,
    /// Decoded text not yet returned because the clean-up may still change it.
    pending: String,
}

impl StreamDecoder {
    pub fn new(tokenizer: Tokenizer, skip_special_tokens: bool) -> Self {
        StreamDecoder {
            tokenizer,
            skip_special_tokens,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
            pending: String::new(),
        }
    }

    /// Adds one id; returns the text it completes, if any.
    pub fn step(&mut self, id: u32) -> Result<Option<String>> {
        let piece = tokenizers::step_decode_stream(
            &self.tokenizer.inner,
            vec![id],
            self.skip_special_tokens,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| error(TOKENIZER_FILE, format!("streaming decode at id {id}: {e}")))?;
        Ok(piece.and_then(|piece| self.clean(piece, false)))
    }

    /// Ends the stream: returns the text still held back (an unfinished
    /// character becomes U+FFFD) and resets the decoder for a new sequence.
    pub fn flush(&mut self) -> Result<String> {
        let mut rest = String::new();
        if !self.ids.is_empty() {
            let text = self.tokenizer.raw_decode(&self.ids, self.skip_special_tokens)?;
            match text.strip_prefix(self.prefix.as_str()) {
                Some(new) => rest.push_str(new),
                None => {
                    return Err(error(
                        TOKENIZER_FILE,
                        format!("streaming decode: {text:?} does not continue {:?}", self.prefix),
                    ))
                }
            }
        }
        let out = self.clean(rest, true).unwrap_or_default();
        self.ids.clear();
        self.prefix.clear();
        self.prefix_index = 0;
        Ok(out)
    }

    /// Applies the tokenizer's clean-up to `piece` appended to what is held;
    /// returns the part that no later text can change.
    fn clean(&mut self, piece: String, end: bool) -> Option<String> {
        if !self.tokenizer.clean_up_tokenization_spaces {
            return (!piece.is_empty()).then_some(piece);
        }
        self.pending.push_str(&piece);
        let split = if end {
            self.pending.len()
        } else {
            // The last character (not the first) that no clean-up match can cross.
            match self.pending.char_indices().skip(1).filter(|&(_, c)| !cleanup_may_touch(c)).last() {
                Some((i, _)) => i,
                None => return None,
            }
        };
        let rest = self.pending.split_off(split);
        let done = std::mem::replace(&mut self.pending, rest);
        let out = clean_up_tokenization(&done);
        (!out.is_empty()).then_some(out)
    }
}

/// `tokenizers` 0.22 panics at encode time (`no entry found for key`) when a
/// `TemplateProcessing` post-processor's template names a special token its
/// `special_tokens` map lacks; refuse such a file up front. Walks `Sequence`
/// post-processors too. The `type` field is not trusted: the crate matches
/// post-processors by shape, so any object with a `single` or `pair`
/// template is checked. (Found by the `tokenizer` fuzz target, twice.)
fn check_template_processing(post: &serde_json::Value) -> Result<()> {
    use serde_json::Value;
    if let Some(Value::Array(list)) = post.get("processors") {
        return list.iter().try_for_each(check_template_processing);
    }
    let known = post.get("special_tokens").and_then(Value::as_object);
    for side in ["single", "pair"] {
        let Some(Value::Array(pieces)) = post.get(side) else { continue };
        for piece in pieces {
            let Some(id) = piece.get("SpecialToken").and_then(|t| t.get("id")).and_then(Value::as_str) else {
                continue;
            };
            if !known.is_some_and(|k| k.contains_key(id)) {
                return Err(error(
                    TOKENIZER_FILE,
                    format!("post_processor.{side} uses the special token {id:?}, which post_processor.special_tokens does not define"),
                ));
            }
        }
    }
    Ok(())
}
