//! The `adapter_config` target: see `webpeft::fuzzing::adapter_config`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webpeft::fuzzing::adapter_config(data));
