//! f16 compute (SHADER_F16) in the frozen base's matmuls: the NF4, Q8_0 and
//! f16 kernels against the CPU reference of their f16 arithmetic
//! (`reference::matmul::matmul_f16_compute`) and against the exact product,
//! on rows whose magnitudes span 1e-9 to 1e4 (gradients and activations), at
//! ragged shapes; and the models against transformers' fixtures.
//!
//! Every bound is relative to Σ|a||b| of the output (the scale f16's
//! roundings work at): the reference's own error from the exact product is
//! at most ~2^-9 of it, and the GPU must agree with the reference within
//! 2^-9 and with the exact product within 2^-8. f32 compute stays at 1e-5.

mod common;

use common::{block_on, fixture, gpu, gpu_family, lora_batch, randn, uniform, Fixture};
use webpeft::kernels::blocked::{Blocks, GemvTiles};
use webpeft::kernels::qmatmul::{qgemm_with, QVariant, QWeight};
use webpeft::kernels::reference::matmul::matmul_f16_compute;
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::LoraAdapter;
use webpeft::quant::{ComputeDtype, QuantError, QuantFormat};
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{DType, Error, Gpu, Tensor};

/// Rows of `x` (m, k) scaled by 10^e, e spread over [lo, hi] row by row.
fn spread_rows(mut x: Vec<f32>, m: usize, k: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let e = uniform(seed, m, lo, hi);
    for (i, row) in x.chunks_mut(k).enumerate() {
        row.iter_mut().for_each(|v| *v *= 10f32.powf(e[i]));
    }
    x
}

/// Σ_p |a[i, p]|·|op(b)[p, j]| for every output, in f64.
fn magnitudes(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, trans_b: bool) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] = (0..k)
                .map(|p| {
                    let bv = if trans_b { b[j * k + p] } else { b[p * n + j] };
                    (a[i * k + p] as f64 * bv as f64).abs()
                })
                .sum();
        }
    }
    out
}

fn exact(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, trans_b: bool) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            out[i * n + j] =
                (0..k).map(|p| a[i * k + p] as f64 * if trans_b { b[j * k + p] } else { b[p * n + j] } as f64).sum();
        }
    }
    out
}

/// The largest |got - want| / Σ|a||b| over the outputs (0 where Σ is 0 and they agree).
fn worst(label: &str, got: &[f32], want: &[f64], mag: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .zip(mag)
        .map(|((&g, &w), &s)| {
            let d = (g as f64 - w).abs();
            assert!(d.is_finite(), "{label}: got {g}, want {w}");
            if d == 0.0 {
                0.0
            } else {
                d / s
            }
        })
        .fold(0.0, f64::max)
}

/// y = x·Wᵀ and dx = dy·W through a weight computing in f16, by `variant`'s
/// kernel, against the reference of the f16 arithmetic and the exact
/// product. (f32 compute is tests/quant.rs's; here it only stands in where
/// the device has no f16.)
fn check(gpu: &Gpu, m: usize, rows: usize, cols: usize, format: QuantFormat, seed: u64, variant: QVariant) {
    let w = randn(seed, rows * cols).iter().map(|v| v * 0.05).collect::<Vec<_>>();
    let mut qw = QWeight::from_f32(gpu, &w, rows, cols, format).unwrap();
    let deq = block_on(qw.to_f32(gpu)).unwrap();
    // Activations up to 1e4, gradients down to 1e-9.
    let x = spread_rows(randn(seed + 1, m * cols), m, cols, -2.0, 4.0, seed + 3);
    let dy = spread_rows(randn(seed + 2, m * rows), m, rows, -9.0, -2.0, seed + 4);
    let tx = Tensor::from_slice(gpu, &[m, cols], &x).unwrap();
    let tdy = Tensor::from_slice(gpu, &[m, rows], &dy).unwrap();
    let run = |qw: &QWeight| {
        let y = Tensor::zeros(gpu, &[m, rows], DType::F32).unwrap();
        let dx = Tensor::zeros(gpu, &[m, cols], DType::F32).unwrap();
        let mut rec = webpeft::gpu::Recorder::new(gpu);
        qgemm_with(&mut rec, &tx, qw, &y, false, variant).unwrap();
        qgemm_with(&mut rec, &tdy, qw, &dx, true, variant).unwrap();
        rec.submit().unwrap();
        (block_on(y.to_vec::<f32>(gpu)).unwrap(), block_on(dx.to_vec::<f32>(gpu)).unwrap())
    };
    let label = format!("{} {m}x{rows}x{cols} {variant:?}", format.name());
    if !gpu.info().shader_f16 {
        // No SHADER_F16: the weight computes in f32, and says so.
        let f32_results = run(&qw);
        assert_eq!(qw.set_compute(gpu, ComputeDtype::F16).unwrap(), ComputeDtype::F32);
        assert_eq!(run(&qw), f32_results, "{label}: f32 fallback");
        return;
    }
    assert_eq!(qw.set_compute(gpu, ComputeDtype::F16).unwrap(), ComputeDtype::F16);
    let (y16, dx16) = run(&qw);
    for (what, a, got, n, k, trans_b) in
        [("forward", &x, &y16, rows, cols, true), ("backward", &dy, &dx16, cols, rows, false)]
    {
        let mag = magnitudes(a, &deq, m, n, k, trans_b);
        let want = exact(a, &deq, m, n, k, trans_b);
        let reference = matmul_f16_compute(a, &deq, m, n, k, trans_b);
        let e_ref = worst(&label, got, &reference.iter().map(|&v| v as f64).collect::<Vec<_>>(), &mag);
        let e_exact = worst(&label, got, &want, &mag);
        let e_cpu = worst(&label, &reference, &want, &mag);
        eprintln!(
            "{label} {what}: f16 vs reference {e_ref:.1e}, vs exact {e_exact:.1e} (reference vs exact {e_cpu:.1e})"
        );
        assert!(e_ref <= 2f64.powi(-9), "{label} {what}: off the f16 reference by {e_ref:e} of Σ|a||b|");
        assert!(e_exact <= 2f64.powi(-8), "{label} {what}: off the exact product by {e_exact:e} of Σ|a||b|");
        // The f16 path really ran: f16 roundings show.
        assert!(e_exact > 2f64.powi(-16), "{label} {what}: no f16 rounding at all ({e_exact:e})");
    }
}

/// The f16 tiles and the few-rows tiles of a decoding step, for each format;
/// K spans several f16 runs and a ragged last one, M and N cut tiles.
#[test]
fn quantized_kernels_compute_in_f16() {
    let gpu = gpu();
    for (format, seed) in
        [(QuantFormat::Nf4, 10), (QuantFormat::Q8_0, 20), (QuantFormat::F16, 30), (QuantFormat::Bf16, 40)]
    {
        check(gpu, 37, 68, 160, format, seed, QVariant::Tiled); // K 160 and 68: 5 runs, and 2 runs and a ragged one
        check(gpu, 3, 100, 96, format, seed + 1, QVariant::Tiled); // decoding: the few-rows tiles
    }
}

/// Decoding's GEMV computing in f16 (shaders/gemv_f16.wgsl) with the
/// portable and the subgroup reduction in layouts like tests/gemv.rs's (on
/// lavapipe's 8-lane subgroups: 4 and 2 subgroups a row, one subgroup taking
/// 2 rows, a subgroup of one lane): 1, 2, 3 and 8 rows of x, N = 44 cutting
/// the last workgroup of 8 and of 3 rows (and a multiple of 4, so the
/// backward, which the GEMV does not take, runs the blocked f16 GEMM), K of 34 runs
/// and a ragged one (1100; Q8_0 rows hold whole 32-value blocks: 1056, 33
/// runs), neither a multiple of a pass of the lanes.
#[test]
fn decoding_gemv_computes_in_f16() {
    let gpu = gpu();
    let sg = |lanes, rows| GemvTiles { lanes, rows, ..GemvTiles::SUBGROUP };
    let forms = [GemvTiles::DEFAULT, GemvTiles::SUBGROUP, sg(16, 3), sg(4, 8), sg(3, 3)];
    for (f, (format, k)) in
        [(QuantFormat::Nf4, 1100), (QuantFormat::Q8_0, 1056), (QuantFormat::F16, 1100)].into_iter().enumerate()
    {
        for (i, t) in forms.into_iter().enumerate() {
            for (j, m) in [1, 2, 3, 8].into_iter().enumerate() {
                check(gpu, m, 44, k, format, 100 + 100 * f as u64 + 10 * i as u64 + j as u64, QVariant::Gemv(t));
            }
        }
    }
}

/// The blocked GEMM of real GPUs in f16 (`shaders/gemm_blocked_f16.wgsl`),
/// forced on this adapter: big, medium and skinny blocks, slices of 8 and 16
/// (4 and 2 a run), K split in 2 and 3 uneven parts, blocks cut at every
/// edge, and dy rows of 67 (no vec4 staging: the scalar path).
#[test]
fn blocked_kernels_compute_in_f16() {
    let gpu = gpu();
    let b = Blocks::new;
    let variants = [
        QVariant::Blocked(Blocks::MEDIUM),
        QVariant::Blocked(Blocks::LARGE),
        QVariant::Blocked(b(16, 256, 16, 4, 4)),
        QVariant::Blocked(b(128, 32, 32, 4, 4)),
        QVariant::BlockedSplit(Blocks::MEDIUM, 2),
        QVariant::BlockedSplit(b(32, 64, 8, 4, 4), 3),
    ];
    for (i, v) in variants.into_iter().enumerate() {
        let seed = 50 + 10 * i as u64;
        check(gpu, 37, 68, 160, QuantFormat::Nf4, seed, v);
        check(gpu, 21, 67, 128, QuantFormat::Q8_0, seed + 1, v);
        check(gpu, 5, 40, 96, QuantFormat::F16, seed + 2, v);
        check(gpu, 5, 40, 96, QuantFormat::Bf16, seed + 3, v);
    }
}

/// A block whose slices do not divide the f16 run is refused by name.
#[test]
fn blocked_f16_refuses_slices_that_cut_a_run() {
    let gpu = gpu();
    let mut qw = QWeight::from_f32(gpu, &randn(60, 64 * 64), 64, 64, QuantFormat::Nf4).unwrap();
    if qw.set_compute(gpu, ComputeDtype::F16).unwrap() != ComputeDtype::F16 {
        return;
    }
    let x = Tensor::from_slice(gpu, &[4, 64], &randn(61, 256)).unwrap();
    let y = Tensor::zeros(gpu, &[4, 64], DType::F32).unwrap();
    let mut rec = webpeft::gpu::Recorder::new(gpu);
    let bad = Blocks::new(32, 32, 12, 4, 4);
    let err = qgemm_with(&mut rec, &x, &qw, &y, false, QVariant::Blocked(bad)).unwrap_err();
    assert!(err.to_string().contains("bk must divide 32"), "{err}");
}

/// Weights f16 sums could overflow are refused by name; f32 stays available;
/// an f32 base computes in f32 whatever is asked.
#[test]
fn f16_compute_is_refused_past_its_range() {
    let gpu = gpu();
    let mut w = randn(40, 8 * 64);
    w[77] = -1500.0;
    let mut qw = QWeight::from_f32(gpu, &w, 8, 64, QuantFormat::Nf4).unwrap();
    if gpu.info().shader_f16 {
        let err = qw.set_compute(gpu, ComputeDtype::F16).unwrap_err();
        assert!(matches!(err, Error::Quant(QuantError::F16ComputeRange { max_abs }) if max_abs == 1500.0), "{err}");
        assert!(err.to_string().contains("1500"), "{err}");
    }
    assert_eq!(qw.compute(), ComputeDtype::F32);
    assert_eq!(qw.set_compute(gpu, ComputeDtype::F32).unwrap(), ComputeDtype::F32);
    let mut f32_weight = QWeight::from_f32(gpu, &randn(41, 8 * 64), 8, 64, QuantFormat::F32).unwrap();
    assert_eq!(f32_weight.set_compute(gpu, ComputeDtype::F16).unwrap(), ComputeDtype::F32);
}

const LOGITS_F16_TOL: f32 = 2e-2;

fn load(gpu: &Gpu, model: &str, format: QuantFormat) -> Model {
    let files = DirFiles::new(fixture(model)).unwrap();
    block_on(Model::load(gpu, &files, format)).unwrap_or_else(|e| panic!("{model}: {e}"))
}

fn ids(fx: &Fixture) -> Vec<Vec<u32>> {
    let shape = fx.shape("input_ids");
    fx.i64("input_ids").chunks(shape[1]).map(|r| r.iter().map(|&v| v as u32).collect()).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A model computing in f16 against transformers' logits for the same
/// weights (computed in f32): within f16's error, and not equal to ours in f32.
fn check_model(gpu: &Gpu, model: &str, format: QuantFormat, fixture_file: &str, key: &str) {
    let mut m = load(gpu, model, format);
    let fx = Fixture::open(fixture_file);
    let ids = ids(&fx);
    let want = fx.f32(key);
    let (logits32, loss32) = block_on(m.logits_and_loss(gpu, &ids, None)).unwrap();
    let dtype = m.set_compute_dtype(gpu, ComputeDtype::F16).unwrap();
    assert_eq!(m.compute_dtype(), dtype);
    let (logits16, loss16) = block_on(m.logits_and_loss(gpu, &ids, None)).unwrap();
    let (d32, d16) = (max_abs_diff(&logits32, &want), max_abs_diff(&logits16, &want));
    eprintln!(
        "{model} {format} compute {dtype}: max |Δlogits| {d16:.2e} (f32 compute {d32:.2e}), loss {loss16} vs {loss32}"
    );
    assert!(d32 <= 1e-4, "{model}: f32 compute off transformers by {d32}");
    if dtype == ComputeDtype::F16 {
        assert!(d16 <= LOGITS_F16_TOL, "{model}: f16 compute off transformers by {d16}");
        assert!(d16 > d32, "{model}: f16 compute gave f32's logits");
        assert!((loss16 - loss32).abs() <= 1e-3, "{model}: loss {loss16} in f16 vs {loss32}");
    } else {
        assert_eq!(logits16, logits32);
    }
    // And back: f32 compute gives f32's logits again, bit for bit.
    m.set_compute_dtype(gpu, ComputeDtype::F32).unwrap();
    assert_eq!(block_on(m.logits_and_loss(gpu, &ids, None)).unwrap().0, logits32);
}

/// mistral_f16 is stored in f16: with an f16 base and f16 compute it runs as
/// a `torch_dtype=float16` model would on a GPU.
#[test]
fn mistral_f16_computes_in_f16() {
    for gpu in [gpu(), gpu_family()] {
        check_model(gpu, "mistral_f16", QuantFormat::F16, "refs/mistral_f16/reference.safetensors", "logits");
    }
}

/// QLoRA's setting: NF4 weights with `bnb_4bit_compute_dtype=float16`.
#[test]
fn llama_gqa_nf4_computes_in_f16() {
    for gpu in [gpu(), gpu_family()] {
        check_model(gpu, "llama_gqa", QuantFormat::Nf4, "quant/llama_gqa_quant_logits.safetensors", "logits_nf4");
    }
}

/// The loss and every LoRA gradient of one step (PEFT's initial adapter).
fn grads_at_start(gpu: &Gpu, model: &Model) -> (f32, Vec<Vec<f32>>) {
    let files = DirFiles::new(fixture("lora/initial_adapter")).unwrap();
    let adapter = Adapter::Lora(block_on(LoraAdapter::load(gpu, &files, &model.config)).unwrap());
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut t = Trainer::new(gpu, adapter, opt, 0).unwrap();
    let s = block_on(t.step(gpu, model, &[lora_batch()], 0.0)).unwrap();
    (s.loss, t.gradients().tensors().iter().map(|(_, g)| block_on(g.to_vec::<f32>(gpu)).unwrap()).collect())
}

/// QLoRA with f16 compute: gradients flow back through the f16 kernels (dy
/// rows near 1e-4 and below, which f16 would flush without the row scale) and
/// agree with f32 compute's to f16's precision, tensor by tensor.
#[test]
fn qlora_gradients_in_f16() {
    for gpu in [gpu(), gpu_family()] {
        qlora_gradients_agree(gpu);
    }
}

fn qlora_gradients_agree(gpu: &Gpu) {
    let mut model = load(gpu, "llama_gqa", QuantFormat::Nf4);
    let (loss32, grads32) = grads_at_start(gpu, &model);
    if model.set_compute_dtype(gpu, ComputeDtype::F16).unwrap() == ComputeDtype::F32 {
        assert_eq!(grads_at_start(gpu, &model), (loss32, grads32), "f32 fallback");
        return;
    }
    let (loss16, grads16) = grads_at_start(gpu, &model);
    let mut worst = 0.0f32;
    for (g16, g32) in grads16.iter().zip(&grads32) {
        let scale = g32.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let diff = g16.iter().zip(g32).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        worst = worst.max(diff / scale);
    }
    eprintln!(
        "NF4 LoRA step, f16 compute: loss {loss16} vs {loss32}; worst gradient diff {worst:.2e} of its tensor's max"
    );
    assert!((loss16 - loss32).abs() <= 1e-3, "loss {loss16} vs {loss32}");
    assert!(worst <= 2e-2 && worst > 0.0, "gradients off f32 compute's by {worst:e} of their scale");
}
