//! The tokenizer as llama.cpp's converter writes it for a byte-level BPE
//! vocabulary (`TextModel._set_vocab_gpt2` + gguf-py's `SpecialVocab`):
//! `tokenizer.ggml.model` "gpt2", the pre-tokenizer's name, every token
//! with its type, the merges, the special token ids, the add-bos/eos/sep
//! flags read off the post-processor, and the chat template.
//!
//! llama.cpp names the pre-tokenizer (the regex that splits text before
//! BPE) by the sha256 of `str(tokenizer.encode(CHECK_TEXT))`, the Python
//! list's text; [`KNOWN_PRE`] holds the hashes of the families webpeft
//! loads. An unknown hash is refused, as the converter does, unless the
//! caller names the pre-tokenizer.

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use super::unsupported;
use super::writer::Value;
use crate::model::tokenizer::Tokenizer;
use crate::Result;

/// The text llama.cpp's `get_vocab_base_pre` encodes.
pub const CHECK_TEXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\u{1f680} (normal) \u{1f636}\u{200d}\u{1f32b}\u{fe0f} (multiple emojis concatenated) \u{2705} \u{1f999}\u{1f999} 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 \u{1780}\u{17b6}\u{1793}\u{17cb}\u{178f}\u{17c2}\u{1796}\u{17b7}\u{179f}\u{17c1}\u{179f}\u{17a2}\u{17b6}\u{1785}\u{1f601} ?\u{6211}\u{60f3}\u{5728}apple\u{5de5}\u{4f5c}1314151\u{5929}\u{ff5e} ------======= \u{43d}\u{435}\u{449}\u{43e} \u{43d}\u{430} \u{411}\u{44a}\u{43b}\u{433}\u{430}\u{440}\u{441}\u{43a}\u{438} ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// (sha256 of the ids, `tokenizer.ggml.pre`), from llama.cpp's table for the
/// model families webpeft loads: Llama 3 / 3.1 / 3.2, SmolLM, Qwen2 / 2.5.
pub const KNOWN_PRE: &[(&str, &str)] = &[
    ("0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5", "llama-bpe"),
    ("d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c", "llama-bpe"),
    ("855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249", "smollm"),
    ("e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea", "qwen2"),
];

/// llama.cpp's token types (`gguf.TokenType`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The special token kinds `SpecialVocab` looks for, in its order.
const SPECIAL_KINDS: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

/// The sha256 llama.cpp computes to name the pre-tokenizer.
pub fn pre_tokenizer_hash(tokenizer: &Tokenizer) -> Result<String> {
    let ids = tokenizer.encode(CHECK_TEXT, true)?;
    let text = format!("[{}]", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", "));
    Ok(Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect())
}

/// The raw files the vocabulary is read from.
pub struct VocabFiles<'a> {
    pub tokenizer_json: &'a Json,
    pub tokenizer_config: Option<&'a Json>,
    pub config: &'a Json,
    /// `chat_template.jinja`, when the folder has one.
    pub chat_template_file: Option<&'a str>,
}

fn obj(v: &Json) -> Option<&Map<String, Json>> {
    v.as_object()
}

/// The tokenizer KV pairs, in the converter's order. `vocab_size` is
/// config.json's (ids past the tokenizer's become `[PAD{i}]`, UNUSED).
pub fn tokenizer_kv(
    tokenizer: &Tokenizer,
    files: &VocabFiles,
    vocab_size: usize,
    pre: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    let model = files.tokenizer_json.get("model").and_then(obj);
    let kind = model.and_then(|m| m.get("type")).and_then(Json::as_str).unwrap_or("");
    let byte_fallback = model.and_then(|m| m.get("byte_fallback")).and_then(Json::as_bool).unwrap_or(false);
    if kind != "BPE" || byte_fallback {
        return Err(unsupported(
            "tokenizer.json",
            format!(
                "a {kind} model{}: only byte-level BPE vocabularies (Llama 3, SmolLM, Qwen2) are exported",
                if byte_fallback { " with byte_fallback (sentencepiece-style)" } else { "" }
            ),
        ));
    }
    let pre = match pre {
        Some(p) => p.to_string(),
        None => {
            let hash = pre_tokenizer_hash(tokenizer)?;
            match KNOWN_PRE.iter().find(|(h, _)| *h == hash) {
                Some((_, name)) => name.to_string(),
                None => {
                    return Err(unsupported(
                        "tokenizer.json",
                        format!(
                            "llama.cpp does not know this BPE pre-tokenizer (chkhsh {hash}); name it (`--tokenizer-pre`, e.g. llama-bpe, qwen2, smollm)"
                        ),
                    ))
                }
            }
        }
    };

    let added = added_tokens(files.tokenizer_json);
    let (tokens, types) = token_list(tokenizer, &added, vocab_size)?;
    let mut kv = vec![
        ("tokenizer.ggml.model".to_string(), Value::Str("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::Str(pre)),
        ("tokenizer.ggml.tokens".to_string(), Value::StrArray(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::I32Array(types)),
    ];
    let merges = merges(model);
    if !merges.is_empty() {
        kv.push(("tokenizer.ggml.merges".into(), Value::StrArray(merges)));
    }
    kv.extend(special_vocab(files, &added, vocab_size));
    Ok(kv)
}

/// `added_tokens` of tokenizer.json: (id, content, special, normalized).
fn added_tokens(tokenizer_json: &Json) -> Vec<(u32, String, bool, bool)> {
    let list = tokenizer_json.get("added_tokens").and_then(Json::as_array).cloned().unwrap_or_default();
    list.iter()
        .filter_map(|t| {
            let id = t.get("id")?.as_u64()? as u32;
            let content = t.get("content")?.as_str()?.to_string();
            let special = t.get("special").and_then(Json::as_bool).unwrap_or(false);
            let normalized = t.get("normalized").and_then(Json::as_bool).unwrap_or(false);
            Some((id, content, special, normalized))
        })
        .collect()
}

/// `TextModel.does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<\u{ff5c}") && t.ends_with("\u{ff5c}>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// `get_vocab_base`: every id below `vocab_size` with its token and type.
fn token_list(
    tokenizer: &Tokenizer,
    added: &[(u32, String, bool, bool)],
    vocab_size: usize,
) -> Result<(Vec<String>, Vec<i32>)> {
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size as u32 {
        let Some(token) = tokenizer.id_to_token(id) else {
            tokens.push(format!("[PAD{id}]"));
            types.push(UNUSED);
            continue;
        };
        match added.iter().find(|a| a.0 == id) {
            Some((_, _, special, _)) if *special || looks_special(&token) => {
                tokens.push(token);
                types.push(CONTROL);
            }
            Some(_) => {
                tokens.push(token.replace('\u{2581}', " "));
                types.push(USER_DEFINED);
            }
            None => {
                tokens.push(token);
                types.push(NORMAL);
            }
        }
    }
    Ok((tokens, types))
}

/// tokenizer.json's merges as "a b" strings (pairs: spaces inside a part
/// become U+0120, as `SpecialVocab` does).
fn merges(model: Option<&Map<String, Json>>) -> Vec<String> {
    let list = model.and_then(|m| m.get("merges")).and_then(Json::as_array).cloned().unwrap_or_default();
    list.iter()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let part = |p: &Json| p.as_str().map(|s| s.replace(' ', "\u{120}"));
                Some(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
            }
            _ => None,
        })
        .collect()
}

/// A special token field of tokenizer_config.json: a string or `{content}`.
fn token_content(v: Option<&Json>) -> Option<String> {
    match v? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn special_id(tokens: &[(u32, String, bool, bool)], content: &Option<String>) -> Option<u32> {
    let c = content.as_deref()?;
    tokens.iter().find(|t| t.1 == c).map(|t| t.0)
}

/// gguf-py's `SpecialVocab` for a TemplateProcessing / ByteLevel
/// post-processor: special token ids, add_* flags, chat template, in the
/// order it adds them.
fn special_vocab(files: &VocabFiles, added: &[(u32, String, bool, bool)], vocab_size: usize) -> Vec<(String, Value)> {
    let tc = files.tokenizer_config.and_then(obj).cloned().unwrap_or_default();
    let mut content: Vec<(String, Option<String>)> =
        SPECIAL_KINDS.iter().map(|k| (k.to_string(), token_content(tc.get(&format!("{k}_token"))))).collect();
    let get =
        |content: &[(String, Option<String>)], k: &str| content.iter().find(|c| c.0 == k).and_then(|c| c.1.clone());
    let mut add: Vec<(String, bool)> = Vec::new();
    let set_add =
        |add: &mut Vec<(String, bool)>, k: &str, v: bool, overwrite: bool| match add.iter_mut().find(|a| a.0 == k) {
            Some(a) if overwrite => a.1 = v,
            Some(_) => {}
            None => add.push((k.to_string(), v)),
        };
    if let Some(post) = files.tokenizer_json.get("post_processor").filter(|p| !p.is_null()) {
        let processors = post.get("processors").and_then(Json::as_array).cloned().unwrap_or_else(|| vec![post.clone()]);
        for p in &processors {
            match p.get("type").and_then(Json::as_str) {
                Some("ByteLevel") => {
                    set_add(&mut add, "bos", false, false);
                    set_add(&mut add, "eos", false, false);
                }
                Some("TemplateProcessing") => {
                    let single = p.get("single").and_then(Json::as_array).cloned().unwrap_or_default();
                    let pair = p.get("pair").and_then(Json::as_array).cloned().unwrap_or_default();
                    let sp = |e: &Json| {
                        e.get("SpecialToken").and_then(|s| s.get("id")).and_then(Json::as_str).map(str::to_string)
                    };
                    let seq = |e: &Json| {
                        e.get("Sequence").and_then(|s| s.get("id")).and_then(Json::as_str).map(str::to_string)
                    };
                    let (mut first, mut last) = (None, None);
                    if single.len() > 1 {
                        first = sp(&single[0]);
                        if let Some(f) = &first {
                            let is_bos =
                                Some(f) == get(&content, "bos").as_ref() || Some(f) == get(&content, "cls").as_ref();
                            set_add(&mut add, "bos", is_bos, true);
                        }
                        last = sp(&single[single.len() - 1]);
                        if let Some(l) = &last {
                            set_add(&mut add, "eos", Some(l) == get(&content, "eos").as_ref(), true);
                        }
                    }
                    if !pair.is_empty() {
                        let start = usize::from(first.is_some() && sp(&pair[0]) == first);
                        let stop = if last.is_some() && sp(&pair[pair.len() - 1]) == last {
                            pair.len() - 1
                        } else {
                            pair.len()
                        };
                        let inner = if start < stop { &pair[start..stop] } else { &[][..] };
                        if !inner.is_empty()
                            && seq(&inner[0]).as_deref() == Some("A")
                            && seq(&inner[inner.len() - 1]).as_deref() == Some("B")
                            && inner.len() > 2
                        {
                            let middle = &inner[1..inner.len() - 1];
                            let is_sep = |e: &Json| {
                                sp(e).is_some_and(|s| {
                                    Some(&s) == get(&content, "sep").as_ref()
                                        || Some(&s) == get(&content, "eos").as_ref()
                                })
                            };
                            let mut add_sep = is_sep(&middle[0]) && last.is_none();
                            if middle.len() == 2 && is_sep(&middle[1]) {
                                add_sep = true;
                            }
                            set_add(&mut add, "sep", add_sep, true);
                            if add_sep && get(&content, "sep").is_none() {
                                let eos = get(&content, "eos");
                                content.iter_mut().filter(|c| c.0 == "sep").for_each(|c| c.1 = eos.clone());
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut ids: Vec<(String, u32)> = Vec::new();
    let put_id = |ids: &mut Vec<(String, u32)>, k: &str, id: Option<u32>| {
        if let Some(id) = id.filter(|&i| (i as usize) < vocab_size || vocab_size == 0) {
            if !ids.iter().any(|x| x.0 == k) {
                ids.push((k.to_string(), id));
            }
        }
    };
    let mut chat_template = None;
    if files.tokenizer_config.is_some() {
        chat_template = tc
            .get("chat_template")
            .and_then(Json::as_str)
            .map(str::to_string)
            .or(files.chat_template_file.map(str::to_string));
        for k in SPECIAL_KINDS {
            if let Some(b) = tc.get(&format!("add_{k}_token")).and_then(Json::as_bool) {
                set_add(&mut add, k, b, false);
            }
            put_id(&mut ids, k, special_id(added, &get(&content, k)));
        }
    }
    for k in SPECIAL_KINDS {
        let id = files.config.get(format!("{k}_token_id")).and_then(Json::as_u64).map(|i| i as u32);
        put_id(&mut ids, k, id);
    }
    let id_key = |k: &str| match k {
        "pad" => "tokenizer.ggml.padding_token_id".to_string(),
        "unk" => "tokenizer.ggml.unknown_token_id".to_string(),
        "sep" => "tokenizer.ggml.seperator_token_id".to_string(),
        _ => format!("tokenizer.ggml.{k}_token_id"),
    };
    let mut kv: Vec<(String, Value)> = ids.into_iter().map(|(k, id)| (id_key(&k), Value::U32(id))).collect();
    kv.extend(add.into_iter().map(|(k, b)| (format!("tokenizer.ggml.add_{k}_token"), Value::Bool(b))));
    if let Some(t) = chat_template {
        kv.push(("tokenizer.chat_template".into(), Value::Str(t)));
    }
    kv
}
