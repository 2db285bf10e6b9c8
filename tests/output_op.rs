//! A Linear's output op done by its product's store after the low-rank
//! term (`shaders/output_op.wgsl`): the Linear's bias, and SwiGLU's gate on
//! up_proj's product. In every kernel, f32 and quantized (the register
//! tiles, the scalar and yardstick entries, the subgroup block, the blocked
//! GEMM with and without split-K, the GEMV's forms, f16 arithmetic), each
//! at 1, 3 or 8 rows, with a term and without, N cutting the last tile and
//! K aligned and not, through NF4, f16 and f32 weights: each fused output against the same kernel's product
//! (with its term) and the op done after it by the launches that did it
//! before (`add_bias`, SwiGLU's own kernel), which must agree within an f32
//! rounding, and against the op on the CPU. Then the
//! Linear launchers (`qlinear_into`, `qlinear_gated`) against the CPU, with
//! which launches ran: one where the term fuses (decoding's rows
//! everywhere, any rows on the real-GPU kernels), the old launches where
//! it does not; weights split into chunks (each chunk's launch reads its own
//! columns of the bias and the gate); bad ops as typed errors; and models
//! decoding with the ops against their full forward (which runs none), where
//! the hooks allow them and not where they do not (DoRA rescales up_proj's
//! output).

mod common;

use common::{block_on, fixture_adapter, fixture_model, gpu, prefill_and_steps, randn, store_variants};
use webpeft::gpu::{KernelTime, Recorder};
use webpeft::kernels::blocked::{Blocks, GemvTiles};
use webpeft::kernels::low_rank::LowRank;
use webpeft::kernels::matmul::{gemm_low_rank_with, gemm_op_with, gemm_with, Gemm, SgTiles, Tiles, Variant};
use webpeft::kernels::output_op::{add_bias, OutputOp};
use webpeft::kernels::qmatmul::{
    qgemm_low_rank_with, qgemm_op_with, qgemm_with, qlinear_gated, qlinear_into, QVariant, QWeight,
};
use webpeft::kernels::reference::{assert_close, matmul as cpu};
use webpeft::kernels::swiglu::swiglu_forward;
use webpeft::model::llama::NoHooks;
use webpeft::peft::adapter::hooks_of;
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::{DType, Error, Gpu, GpuOptions, KernelFamily, Tensor};

const N: usize = 45;

fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec::<f32>(gpu)).unwrap()
}

fn tensor(gpu: &Gpu, shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_slice(gpu, shape, v).unwrap()
}

/// silu(g)·v as the shaders compute it: g / (1 + exp(−g)) · v.
fn gated(g: f32, v: f32) -> f32 {
    g / (1.0 + (-g).exp()) * v
}

/// The op on the CPU over a product's outputs y (m, n).
fn op_on_cpu(y: &[f32], op: &Op, n: usize) -> Vec<f32> {
    match op {
        Op::Bias(b) => y.iter().enumerate().map(|(i, v)| v + b[i % n]).collect(),
        Op::Gate(g) => y.iter().zip(g).map(|(v, g)| gated(*g, *v)).collect(),
    }
}

/// An op's values on the CPU: a bias (n) or a gate (m, n).
enum Op {
    Bias(Vec<f32>),
    Gate(Vec<f32>),
}

impl Op {
    fn new(gate: bool, m: usize, n: usize, seed: u64) -> Op {
        if gate {
            Op::Gate(randn(seed, m * n).iter().map(|v| 2.0 * v).collect())
        } else {
            Op::Bias(randn(seed, n))
        }
    }

    fn tensor(&self, gpu: &Gpu, m: usize, n: usize) -> Tensor {
        match self {
            Op::Bias(b) => tensor(gpu, &[n], b),
            Op::Gate(g) => tensor(gpu, &[m, n], g),
        }
    }

    fn name(&self) -> &'static str {
        if matches!(self, Op::Bias(_)) {
            "bias"
        } else {
            "gate"
        }
    }
}

/// h (m, r) and B (n, r), scale 0.75: a LoRA term.
fn term(gpu: &Gpu, m: usize, n: usize, r: usize, seed: u64) -> LowRank {
    let b: Vec<f32> = randn(seed + 1, n * r).iter().map(|v| v * 0.5).collect();
    LowRank::new(tensor(gpu, &[m, r], &randn(seed, m * r)), tensor(gpu, &[n, r], &b), 0.75)
}

/// The op after the product `plain` (m, n) as the launches that did it
/// before the fusion: add_bias (a k = 1 product into y), or SwiGLU's kernel.
fn op_after(rec: &mut Recorder, plain: &Tensor, op: OutputOp) -> Tensor {
    match op {
        OutputOp::Bias(b) => {
            add_bias(rec, plain, b).unwrap();
            plain.clone()
        }
        OutputOp::Gate(g) => swiglu_forward(rec, g, plain).unwrap(),
    }
}

/// A fused output against the op done after the same kernel's product (an
/// f32 rounding apart at most for a bias: the compiler may contract the
/// store's multiply-adds differently; a few for the gate, whose exp WGSL
/// bounds only to a few ulps, and lavapipe evaluates differently at some
/// vector widths) and against the op on the CPU over that product.
fn check(gpu: &Gpu, label: &str, (fused, after, plain): (&Tensor, &Tensor, &[f32]), op: &Op, n: usize) {
    let (fused, after) = (read(gpu, fused), read(gpu, after));
    let tol = if matches!(op, Op::Gate(_)) { 1e-5 } else { 1e-6 };
    assert_close(&format!("{label}: fused vs after"), &fused, &after, tol, tol);
    assert_close(&format!("{label}: vs the CPU"), &fused, &op_on_cpu(plain, op, n), 1e-5, 1e-5);
}

/// `variant` through `qw` with each of `ops`: (SwiGLU's gate, else a bias;
/// with a term of rank 3).
fn check_quant(gpu: &Gpu, qw: &QWeight, m: usize, variant: QVariant, ops: &[(bool, bool)], seed: u64) {
    let k = qw.cols;
    let x = tensor(gpu, &[m, k], &randn(seed, m * k));
    for (i, &(gate, with_term)) in ops.iter().enumerate() {
        let seed = seed + 10 * i as u64;
        let t = with_term.then(|| term(gpu, m, N, 3, seed + 3));
        let op = Op::new(gate, m, N, seed + 5);
        let op_t = op.tensor(gpu, m, N);
        let o = if gate { OutputOp::Gate(&op_t) } else { OutputOp::Bias(&op_t) };
        let (plain, fused) =
            (Tensor::zeros(gpu, &[m, N], DType::F32).unwrap(), Tensor::zeros(gpu, &[m, N], DType::F32).unwrap());
        let mut rec = Recorder::new(gpu);
        match &t {
            Some(t) => qgemm_low_rank_with(&mut rec, &x, qw, &plain, false, t, variant).unwrap(),
            None => qgemm_with(&mut rec, &x, qw, &plain, false, variant).unwrap(),
        }
        qgemm_op_with(&mut rec, &x, qw, &fused, t.as_ref(), o, variant).unwrap();
        rec.submit().unwrap();
        let plain_v = read(gpu, &plain);
        let mut rec = Recorder::new(gpu);
        let after = op_after(&mut rec, &plain, o);
        rec.submit().unwrap();
        let label = format!(
            "{} {:?} {m}x{N}x{k} {} term {} {variant:?}",
            qw.format.name(),
            qw.compute(),
            op.name(),
            t.is_some()
        );
        check(gpu, &label, (&fused, &after, &plain_v), &op, N);
    }
}

/// Each quantized kernel once, through NF4 or f16 weights (the op is the
/// same code after every format's dequantization), with K = 288 (the vec4
/// entries) or 66 (the scalar entries, the blocked GEMM's unaligned loads;
/// the GEMV needs K aligned, else it is not the GEMV that runs).
#[test]
fn every_quantized_kernel_does_the_op_as_it_stores() {
    let gpu = gpu();
    let (nf4, f16) = (QuantFormat::Nf4, QuantFormat::F16);
    let weights = [(nf4, 288), (f16, 66), (f16, 288)]
        .map(|(format, k)| QWeight::from_f32(gpu, &randn(k as u64, N * k), N, k, format).unwrap());
    // Which weight and how many rows each of `store_variants` runs with,
    // and its op: the gate every other kernel, with a term two in three.
    let runs = [(0, 1), (1, 3), (0, 8), (1, 1), (0, 3), (2, 8), (0, 1)];
    for (j, &(w, m)) in runs.iter().enumerate() {
        let op = (j % 2 == 1, j % 3 != 2);
        check_quant(gpu, &weights[w], m, store_variants(m, N)[j], &[op], 300 + 20 * j as u64);
    }
    gemv_does_the_op(gpu);
}

/// The GEMV's forms (the reductions a real GPU picks at its subgroup
/// width, `scripts/test.sh` runs this at 32 lanes too) through an NF4 weight.
fn gemv_does_the_op(gpu: &Gpu) {
    let qw = QWeight::from_f32(gpu, &randn(7, N * 256), N, 256, QuantFormat::Nf4).unwrap();
    // Decoding's ops: q, k, v's bias and up_proj's gate, beside a LoRA term or not.
    let ops = [(false, true), (true, true), (true, false)];
    for (j, t) in [GemvTiles::DEFAULT, GemvTiles::SUBGROUP].into_iter().enumerate() {
        check_quant(gpu, &qw, [3, 8][j], QVariant::Gemv(t), &ops, 500 + j as u64);
    }
}

/// [`gemv_does_the_op`] alone, the test `scripts/test.sh` runs at 32 lanes.
#[test]
fn the_gemv_does_the_op_at_the_devices_subgroup_width() {
    eprintln!("{}", gpu().describe());
    gemv_does_the_op(gpu());
}

/// f16 arithmetic where the device has shader-f16: the GEMV's f16 form, the
/// f16 tiles and the f16 blocked GEMM, the op still in f32 after them.
#[test]
fn f16_compute_does_the_op_in_f32() {
    let gpu = &block_on(Gpu::with_options(GpuOptions { allow_f16: true, ..Default::default() })).unwrap();
    if !gpu.info().shader_f16 {
        eprintln!("skipped: {} has no shader-f16", gpu.describe());
        return;
    }
    let mut qw = QWeight::from_f32(gpu, &randn(5, N * 256), N, 256, QuantFormat::Nf4).unwrap();
    qw.set_compute(gpu, ComputeDtype::F16).unwrap();
    for (j, variant) in
        [QVariant::Tiled, QVariant::Blocked(Blocks::for_shape(3, N, 1)), QVariant::Gemv(GemvTiles::DEFAULT)]
            .into_iter()
            .enumerate()
    {
        check_quant(gpu, &qw, [1, 3, 8][j], variant, &[(j % 2 == 0, true)], 40 + j as u64);
    }
}

/// f32 weights through matmul.wgsl's kernels (`gemm_op_with`), the same check.
#[test]
fn every_f32_kernel_does_the_op_as_it_stores() {
    let gpu = gpu();
    for (f, k) in [288, 66].into_iter().enumerate() {
        let w = tensor(gpu, &[N, k], &randn(700 + k as u64, N * k));
        let few = |m| Tiles::few_rows(m, false).unwrap();
        // K = 288 through every form; K = 66 (unaligned loads) where the
        // form has a path for it of its own: the scalar tiles, the blocked GEMM.
        let unaligned = |j: usize| matches!(j, 1 | 4 | 5);
        let forms: [&dyn Fn(usize) -> Variant; 8] = [
            &|m| Variant::Tiled(few(m)),
            &|m| Variant::Scalar(few(m)),
            &|_| Variant::Naive,
            &|m| Variant::Subgroup(SgTiles::for_gemm(&Gemm::new(m, N, k, false, true))),
            &|m| Variant::Blocked(Blocks::for_shape(m, N, 1)),
            &|_| Variant::BlockedSplit(Blocks::MEDIUM, 3),
            &|_| Variant::Gemv(GemvTiles::DEFAULT),
            &|_| Variant::Gemv(GemvTiles::SUBGROUP),
        ];
        for (j, form) in forms.iter().enumerate().filter(|(j, _)| k == 288 || unaligned(*j)) {
            let m = [1, 3, 8][(j + f) % 3];
            let g = Gemm::new(m, N, k, false, true);
            let x = tensor(gpu, &[m, k], &randn(800 + 10 * j as u64 + k as u64, m * k));
            for gate in [false, true] {
                let seed = 900 + 10 * j as u64 + k as u64 + gate as u64;
                let t = gate.then(|| term(gpu, m, N, 2, seed));
                let op = Op::new(gate, m, N, seed + 2);
                let op_t = op.tensor(gpu, m, N);
                let o = if gate { OutputOp::Gate(&op_t) } else { OutputOp::Bias(&op_t) };
                let (plain, fused) = (
                    Tensor::zeros(gpu, &[m, N], DType::F32).unwrap(),
                    Tensor::zeros(gpu, &[m, N], DType::F32).unwrap(),
                );
                let mut rec = Recorder::new(gpu);
                match &t {
                    Some(t) => gemm_low_rank_with(&mut rec, &g, &x, &w, &plain, t, form(m)).unwrap(),
                    None => gemm_with(&mut rec, &g, &x, &w, &plain, form(m)).unwrap(),
                }
                gemm_op_with(&mut rec, &g, &x, &w, &fused, t.as_ref(), o, form(m)).unwrap();
                rec.submit().unwrap();
                let plain_v = read(gpu, &plain);
                let mut rec = Recorder::new(gpu);
                let after = op_after(&mut rec, &plain, o);
                rec.submit().unwrap();
                let label = format!("f32 {m}x{N}x{k} {} term {} {:?}", op.name(), t.is_some(), form(m));
                check(gpu, &label, (&fused, &after, &plain_v), &op, N);
            }
        }
    }
}

/// A device of its own for each kernel family: the profile counts every
/// launch on a device, and the tests of a file run at once.
fn own_devices() -> [Gpu; 2] {
    [KernelFamily::Auto, KernelFamily::Gpu]
        .map(|kernels| block_on(Gpu::with_options(GpuOptions { kernels, ..Default::default() })).unwrap())
}

/// Launches in a profile whose kernel's label passes `f`.
fn count(ran: &[KernelTime], f: &dyn Fn(&str) -> bool) -> u64 {
    ran.iter().filter(|k| f(&k.kernel)).map(|k| k.calls).sum()
}

/// `qlinear_into` with a bias, or `qlinear_gated`, for x (m, K) with or
/// without a term, against the CPU (x·Wᵀ on the dequantized W, the term in
/// f64, then the op); returns the launches that ran: (products with the op
/// in their store, all launches).
fn check_linear(gpu: &Gpu, qw: &QWeight, m: usize, (with_term, gate): (bool, bool), seed: u64) -> (u64, u64) {
    let (k, n) = (qw.cols, qw.rows);
    let xs = randn(seed, m * k);
    let x = tensor(gpu, &[m, k], &xs);
    let t = with_term.then(|| term(gpu, m, n, 4, seed + 1));
    let op = Op::new(gate, m, n, seed + 2);
    let op_t = op.tensor(gpu, m, n);
    gpu.set_profiling(true).unwrap();
    let mut rec = Recorder::new(gpu);
    let y = if gate {
        qlinear_gated(&mut rec, &x, qw, t.as_ref(), &op_t).unwrap()
    } else {
        let y = tensor(gpu, &[m, n], &vec![1.0; m * n]); // overwritten
        qlinear_into(&mut rec, &x, qw, &y, false, (t.as_ref(), Some(&op_t))).unwrap();
        y
    };
    rec.submit().unwrap();
    gpu.set_profiling(false).unwrap();
    let ran = block_on(gpu.take_profile()).unwrap();
    let deq = block_on(qw.to_f32(gpu)).unwrap();
    let mut want = vec![0.0; m * n];
    cpu::matmul(&xs, &deq, &mut want, m, n, k, false, true, false);
    if let Some(t) = &t {
        let (h, b) = (read(gpu, &t.h), read(gpu, &t.b));
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..4).map(|c| h[i * 4 + c] as f64 * b[j * 4 + c] as f64).sum();
                want[i * n + j] += (0.75 * s) as f32;
            }
        }
    }
    let want = op_on_cpu(&want, &op, n);
    let label = format!(
        "{} {m}x{n}x{k} term {with_term} {} chunks {} on {:?}",
        qw.format.name(),
        op.name(),
        qw.chunks.len(),
        gpu.kernel_family()
    );
    assert_close(&label, &read(gpu, &y), &want, 1e-4 * (k as f32).sqrt(), 1e-4);
    let fused = count(&ran, &|k| k.ends_with("+bias") || k.ends_with("+gate"));
    (fused, count(&ran, &|_| true))
}

/// The op goes into the product's store wherever the term does, or where
/// there is no term: one launch for decoding's rows on every adapter and
/// for any rows on the real-GPU kernels. On lavapipe's kernels a longer
/// product adds its term with a product of its own, and the op follows as
/// before: add_bias's k = 1 product, or SwiGLU's kernel.
#[test]
fn linears_fuse_the_op_where_the_term_fuses() {
    for gpu in &own_devices() {
        let real = gpu.kernel_family() == KernelFamily::Gpu;
        // f32 weights on lavapipe's kernels (the real-GPU family's f32 and
        // NF4 blocked GEMMs share one store: every_f32_kernel checks it).
        let formats: &[QuantFormat] = if real { &[QuantFormat::Nf4] } else { &[QuantFormat::Nf4, QuantFormat::F32] };
        for (i, &format) in formats.iter().enumerate() {
            let qw = QWeight::from_f32(gpu, &randn(20 + i as u64, N * 264), N, 264, format).unwrap();
            for (j, gate) in [false, true].into_iter().enumerate() {
                let seed = 100 * i as u64 + 10 * j as u64;
                let on = format!("{} gate {gate} on {:?}", format.name(), gpu.kernel_family());
                for m in [1, LowRank::FUSED_ROWS] {
                    assert_eq!(check_linear(gpu, &qw, m, (true, gate), seed + m as u64), (1, 1), "{m} rows, {on}");
                }
                // Longer: without a term (the bias) the op fuses at any rows;
                // with one (the gate) where the term fuses, else after the
                // product and the term's own.
                let long = if !gate || real { (1, 1) } else { (0, 3) };
                assert_eq!(check_linear(gpu, &qw, 20, (gate, gate), seed + 4), long, "{on}");
            }
        }
    }
}

/// A weight split into row chunks (an 8 KiB binding limit): each chunk's
/// launch reads its own columns of the bias and of the gate.
#[test]
fn chunked_weights_read_their_own_columns() {
    let options = GpuOptions { max_binding_bytes: Some(8192), ..Default::default() };
    let gpu = &block_on(Gpu::with_options(options)).unwrap();
    for (i, format) in [QuantFormat::Nf4, QuantFormat::Q8_0].into_iter().enumerate() {
        let qw = QWeight::from_f32(gpu, &randn(60 + i as u64, 150 * 256), 150, 256, format).unwrap();
        let chunks = qw.chunks.len() as u64;
        assert!(chunks > 1, "{chunks} chunks");
        for (j, gate) in [false, true].into_iter().enumerate() {
            let got = check_linear(gpu, &qw, 2, (j == 0, gate), 70 + 10 * i as u64 + j as u64);
            assert_eq!(got, (chunks, chunks), "{} gate {gate}", format.name());
        }
    }
}

#[test]
fn bad_ops_are_typed_errors() {
    let gpu = gpu();
    let qw = QWeight::from_f32(gpu, &randn(1, N * 64), N, 64, QuantFormat::Nf4).unwrap();
    let x = tensor(gpu, &[2, 64], &randn(2, 128));
    let y = Tensor::zeros(gpu, &[2, N], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let shape_err = |e: Error, what: &str| {
        assert!(matches!(e, Error::Shape { op: "linear_output_op", .. }), "{what}: {e:?}");
        e.to_string()
    };
    // A bias of the wrong length.
    let short = tensor(gpu, &[N - 1], &randn(3, N - 1));
    let e = qlinear_into(&mut rec, &x, &qw, &y, false, (None, Some(&short))).unwrap_err();
    assert!(shape_err(e, "short bias").contains(&format!("({N})")));
    // A bias that is a matrix.
    let wide = tensor(gpu, &[1, N], &randn(3, N));
    shape_err(
        qgemm_op_with(&mut rec, &x, &qw, &y, None, OutputOp::Bias(&wide), QVariant::Tiled).unwrap_err(),
        "2-D bias",
    );
    // A gate of other rows, or other columns.
    let rows = tensor(gpu, &[3, N], &randn(4, 3 * N));
    shape_err(
        qgemm_op_with(&mut rec, &x, &qw, &y, None, OutputOp::Gate(&rows), QVariant::Tiled).unwrap_err(),
        "gate rows",
    );
    let cols = tensor(gpu, &[2, N + 1], &randn(4, 2 * N + 2));
    let e = qlinear_gated(&mut rec, &x, &qw, None, &cols).unwrap_err();
    assert!(matches!(e, Error::Shape { op: "linear_output_op", .. }), "gate columns: {e:?}");
    // A gate on a product that adds to its output.
    let w = tensor(gpu, &[N, 64], &randn(5, N * 64));
    let gate = tensor(gpu, &[2, N], &randn(6, 2 * N));
    let g = Gemm::new(2, N, 64, false, true).accumulate(true);
    let e = gemm_op_with(&mut rec, &g, &x, &w, &y, None, OutputOp::Gate(&gate), Variant::Naive).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { op: "linear_output_op", .. }), "accumulating gate: {e:?}");
    // A batch of products.
    let g = Gemm { batch: 2, stride_a: 0, stride_b: 0, stride_c: 0, ..Gemm::new(2, N, 64, false, true) };
    let e = gemm_op_with(&mut rec, &g, &x, &w, &y, None, OutputOp::Gate(&gate), Variant::Naive).unwrap_err();
    shape_err(e, "batched");
    // Not f32.
    let ids = Tensor::from_slice(gpu, &[N], &[1u32; N]).unwrap();
    let e = qlinear_into(&mut rec, &x, &qw, &y, false, (None, Some(&ids))).unwrap_err();
    assert!(matches!(e, Error::DType { .. }), "u32 bias: {e:?}");
    // Nothing was recorded; the device is fine.
    rec.submit().unwrap();
}

/// Decoding through each model with an adapter whose hooks leave up_proj's
/// output plain (AdaLoRA: a term only) gates it in the product's store, and
/// qwen2's q, k and v add their biases beside their terms in the store (no
/// k = 1 products); DoRA rescales up_proj's output after its product, so
/// SwiGLU keeps its own launch there. Either way the logits are the full
/// forward's, which runs no op.
#[test]
fn decoding_does_the_ops_where_the_hooks_allow() {
    for gpu in &own_devices() {
        for name in ["llama_gqa", "qwen2_tied"] {
            let model = fixture_model(gpu, name);
            let layers = model.layers.len() as u64;
            let biased = name == "qwen2_tied";
            let on = format!("{name} on {:?}", gpu.kernel_family());
            let (steps, ran) = prefill_and_steps(gpu, &model, &NoHooks, true);
            let ids = [7u32, 300, 12, 45, 99, 3, 150, 8];
            let full = common::adapted_logits(gpu, &model, None, &[ids.to_vec()]);
            assert_close(&format!("{on}: steps vs full"), &steps, &full, 1e-4, 1e-4);
            // Three steps.
            assert_eq!(count(&ran, &|k| k.starts_with("swiglu/")), 0, "{on}: {ran:?}");
            assert_eq!(count(&ran, &|k| k.ends_with("+gate")), 3 * layers, "{on}: {ran:?}");
            assert_eq!(count(&ran, &|k| k.ends_with("+bias")), if biased { 9 * layers } else { 0 }, "{on}");
            for (method, kind) in [("adalora", "adalora"), ("dora", "lora")] {
                let adapter = fixture_adapter(gpu, &model, &format!("{method}/{name}/final_adapter"), kind);
                let (steps, ran) = prefill_and_steps(gpu, &model, hooks_of(Some(&adapter)), true);
                let full = common::adapted_logits(gpu, &model, Some(&adapter), &[ids.to_vec()]);
                let on = format!("{method} {on}");
                assert_close(&format!("{on}: steps vs full"), &steps, &full, 1e-4, 1e-4);
                let plain = method == "adalora";
                assert_eq!(
                    count(&ran, &|k| k.starts_with("swiglu/")),
                    if plain { 0 } else { 3 * layers },
                    "{on}: {ran:?}"
                );
                assert_eq!(count(&ran, &|k| k.ends_with("+low_rank+gate")), if plain { 3 * layers } else { 0 }, "{on}");
                // Every bias in its product's store; AdaLoRA's q, k, v with
                // their terms (but where its budget left a rank of 0), DoRA's
                // alone (its terms stay outside the product).
                assert_eq!(count(&ran, &|k| k.ends_with("+bias")), if biased { 9 * layers } else { 0 }, "{on}");
                let with_term = count(&ran, &|k| k.ends_with("+low_rank+bias"));
                assert_eq!(with_term > 0, biased && plain, "{on}: {ran:?}");
            }
        }
    }
}
