//! Merging LoRA into the base (PEFT's merge_adapter / unmerge_adapter) and
//! exporting the merged model: merged logits equal the adapted ones within
//! 1e-5 on an f32 base, unmerging restores the base, and the exported
//! `model.safetensors` loads back as the merged model.

mod common;

use common::{block_on, fixture, gpu};
use webpeft::gpu::Recorder;
use webpeft::model::{DirFiles, MemoryFiles, Model};
use webpeft::peft::adapter::{hooks_of, Adapter};
use webpeft::peft::lora::merge::{export_safetensors, merge_lora, unmerge_lora};
use webpeft::peft::lora::LoraAdapter;
use webpeft::quant::QuantFormat;
use webpeft::Gpu;

fn logits(gpu: &Gpu, model: &Model, adapter: Option<&Adapter>) -> Vec<f32> {
    let ids =
        model.input_ids(gpu, &[vec![381, 17, 200, 45, 3, 99, 250, 7, 8], vec![381, 1, 2, 3, 4, 5, 6, 7, 8]]).unwrap();
    let mut rec = Recorder::new(gpu);
    let (l, _) = model.forward_adapted(&mut rec, &ids, hooks_of(adapter)).unwrap();
    rec.submit().unwrap();
    block_on(l.to_vec::<f32>(gpu)).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn load(gpu: &Gpu, format: QuantFormat) -> (Model, LoraAdapter) {
    load_pair(gpu, format, "llama_gqa", "lora/initial_adapter")
}

fn load_pair(gpu: &Gpu, format: QuantFormat, model: &str, adapter: &str) -> (Model, LoraAdapter) {
    let model = block_on(Model::load(gpu, &DirFiles::new(fixture(model)).unwrap(), format)).unwrap();
    let files = DirFiles::new(fixture(adapter)).unwrap();
    let lora = block_on(LoraAdapter::load(gpu, &files, &model.config)).unwrap();
    (model, lora)
}

/// On llama_gqa, and on Qwen3 (whose export must carry q_norm and k_norm).
#[test]
fn merged_logits_equal_adapted_ones_and_unmerge_restores_the_base() {
    let gpu = gpu();
    for (name, adapter) in [("llama_gqa", "lora/initial_adapter"), ("qwen3_tiny", "qwen3/lora/initial_adapter")] {
        merge_export_unmerge(gpu, name, adapter);
    }
}

fn merge_export_unmerge(gpu: &Gpu, name: &str, adapter_dir: &str) {
    let (mut model, lora) = load_pair(gpu, QuantFormat::F32, name, adapter_dir);
    let adapter = Adapter::Lora(lora.clone());
    let base = logits(gpu, &model, None);
    let adapted = logits(gpu, &model, Some(&adapter));
    assert!(max_abs_diff(&base, &adapted) > 1e-2, "the adapter changes the logits");
    let kept = merge_lora(gpu, &mut model, &lora).unwrap();
    let merged = logits(gpu, &model, None);
    let d = max_abs_diff(&merged, &adapted);
    eprintln!("merged vs adapted: max |diff| {d:e}");
    assert!(d <= 1e-5, "{d:e}");

    // The exported merged checkpoint loads as a plain model with the same logits.
    let bytes = block_on(export_safetensors(gpu, &model)).unwrap();
    let mut files = MemoryFiles::new();
    files.insert("config.json", std::fs::read(fixture(&format!("{name}/config.json"))).unwrap());
    files.insert("model.safetensors", bytes);
    let exported = block_on(Model::load(gpu, &files, QuantFormat::F32)).unwrap();
    assert_eq!(logits(gpu, &exported, None), merged);

    unmerge_lora(gpu, &mut model, &lora, &kept).unwrap();
    let d = max_abs_diff(&logits(gpu, &model, None), &base);
    eprintln!("unmerged vs base: max |diff| {d:e}");
    assert!(d <= 1e-5, "{d:e}");
}

#[test]
fn merging_into_a_quantized_base_requantizes() {
    let gpu = gpu();
    let (f32_model, _) = load(gpu, QuantFormat::F32);
    let f32_base = logits(gpu, &f32_model, None);
    for format in [QuantFormat::Q8_0, QuantFormat::Nf4] {
        let (mut model, lora) = load(gpu, format);
        // The format's own rounding, as a yardstick.
        let quant_noise = max_abs_diff(&logits(gpu, &model, None), &f32_base);
        let adapted = logits(gpu, &model, Some(&Adapter::Lora(lora.clone())));
        merge_lora(gpu, &mut model, &lora).unwrap();
        let d = max_abs_diff(&logits(gpu, &model, None), &adapted);
        eprintln!(
            "{}: merged vs adapted max |diff| {d:e}; the format's own rounding moves logits by {quant_noise:e}",
            format.name()
        );
        // The merged weights are re-rounded to the format's grid: close, not equal.
        assert!(d > 0.0 && d < 2.0 * quant_noise, "{}: {d:e} vs {quant_noise:e}", format.name());
    }
}
