//! `stop_strings`: generation ends after the token that completes one of
//! them, as transformers' `StopStringCriteria` decides.
//!
//! A stop string counts only where it ends inside the last token: there its
//! end lies in the text of that token, after at least one of its characters,
//! and its start may lie in any earlier token (the prompt's included) or in
//! the last token itself. So `["st", "op"]`, `["las", "topper"]` and
//! `[" stop"]` stop at "stop", `["stop", "at"]` does not (it stopped a token
//! earlier). transformers looks back over as many tokens as the longest stop
//! string has characters, and so does this.
//!
//! A token's text is what transformers' `clean_tokenizer_vocab` makes of it:
//! the decoder's text of the token after the tokens of "abcdef", with
//! everything up to "abcdef" cut off, so that a SentencePiece token keeps
//! the space a decoder strips at the start of a text. Lengths and positions
//! are in characters, as Python's strings count them.

use std::collections::HashMap;

use super::tokenizer::Tokenizer;
use crate::{Error, Result};

const OP: &str = "stop_strings";
/// transformers' `static_prefix`.
const PREFIX: &str = "abcdef";

/// Watches a generated sequence for stop strings; see the module docs.
#[derive(Clone, Debug)]
pub struct StopStrings {
    tokenizer: Tokenizer,
    strings: Vec<String>,
    /// Tokens looked back over: the longest string's characters.
    window: usize,
    /// The last `window` ids of the sequence, prompt included.
    tail: Vec<u32>,
    /// The tokens of [`PREFIX`], as the vocabulary spells them.
    prefix_tokens: Vec<String>,
    /// Each id's text, as met.
    texts: HashMap<u32, String>,
}

impl StopStrings {
    /// A watcher for `strings` over a sequence that starts with `prompt`.
    /// An empty string (it would stop everything) is a typed error; no
    /// strings at all watch nothing.
    pub fn new(tokenizer: &Tokenizer, strings: &[String], prompt: &[u32]) -> Result<StopStrings> {
        if let Some(i) = strings.iter().position(String::is_empty) {
            return Err(Error::invalid(OP, format!("stop string {i} is empty: each needs at least one character")));
        }
        let window = strings.iter().map(|s| s.chars().count()).max().unwrap_or(0);
        let prefix_tokens = tokenizer
            .encode(PREFIX, false)?
            .into_iter()
            .map(|id| tokenizer.id_to_token(id).unwrap_or_default())
            .collect();
        let mut stop = StopStrings {
            tokenizer: tokenizer.clone(),
            strings: strings.to_vec(),
            window,
            tail: Vec::with_capacity(window),
            prefix_tokens,
            texts: HashMap::new(),
        };
        stop.extend(prompt);
        Ok(stop)
    }

    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// The strings watched for.
    pub fn strings(&self) -> &[String] {
        &self.strings
    }

    fn extend(&mut self, ids: &[u32]) {
        let keep = ids.len().min(self.window);
        let drop = (self.tail.len() + keep).saturating_sub(self.window);
        self.tail.drain(..drop);
        self.tail.extend_from_slice(&ids[ids.len() - keep..]);
    }

    /// The text of `id` as a token after others ([`clean_tokenizer_vocab`'s
    /// rule](self)); an id outside the vocabulary has none.
    pub fn token_text(&mut self, id: u32) -> Result<Option<&str>> {
        if !self.texts.contains_key(&id) {
            let Some(token) = self.tokenizer.id_to_token(id) else { return Ok(None) };
            let mut tokens = self.prefix_tokens.clone();
            tokens.push(token);
            let text = self.tokenizer.decode_tokens(tokens)?;
            let Some(at) = text.find(PREFIX) else {
                let detail = format!("the decoder's text of id {id} after {PREFIX:?} lost {PREFIX:?}: {text:?}");
                return Err(Error::Tokenizer { file: "tokenizer.json".into(), detail });
            };
            self.texts.insert(id, text[at + PREFIX.len()..].to_string());
        }
        Ok(self.texts.get(&id).map(String::as_str))
    }

    /// Adds the generated `id`; true where a stop string now ends inside it.
    pub fn push(&mut self, id: u32) -> Result<bool> {
        if self.strings.is_empty() {
            return Ok(false);
        }
        self.extend(&[id]);
        let mut text = String::new();
        let mut last_start = 0;
        for t in self.tail.clone() {
            // An id outside the vocabulary (a padded embedding's row) has no
            // text: no match runs through it.
            match self.token_text(t)? {
                Some(piece) => {
                    last_start = text.len();
                    text.push_str(piece);
                }
                None => (text, last_start) = (String::new(), 0),
            }
        }
        let mut ends = text[last_start..].char_indices().map(|(i, c)| last_start + i + c.len_utf8());
        Ok(ends.any(|end| self.strings.iter().any(|s| text[..end].ends_with(s.as_str()))))
    }
}
