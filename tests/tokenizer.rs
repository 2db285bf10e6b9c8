//! The tokenizer against transformers: tests/fixtures/tokenizer/ holds a
//! byte-level BPE tokenizer (vocab 384) and, in encodings.json, what
//! transformers 4.57.6 gives for each text (ids with and without special
//! tokens, both decodes) and for each chat. Streaming decode is checked
//! against the full decode; bad files are typed errors. No GPU.

mod common;

use common::{block_on, fixture};
use serde_json::{json, Value};
use webpeft::model::stop_strings::StopStrings;
use webpeft::model::tokenizer::{clean_up_tokenization, StreamDecoder, Tokenizer};
use webpeft::model::{DirFiles, MemoryFiles};
use webpeft::util::rng::Rng;
use webpeft::Error;

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture("tokenizer").join(name)).unwrap()
}

fn tokenizer() -> Tokenizer {
    block_on(Tokenizer::load(&DirFiles::new(fixture("tokenizer")).unwrap())).unwrap()
}

fn encodings() -> Value {
    serde_json::from_slice(&read("encodings.json")).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The fixture's tokenizer_config.json with `edit` applied to its object.
fn config_with(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut config: Value = serde_json::from_slice(&read("tokenizer_config.json")).unwrap();
    edit(config.as_object_mut().unwrap());
    serde_json::to_vec(&config).unwrap()
}

fn with_config(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Tokenizer {
    Tokenizer::from_bytes(&read("tokenizer.json"), Some(&config_with(edit))).unwrap()
}

/// Feeds `ids` one at a time; returns every piece and the flush (possibly empty).
fn stream(decoder: &mut StreamDecoder, ids: &[u32]) -> (Vec<String>, String) {
    let mut pieces = Vec::new();
    for &id in ids {
        if let Some(piece) = decoder.step(id).unwrap() {
            assert!(!piece.is_empty(), "an empty piece is returned as None");
            pieces.push(piece);
        }
    }
    let rest = decoder.flush().unwrap();
    (pieces, rest)
}

#[test]
fn special_tokens_vocab_and_chat_template_come_from_the_files() {
    let tok = tokenizer();
    let enc = encodings();
    assert_eq!(tok.vocab_size(), enc["vocab_size"].as_u64().unwrap() as usize);
    assert_eq!(tok.bos_id(), Some(381));
    assert_eq!(tok.bos_token().unwrap().content, "<|begin_of_text|>");
    assert_eq!(tok.eos_ids(), vec![382]);
    assert_eq!(tok.pad_id(), Some(383));
    assert_eq!(tok.token_to_id("<|end_of_text|>"), Some(382));
    assert_eq!(tok.token_to_id("Ġthe"), Some(258));
    assert_eq!(tok.id_to_token(258).as_deref(), Some("Ġthe"));
    assert_eq!(tok.token_to_id("no such token"), None);
    assert_eq!(tok.add_bos_token(), None);
    assert!(!tok.clean_up_tokenization_spaces());
    let config: Value = serde_json::from_slice(&read("tokenizer_config.json")).unwrap();
    assert_eq!(tok.chat_template(), config["chat_template"].as_str());
}

#[test]
fn every_fixture_text_encodes_and_decodes_as_transformers() {
    let tok = tokenizer();
    let enc = encodings();
    let texts = enc["texts"].as_array().unwrap();
    assert!(texts.len() >= 8);
    for t in texts {
        let text = t["text"].as_str().unwrap();
        let (with, without) = (ids(&t["ids"]), ids(&t["ids_no_special"]));
        assert_eq!(tok.encode(text, true).unwrap(), with, "{text:?} with special tokens");
        assert_eq!(tok.encode(text, false).unwrap(), without, "{text:?} without special tokens");
        assert_eq!(tok.decode(&with, false).unwrap(), t["decoded"].as_str().unwrap(), "{text:?}");
        assert_eq!(tok.decode(&with, true).unwrap(), t["decoded_skip_special"].as_str().unwrap(), "{text:?}");
        let tokens: Vec<String> = with.iter().map(|&id| tok.id_to_token(id).unwrap()).collect();
        let expected: Vec<&str> = t["tokens"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
        assert_eq!(tokens, expected, "{text:?}");
    }
}

#[test]
fn rendered_chats_tokenize_as_apply_chat_template() {
    // apply_chat_template(tokenize=True) encodes the rendered text without
    // adding special tokens: the template writes the bos itself.
    let tok = tokenizer();
    for chat in encodings()["chats"].as_array().unwrap() {
        let rendered = chat["rendered"].as_str().unwrap();
        let expected = ids(&chat["ids"]);
        assert_eq!(tok.encode(rendered, false).unwrap(), expected, "{rendered:?}");
        assert_eq!(tok.decode(&expected, false).unwrap(), rendered);
    }
}

#[test]
fn without_a_config_the_post_processor_still_adds_bos() {
    let tok = Tokenizer::from_bytes(&read("tokenizer.json"), None).unwrap();
    assert_eq!(tok.bos_id(), None);
    assert!(tok.eos_ids().is_empty());
    assert_eq!(tok.chat_template(), None);
    assert_eq!(tok.encode("Hello world!", true).unwrap(), vec![381, 39, 68, 285, 78, 260, 292, 281, 0]);
}

#[test]
fn streaming_holds_back_split_characters_until_complete() {
    let tok = tokenizer();
    // "naïve café – 日本": ï, é, – and each CJK character are split across byte tokens.
    let text = "naïve café – 日本";
    let ids = tok.encode(text, false).unwrap();
    let mut decoder = tok.stream_decoder(false);
    let mut out = String::new();
    let mut held = 0;
    for &id in &ids {
        match decoder.step(id).unwrap() {
            Some(piece) => {
                assert!(!piece.contains('\u{FFFD}'), "piece {piece:?} of valid text has U+FFFD");
                out.push_str(&piece);
            }
            None => held += 1,
        }
        assert!(text.starts_with(&out), "{out:?} is not a prefix of {text:?}");
    }
    assert_eq!(decoder.flush().unwrap(), "");
    assert_eq!(out, text);
    // Ã (first byte of ï and of é), â Ģ (two bytes of –), æ Ĺ and æ ľ (two of
    // each CJK character) return nothing.
    assert_eq!(held, 8);

    // Token by token on the raw bytes: 日 arrives as æ Ĺ ¥ (three tokens).
    let first = ids.iter().position(|&id| id == 162).unwrap();
    let mut decoder = tok.stream_decoder(false);
    for &id in &ids[..first] {
        decoder.step(id).unwrap();
    }
    assert_eq!(decoder.step(162).unwrap(), None);
    assert_eq!(decoder.step(245).unwrap(), None);
    assert_eq!(decoder.step(98).unwrap().as_deref(), Some("日"));
}

#[test]
fn streaming_concatenates_to_the_full_decode_for_every_fixture_text() {
    let tok = tokenizer();
    for t in encodings()["texts"].as_array().unwrap() {
        let with = ids(&t["ids"]);
        for skip in [false, true] {
            let (pieces, rest) = stream(&mut tok.stream_decoder(skip), &with);
            assert_eq!(rest, "", "{:?}: valid text leaves nothing to flush", t["text"]);
            assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
            assert_eq!(pieces.concat(), tok.decode(&with, skip).unwrap(), "{:?} skip={skip}", t["text"]);
        }
    }
}

#[test]
fn streaming_random_ids_matches_the_lossy_full_decode() {
    // Random ids include lone continuation bytes and cut characters: the
    // pieces never end inside a character (never with U+FFFD), and pieces +
    // flush always equal the full, lossy decode.
    let tok = tokenizer();
    let mut rng = Rng::new(17);
    let mut decoder = tok.stream_decoder(false);
    let (mut flushed, mut lossy_pieces) = (0, 0);
    for round in 0..200 {
        let len = 1 + rng.below(40);
        let ids: Vec<u32> = (0..len).map(|_| rng.below(tok.vocab_size()) as u32).collect();
        let skip = round % 2 == 1;
        let mut decoder_skip = tok.stream_decoder(true);
        let decoder = if skip { &mut decoder_skip } else { &mut decoder };
        let (pieces, rest) = stream(decoder, &ids);
        for p in &pieces {
            assert!(!p.ends_with('\u{FFFD}'), "{ids:?}: piece {p:?} ends in U+FFFD");
        }
        assert_eq!(pieces.concat() + &rest, tok.decode(&ids, skip).unwrap(), "{ids:?} skip={skip}");
        flushed += usize::from(!rest.is_empty());
        lossy_pieces += pieces.iter().filter(|p| p.contains('\u{FFFD}')).count();
    }
    // The cases that matter did occur: text left for the flush, invalid bytes
    // followed by valid text.
    assert!(flushed > 20 && lossy_pieces > 20, "{flushed} flushes, {lossy_pieces} lossy pieces");
}

#[test]
fn flush_returns_an_unfinished_character_lossily_and_resets() {
    let tok = tokenizer();
    let mut decoder = tok.stream_decoder(false);
    // "a" then the first two of 日's three bytes.
    assert_eq!(decoder.step(64).unwrap().as_deref(), Some("a"));
    assert_eq!(decoder.step(162).unwrap(), None);
    assert_eq!(decoder.step(245).unwrap(), None);
    assert_eq!(decoder.flush().unwrap(), tok.decode(&[162, 245], false).unwrap());
    assert_eq!(tok.decode(&[64, 162, 245], false).unwrap(), "a\u{FFFD}");
    // Reset: a new sequence starts clean.
    assert_eq!(decoder.step(39).unwrap().as_deref(), Some("H"));
    assert_eq!(decoder.flush().unwrap(), "");
}

#[test]
fn clean_up_tokenization_spaces_matches_transformers() {
    // From transformers 4.57.6: the fixture folder with
    // "clean_up_tokenization_spaces": true, loaded by AutoTokenizer, then
    // t(text, add_special_tokens=False) and t.decode(ids).
    let text = "Hello , world . Is it ? Yes ! I can n't , he 's , we 've , they 're , I 'm , a ' b n ' t .";
    let expected_ids = [
        39, 68, 285, 78, 220, 11, 260, 292, 281, 220, 13, 370, 82, 347, 220, 30, 220, 56, 280, 220, 0, 370, 270, 290,
        282, 6, 83, 220, 11, 278, 220, 6, 82, 220, 11, 260, 68, 220, 6, 85, 68, 220, 11, 258, 88, 220, 6, 275, 220, 11,
        370, 220, 6, 76, 220, 11, 259, 220, 6, 269, 282, 220, 6, 256, 220, 13,
    ];
    let cleaned = "Hello, world. Is it? Yes! I cann't, he's, we've, they're, I'm, a'bn't.";
    let tok = with_config(|c| {
        c.insert("clean_up_tokenization_spaces".into(), json!(true));
    });
    assert!(tok.clean_up_tokenization_spaces());
    let ids = tok.encode(text, false).unwrap();
    assert_eq!(ids, expected_ids);
    assert_eq!(tok.decode(&ids, false).unwrap(), cleaned);
    assert_eq!(clean_up_tokenization(text), cleaned);
    assert_eq!(tokenizer().decode(&ids, false).unwrap(), text);

    // The stream holds back what the clean-up may still change, and adds up to the same.
    let (pieces, rest) = stream(&mut tok.stream_decoder(false), &ids);
    assert!(pieces.len() > 5, "{pieces:?}");
    assert_eq!(pieces.concat() + &rest, cleaned);
    let mut rng = Rng::new(5);
    for _ in 0..100 {
        // Random runs of the tokens above (spaces, punctuation, n't, 's …).
        let ids: Vec<u32> = (0..30).map(|_| expected_ids[rng.below(expected_ids.len())]).collect();
        let (pieces, rest) = stream(&mut tok.stream_decoder(false), &ids);
        assert_eq!(pieces.concat() + &rest, tok.decode(&ids, false).unwrap(), "{ids:?}");
    }
}

#[test]
fn llama_tokenizer_class_follows_add_bos_and_add_eos() {
    // From transformers 4.57.6: the fixture folder with "tokenizer_class":
    // "LlamaTokenizerFast" and the flags below, t("Hello world!")["input_ids"]
    // (LlamaTokenizerFast rebuilds its post-processor from the flags).
    let hello = [39, 68, 285, 78, 260, 292, 281, 0];
    // (add_bos_token, add_eos_token, ids before "Hello world!", ids after)
    type Case<'a> = (Option<bool>, Option<bool>, &'a [u32], &'a [u32]);
    let cases: [Case; 4] = [
        (Some(false), Some(true), &[], &[382]),
        (Some(true), Some(true), &[381], &[382]),
        (Some(false), Some(false), &[], &[]),
        (None, None, &[381], &[]), // defaults: bos yes, eos no
    ];
    for (bos, eos, head, tail) in cases {
        let tok = with_config(|c| {
            c.insert("tokenizer_class".into(), json!("LlamaTokenizerFast"));
            if let Some(b) = bos {
                c.insert("add_bos_token".into(), json!(b));
            }
            if let Some(e) = eos {
                c.insert("add_eos_token".into(), json!(e));
            }
        });
        let expected: Vec<u32> = head.iter().chain(&hello).chain(tail).copied().collect();
        assert_eq!(tok.encode("Hello world!", true).unwrap(), expected, "add_bos {bos:?} add_eos {eos:?}");
        assert_eq!(tok.encode("Hello world!", false).unwrap(), hello);
        assert_eq!(tok.add_bos_token(), bos);
    }
    // PreTrainedTokenizerFast ignores the flags: tokenizer.json's post-processor decides.
    let tok = with_config(|c| {
        c.insert("add_bos_token".into(), json!(false));
    });
    assert_eq!(tok.encode("Hello world!", true).unwrap()[0], 381);
    // A flag without its token is an error, as in transformers.
    let err = Tokenizer::from_bytes(
        &read("tokenizer.json"),
        Some(&config_with(|c| {
            c.insert("tokenizer_class".into(), json!("LlamaTokenizer"));
            c.remove("bos_token");
        })),
    )
    .unwrap_err();
    assert!(err.to_string().contains("add_bos_token"), "{err}");
}

#[test]
fn config_accepts_added_token_objects_and_template_lists() {
    let tok = with_config(|c| {
        c.insert(
            "eos_token".into(),
            json!({"__type": "AddedToken", "content": "<|pad|>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false}),
        );
        c.insert(
            "chat_template".into(),
            json!([{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]),
        );
    });
    assert_eq!(tok.eos_ids(), vec![383]);
    assert_eq!(tok.chat_template(), Some("D"));
    // A pad token the vocabulary lacks is dropped, not an error (only padding uses it).
    let tok = with_config(|c| drop(c.insert("pad_token".into(), json!("<nope>"))));
    assert_eq!((tok.pad_id(), tok.bos_id()), (None, Some(381)));
}

#[test]
fn chat_template_jinja_wins_over_the_config() {
    let mut files = MemoryFiles::new();
    files.insert("tokenizer.json", read("tokenizer.json"));
    files.insert("tokenizer_config.json", read("tokenizer_config.json"));
    files.insert("chat_template.jinja", b"{{ messages }}".to_vec());
    let tok = block_on(Tokenizer::load(&files)).unwrap();
    assert_eq!(tok.chat_template(), Some("{{ messages }}"));
    assert_eq!(tok.bos_id(), Some(381));
    // Without a config: no special tokens, but the tokenizer works.
    files.remove("tokenizer_config.json").remove("chat_template.jinja");
    let tok = block_on(Tokenizer::load(&files)).unwrap();
    assert_eq!((tok.bos_id(), tok.chat_template()), (None, None));
}

fn tokenizer_error(json: &[u8], config: Option<&[u8]>) -> (String, String) {
    match Tokenizer::from_bytes(json, config) {
        Err(Error::Tokenizer { file, detail }) => (file, detail),
        Err(other) => panic!("expected Error::Tokenizer, got {other:?}"),
        Ok(_) => panic!("expected an error"),
    }
}

#[test]
fn malformed_files_are_typed_errors() {
    let good = read("tokenizer.json");
    let mut bad_model: Value = serde_json::from_slice(&good).unwrap();
    bad_model["model"]["type"] = json!("NoSuchModel");
    let mut bad_merge: Value = serde_json::from_slice(&good).unwrap();
    bad_merge["model"]["merges"] = json!([["no-such", "tokens"]]);
    for (json, says) in [
        (b"{ this is not json".to_vec(), "invalid JSON"),
        (Vec::new(), "invalid JSON"),
        (good[..good.len() / 2].to_vec(), "invalid JSON"),
        (b"[1, 2, 3]".to_vec(), "not a JSON object"),
        (serde_json::to_vec(&bad_model).unwrap(), "model type \"NoSuchModel\" is not supported"),
        (serde_json::to_vec(&bad_merge).unwrap(), "`no-such` out of vocabulary"),
    ] {
        let (file, detail) = tokenizer_error(&json, None);
        assert_eq!(file, "tokenizer.json", "{detail}");
        assert!(detail.contains(says), "{detail:?} should say {says:?}");
    }

    let set = |key: &str, value: Value| config_with(|c| drop(c.insert(key.into(), value)));
    for (config, says) in [
        (b"{".to_vec(), "invalid JSON"),
        (b"\"x\"".to_vec(), "not a JSON object"),
        (set("bos_token", json!("<s>")), "`bos_token` \"<s>\" is not a token of tokenizer.json"),
        (set("bos_token", json!(5)), "`bos_token` must be a string or an object"),
        (set("eos_token", json!({"id": 1})), "`eos_token` must be a string or an object"),
        (set("add_bos_token", json!("yes")), "`add_bos_token` must be true or false"),
        (set("chat_template", json!(3)), "`chat_template` must be"),
    ] {
        let (file, detail) = tokenizer_error(&good, Some(&config));
        assert_eq!(file, "tokenizer_config.json", "{detail}");
        assert!(detail.contains(says), "{detail:?} should say {says:?}");
    }

    // A folder without tokenizer.json.
    let files = MemoryFiles::new();
    let err = block_on(Tokenizer::load(&files)).unwrap_err();
    assert!(matches!(&err, Error::File { file, .. } if file == "tokenizer.json"), "{err}");
}

#[test]
fn ids_outside_the_vocabulary_are_skipped_as_in_transformers() {
    let tok = tokenizer();
    assert_eq!(tok.decode(&[39, 100_000, 68], false).unwrap(), "He");
    let (pieces, rest) = stream(&mut tok.stream_decoder(false), &[39, 100_000, 68]);
    assert_eq!(pieces.concat() + &rest, "He");
}

/// Regression (fuzzing): a syntax error inside `decoder` made the `tokenizers`
/// crate panic; it is a typed error now.
#[test]
fn a_syntax_error_in_the_decoder_is_a_typed_error_not_a_panic() {
    let bytes = std::fs::read(common::fixture("fuzz/tokenizer_decoder_panic.bin")).unwrap();
    let json = &bytes[..bytes.iter().position(|&b| b == 0xFF).unwrap_or(bytes.len())];
    let err = webpeft::model::tokenizer::Tokenizer::from_bytes(json, None).unwrap_err();
    assert!(matches!(err, webpeft::Error::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("invalid JSON"), "{err}");
}

/// Regression (fuzzing): a post-processor template naming an undefined special
/// token made `tokenizers` panic when encoding; it is refused at load.
#[test]
fn a_template_with_an_undefined_special_token_is_refused() {
    let bytes = std::fs::read(common::fixture("fuzz/tokenizer_template_panic.bin")).unwrap();
    let json = &bytes[..bytes.iter().position(|&b| b == 0xFF).unwrap_or(bytes.len())];
    match webpeft::model::tokenizer::Tokenizer::from_bytes(json, None) {
        Err(err) => assert!(matches!(err, webpeft::Error::Tokenizer { .. }), "{err}"),
        Ok(t) => {
            // If the file loads, encoding must not panic.
            let _ = t.encode("Hello world", true);
        }
    }
}

/// Regression (fuzzing): the same undefined special token behind a misspelled
/// post-processor `type` (`tokenizers` matches post-processors by shape, so it
/// still loaded as a template and panicked when encoding); refused at load.
#[test]
fn a_template_with_an_untrusted_type_is_checked_too() {
    let bytes = std::fs::read(common::fixture("fuzz/tokenizer_untyped_template_panic.bin")).unwrap();
    let i = bytes.iter().position(|&b| b == 0xFF).unwrap_or(bytes.len());
    let config = (i < bytes.len()).then(|| &bytes[i + 1..]);
    let err = webpeft::model::tokenizer::Tokenizer::from_bytes(&bytes[..i], config).unwrap_err();
    assert!(matches!(err, webpeft::Error::Tokenizer { .. }), "{err}");
    assert!(err.to_string().contains("does not define"), "{err}");
}

/// The tokenizer of `make_fixtures.py stop_strings`' cases: llama_gqa's (the byte-level fixture one) or
/// spm_tokenizer (SentencePiece-style: "▁" spaces, byte fallback, a decoder that strips a first space).
fn stop_tokenizer(name: &str) -> Tokenizer {
    let dir = match name {
        "llama_gqa" => fixture("llama_gqa"),
        _ => fixture("stop_strings").join(name),
    };
    block_on(Tokenizer::load(&DirFiles::new(dir).unwrap())).unwrap()
}

fn stop_fixture(file: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture("stop_strings").join(file)).unwrap()).unwrap()
}

/// Every token's text is what transformers' `StopStringCriteria.clean_tokenizer_vocab` makes of it, in both
/// vocabularies (the SentencePiece one keeps the space its decoder strips at the start of a text).
#[test]
fn stop_string_token_texts_are_transformers() {
    let want = stop_fixture("token_texts.json");
    for name in ["llama_gqa", "spm_tokenizer"] {
        let tok = stop_tokenizer(name);
        let mut stop = StopStrings::new(&tok, &["x".to_string()], &[]).unwrap();
        let texts = want[name].as_object().unwrap();
        assert_eq!(texts.len(), tok.vocab_size(), "{name}");
        for (id, text) in texts {
            let id: u32 = id.parse().unwrap();
            assert_eq!(stop.token_text(id).unwrap(), Some(text.as_str().unwrap()), "{name} id {id}");
        }
        assert_eq!(stop.token_text(tok.vocab_size() as u32).unwrap(), None, "{name}: past the vocabulary");
    }
    let spm = stop_tokenizer("spm_tokenizer");
    let the = spm.encode("the river", false).unwrap();
    assert!(StopStrings::new(&spm, &["x".into()], &[]).unwrap().token_text(the[0]).unwrap().unwrap().starts_with(' '));
}

/// For seeded sequences of both tokenizers and stop strings cut around their ends (across tokens, inside the
/// last one, ending a token early, unrelated), the watcher stops after the last token exactly where
/// transformers' StopStringCriteria does, fed the sequence as a prompt and its last token or one token at a
/// time from the start.
#[test]
fn stop_strings_stop_where_transformers_does() {
    let cases = stop_fixture("cases.json");
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() > 100);
    let toks = [("llama_gqa", stop_tokenizer("llama_gqa")), ("spm_tokenizer", stop_tokenizer("spm_tokenizer"))];
    let mut stops = 0;
    for (i, case) in cases.iter().enumerate() {
        let tok = &toks.iter().find(|(n, _)| *n == case["tokenizer"].as_str().unwrap()).unwrap().1;
        let seq = ids(&case["ids"]);
        let strings: Vec<String> =
            case["stop_strings"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
        let want = case["stops"].as_bool().unwrap();
        let (last, prompt) = seq.split_last().unwrap();
        let mut stop = StopStrings::new(tok, &strings, prompt).unwrap();
        assert_eq!(stop.push(*last).unwrap(), want, "case {i}: {strings:?} after {seq:?}");
        let mut streamed = StopStrings::new(tok, &strings, &[]).unwrap();
        let hits: Vec<bool> = seq.iter().map(|&t| streamed.push(t).unwrap()).collect();
        assert_eq!(hits.last(), Some(&want), "case {i}, one token at a time");
        stops += want as usize;
    }
    assert!(stops > 20 && stops < cases.len() - 20, "{stops} of {} cases stop", cases.len());
}

/// An empty stop string would stop everything: a typed error naming which. No strings watch nothing.
#[test]
fn empty_stop_strings_are_refused() {
    let tok = tokenizer();
    let err = StopStrings::new(&tok, &["ok".into(), String::new()], &[]).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("stop string 1 is empty"),
        "{err}"
    );
    let mut none = StopStrings::new(&tok, &[], &[1, 2]).unwrap();
    assert!(none.is_empty() && !none.push(3).unwrap());
}

/// A template's own variables (Qwen3's `enable_thinking`) pass through as `apply_chat_template(…, **kwargs)`
/// passes them (`make_fixtures.py qwen3`: a template switched by enable_thinking and by one more variable,
/// rendered by transformers with none, False, True, and False beside the other); the names the render sets
/// itself are refused.
#[test]
fn chat_template_kwargs_render_as_transformers() {
    use webpeft::train::chat::{ChatTemplate, Message};
    let v: Value = serde_json::from_slice(&std::fs::read(fixture("qwen3/chat.json")).unwrap()).unwrap();
    let source = v["template"].as_str().unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 16);
    for (i, case) in cases.iter().enumerate() {
        let messages: Vec<Message> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let template = ChatTemplate::new(source, Some("<|begin_of_text|>"), Some("<|end_of_text|>")).unwrap();
        let template = template.with_kwargs(case["kwargs"].as_object().unwrap()).unwrap();
        let got = template.render(&messages, case["add_generation_prompt"].as_bool().unwrap()).unwrap();
        assert_eq!(got, case["rendered"].as_str().unwrap(), "case {i}: {}", case["kwargs"]);
    }
    let template = ChatTemplate::new(source, None, None).unwrap();
    // Its own variables, which kwargs may set; a template that reads only what the render sets has none.
    assert_eq!(template.variables(), ["enable_thinking", "style"]);
    assert!(ChatTemplate::from_tokenizer(&tokenizer()).unwrap().unwrap().variables().is_empty());
    let e = template.with_kwargs(json!({"messages": []}).as_object().unwrap()).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("\"messages\""), "{e}");
}
