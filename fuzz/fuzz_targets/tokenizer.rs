//! tokenizer.json and tokenizer_config.json (split at the first 0xFF byte,
//! which UTF-8 JSON never holds), then
//! encoding and decoding a short text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use webpeft::model::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let (json, config) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    if let Ok(t) = Tokenizer::from_bytes(json, config) {
        if let Ok(ids) = t.encode("Hello world, naïve café", true) {
            let _ = t.decode(&ids, false);
        }
        if let Ok(Some(template)) = webpeft::train::chat::ChatTemplate::from_tokenizer(&t) {
            let _ = template.render(&[webpeft::train::chat::Message::new("user", "hi")], true);
        }
    }
});
