//! A chat template from a file, rendered with a small chat: bounded work (fuel)
//! and output size.
#![no_main]
use libfuzzer_sys::fuzz_target;
use webpeft::train::chat::{ChatTemplate, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    if let Ok(t) = ChatTemplate::new(source, Some("<s>"), Some("</s>")) {
        let chat = [Message::new("system", "be brief"), Message::new("user", "hi"), Message::new("assistant", "hello")];
        let _ = t.render(&chat, true);
    }
});
