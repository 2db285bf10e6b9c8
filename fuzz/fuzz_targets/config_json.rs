//! config.json.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = webpeft::model::Config::from_json(data) {
        let _ = c.tensor_names();
    }
});
