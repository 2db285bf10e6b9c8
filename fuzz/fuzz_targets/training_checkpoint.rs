//! A training checkpoint (training_state.safetensors), parsed on the CPU.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = webpeft::train::checkpoint::read_checkpoint(data);
});
