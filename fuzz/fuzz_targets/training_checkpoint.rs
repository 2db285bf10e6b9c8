//! The `training_checkpoint` target: see `webpeft::fuzzing::training_checkpoint`.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| webpeft::fuzzing::training_checkpoint(data));
