//! webpeft's pre-quantized layout: a folder written by `quantize_checkpoint`
//! loads without quantizing and gives exactly the logits of quantizing on
//! load; the layout is checked like any checkpoint.

mod common;

use common::{block_on, fixture, gpu, Fixture};
use webpeft::model::quantized::{quantize_checkpoint, QUANT_KEY};
use webpeft::model::{Checkpoint, Config, DirFiles, MemoryFiles, Model};
use webpeft::quant::QuantFormat;
use webpeft::Error;

/// The llama_gqa fixture re-encoded in `format`, as an in-memory folder.
fn quantized_folder(format: QuantFormat) -> (MemoryFiles, usize) {
    let dir = fixture("llama_gqa");
    let files = DirFiles::new(&dir).unwrap();
    let config = block_on(Config::load(&files)).unwrap();
    let checkpoint = block_on(Checkpoint::open(&files)).unwrap();
    let bytes = block_on(quantize_checkpoint(&checkpoint, &config, format)).unwrap();
    let size = bytes.len();
    let mut out = MemoryFiles::new();
    out.insert("config.json", std::fs::read(dir.join("config.json")).unwrap());
    out.insert("model.safetensors", bytes);
    (out, size)
}

fn ids() -> Vec<Vec<u32>> {
    let fx = Fixture::open("refs/llama_gqa/reference.safetensors");
    let shape = fx.shape("input_ids");
    fx.i64("input_ids").chunks(shape[1]).map(|r| r.iter().map(|&v| v as u32).collect()).collect()
}

#[test]
fn loads_packed_weights_with_identical_logits() {
    let gpu = gpu();
    let original = DirFiles::new(fixture("llama_gqa")).unwrap();
    let fx = Fixture::open("quant/llama_gqa_quant_logits.safetensors");
    for (format, reference) in [(QuantFormat::Nf4, "logits_nf4"), (QuantFormat::Q8_0, "logits_q8_0")] {
        let (files, size) = quantized_folder(format);
        let packed = block_on(Model::load(gpu, &files, format)).unwrap();
        assert_eq!(packed.format, format);
        let on_load = block_on(Model::load(gpu, &original, format)).unwrap();
        let (a, loss_a) = block_on(packed.logits_and_loss(gpu, &ids(), None)).unwrap();
        let (b, loss_b) = block_on(on_load.logits_and_loss(gpu, &ids(), None)).unwrap();
        assert_eq!(a, b, "{}: packed weights must equal quantizing on load", format.name());
        assert_eq!(loss_a, loss_b);
        let want = fx.f32(reference);
        let worst = a.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-4, "{} vs transformers: {worst}", format.name());
        // The f32 checkpoint is 0.52 MiB; the packed ones are far smaller.
        assert!(size < 300_000, "{}: {size} bytes", format.name());
    }
}

#[test]
fn asking_for_another_format_is_a_typed_error() {
    let (files, _) = quantized_folder(QuantFormat::Nf4);
    let err = block_on(Model::load(gpu(), &files, QuantFormat::Q8_0)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("stored as nf4"), "{err}");
}

#[test]
fn a_quantized_folder_is_not_quantized_again() {
    let (files, _) = quantized_folder(QuantFormat::Q8_0);
    let config = block_on(Config::load(&files)).unwrap();
    let checkpoint = block_on(Checkpoint::open(&files)).unwrap();
    assert_eq!(checkpoint.shards()[0].metadata().get(QUANT_KEY).map(String::as_str), Some("q8_0"));
    let err = block_on(quantize_checkpoint(&checkpoint, &config, QuantFormat::Nf4)).unwrap_err();
    assert!(err.to_string().contains("already quantized"), "{err}");
}

/// The bytes of a folder's model.safetensors.
fn model_bytes(files: &MemoryFiles) -> Vec<u8> {
    block_on(webpeft::model::ModelFiles::open(files, "model.safetensors"))
        .map(|s| block_on(webpeft::model::ByteSource::read_all(&s)).unwrap())
        .unwrap()
}

#[test]
fn a_missing_packed_tensor_is_named() {
    let (files, _) = quantized_folder(QuantFormat::Nf4);
    // Rebuild the file without one absmax tensor.
    let bytes = model_bytes(&files);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let dropped = "model.layers.1.mlp.up_proj.weight.nf4_absmax";
    let kept: Vec<(String, safetensors::tensor::TensorView)> =
        st.tensors().into_iter().filter(|(n, _)| n != dropped).collect();
    let rebuilt = safetensors::serialize(kept, meta.metadata().clone()).unwrap();
    let mut broken = MemoryFiles::new();
    broken.insert("config.json", std::fs::read(fixture("llama_gqa/config.json")).unwrap());
    broken.insert("model.safetensors", rebuilt);
    let err = block_on(Model::load(gpu(), &broken, QuantFormat::Nf4)).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { ref tensor, .. } if tensor == dropped), "{err}");
}

#[test]
fn f32_is_not_a_quantized_format() {
    let files = DirFiles::new(fixture("llama_gqa")).unwrap();
    let config = block_on(Config::load(&files)).unwrap();
    let checkpoint = block_on(Checkpoint::open(&files)).unwrap();
    let err = block_on(quantize_checkpoint(&checkpoint, &config, QuantFormat::F32)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // f16 neither: an f16 base loads from the checkpoint itself.
    let err = block_on(quantize_checkpoint(&checkpoint, &config, QuantFormat::F16)).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }) && err.to_string().contains("f16"), "{err}");
}

/// A file whose metadata declares an "f16" packed layout is refused, naming the file.
#[test]
fn a_file_declaring_f16_packing_is_a_typed_error() {
    let (files, _) = quantized_folder(QuantFormat::Nf4);
    let bytes = model_bytes(&files);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = meta.metadata().clone().unwrap();
    metadata.insert(QUANT_KEY.to_string(), "f16".to_string());
    let rebuilt = safetensors::serialize(st.tensors(), Some(metadata)).unwrap();
    let mut edited = MemoryFiles::new();
    edited.insert("config.json", std::fs::read(fixture("llama_gqa/config.json")).unwrap());
    edited.insert("model.safetensors", rebuilt);
    let err = block_on(Model::load(gpu(), &edited, QuantFormat::F16)).unwrap_err();
    assert!(matches!(err, Error::File { .. }) && err.to_string().contains("\"f16\" is not usable"), "{err}");
}

/// A model whose intermediate size (100) is not a multiple of Q8_0's blocks of
/// 32 loads at Q8_0 as llama.cpp quantizes it: down_proj (rows of 100) stays
/// f16, the rest is Q8_0; the plan counts exactly the bytes loaded, the load
/// progress says so, and the logits stay within Q8_0's error of the f32 model's.
#[test]
fn q8_0_keeps_rows_not_a_multiple_of_32_in_f16() {
    use webpeft::bench::train::{llama_config, random_model_files};
    let gpu = gpu();
    let json = llama_config(300, 64, 100, 2, 4, 2);
    let config = Config::from_json(json.as_bytes()).unwrap();
    let files = random_model_files(&json, 5).unwrap();
    let mut notes = Vec::new();
    let q8 = block_on(Model::load_with_progress(gpu, &files, QuantFormat::Q8_0, &mut |p| {
        if let Some(n) = p.note {
            notes.push((p.tensor, n));
        }
    }))
    .unwrap();
    let kept = q8.weights_not_in_format();
    let want: Vec<(String, QuantFormat)> =
        (0..2).map(|i| (format!("model.layers.{i}.mlp.down_proj.weight"), QuantFormat::F16)).collect();
    assert_eq!(kept, want);
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].1.contains("kept in f16") && notes[0].1.contains("100"), "{notes:?}");
    assert_eq!(q8.bytes(), webpeft::train::plan::weight_bytes(&config, QuantFormat::Q8_0), "the plan's weight bytes");
    let f32m = block_on(Model::load(gpu, &files, QuantFormat::F32)).unwrap();
    let ids = vec![vec![3u32, 17, 250, 42, 7, 99]];
    let (a, b) = (common::adapted_logits(gpu, &q8, None, &ids), common::adapted_logits(gpu, &f32m, None, &ids));
    let d = common::max_abs_diff(&a, &b);
    let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!("Q8_0 with f16 down_proj vs f32: logits max |diff| {d:e} (largest logit {scale:e})");
    assert!(d <= 2e-2 * scale.max(1.0), "{d:e}");
}
