//! The `config_json` target: see `webpeft::fuzzing::config_json`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webpeft::fuzzing::config_json(data));
