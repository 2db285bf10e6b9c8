//! The `checkpoint` target: see `webpeft::fuzzing::checkpoint`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webpeft::fuzzing::checkpoint(data));
