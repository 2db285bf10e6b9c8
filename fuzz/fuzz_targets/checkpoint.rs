//! A model folder: config.json, a shard index and shards (the input split at
//! the marker `\n--part--\n`), opened and checked against the config,
//! including webpeft's own pre-quantized layout; every tensor read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use webpeft::model::{quantized, Checkpoint, Config, MemoryFiles};

fuzz_target!(|data: &[u8]| {
    const MARK: &[u8] = b"\n--part--\n";
    let mut parts: Vec<&[u8]> = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(MARK.len()).position(|w| w == MARK) {
        parts.push(&rest[..i]);
        rest = &rest[i + MARK.len()..];
    }
    parts.push(rest);
    let mut files = MemoryFiles::new();
    let names = ["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors"];
    for (name, bytes) in names.iter().zip(&parts) {
        files.insert(*name, bytes.to_vec());
    }
    pollster::block_on(async {
        let Ok(config) = Config::load(&files).await else { return };
        let Ok(checkpoint) = Checkpoint::open_for(&files, &config).await else { return };
        if let Ok(Some(format)) = quantized::stored_format(&checkpoint) {
            for t in config.tensor_names() {
                if quantized::is_block_linear(&t.name) {
                    if let [rows, cols] = t.shape[..] {
                        let _ = quantized::read_packed(&checkpoint, &t.name, rows, cols, format).await;
                    }
                }
            }
            return;
        }
        for t in config.tensor_names() {
            let _ = checkpoint.read_f32(&t.name).await;
        }
    });
});
