//! The `tokenizer` target: see `webpeft::fuzzing::tokenizer`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webpeft::fuzzing::tokenizer(data));
