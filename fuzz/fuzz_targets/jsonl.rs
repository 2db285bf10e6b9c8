//! The `jsonl` target: see `webpeft::fuzzing::jsonl`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webpeft::fuzzing::jsonl(data));
