//! The model on the GPU against transformers: logits and causal-LM loss of the
//! three fixture models (tests/fixtures/refs/<model>/reference.safetensors),
//! llama_gqa with Q8_0 and NF4 bases (tests/fixtures/quant), mistral_f16 with an
//! f16 base and qwen2_tied with a bf16 one (exactly their stored weights), weights split
//! into many chunks by a tiny binding limit, and bad input as typed errors.
//!
//! Tolerances: logits 1e-4 abs and losses 1e-5 abs, for every format (the
//! quantized references ran transformers on the bit-exact dequantized weights,
//! so only f32 summation order differs).

mod common;

use std::time::Instant;

use common::{block_on, fixture, gpu, Fixture};
use webpeft::gpu::Recorder;
use webpeft::kernels::qmatmul::QWeight;
use webpeft::model::{DirFiles, Model};
use webpeft::quant::QuantFormat;
use webpeft::{DType, Error, Gpu, GpuOptions, Tensor};

const LOGITS_TOL: f32 = 1e-4;
const LOSS_TOL: f32 = 1e-5;

fn load(gpu: &Gpu, model: &str, format: QuantFormat) -> Model {
    let files = DirFiles::new(fixture(model)).unwrap();
    let start = Instant::now();
    let m = block_on(Model::load(gpu, &files, format)).unwrap_or_else(|e| panic!("{model}: {e}"));
    eprintln!(
        "{model} ({}): loaded in {:.1} ms, {} KiB on the GPU",
        format.name(),
        start.elapsed().as_secs_f64() * 1e3,
        m.bytes() / 1024
    );
    m
}

/// (B, T) rows of an I64 fixture tensor.
fn rows<T>(fx: &Fixture, name: &str, f: impl Fn(i64) -> T) -> Vec<Vec<T>> {
    let shape = fx.shape(name);
    fx.i64(name).chunks(shape[1]).map(|r| r.iter().map(|&v| f(v)).collect()).collect()
}

fn ids(fx: &Fixture) -> Vec<Vec<u32>> {
    rows(fx, "input_ids", |v| v as u32)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn run(model: &Model, gpu: &Gpu, ids: &[Vec<u32>], labels: Option<&[Vec<i32>]>) -> (Vec<f32>, f32) {
    block_on(model.logits_and_loss(gpu, ids, labels)).unwrap()
}

/// Logits, loss (labels = ids) and the masked loss of one fixture model, its
/// block Linears stored in `format`.
fn check_format(name: &str, format: QuantFormat) {
    let gpu = gpu();
    let model = load(gpu, name, format);
    let fx = Fixture::open(&format!("refs/{name}/reference.safetensors"));
    let ids = ids(&fx);

    let start = Instant::now();
    let (logits, loss) = run(&model, gpu, &ids, None);
    let elapsed = start.elapsed().as_secs_f64() * 1e3;
    let d_logits = max_abs_diff(&logits, &fx.f32("logits"));
    let d_loss = (loss - fx.f32("loss")[0]).abs();

    let labels = rows(&fx, "labels", |v| v as i32);
    let (_, loss_masked) = run(&model, gpu, &ids, Some(&labels));
    let d_masked = (loss_masked - fx.f32("loss_masked")[0]).abs();
    eprintln!("{name} {format}: forward {elapsed:.1} ms; max |Δlogits| {d_logits:.2e}, |Δloss| {d_loss:.2e}, |Δloss_masked| {d_masked:.2e}");
    assert!(d_logits <= LOGITS_TOL, "{name}: logits differ by {d_logits}");
    assert!(d_loss <= LOSS_TOL, "{name}: loss {loss} vs {}", fx.f32("loss")[0]);
    assert!(d_masked <= LOSS_TOL, "{name}: masked loss {loss_masked} vs {}", fx.f32("loss_masked")[0]);

    let inv_freq = fx.f32("rope_inv_freq");
    assert!(max_abs_diff(model.rope_inv_freq(), &inv_freq) <= 1e-7 * inv_freq[0], "{name}: rope inv_freq");
}

fn check_f32(name: &str) {
    check_format(name, QuantFormat::F32);
}

#[test]
fn llama_gqa_f32_sharded_gqa_head_dim_24_llama3_rope() {
    check_f32("llama_gqa");
}

#[test]
fn qwen2_tied_bf16_with_biases() {
    check_f32("qwen2_tied");
}

/// Qwen3: q_norm and k_norm on each head before RoPE, head_dim 32 (≠ 64/4),
/// tied embeddings, no biases.
#[test]
fn qwen3_tiny_with_q_and_k_norms() {
    check_f32("qwen3_tiny");
}

/// SmolLM3: layer 1 a NoPE layer (its attention rotates nothing), tied
/// embeddings by default, bf16.
#[test]
fn smollm3_tiny_with_a_nope_layer() {
    let gpu = gpu();
    let model = load(gpu, "smollm3_tiny", QuantFormat::F32);
    assert_eq!(model.config.rope_layers, [true, false]);
    assert!(model.config.tie_word_embeddings && !model.layers[1].self_attn.use_rope);
    check_f32("smollm3_tiny");
}

#[test]
fn mistral_f16_one_kv_head() {
    check_f32("mistral_f16");
}

/// mistral_f16 is stored in f16, so an f16 base holds exactly its weights and
/// must give transformers' logits at the f32 tolerance, in half the memory.
#[test]
fn mistral_f16_with_an_f16_base() {
    check_format("mistral_f16", QuantFormat::F16);
    let gpu = gpu();
    let (f32_model, f16_model) =
        (load(gpu, "mistral_f16", QuantFormat::F32), load(gpu, "mistral_f16", QuantFormat::F16));
    let linears = |m: &Model| -> u64 { m.layers.iter().map(|l| l.self_attn.q_proj.weight.bytes()).sum() };
    assert_eq!(linears(&f16_model) * 2, linears(&f32_model));
}

/// qwen2_tied is stored in bf16, so a bf16 base holds exactly its weights
/// (the Linears, and the tied embedding and head gathered and multiplied from
/// bf16) and must give transformers' logits at the f32 tolerance.
#[test]
fn qwen2_tied_with_a_bf16_base() {
    check_format("qwen2_tied", QuantFormat::Bf16);
    let gpu = gpu();
    let model = load(gpu, "qwen2_tied", QuantFormat::Bf16);
    let (v, d) = (model.config.vocab_size, model.config.hidden_size);
    assert_eq!(model.embed_tokens.format, QuantFormat::Bf16);
    assert!(model.lm_head_is_tied(), "the bf16 head still shares the embedding's buffers");
    assert_eq!(model.embed_tokens.bytes(), (v * d * 2).next_multiple_of(16) as u64);
}

/// Under a quantized base the embedding and the head stay in the
/// checkpoint's 16-bit dtype (bf16 widens to f32 exactly), in half f32's
/// bytes; an f32 base keeps them f32, and so does an f32 checkpoint.
#[test]
fn quantized_bases_keep_16_bit_tables_as_stored() {
    let gpu = gpu();
    for (name, base, want) in [
        ("qwen2_tied", QuantFormat::Nf4, QuantFormat::Bf16),
        ("qwen2_tied", QuantFormat::Q8_0, QuantFormat::Bf16),
        ("qwen2_tied", QuantFormat::F32, QuantFormat::F32),
        ("mistral_f16", QuantFormat::Nf4, QuantFormat::F16),
        ("llama_gqa", QuantFormat::Nf4, QuantFormat::F32),
    ] {
        let model = load(gpu, name, base);
        assert_eq!(model.embed_tokens.format, want, "{name} {base}: the embedding");
        assert_eq!(model.lm_head.format, want, "{name} {base}: the head");
        let plan = webpeft::train::plan::weight_bytes(&model.config, base);
        let (got, planned) = (model.bytes() as f64, plan as f64);
        assert!((got - planned).abs() / planned < 0.05, "{name} {base}: {got} bytes held, {planned} planned");
    }
    // The NF4 model's tables equal the f32 model's, value for value.
    let (f32_model, nf4_model) = (load(gpu, "qwen2_tied", QuantFormat::F32), load(gpu, "qwen2_tied", QuantFormat::Nf4));
    assert_eq!(
        block_on(nf4_model.embed_tokens.to_f32(gpu)).unwrap(),
        block_on(f32_model.embed_tokens.to_f32(gpu)).unwrap()
    );
}

#[test]
fn tied_head_shares_the_embedding() {
    let gpu = gpu();
    let tied = load(gpu, "qwen2_tied", QuantFormat::F32);
    assert!(tied.lm_head_is_tied());
    let untied = load(gpu, "llama_gqa", QuantFormat::F32);
    assert!(!untied.lm_head_is_tied());
}

/// llama_gqa with every block Linear in `format` against transformers on the
/// same dequantized weights.
fn check_quant(format: QuantFormat, key: &str) {
    let gpu = gpu();
    let model = load(gpu, "llama_gqa", format);
    let fx = Fixture::open("quant/llama_gqa_quant_logits.safetensors");
    let (logits, _) = run(&model, gpu, &ids(&fx), None);
    let d = max_abs_diff(&logits, &fx.f32(key));
    let d_f32 = max_abs_diff(&logits, &fx.f32("logits_f32"));
    eprintln!("llama_gqa {}: max |Δlogits| {d:.2e} (vs the f32 model's logits: {d_f32:.2e})", format.name());
    assert!(d <= LOGITS_TOL, "{}: logits differ by {d}", format.name());
}

#[test]
fn llama_gqa_q8_0_base() {
    check_quant(QuantFormat::Q8_0, "logits_q8_0");
}

#[test]
fn llama_gqa_nf4_base() {
    check_quant(QuantFormat::Nf4, "logits_nf4");
}

fn chunks(w: &QWeight) -> usize {
    w.chunks.len()
}

/// With a 20 KiB binding limit the embedding, the head and the MLP weights
/// split into several chunks; each batch row alone still fits (its logits
/// are 1×11×384 f32 = 16.5 KiB), and the logits are transformers'.
#[test]
fn tiny_binding_limit_splits_weights_into_chunks() {
    let limit = 20 * 1024;
    let small =
        block_on(Gpu::with_options(GpuOptions { max_binding_bytes: Some(limit), ..Default::default() })).unwrap();
    for (name, format, reference, key) in [
        ("llama_gqa", QuantFormat::Nf4, "quant/llama_gqa_quant_logits.safetensors", "logits_nf4"),
        ("qwen2_tied", QuantFormat::F32, "refs/qwen2_tied/reference.safetensors", "logits"),
    ] {
        let model = load(&small, name, format);
        let l0 = &model.layers[0];
        let counts = [
            ("embed_tokens", chunks(&model.embed_tokens)),
            ("lm_head", chunks(&model.lm_head)),
            ("gate_proj", chunks(&l0.mlp.gate_proj.weight)),
            ("down_proj", chunks(&l0.mlp.down_proj.weight)),
            ("o_proj", chunks(&l0.self_attn.o_proj.weight)),
        ];
        eprintln!("{name} ({}) under a {limit}-byte binding limit: chunks {counts:?}", format.name());
        for (what, n) in &counts[..4] {
            assert!(*n > 1, "{name}: {what} should be split, has {n} chunk(s)");
        }
        assert_eq!(model.lm_head_is_tied(), name == "qwen2_tied");

        let fx = Fixture::open(reference);
        let want = fx.f32(key);
        let ids = ids(&fx);
        let per_row = want.len() / ids.len();
        for (b, row) in ids.iter().enumerate() {
            let (logits, _) = run(&model, &small, std::slice::from_ref(row), None);
            let d = max_abs_diff(&logits, &want[b * per_row..(b + 1) * per_row]);
            eprintln!("  row {b}: max |Δlogits| {d:.2e}");
            assert!(d <= LOGITS_TOL, "{name} row {b}: logits differ by {d}");
        }
    }
}

fn expect_err<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) -> Error {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => {
            eprintln!("{what}: {e}");
            e
        }
    }
}

#[test]
fn sequence_longer_than_max_position_embeddings() {
    let gpu = gpu();
    let model = load(gpu, "llama_gqa", QuantFormat::F32);
    let long = vec![vec![1u32; 129]];
    let e = expect_err(model.input_ids(gpu, &long), "129 ids");
    assert!(matches!(&e, Error::Shape { detail, .. } if detail.contains("max_position_embeddings 128")), "{e:?}");
    let e = expect_err(block_on(model.logits_and_loss(gpu, &long, None)), "logits_and_loss of 129 ids");
    assert!(matches!(&e, Error::Shape { detail, .. } if detail.contains("max_position_embeddings")), "{e:?}");

    // The same check on a tensor that was uploaded without `input_ids`.
    let ids = Tensor::from_slice(gpu, &[1, 129], &[1u32; 129]).unwrap();
    let mut rec = Recorder::new(gpu);
    let e = expect_err(model.forward(&mut rec, &ids), "forward of (1, 129)");
    assert!(matches!(&e, Error::Shape { detail, .. } if detail.contains("max_position_embeddings")), "{e:?}");
    // Exactly max_position_embeddings is fine.
    let ids = Tensor::from_slice(gpu, &[1, 128], &[1u32; 128]).unwrap();
    let logits = model.forward(&mut rec, &ids).unwrap();
    assert_eq!(logits.shape(), [1, 128, 384]);
}

#[test]
fn wrong_input_dtype_shape_and_values() {
    let gpu = gpu();
    let model = load(gpu, "llama_gqa", QuantFormat::F32);
    let mut rec = Recorder::new(gpu);

    let f = Tensor::zeros(gpu, &[2, 3], DType::F32).unwrap();
    let e = expect_err(model.forward(&mut rec, &f), "f32 ids");
    assert!(matches!(e, Error::DType { arg: "input_ids", expected: "u32", got: "f32", .. }), "{e:?}");

    let flat = Tensor::zeros(gpu, &[6], DType::U32).unwrap();
    let e = expect_err(model.forward(&mut rec, &flat), "(6) ids");
    assert!(matches!(&e, Error::Shape { detail, .. } if detail.contains("(batch, seq)")), "{e:?}");
    let empty = Tensor::zeros(gpu, &[1, 0], DType::U32).unwrap();
    expect_err(model.forward(&mut rec, &empty), "(1, 0) ids");
    assert!(rec.is_empty(), "a rejected forward records nothing");

    let ragged = vec![vec![1u32, 2, 3], vec![4, 5]];
    let e = expect_err(model.input_ids(gpu, &ragged), "ragged batch");
    assert!(matches!(&e, Error::Shape { detail, .. } if detail.contains("row 1 has 2 tokens")), "{e:?}");
    expect_err(model.input_ids(gpu, &[]), "no rows");

    let e = expect_err(model.input_ids(gpu, &[vec![1, 384, 2]]), "id = vocab");
    assert!(matches!(&e, Error::InvalidArgument { detail, .. } if detail.contains("token id 384 at [0, 1]")), "{e:?}");

    let ids = vec![vec![1u32, 2, 3]];
    let e = expect_err(block_on(model.logits_and_loss(gpu, &ids, Some(&[vec![1, 2]]))), "labels shorter than ids");
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    let e = expect_err(block_on(model.logits_and_loss(gpu, &ids, Some(&[vec![1, -1, 2]]))), "label -1");
    assert!(matches!(&e, Error::InvalidArgument { detail, .. } if detail.contains("label -1 at [0, 1]")), "{e:?}");
    let e = expect_err(block_on(model.logits_and_loss(gpu, &ids, Some(&[vec![1, 2, 999]]))), "label 999");
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
}
