//! The `chat_template` target: see `webpeft::fuzzing::chat_template`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webpeft::fuzzing::chat_template(data));
