//! LoRA's term `scale·h·Bᵀ` fused into the frozen product's store
//! (`shaders/low_rank.wgsl`): in every kernel, f32 and quantized (the
//! register tiles, the scalar and yardstick entries, the subgroup block, the
//! blocked GEMM with and without split-K, the GEMV's forms, where the row's
//! lanes share the term's products, and the f16 arithmetic), each at 1, 3
//! or 8 rows, ranks 1 and 5, f32, NF4, Q8_0 and f16 weights, N cutting the
//! last tile and K both aligned and not. Each fused
//! output is checked against the same kernel's product without the term
//! plus the term computed on the CPU, so the check holds the epilogue to
//! f32 rounding whatever the kernel's own arithmetic; `qlinear_low_rank` is
//! checked against the CPU whole. The blocked GEMM (real GPUs' training and
//! prefill) at any rows, forward and backward, where the term is LoRA's share
//! of dx = dy·W (B given transposed as lora_A). Also: which products fuse
//! (decoding's few rows everywhere, any rows with the real-GPU kernels) and
//! which add the term with a product of their own, weights split into
//! chunks (each chunk reads its own rows of B), bad terms as typed errors,
//! f32 and NF4 models decoding through a trained LoRA adapter token by
//! token (fused) against their full forward (not fused), and a LoRA and an
//! AdaLoRA training step fused both ways against the same step not fused.

mod common;

use common::{block_on, fixture, gpu, max_abs_diff, randn, store_variants};
use webpeft::gpu::{KernelTime, Recorder};
use webpeft::kernels::blocked::{Blocks, GemvTiles};
use webpeft::kernels::low_rank::{self, LowRank};
use webpeft::kernels::matmul::{gemm_low_rank_with, gemm_with, Gemm, SgTiles, Tiles, Variant};
use webpeft::kernels::qmatmul::{
    qgemm_low_rank_with, qgemm_with, qlinear_backward_low_rank, qlinear_low_rank, QVariant, QWeight,
};
use webpeft::kernels::reference::{assert_close, matmul as cpu};
use webpeft::model::llama::{Hooks, KvCache};
use webpeft::model::{DirFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::LoraAdapter;
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::{DType, Error, Gpu, GpuOptions, KernelFamily, Tensor};

const SCALE: f32 = 0.75;

/// h (m, r) and B (n, r) from seeded values, on the GPU and as f32s. For
/// half the seeds (seed % 4 ≥ 2) the term's h is columns 2..2 + r of a wider one (m, r + 3),
/// as Linears sharing an input read theirs.
fn term(gpu: &Gpu, m: usize, n: usize, r: usize, seed: u64) -> (LowRank, Vec<f32>, Vec<f32>) {
    let h = randn(seed, m * r);
    let b: Vec<f32> = randn(seed + 1, n * r).iter().map(|v| v * 0.5).collect();
    let b_t = Tensor::from_slice(gpu, &[n, r], &b).unwrap();
    let t = match seed % 4 / 2 {
        0 => LowRank::new(Tensor::from_slice(gpu, &[m, r], &h).unwrap(), b_t, SCALE),
        _ => {
            let ld = r + 3;
            let mut wide = randn(seed + 7, m * ld);
            for i in 0..m {
                wide[i * ld + 2..i * ld + 2 + r].copy_from_slice(&h[i * r..(i + 1) * r]);
            }
            LowRank::columns(Tensor::from_slice(gpu, &[m, ld], &wide).unwrap(), 2, b_t, SCALE)
        }
    };
    (t, h, b)
}

/// [`term`] with B stored transposed, (r, n), as the backward's lora_A; the
/// values returned are B's, (n, r), as [`plus_term`] takes them.
fn term_transposed(gpu: &Gpu, m: usize, n: usize, r: usize, seed: u64) -> (LowRank, Vec<f32>, Vec<f32>) {
    let (t, h, b) = term(gpu, m, n, r, seed);
    let bt: Vec<f32> = (0..r * n).map(|i| b[(i % n) * r + i / n]).collect();
    let t = LowRank { b: Tensor::from_slice(gpu, &[r, n], &bt).unwrap(), transposed: true, ..t };
    (t, h, b)
}

/// `base + scale·h·Bᵀ`, the term summed in f64.
fn plus_term(base: &[f32], h: &[f32], b: &[f32], m: usize, n: usize, r: usize) -> Vec<f32> {
    let mut out = base.to_vec();
    for i in 0..m {
        for j in 0..n {
            let t: f64 = (0..r).map(|k| h[i * r + k] as f64 * b[j * r + k] as f64).sum();
            out[i * n + j] += (SCALE as f64 * t) as f32;
        }
    }
    out
}

fn read(gpu: &Gpu, t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec::<f32>(gpu)).unwrap()
}

/// `variant` with the term fused against the same variant without it plus
/// the term: the epilogue's own error is a few f32 roundings. Forward: x (m,
/// in) → y (m, out) with B (out, r); `backward`: dy (m, out) → dx (m, in)
/// with B given transposed (r, in), as LoRA's dx term.
fn check_fused_dir(gpu: &Gpu, qw: &QWeight, m: usize, r: usize, backward: bool, variant: QVariant, seed: u64) {
    let (k, n) = if backward { (qw.rows, qw.cols) } else { (qw.cols, qw.rows) };
    let x = Tensor::from_slice(gpu, &[m, k], &randn(seed, m * k)).unwrap();
    let (t, h, b) = if backward { term_transposed(gpu, m, n, r, seed + 2) } else { term(gpu, m, n, r, seed + 2) };
    let plain = Tensor::zeros(gpu, &[m, n], DType::F32).unwrap();
    let fused = Tensor::zeros(gpu, &[m, n], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    qgemm_with(&mut rec, &x, qw, &plain, backward, variant).unwrap();
    qgemm_low_rank_with(&mut rec, &x, qw, &fused, backward, &t, variant).unwrap();
    rec.submit().unwrap();
    let want = plus_term(&read(gpu, &plain), &h, &b, m, n, r);
    let dir = if backward { "dy·W" } else { "x·Wᵀ" };
    let label = format!("{} {:?} {dir} {m}x{n}x{k} r {r} {variant:?}", qw.format.name(), qw.compute());
    assert_close(&label, &read(gpu, &fused), &want, 1e-5, 1e-5);
}

fn check_fused(gpu: &Gpu, qw: &QWeight, m: usize, r: usize, variant: QVariant, seed: u64) {
    check_fused_dir(gpu, qw, m, r, false, variant, seed)
}

#[test]
fn every_kernel_adds_the_term_as_it_stores() {
    let gpu = gpu();
    for (f, format) in [QuantFormat::Nf4, QuantFormat::Q8_0, QuantFormat::F16].into_iter().enumerate() {
        // K = 288: vec4 entries; K = 66 (not for Q8_0's blocks of 32): the
        // scalar entries and the blocked GEMM.
        let ks: &[usize] = if format == QuantFormat::Q8_0 { &[288] } else { &[288, 66] };
        for &k in ks {
            let seed = 100 * f as u64 + k as u64;
            let qw = QWeight::from_f32(gpu, &randn(seed, 45 * k), 45, k, format).unwrap();
            // Each kernel at one of the row counts, in turn.
            for j in 0..store_variants(1, 45).len() {
                let m = [1, 3, 8][(j + f) % 3];
                let r = if j % 2 == 0 { 5 } else { 1 };
                check_fused(gpu, &qw, m, r, store_variants(m, 45)[j], seed + 10 * j as u64);
            }
        }
    }
}

/// f32 weights through matmul.wgsl's kernels (`gemm_low_rank_with`), the
/// same check.
#[test]
fn every_f32_kernel_adds_the_term_as_it_stores() {
    let gpu = gpu();
    for (f, k) in [288, 66].into_iter().enumerate() {
        let w = Tensor::from_slice(gpu, &[45, k], &randn(900 + k as u64, 45 * k)).unwrap();
        let few = |m| Tiles::few_rows(m, false).unwrap();
        let forms: [&dyn Fn(usize) -> Variant; 8] = [
            &|m| Variant::Tiled(few(m)),
            &|m| Variant::Scalar(few(m)),
            &|_| Variant::Naive,
            &|m| Variant::Subgroup(SgTiles::for_gemm(&Gemm::new(m, 45, k, false, true))),
            &|m| Variant::Blocked(Blocks::for_shape(m, 45, 1)),
            &|_| Variant::BlockedSplit(Blocks::MEDIUM, 3),
            &|_| Variant::Gemv(GemvTiles::DEFAULT),
            &|_| Variant::Gemv(GemvTiles::SUBGROUP),
        ];
        for (j, form) in forms.iter().enumerate() {
            let m = [1, 3, 8][(j + f) % 3];
            let r = if j % 2 == 0 { 5 } else { 1 };
            let seed = 1000 + 10 * j as u64 + k as u64;
            let x = Tensor::from_slice(gpu, &[m, k], &randn(seed, m * k)).unwrap();
            let (t, h, b) = term(gpu, m, 45, r, seed + 2);
            let g = Gemm::new(m, 45, k, false, true);
            let (plain, fused) =
                (Tensor::zeros(gpu, &[m, 45], DType::F32).unwrap(), Tensor::zeros(gpu, &[m, 45], DType::F32).unwrap());
            let mut rec = Recorder::new(gpu);
            gemm_with(&mut rec, &g, &x, &w, &plain, form(m)).unwrap();
            gemm_low_rank_with(&mut rec, &g, &x, &w, &fused, &t, form(m)).unwrap();
            rec.submit().unwrap();
            let want = plus_term(&read(gpu, &plain), &h, &b, m, 45, r);
            assert_close(&format!("f32 {m}x45x{k} r {r} {:?}", form(m)), &read(gpu, &fused), &want, 1e-5, 1e-5);
        }
    }
}

/// Products of any rows through the blocked GEMM (the real-GPU kernels'
/// training and prefill), which adds the term as outer products of its
/// tile's rows of h and B: forward with B (out, r) and backward (dx = dy·W)
/// with B given transposed (r, in) as LoRA's dx term, through NF4, Q8_0 and
/// f16 weights, blocks that cut M and N (37 and 130 rows), split-K (whose
/// sum pass adds the term per output); and the backward through the
/// register tiles of few rows (lavapipe's kernels).
#[test]
fn the_blocked_gemm_adds_the_term_at_any_rows_both_ways() {
    let gpu = gpu();
    for (f, format) in [QuantFormat::Nf4, QuantFormat::Q8_0, QuantFormat::F16].into_iter().enumerate() {
        let qw = QWeight::from_f32(gpu, &randn(40 + f as u64, 45 * 288), 45, 288, format).unwrap();
        for (i, backward) in [false, true].into_iter().enumerate() {
            let n = if backward { 288 } else { 45 };
            let forms = [
                (37, QVariant::Blocked(Blocks::for_shape(37, n, 1))),
                (130, QVariant::Blocked(Blocks::LARGE)),
                (130, QVariant::Blocked(Blocks::MEDIUM)),
                (37, QVariant::BlockedSplit(Blocks::MEDIUM, 3)),
                (3, QVariant::Tiled),
            ];
            for (j, (m, v)) in forms.into_iter().enumerate() {
                let r = [5, 1, 16][(i + j + f) % 3];
                check_fused_dir(gpu, &qw, m, r, backward, v, 2000 + 100 * f as u64 + 10 * j as u64 + i as u64);
            }
        }
    }
    // f32 weights through matmul.wgsl's blocked kernel: y = x·Wᵀ and dx = dy·W.
    let w = randn(77, 45 * 288);
    let wt = Tensor::from_slice(gpu, &[45, 288], &w).unwrap();
    for (i, backward) in [false, true].into_iter().enumerate() {
        let (k, n) = if backward { (45, 288) } else { (288, 45) };
        for (j, (m, v)) in [
            (37, Variant::Blocked(Blocks::for_shape(37, n, 1))),
            (130, Variant::Blocked(Blocks::LARGE)),
            (37, Variant::BlockedSplit(Blocks::MEDIUM, 3)),
            (3, Variant::Tiled(Tiles::few_rows(3, false).unwrap())),
        ]
        .into_iter()
        .enumerate()
        {
            let r = [5, 16][(i + j) % 2];
            let seed = 3000 + 10 * j as u64 + i as u64;
            let x = Tensor::from_slice(gpu, &[m, k], &randn(seed, m * k)).unwrap();
            let (t, h, b) =
                if backward { term_transposed(gpu, m, n, r, seed + 2) } else { term(gpu, m, n, r, seed + 2) };
            let g = Gemm::new(m, n, k, false, !backward);
            let (plain, fused) =
                (Tensor::zeros(gpu, &[m, n], DType::F32).unwrap(), Tensor::zeros(gpu, &[m, n], DType::F32).unwrap());
            let mut rec = Recorder::new(gpu);
            gemm_with(&mut rec, &g, &x, &wt, &plain, v).unwrap();
            gemm_low_rank_with(&mut rec, &g, &x, &wt, &fused, &t, v).unwrap();
            rec.submit().unwrap();
            let want = plus_term(&read(gpu, &plain), &h, &b, m, n, r);
            assert_close(&format!("f32 {g:?} r {r} {v:?}"), &read(gpu, &fused), &want, 1e-5, 1e-5);
        }
    }
}

/// f16 arithmetic (where the device has shader-f16): the f16 tiles, GEMV
/// and blocked GEMM divide the row scale out before the store adds the term.
#[test]
fn f16_compute_adds_the_term_in_f32() {
    let gpu = gpu();
    let mut qw = QWeight::from_f32(gpu, &randn(7, 45 * 264), 45, 264, QuantFormat::Nf4).unwrap();
    if qw.set_compute(gpu, ComputeDtype::F16).unwrap() != ComputeDtype::F16 {
        eprintln!("no shader-f16 on {}: the f32 kernels were checked above", gpu.describe());
        return;
    }
    for (i, m) in [1, 3, 8].into_iter().enumerate() {
        for (j, v) in [
            QVariant::Tiled,
            QVariant::Blocked(Blocks::for_shape(m, 45, 1)),
            QVariant::Gemv(GemvTiles::DEFAULT),
            QVariant::Gemv(GemvTiles::SUBGROUP),
        ]
        .into_iter()
        .enumerate()
        {
            check_fused(gpu, &qw, m, 4, v, 500 + 10 * i as u64 + j as u64);
        }
    }
    // The blocked f16 kernel at many rows, both ways, and split in 3 (split
    // 0 adds the term).
    for (i, backward) in [false, true].into_iter().enumerate() {
        let n = if backward { 264 } else { 45 };
        for (j, (m, v)) in [
            (37, QVariant::Blocked(Blocks::for_shape(37, n, 1))),
            (130, QVariant::Blocked(Blocks::for_shape(130, n, 1))),
            (37, QVariant::BlockedSplit(Blocks::MEDIUM, 3)),
        ]
        .into_iter()
        .enumerate()
        {
            check_fused_dir(gpu, &qw, m, 16, backward, v, 600 + 10 * i as u64 + j as u64);
        }
    }
}

/// A device of its own for each kernel family: the profile counts every
/// launch on a device, and the tests of a file run at once.
fn own_devices() -> [Gpu; 2] {
    [KernelFamily::Auto, KernelFamily::Gpu]
        .map(|kernels| block_on(Gpu::with_options(GpuOptions { kernels, ..Default::default() })).unwrap())
}

/// Launches of f32 products with no term fused (matmul.wgsl's kernels).
fn plain_products(ran: &[KernelTime]) -> u64 {
    ran.iter().filter(|k| k.kernel.starts_with("matmul") && !k.kernel.contains("+low_rank")).map(|k| k.calls).sum()
}

/// Launches in a profile, of the kernels that are fused or not (a fused
/// term's label may go on with an output op's: `+low_rank+gate`).
fn launches(ran: &[KernelTime], fused: bool) -> u64 {
    ran.iter().filter(|k| k.kernel.contains("+low_rank") == fused).map(|k| k.calls).sum()
}

/// `qlinear_low_rank` against the CPU: x·Wᵀ on the dequantized W plus the
/// term; returns the launches that ran, (fused, not fused).
fn check_linear(gpu: &Gpu, qw: &QWeight, m: usize, r: usize, seed: u64) -> (u64, u64) {
    check_qlinear(gpu, qw, m, r, false, seed)
}

/// `qlinear_backward_low_rank` against the CPU: dy·W on the dequantized W
/// plus the term with B given transposed (r, in), into a dx holding ones
/// (it is overwritten).
fn check_backward(gpu: &Gpu, qw: &QWeight, m: usize, r: usize, seed: u64) -> (u64, u64) {
    check_qlinear(gpu, qw, m, r, true, seed)
}

/// [`check_linear`] forward or, with `backward`, [`check_backward`].
fn check_qlinear(gpu: &Gpu, qw: &QWeight, m: usize, r: usize, backward: bool, seed: u64) -> (u64, u64) {
    let (k, n) = if backward { (qw.rows, qw.cols) } else { (qw.cols, qw.rows) };
    let xs = randn(seed, m * k);
    let x = Tensor::from_slice(gpu, &[m, k], &xs).unwrap();
    let (t, h, b) = if backward { term_transposed(gpu, m, n, r, seed + 2) } else { term(gpu, m, n, r, seed + 2) };
    let out = Tensor::from_slice(gpu, &[m, n], &vec![1.0; m * n]).unwrap();
    gpu.set_profiling(true).unwrap();
    let mut rec = Recorder::new(gpu);
    let y = match backward {
        true => qlinear_backward_low_rank(&mut rec, &x, qw, &out, false, &t).map(|()| out),
        false => qlinear_low_rank(&mut rec, &x, qw, &t),
    }
    .unwrap();
    rec.submit().unwrap();
    gpu.set_profiling(false).unwrap();
    let ran = block_on(gpu.take_profile()).unwrap();
    let deq = block_on(qw.to_f32(gpu)).unwrap();
    let mut base = vec![0.0; m * n];
    cpu::matmul(&xs, &deq, &mut base, m, n, k, false, !backward, false);
    let want = plus_term(&base, &h, &b, m, n, r);
    let dir = if backward { "dy·W" } else { "x·Wᵀ" };
    let label = format!("{} {dir} {m}x{n}x{k} chunks {}", qw.format.name(), qw.chunks.len());
    assert_close(&label, &read(gpu, &y), &want, 1e-4 * (k as f32).sqrt(), 1e-4);
    (launches(&ran, true), launches(&ran, false))
}

/// Decoding's products (at most `LowRank::FUSED_ROWS` rows) run one kernel
/// with the term in its store, on lavapipe's kernels and on the real-GPU
/// family (the GEMV), through quantized and f32 weights; longer ones fuse it
/// too with the real-GPU family (the blocked GEMM), and on lavapipe's
/// kernels add it with a product of their own, as every product does with
/// the fusion off.
#[test]
fn decoding_fuses_and_longer_products_add_the_term_after() {
    for gpu in &own_devices() {
        let long = if gpu.kernel_family() == KernelFamily::Gpu { (1, 0) } else { (0, 2) };
        let qw = QWeight::from_f32(gpu, &randn(1, 45 * 264), 45, 264, QuantFormat::Nf4).unwrap();
        for m in [1, LowRank::FUSED_ROWS] {
            assert_eq!(check_linear(gpu, &qw, m, 5, 10 + m as u64), (1, 0), "{m} rows on {}", gpu.describe());
        }
        assert_eq!(check_linear(gpu, &qw, LowRank::FUSED_ROWS + 1, 5, 30), long);
        assert_eq!(check_linear(gpu, &qw, 70, 5, 35), long);
        let f32w = QWeight::from_f32(gpu, &randn(2, 45 * 264), 45, 264, QuantFormat::F32).unwrap();
        assert_eq!(check_linear(gpu, &f32w, 1, 5, 40), (1, 0));
        assert_eq!(check_linear(gpu, &f32w, LowRank::FUSED_ROWS + 1, 5, 50), long);
        // Turned off (the benchmark's comparison), every product adds it after.
        low_rank::set_fused(gpu, false);
        assert_eq!(check_linear(gpu, &qw, 1, 5, 60), (0, 2));
        low_rank::set_fused(gpu, true);
        assert_eq!(check_linear(gpu, &qw, 1, 5, 70), (1, 0));
    }
}

/// A weight split into row chunks (an 8 KiB binding limit): each chunk's
/// launch adds the term with its own rows of B; going backward, only the
/// first chunk's launch adds it.
#[test]
fn chunked_weights_read_their_own_rows_of_b() {
    let options = GpuOptions { max_binding_bytes: Some(8192), ..Default::default() };
    let gpu = &block_on(Gpu::with_options(options)).unwrap();
    for (i, format) in [QuantFormat::Nf4, QuantFormat::Q8_0].into_iter().enumerate() {
        let qw = QWeight::from_f32(gpu, &randn(60 + i as u64, 150 * 256), 150, 256, format).unwrap();
        assert!(qw.chunks.len() > 1, "{} chunks", qw.chunks.len());
        assert_eq!(check_linear(gpu, &qw, 2, 3, 70 + i as u64), (qw.chunks.len() as u64, 0));
        // Backward, dx = dy·W + s·h·Bᵀ: every chunk adds into all of dx, the first adds the term.
        let chunks = qw.chunks.len() as u64;
        assert_eq!(check_backward(gpu, &qw, 2, 3, 80 + i as u64), (1, chunks - 1), "{}", format.name());
    }
}

#[test]
fn bad_terms_are_typed_errors() {
    let gpu = gpu();
    let qw = QWeight::from_f32(gpu, &randn(3, 45 * 264), 45, 264, QuantFormat::Nf4).unwrap();
    let x = Tensor::zeros(gpu, &[2, 264], DType::F32).unwrap();
    let zeros = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32).unwrap();
    let cases = [
        ("h with other rows than x", zeros(&[3, 4]), zeros(&[45, 4])),
        ("B with other rows than W", zeros(&[2, 4]), zeros(&[44, 4])),
        ("ranks that differ", zeros(&[2, 4]), zeros(&[45, 5])),
        ("a 1-D h", zeros(&[8]), zeros(&[45, 4])),
    ];
    for (what, h, b) in cases {
        let t = LowRank::new(h, b, 1.0);
        let mut rec = Recorder::new(gpu);
        let err = qlinear_low_rank(&mut rec, &x, &qw, &t).unwrap_err();
        assert!(matches!(err, Error::Shape { op: "linear_low_rank", .. }), "{what}: {err}");
        eprintln!("{what}: {err}");
    }
    // A shared h must hold the term's columns.
    let t = LowRank::columns(zeros(&[2, 6]), 3, zeros(&[45, 4]), 1.0);
    let err = qlinear_low_rank(&mut Recorder::new(gpu), &x, &qw, &t).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "linear_low_rank", .. }), "columns past h: {err}");
    eprintln!("columns past h: {err}");
    let (t, _, _) = term(gpu, 2, 45, 4, 9);
    let mut rec = Recorder::new(gpu);
    let err = qlinear_low_rank(&mut rec, &zeros(&[2, 263]), &qw, &t).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let f32w = QWeight::from_f32(gpu, &randn(4, 45 * 264), 45, 264, QuantFormat::F32).unwrap();
    let y = zeros(&[2, 45]);
    let err = qgemm_low_rank_with(&mut rec, &x, &f32w, &y, false, &t, QVariant::Tiled).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "linear_low_rank", .. }), "{err}");
    // The backward's term: Bᵀ must be (r, in), and dy (M, out).
    let dy = zeros(&[2, 45]);
    let dx = zeros(&[2, 264]);
    for (what, h, bt) in [
        ("Bᵀ (in, r), not transposed", zeros(&[2, 4]), zeros(&[264, 4])),
        ("Bᵀ with other columns than W", zeros(&[2, 4]), zeros(&[4, 263])),
    ] {
        let t = LowRank::new_transposed(h, bt, 1.0);
        let err = qlinear_backward_low_rank(&mut rec, &dy, &qw, &dx, false, &t).unwrap_err();
        assert!(matches!(err, Error::Shape { op: "linear_low_rank", .. }), "{what}: {err}");
        eprintln!("{what}: {err}");
    }
    let (bt, _, _) = term_transposed(gpu, 2, 264, 4, 11);
    let err = qlinear_backward_low_rank(&mut rec, &x, &qw, &dx, false, &bt).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "dy as wide as x: {err}");
    // matmul's way in: one batch, alpha 1.
    for batch in [1, 2] {
        let g = Gemm::new(2, 45, 264, false, true).batched(batch).alpha(if batch == 1 { 0.5 } else { 1.0 });
        let (x, w, y) = (zeros(&[2 * batch, 264]), zeros(&[45 * batch, 264]), zeros(&[2 * batch, 45]));
        let err = gemm_low_rank_with(&mut rec, &g, &x, &w, &y, &t, Variant::Naive).unwrap_err();
        assert!(matches!(err, Error::Shape { op: "linear_low_rank", .. }), "{g:?}: {err}");
    }
}

/// llama_gqa in NF4 and in f32 with PEFT's trained LoRA adapter (tests/fixtures/lora):
/// a prefill of 4 tokens and then one token at a time, every adapted Linear
/// fused (o_proj and down_proj adding into the residual stream too), against
/// the training forward of the 14 tokens with fusing off (the kernels that
/// ran are read from the profile); and the adapter changes the logits, so
/// the term is there to check.
#[test]
fn adapted_decoding_matches_the_full_forward() {
    for (gpu, format) in own_devices().iter().flat_map(|g| [(g, QuantFormat::Nf4), (g, QuantFormat::F32)]) {
        let files = DirFiles::new(fixture("llama_gqa")).unwrap();
        let model = block_on(Model::load(gpu, &files, format)).unwrap();
        let adapter_files = DirFiles::new(fixture("lora/final_adapter")).unwrap();
        let adapter = Adapter::Lora(block_on(LoraAdapter::load(gpu, &adapter_files, &model.config)).unwrap());
        let v = model.config.vocab_size;
        let ids: Vec<u32> = (0..14).map(|i| ((i * 37 + 11) % v) as u32).collect();
        let t = ids.len();
        let logits = |hooks: &dyn Hooks, from: usize, to: usize, cache: &KvCache| {
            let mut rec = Recorder::new(gpu);
            let input = model.input_ids(gpu, &[ids[from..to].to_vec()]).unwrap();
            let out = model.forward_cached_all(&mut rec, &input, cache, from, hooks).unwrap();
            rec.submit().unwrap();
            read(gpu, &out)
        };
        // The training forward with fusing off (the real-GPU kernels fuse any rows).
        low_rank::set_fused(gpu, false);
        gpu.set_profiling(true).unwrap();
        let mut rec = Recorder::new(gpu);
        let (full, _) = model
            .forward_adapted(&mut rec, &model.input_ids(gpu, std::slice::from_ref(&ids)).unwrap(), &adapter)
            .unwrap();
        rec.submit().unwrap();
        let full = read(gpu, &full);
        let ran_full = block_on(gpu.take_profile()).unwrap();
        low_rank::set_fused(gpu, true);
        let cache = KvCache::new(gpu, &model, 1, t).unwrap();
        let mut steps = logits(&adapter, 0, 4, &cache);
        for i in 4..t {
            steps.extend(logits(&adapter, i, i + 1, &cache));
        }
        let ran_steps = block_on(gpu.take_profile()).unwrap();
        // As a generation runs them: the frozen hooks stack the A's of
        // q, k, v and of gate, up, and each forward takes their x·Aᵀ at once.
        let frozen = Hooks::frozen(&adapter).expect("a LoRA on q, k, v keeps stacked A's");
        let cache = KvCache::new(gpu, &model, 1, t).unwrap();
        let mut generated = logits(frozen.as_ref(), 0, 4, &cache);
        for i in 4..t {
            generated.extend(logits(frozen.as_ref(), i, i + 1, &cache));
        }
        let ran_generated = block_on(gpu.take_profile()).unwrap();
        gpu.set_profiling(false).unwrap();
        assert_eq!(launches(&ran_full, true), 0, "the full forward fused a product");
        // 14 adapted Linears (2 layers × 7) in each of the 11 forwards.
        let forwards = (1 + t - 4) as u64;
        assert_eq!(launches(&ran_steps, true), 14 * forwards, "fused launches");
        assert_eq!(launches(&ran_generated, true), 14 * forwards, "fused launches, frozen");
        // The other f32 products: the lm_head and the x·Aᵀ, 7 a layer alone
        // and 4 with the A's stacked (q, k, v; o; gate, up; down).
        assert_eq!(plain_products(&ran_steps), (1 + 2 * 7) * forwards, "x·Aᵀ launches");
        assert_eq!(plain_products(&ran_generated), (1 + 2 * 4) * forwards, "x·Aᵀ launches, frozen");
        let dg = generated.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(dg <= 1e-4, "decoding through the stacked A's differs from the full forward by {dg}");
        let d = steps.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let base = logits(&webpeft::model::llama::NoHooks, 0, t, &KvCache::new(gpu, &model, 1, t).unwrap());
        let effect = base.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        let on = format!("{} {:?}", format.name(), gpu.kernel_family());
        eprintln!("{on}: token-by-token vs full {d:.2e} ({dg:.2e} frozen); the adapter moves logits by {effect:.2e}");
        assert!(effect > 1e-2, "the adapter changes the logits by only {effect}");
        assert!(d <= 1e-4, "decoding through the fused term differs from the full forward by {d}");
        assert_eq!(steps.len(), t * v);
    }
}

/// A prompt longer than the fused kernels' rows (12 tokens: lavapipe's own
/// kernels add the term with a product of its own, reading h's columns
/// through the product's stride and offset) through the frozen hooks gives
/// the adapter's own logits, on both kernel families.
#[test]
fn a_long_prompt_reads_the_shared_h_too() {
    for gpu in [common::gpu(), common::gpu_family()] {
        let files = DirFiles::new(fixture("llama_gqa")).unwrap();
        let model = block_on(Model::load(gpu, &files, QuantFormat::Nf4)).unwrap();
        let adapter_files = DirFiles::new(fixture("lora/final_adapter")).unwrap();
        let adapter = Adapter::Lora(block_on(LoraAdapter::load(gpu, &adapter_files, &model.config)).unwrap());
        let frozen = Hooks::frozen(&adapter).expect("a LoRA on q, k, v keeps stacked A's");
        let v = model.config.vocab_size;
        let ids: Vec<u32> = (0..12).map(|i| ((i * 53 + 5) % v) as u32).collect();
        let logits = |hooks: &dyn Hooks| {
            let cache = KvCache::new(gpu, &model, 1, ids.len()).unwrap();
            let mut rec = Recorder::new(gpu);
            let out = model.forward_cached_all(
                &mut rec,
                &model.input_ids(gpu, std::slice::from_ref(&ids)).unwrap(),
                &cache,
                0,
                hooks,
            );
            let out = out.unwrap();
            rec.submit().unwrap();
            read(gpu, &out)
        };
        let d = max_abs_diff(&logits(frozen.as_ref()), &logits(&adapter));
        assert!(d <= 1e-5, "{:?} kernels: a 12-token prompt through the shared h differs by {d}", gpu.kernel_family());
    }
}

/// One training step (lr 0) of llama_gqa, f32 and NF4, through PEFT's
/// trained LoRA adapter and AdaLoRA's (both factors non-zero, so the term's
/// share of dx is there): the loss and every gradient with the term fused
/// into the frozen products, forward (y) and backward (dx), against the same
/// step with fusing off. On lavapipe's kernels with 6 rows (the register
/// tiles of few rows fuse both ways), on the real-GPU family with 18 (the
/// blocked GEMM). The fused launches are counted in the profile: every
/// adapted Linear, once forward and once backward.
#[test]
fn training_fuses_the_term_both_ways() {
    use common::{adapter_values, fixture_adapter, fixture_batch, Fixture};
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let fx = Fixture::open("lora/reference.safetensors");
    for gpu in &own_devices() {
        let batch = match gpu.kernel_family() {
            KernelFamily::Gpu => fixture_batch(&fx, 0..2),
            _ => {
                let b = fixture_batch(&fx, 0..1);
                webpeft::train::data::Batch::new(vec![b.input_ids[0][..6].to_vec()], vec![b.labels[0][..6].to_vec()])
            }
        };
        let rows = batch.input_ids.iter().map(Vec::len).sum::<usize>();
        for format in [QuantFormat::F32, QuantFormat::Nf4] {
            let model = block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), format)).unwrap();
            for (dir, method) in [("lora/final_adapter", "lora"), ("adalora/llama_gqa/final_adapter", "adalora")] {
                let step = |fused: bool| {
                    low_rank::set_fused(gpu, fused);
                    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
                    let mut trainer = Trainer::new(gpu, fixture_adapter(gpu, &model, dir, method), opt, 0).unwrap();
                    gpu.set_profiling(true).unwrap();
                    let stats = block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 0.0)).unwrap();
                    gpu.set_profiling(false).unwrap();
                    let ran = block_on(gpu.take_profile()).unwrap();
                    low_rank::set_fused(gpu, true);
                    (stats.loss, adapter_values(gpu, trainer.gradients()), launches(&ran, true))
                };
                let (loss, grads, fused) = step(true);
                let (loss_plain, grads_plain, none) = step(false);
                let on = format!("{} {method} {:?} {rows} rows", format.name(), gpu.kernel_family());
                assert_eq!(none, 0, "{on}: fused with fusing off");
                // Two of AdaLoRA's 14 modules kept no rank: 12 are adapted.
                let adapted = if method == "lora" { 14 } else { 12 };
                assert_eq!(fused, 2 * adapted, "{on}: fused launches");
                assert!((loss - loss_plain).abs() <= 1e-5, "{on}: loss {loss} vs {loss_plain}");
                let mut worst = 0f32;
                for ((key, got), (_, want)) in grads.iter().zip(&grads_plain) {
                    assert_close(&format!("{on} {key}"), got, want, 2e-5, 1e-4);
                    worst = worst.max(got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
                }
                eprintln!("{on}: {} gradients, fused vs not max |diff| {worst:.2e}", grads.len());
            }
        }
    }
}
