//! NF4 and Q8_0 bit-exact against the Python references in tests/fixtures/quant
//! (made by tests/fixtures/make_fixtures.py and cross-checked there against
//! bitsandbytes' own quantize_4bit and gguf's Q8_0), on the CPU and the GPU.

mod common;
use common::{block_on, gpu, Fixture};
use webpeft::gpu::Recorder;
use webpeft::kernels::quant::{dequantize, quantize};
use webpeft::quant::{quantize_nf4, quantize_q8_0, QuantFormat, Q8_0};
use webpeft::Tensor;

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// CPU and GPU NF4 of `input` against the fixture's packed bytes, absmax and dequantized values.
fn check_nf4(fx: &Fixture, input: &[f32], prefix: &str) {
    let want_packed = fx.raw(&format!("{prefix}nf4.packed"));
    let want_absmax = fx.f32(&format!("{prefix}nf4.absmax"));
    let want_deq = fx.f32(&format!("{prefix}nf4.dequant"));
    let cpu = quantize_nf4(input);
    assert_eq!(cpu.codes, want_packed, "{prefix} NF4 packed bytes (CPU)");
    assert_eq!(bits(&cpu.absmax), bits(&want_absmax), "{prefix} NF4 absmax (CPU)");
    assert_eq!(bits(&cpu.dequantize()), bits(&want_deq), "{prefix} NF4 dequantized (CPU)");

    let gpu = gpu();
    let t = Tensor::from_slice(gpu, &[input.len()], input).unwrap();
    let mut rec = Recorder::new(gpu);
    let packed = quantize(&mut rec, &t, QuantFormat::Nf4).unwrap();
    let y = dequantize(&mut rec, &packed).unwrap();
    rec.submit().unwrap();
    assert_eq!(block_on(packed.codes.to_vec::<u8>(gpu)).unwrap(), want_packed, "{prefix} NF4 packed bytes (GPU)");
    assert_eq!(
        bits(&block_on(packed.scales.to_vec::<f32>(gpu)).unwrap()),
        bits(&want_absmax),
        "{prefix} NF4 absmax (GPU)"
    );
    assert_eq!(bits(&block_on(y.to_vec::<f32>(gpu)).unwrap()), bits(&want_deq), "{prefix} NF4 dequantized (GPU)");
}

fn check_q8(fx: &Fixture, input: &[f32], rows: usize, cols: usize, blocks: &str, deq: &str) {
    let want_blocks = fx.raw(blocks);
    let want_deq = fx.f32(deq);
    let cpu = quantize_q8_0(input, rows, cols).unwrap();
    assert_eq!(cpu.to_gguf_blocks(), want_blocks, "{blocks} (CPU)");
    assert_eq!(bits(&cpu.dequantize()), bits(&want_deq), "{deq} (CPU)");
    let parsed = Q8_0::from_gguf_blocks(&want_blocks, rows, cols).unwrap();
    assert_eq!(bits(&parsed.dequantize()), bits(&want_deq), "{blocks} parsed");

    let gpu = gpu();
    let t = Tensor::from_slice(gpu, &[input.len()], input).unwrap();
    let mut rec = Recorder::new(gpu);
    let packed = quantize(&mut rec, &t, QuantFormat::Q8_0).unwrap();
    let y = dequantize(&mut rec, &packed).unwrap();
    rec.submit().unwrap();
    let qs: Vec<u8> = block_on(packed.codes.to_vec(gpu)).unwrap();
    assert_eq!(qs, cpu.qs.iter().map(|&q| q as u8).collect::<Vec<_>>(), "{blocks} values (GPU)");
    let scales: Vec<half::f16> = block_on(packed.scales.to_vec(gpu)).unwrap();
    assert_eq!(scales, cpu.scales, "{blocks} scales (GPU)");
    assert_eq!(bits(&block_on(y.to_vec::<f32>(gpu)).unwrap()), bits(&want_deq), "{deq} (GPU)");
}

#[test]
fn array_with_ties_midpoints_and_zero_blocks() {
    let fx = Fixture::open("quant/array1d.safetensors");
    let input = fx.f32("input");
    check_nf4(&fx, &input, "");
    let q8_input = fx.f32("q8_0.input");
    check_q8(&fx, &q8_input, 1, q8_input.len(), "q8_0.blocks", "q8_0.dequant");
}

#[test]
fn every_projection_of_the_tiny_llama() {
    let fx = Fixture::open("quant/llama_gqa_weights.safetensors");
    let names: Vec<String> = fx.names().into_iter().filter(|n| n.ends_with("_proj.weight")).collect();
    assert_eq!(names.len(), 14, "{names:?}");
    for name in names {
        let w = fx.f32(&name);
        let shape = fx.shape(&name);
        check_nf4(&fx, &w, &format!("{name}."));
        check_q8(&fx, &w, shape[0], shape[1], &format!("{name}.q8_0.blocks"), &format!("{name}.q8_0.dequant"));
    }
}
