//! The `safetensors` target: see `webpeft::fuzzing::safetensors`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webpeft::fuzzing::safetensors(data));
