//! NF4, Q8_0, f16 and bf16 on the GPU: quantize bit-exact with the CPU formats (which
//! match bitsandbytes, ggml and IEEE rounding, see tests/fixtures), dequantize, and the
//! quantized matmul forward and backward against the CPU reference on the
//! dequantized weight, including weights split across bindings.

mod common;
use common::{block_on, check_weight_matmul, gpu, randn};
use half::{bf16, f16};
use webpeft::gpu::Recorder;
use webpeft::kernels::blocked::{Blocks, GemvTiles};
use webpeft::kernels::matmul::{subgroups_usable, SgTiles, Tiles};
use webpeft::kernels::qmatmul::{qgemm_with, qlinear, qlinear_backward_input, QVariant, QWeight};
use webpeft::kernels::quant::{dequantize, quantize, Packed};
use webpeft::kernels::reference::{assert_close, matmul as cpu};
use webpeft::quant::{quantize_nf4, quantize_q8_0, to_bf16, to_f16, ComputeDtype, QuantError, QuantFormat};
use webpeft::{DType, Error, Gpu, GpuOptions, Tensor};

/// Values that stress the rounding: bf16-rounded normals (many land on
/// k+0.5 after Q8_0 scaling), exact NF4 midpoints, an all-zero block, tiny
/// values whose Q8_0 scale is an f16 subnormal.
fn tricky(n: usize, seed: u64) -> Vec<f32> {
    let mut x: Vec<f32> = randn(seed, n).into_iter().map(|v| f32::from_bits(v.to_bits() & 0xffff_0000)).collect();
    for v in x.iter_mut().skip(64).take(64) {
        *v = 0.0;
    }
    if n > 200 {
        // Block 2 (values 128..192) has absmax 1, so each value below is its own
        // scaled value: every NF4 threshold, and at the four thresholds where
        // bitsandbytes' CUDA literals sit one ulp away, the value that tells the
        // two apart.
        for v in &mut x[128..192] {
            *v *= 0.1;
        }
        x[128] = 1.0;
        for (i, t) in webpeft::quant::NF4_THRESHOLDS.iter().enumerate() {
            x[130 + i] = *t;
        }
        for (i, bits) in [0xbf591cd9u32, 0x3df64863, 0x3f006d03, 0x3f5c89d9].into_iter().enumerate() {
            x[150 + i] = f32::from_bits(bits);
        }
    }
    if n >= 256 {
        for (i, v) in x.iter_mut().skip(192).take(64).enumerate() {
            *v = (i as f32 - 31.5) * 1e-6;
        }
    }
    x
}

#[test]
fn nf4_quantize_is_bit_exact_with_the_cpu_format() {
    let gpu = gpu();
    for (n, seed) in [(1000, 1), (999, 2), (64, 3), (7, 4), (4096 + 33, 5)] {
        let x = tricky(n, seed);
        let want = quantize_nf4(&x);
        let t = Tensor::from_slice(gpu, &[n], &x).unwrap();
        let mut rec = Recorder::new(gpu);
        let packed = quantize(&mut rec, &t, QuantFormat::Nf4).unwrap();
        let y = dequantize(&mut rec, &packed).unwrap();
        rec.submit().unwrap();
        let codes: Vec<u8> = block_on(packed.codes.to_vec(gpu)).unwrap();
        let absmax: Vec<f32> = block_on(packed.scales.to_vec(gpu)).unwrap();
        assert_eq!(codes, want.codes, "NF4 codes for n={n}");
        assert_eq!(
            absmax.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.absmax.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let got: Vec<f32> = block_on(y.to_vec(gpu)).unwrap();
        let deq = want.dequantize();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            deq.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "NF4 dequantize n={n}"
        );
    }
}

#[test]
fn q8_0_quantize_is_bit_exact_with_the_cpu_format() {
    let gpu = gpu();
    for (rows, cols, seed) in [(1, 1024, 1), (3, 96, 2), (5, 32, 3), (7, 160, 4)] {
        let x = tricky(rows * cols, seed);
        let want = quantize_q8_0(&x, rows, cols).unwrap();
        let t = Tensor::from_slice(gpu, &[rows * cols], &x).unwrap();
        let mut rec = Recorder::new(gpu);
        let packed = quantize(&mut rec, &t, QuantFormat::Q8_0).unwrap();
        let y = dequantize(&mut rec, &packed).unwrap();
        rec.submit().unwrap();
        let qs: Vec<u8> = block_on(packed.codes.to_vec(gpu)).unwrap();
        let scales: Vec<f16> = block_on(packed.scales.to_vec(gpu)).unwrap();
        assert_eq!(qs, want.qs.iter().map(|&q| q as u8).collect::<Vec<_>>(), "Q8_0 values {rows}x{cols}");
        assert_eq!(
            scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>(),
            want.scales.iter().map(|s| s.to_bits()).collect::<Vec<_>>()
        );
        let got: Vec<f32> = block_on(y.to_vec(gpu)).unwrap();
        assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.dequantize().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

/// Quantizes `base` with `special` written over its first values into a
/// 16-bit `format` on the GPU, at odd lengths (the last word half empty):
/// the codes must be `round`'s bits and dequantizing must widen them exactly.
fn check_16_bit(format: QuantFormat, base: fn(u64, usize) -> Vec<f32>, special: &[f32], round: fn(&[f32]) -> Vec<u16>) {
    let gpu = gpu();
    for (n, seed) in [(1001, 1), (10, 2), (7, 3), (4096 + 33, 4)] {
        let mut x = base(seed, n);
        for (v, s) in x.iter_mut().zip(special) {
            *v = *s;
        }
        let want = round(&x);
        let t = Tensor::from_slice(gpu, &[n], &x).unwrap();
        let mut rec = Recorder::new(gpu);
        let packed = quantize(&mut rec, &t, format).unwrap();
        let y = dequantize(&mut rec, &packed).unwrap();
        rec.submit().unwrap();
        assert_eq!(packed.bytes(), format.bytes_for(1, n).next_multiple_of(16) as u64, "2 bytes a value");
        let got: Vec<u16> = match format {
            QuantFormat::F16 => {
                block_on(packed.codes.to_vec::<f16>(gpu)).unwrap().iter().map(|h| h.to_bits()).collect()
            }
            _ => block_on(packed.codes.to_vec::<bf16>(gpu)).unwrap().iter().map(|h| h.to_bits()).collect(),
        };
        assert_eq!(got, want, "{format} codes n={n}");
        let back: Vec<f32> = block_on(y.to_vec(gpu)).unwrap();
        let widened: Vec<f32> = match format {
            QuantFormat::F16 => want.iter().map(|&h| f16::from_bits(h).to_f32()).collect(),
            _ => want.iter().map(|&h| bf16::from_bits(h).to_f32()).collect(),
        };
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            widened.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{format} dequantize n={n}"
        );
    }
}

/// f16 round-to-nearest-even, as `tensor.half()`: exact ties both ways,
/// subnormals, values that round to the smallest subnormal or to zero, and
/// f16::MAX.
#[test]
fn f16_quantize_is_bit_exact_with_the_cpu_format() {
    let ulp = 2f32.powi(-10);
    let special = [
        1.0 + ulp / 2.0,           // tie: down to the even 1
        1.0 + 3.0 * ulp / 2.0,     // tie: up to the even 1 + 2 ulp
        -(1.0 + ulp / 2.0 + 1e-7), // just past the tie: away
        3e-5,                      // subnormal in f16
        -2.9e-8,                   // under half the smallest subnormal: -0
        3.0e-8,                    // over it: the smallest subnormal
        65504.0,
        -65519.0, // rounds to -f16::MAX
        0.0,
        -0.0,
    ];
    check_16_bit(
        QuantFormat::F16,
        |seed, n| tricky(n, seed),
        &special,
        |x| to_f16(x).unwrap().iter().map(|h| h.to_bits()).collect(),
    );
    // A weight past f16's range is refused, naming the value and where it is.
    let mut w = randn(5, 4 * 8);
    w[13] = 1e5;
    let err = QWeight::from_f32(gpu(), &w, 4, 8, QuantFormat::F16).unwrap_err();
    assert!(matches!(err, Error::Quant(QuantError::F16Range { index: 13, .. })), "{err}");
}

/// bf16 round-to-nearest-even, as `tensor.to(torch.bfloat16)`: exact ties
/// both ways, values that round up into the next binade and past f32::MAX to
/// infinity, f32 subnormals, and values already in bf16 (kept).
#[test]
fn bf16_quantize_is_bit_exact_with_the_cpu_format() {
    let ulp = 2f32.powi(-7);
    let special = [
        1.0 + ulp / 2.0,                     // tie: down to the even 1
        1.0 + 3.0 * ulp / 2.0,               // tie: up to the even 1 + 2 ulp
        -(1.0 + ulp / 2.0 + 2f32.powi(-20)), // just past the tie: away
        f32::from_bits(0x3fff_ffff),         // up into the next binade: 2
        f32::MAX,                            // past bf16's largest: infinity
        f32::from_bits(0x0000_8001),         // an f32 subnormal, rounded
        f32::from_bits(0x8012_0000),         // a bf16 subnormal, kept
        -1.5,
        0.0,
        -0.0,
    ];
    check_16_bit(QuantFormat::Bf16, randn, &special, |x| to_bf16(x).iter().map(|h| h.to_bits()).collect());
}

#[test]
fn q8_0_rejects_rows_that_are_not_whole_blocks() {
    let gpu = gpu();
    let t = Tensor::zeros(gpu, &[40], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = quantize(&mut rec, &t, QuantFormat::Q8_0).unwrap_err();
    assert!(matches!(err, Error::Quant(_)), "{err}");
    let err = QWeight::from_f32(gpu, &[0.0; 40], 2, 20, QuantFormat::Q8_0).unwrap_err();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
    let err = QWeight::zeros(gpu, 2, 20, QuantFormat::Q8_0).unwrap_err();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
}

/// The autotuner's operands: a weight of zeros made on the GPU, in every
/// format, reads back as zeros of its shape and multiplies to zeros.
#[test]
fn a_weight_of_zeros_is_made_on_the_gpu() {
    let gpu = gpu();
    for format in [QuantFormat::F32, QuantFormat::F16, QuantFormat::Bf16, QuantFormat::Q8_0, QuantFormat::Nf4] {
        let (rows, cols) = (5, 64);
        let w = QWeight::zeros(gpu, rows, cols, format).unwrap();
        assert_eq!(block_on(w.to_f32(gpu)).unwrap(), vec![0.0; rows * cols], "{format:?}");
        let x = Tensor::from_slice(gpu, &[3, cols], &randn(7, 3 * cols)).unwrap();
        let mut rec = Recorder::new(gpu);
        let y = qlinear(&mut rec, &x, &w).unwrap();
        rec.submit().unwrap();
        assert_eq!(block_on(y.to_vec::<f32>(gpu)).unwrap(), vec![0.0; 3 * rows], "{format:?}");
    }
}

/// y = x·Wᵀ and dx = dy·W through the quantized weight against the CPU
/// reference on its dequantized values.
fn check_qmatmul(gpu: &Gpu, m: usize, rows: usize, cols: usize, format: QuantFormat, variant: QVariant, seed: u64) {
    let qw = QWeight::from_f32(gpu, &randn(seed, rows * cols), rows, cols, format).unwrap();
    let deq = block_on(qw.to_f32(gpu)).unwrap();
    check_weight_matmul(gpu, &qw, &deq, m, variant, seed, format.name());
}

#[test]
fn nf4_matmul_forward_and_backward() {
    let gpu = gpu();
    check_qmatmul(gpu, 37, 68, 128, QuantFormat::Nf4, QVariant::Tiled, 10); // vec4 path, ragged M and N
    check_qmatmul(gpu, 13, 21, 50, QuantFormat::Nf4, QVariant::Tiled, 11); // blocks span rows: scalar path
    check_qmatmul(gpu, 9, 20, 36, QuantFormat::Nf4, QVariant::Naive, 12);
    check_qmatmul(gpu, 1, 68, 128, QuantFormat::Nf4, QVariant::Tiled, 13); // decoding: the few-rows tiles
    check_qmatmul(gpu, 3, 21, 50, QuantFormat::Nf4, QVariant::Tiled, 14);
}

#[test]
fn q8_0_matmul_forward_and_backward() {
    let gpu = gpu();
    check_qmatmul(gpu, 37, 68, 96, QuantFormat::Q8_0, QVariant::Tiled, 20);
    check_qmatmul(gpu, 5, 23, 64, QuantFormat::Q8_0, QVariant::Tiled, 21); // odd rows: scalar backward
    check_qmatmul(gpu, 9, 20, 32, QuantFormat::Q8_0, QVariant::Naive, 22);
}

/// f16 and bf16 weights: every kernel path, and the weights the kernels
/// multiply are exactly the CPU's rounding, 2 bytes each.
#[test]
fn sixteen_bit_matmul_forward_and_backward() {
    let gpu = gpu();
    for (format, seed) in [(QuantFormat::F16, 30), (QuantFormat::Bf16, 40)] {
        check_qmatmul(gpu, 37, 68, 128, format, QVariant::Tiled, seed); // vec4 path, ragged M and N
        check_qmatmul(gpu, 13, 21, 50, format, QVariant::Tiled, seed + 1); // K not a multiple of 4: scalar path
        check_qmatmul(gpu, 9, 20, 36, format, QVariant::Naive, seed + 2);
        check_qmatmul(gpu, 1, 68, 128, format, QVariant::Tiled, seed + 3); // decoding: the few-rows tiles
        let w = randn(seed + 4, 5 * 12);
        let qw = QWeight::from_f32(gpu, &w, 5, 12, format).unwrap();
        let want: Vec<f32> = match format {
            QuantFormat::F16 => to_f16(&w).unwrap().iter().map(|h| h.to_f32()).collect(),
            _ => to_bf16(&w).iter().map(|h| h.to_f32()).collect(),
        };
        assert_eq!(block_on(qw.to_f32(gpu)).unwrap(), want, "{format}");
        let bytes = (5 * 12 * 2usize).next_multiple_of(16) as u64;
        assert_eq!(qw.bytes(), bytes, "{format}: 2 bytes a weight, in whole 16-byte units");
    }
    // Past f16's range is fine for bf16: it has f32's exponents.
    let mut big = randn(45, 4 * 8);
    big[13] = 1e30;
    let qw = QWeight::from_f32(gpu, &big, 4, 8, QuantFormat::Bf16).unwrap();
    assert_eq!(block_on(qw.to_f32(gpu)).unwrap()[13], bf16::from_f32(1e30).to_f32());
}

/// The subgroup kernels (8-lane subgroups: lavapipe). On other devices the
/// variant falls back to the tiled kernel, which these cases then check.
#[test]
fn subgroup_matmul_forward_and_backward() {
    let gpu = gpu();
    let sg = QVariant::subgroup();
    for format in [QuantFormat::Nf4, QuantFormat::Q8_0, QuantFormat::F16, QuantFormat::Bf16] {
        // Ragged M and N: neither a multiple of the 32-row block nor of the
        // 8·16 columns a subgroup covers (forward N = 68, backward N = 96).
        check_qmatmul(gpu, 37, 68, 96, format, sg, 60);
        // Several blocks each way, and the backward's N (160) ragged too.
        check_qmatmul(gpu, 70, 260, 160, format, sg, 61);
        // Few rows: still the subgroup kernel when asked for explicitly.
        check_qmatmul(gpu, 3, 36, 64, format, sg, 62);
    }
    // A smaller block with rows a multiple of 8 (not of 32).
    check_qmatmul(gpu, 45, 52, 128, QuantFormat::Nf4, QVariant::Subgroup(SgTiles { sr: 24, tn: 8 }), 63);
    // Rows that blocks span (NF4 64-value blocks cross W rows): no vec4
    // layout, so it falls back to the scalar tiled kernel.
    check_qmatmul(gpu, 13, 21, 50, QuantFormat::Nf4, sg, 64);
    // A block over the accumulator limit is refused.
    let qw = QWeight::from_f32(gpu, &randn(65, 16 * 64), 16, 64, QuantFormat::Nf4).unwrap();
    let x = Tensor::zeros(gpu, &[16, 64], DType::F32).unwrap();
    let y = Tensor::zeros(gpu, &[16, 16], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = qgemm_with(&mut rec, &x, &qw, &y, false, QVariant::Subgroup(SgTiles { sr: 64, tn: 16 }));
    if subgroups_usable(gpu) {
        assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
    }
}

/// The kernels of real GPUs: the blocked GEMM (dequantizing as it stages W)
/// in both directions with every block shape it picks (and double-buffered), NF4 blocks spanning
/// rows (no vec4 layout), and the decoding GEMV for 1-8 rows (its backward
/// falls back to the blocked kernel).
#[test]
fn blocked_and_gemv_matmul_forward_and_backward() {
    let gpu = gpu();
    let formats = [QuantFormat::Nf4, QuantFormat::Q8_0, QuantFormat::F16, QuantFormat::Bf16];
    for (f, format) in formats.into_iter().enumerate() {
        let seed = 80 + 10 * f as u64;
        let double = Blocks::MEDIUM.double_buffered();
        for b in [Blocks::LARGE, Blocks::MEDIUM, Blocks::for_shape(100, 16, 1), Blocks::for_shape(16, 100, 1), double] {
            check_qmatmul(gpu, 37, 68, 96, format, QVariant::Blocked(b), seed);
            check_qmatmul(gpu, 70, 150, 160, format, QVariant::Blocked(b), seed + 1);
        }
        for m in [1, 3, 8] {
            check_qmatmul(gpu, m, 68, 1056, format, QVariant::Gemv(GemvTiles::DEFAULT), seed + 2);
        }
    }
    check_qmatmul(gpu, 13, 21, 50, QuantFormat::Nf4, QVariant::Blocked(Blocks::MEDIUM), 111);
    // Split-K in both directions (K = 1056 forward, 68 backward: 3 uneven splits of each).
    check_qmatmul(gpu, 5, 68, 1056, QuantFormat::Nf4, QVariant::BlockedSplit(Blocks::MEDIUM, 3), 113);
    check_qmatmul(gpu, 5, 68, 1056, QuantFormat::Nf4, QVariant::BlockedSplit(Blocks::LARGE.double_buffered(), 3), 115);
    check_qmatmul(gpu, 5, 68, 1056, QuantFormat::Q8_0, QVariant::BlockedSplit(Blocks::for_shape(5, 68, 1), 4), 114);
    check_qmatmul(gpu, 2, 21, 50, QuantFormat::F16, QVariant::Gemv(GemvTiles::DEFAULT), 112);
    check_qmatmul(gpu, 2, 21, 50, QuantFormat::Bf16, QVariant::Gemv(GemvTiles::DEFAULT), 116);
}

/// `qlinear` and `qlinear_backward_input` pick the subgroup kernel for many
/// aligned rows and the few-rows tiles for a few, through weights split into
/// row chunks too.
#[test]
fn qlinear_uses_the_tuned_kernel() {
    let gpu = gpu();
    let g = |m| webpeft::kernels::matmul::Gemm::new(m, 64, 64, false, true);
    let many = QVariant::tuned(gpu, QuantFormat::Nf4, &g(Tiles::FEW_ROWS + 1), true, false, ComputeDtype::F32);
    assert_eq!(many == QVariant::subgroup(), subgroups_usable(gpu), "{many:?} on {}", gpu.describe());
    assert_eq!(
        QVariant::tuned(gpu, QuantFormat::Nf4, &g(Tiles::FEW_ROWS), true, false, ComputeDtype::F32),
        QVariant::Tiled
    );
    assert_eq!(QVariant::tuned(gpu, QuantFormat::Nf4, &g(100), false, false, ComputeDtype::F32), QVariant::Tiled);
    let small =
        block_on(Gpu::with_options(GpuOptions { max_binding_bytes: Some(8192), ..Default::default() })).unwrap();
    for (g, format, m, rows, cols, seed) in [
        (gpu, QuantFormat::Nf4, 41, 72, 128, 70),
        (gpu, QuantFormat::Q8_0, 33, 100, 64, 71),
        (gpu, QuantFormat::Nf4, 5, 72, 128, 72),
        // 10-row chunks: dy's column offset is aligned in every other one,
        // so chunks mix the subgroup and the scalar kernel.
        (&small, QuantFormat::Nf4, 9, 90, 192, 73),
        (&small, QuantFormat::Q8_0, 9, 90, 128, 74), // 16-row chunks
    ] {
        let w = randn(seed, rows * cols);
        let qw = QWeight::from_f32(g, &w, rows, cols, format).unwrap();
        let deq = block_on(qw.to_f32(g)).unwrap();
        let x = randn(seed + 1, m * cols);
        let dy = randn(seed + 2, m * rows);
        let mut rec = Recorder::new(g);
        let y = qlinear(&mut rec, &Tensor::from_slice(g, &[m, cols], &x).unwrap(), &qw).unwrap();
        let dx = qlinear_backward_input(&mut rec, &Tensor::from_slice(g, &[m, rows], &dy).unwrap(), &qw).unwrap();
        rec.submit().unwrap();
        let mut want_y = vec![0.0; m * rows];
        cpu::matmul(&x, &deq, &mut want_y, m, rows, cols, false, true, false);
        let mut want_dx = vec![0.0; m * cols];
        cpu::matmul(&dy, &deq, &mut want_dx, m, cols, rows, false, false, false);
        let label = format!("qlinear {} {m}x{rows}x{cols} chunks={}", format.name(), qw.chunks.len());
        let tol = 1e-4 * (cols.max(rows) as f32).sqrt();
        assert_close(&format!("{label} forward"), &block_on(y.to_vec::<f32>(g)).unwrap(), &want_y, tol, 1e-4);
        assert_close(&format!("{label} backward"), &block_on(dx.to_vec::<f32>(g)).unwrap(), &want_dx, tol, 1e-4);
    }
}

#[test]
fn f32_weight_through_the_same_api() {
    check_qmatmul(gpu(), 11, 30, 44, QuantFormat::F32, QVariant::Tiled, 30);
}

#[test]
fn cpu_packed_weights_upload_unchanged() {
    let gpu = gpu();
    let (rows, cols) = (24, 96);
    let w = randn(40, rows * cols);
    let nf4 = quantize_nf4(&w);
    let q8 = quantize_q8_0(&w, rows, cols).unwrap();
    let a = block_on(QWeight::from_nf4(gpu, &nf4, rows, cols).unwrap().to_f32(gpu)).unwrap();
    let b = block_on(QWeight::from_q8_0(gpu, &q8).unwrap().to_f32(gpu)).unwrap();
    assert_eq!(a, nf4.dequantize());
    assert_eq!(b, q8.dequantize());
    let p = Packed::from_nf4(gpu, &nf4).unwrap();
    assert_eq!(p.len, rows * cols);
}

/// A device that binds at most 8 KiB: weights are split into row chunks, and
/// every format still gives the unsplit result.
#[test]
fn weights_split_across_bindings_under_a_tiny_limit() {
    let small =
        block_on(Gpu::with_options(GpuOptions { max_binding_bytes: Some(8192), ..Default::default() })).unwrap();
    assert_eq!(small.max_binding_bytes(), 8192);
    for (format, cols, seed) in [
        (QuantFormat::F32, 64, 50),
        (QuantFormat::Nf4, 256, 51),
        (QuantFormat::Q8_0, 512, 52),
        (QuantFormat::Nf4, 72, 53),
        (QuantFormat::F16, 96, 54),
        (QuantFormat::Bf16, 96, 55),
    ] {
        let rows = 90;
        let w = randn(seed, rows * cols);
        let qw = QWeight::from_f32(&small, &w, rows, cols, format).unwrap();
        assert!(qw.chunks.len() > 1, "{} {rows}x{cols} should split, got {} chunk(s)", format.name(), qw.chunks.len());
        // The chunks dequantize to exactly the unsplit weight.
        let whole = match format {
            QuantFormat::F32 => w.clone(),
            QuantFormat::Nf4 => quantize_nf4(&w).dequantize(),
            QuantFormat::Q8_0 => quantize_q8_0(&w, rows, cols).unwrap().dequantize(),
            QuantFormat::F16 => to_f16(&w).unwrap().iter().map(|h| h.to_f32()).collect(),
            QuantFormat::Bf16 => to_bf16(&w).iter().map(|h| h.to_f32()).collect(),
        };
        assert_eq!(block_on(qw.to_f32(&small)).unwrap(), whole, "{} chunks", format.name());
        let m = 3;
        check_qmatmul(&small, m, rows, cols, format, QVariant::Tiled, seed);
    }
    // A tensor over the limit is refused with a typed error when bound.
    let big = Tensor::zeros(&small, &[4096], DType::F32).unwrap();
    let w = Tensor::zeros(&small, &[4, 4096], DType::F32).unwrap();
    let mut rec = Recorder::new(&small);
    let err = webpeft::kernels::matmul::linear(&mut rec, &big.reshape(&[1, 4096]).unwrap(), &w).unwrap_err();
    assert!(matches!(err, Error::OverLimit { limit: 8192, .. }), "{err}");
    // One row that can't fit any binding is refused before anything is uploaded.
    let err = QWeight::from_f32(&small, &vec![0.0; 2 * 4096], 2, 4096, QuantFormat::F32).unwrap_err();
    assert!(matches!(err, Error::OverLimit { .. }), "{err}");
}

#[test]
fn qlinear_shapes_are_checked() {
    let gpu = gpu();
    let qw = QWeight::from_f32(gpu, &randn(1, 16 * 64), 16, 64, QuantFormat::Nf4).unwrap();
    let x = Tensor::zeros(gpu, &[3, 60], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = qlinear(&mut rec, &x, &qw).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "linear", .. }), "{err}");
    let err = qlinear_backward_input(&mut rec, &x, &qw).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}
