//! A safetensors file: header parsing and every tensor's byte range, read as f32.
#![no_main]
use libfuzzer_sys::fuzz_target;
use webpeft::model::{MemorySource, SafetensorsFile};

fuzz_target!(|data: &[u8]| {
    pollster::block_on(async {
        let Ok(file) = SafetensorsFile::open(MemorySource::new("model.safetensors", data.to_vec())).await else { return };
        let names: Vec<String> = file.tensors().iter().map(|t| t.name.clone()).collect();
        for name in names {
            let _ = file.read_f32(&name).await;
        }
    });
});
