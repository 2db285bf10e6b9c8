//! bitsandbytes' other 4-bit layouts on the GPU (`shaders/four_bit.wgsl`):
//! FP4 codes and double-quantized absmaxes, packed on the CPU and uploaded
//! as they are. The kernels must see exactly the CPU's dequantized values
//! (`Nf4::dequantize`), through every matmul kernel, both directions, and
//! through weights split into row chunks whose absmaxes start inside a
//! nested block of 256.

mod common;
use common::{block_on, check_weight_matmul, gpu, randn};
use webpeft::gpu::Recorder;
use webpeft::kernels::blocked::{Blocks, GemvTiles};
use webpeft::kernels::qmatmul::{QVariant, QWeight};
use webpeft::kernels::quant::{dequantize, Layout, Packed};
use webpeft::quant::{quantize_4bit, FourBit, Nf4};
use webpeft::{Gpu, GpuOptions};

const KINDS: [(FourBit, bool); 4] =
    [(FourBit::Nf4, false), (FourBit::Fp4, false), (FourBit::Nf4, true), (FourBit::Fp4, true)];

/// A weight with an all-zero block and a partial last block when `rows·cols`
/// is not a multiple of 64.
fn weight(seed: u64, rows: usize, cols: usize) -> Vec<f32> {
    let mut w = randn(seed, rows * cols);
    w.iter_mut().skip(64).take(64).for_each(|v| *v = 0.0);
    w
}

/// y = x·Wᵀ and dx = dy·W through `qw` against the CPU on `q.dequantize()`.
fn check(gpu: &Gpu, q: &Nf4, qw: &QWeight, m: usize, variant: QVariant, seed: u64) {
    let label = format!("{:?} dq={}", q.kind, q.double.is_some());
    check_weight_matmul(gpu, qw, &q.dequantize(), m, variant, seed, &label);
}

#[test]
fn every_layout_dequantizes_to_the_cpu_values() {
    let gpu = gpu();
    for (i, (kind, double)) in KINDS.into_iter().enumerate() {
        // 700 blocks: three nested blocks, the last partial; a partial 4-bit block too.
        let (rows, cols) = (37, 1211);
        let q = quantize_4bit(&weight(10 + i as u64, rows, cols), kind, double);
        let p = Packed::from_nf4(gpu, &q).unwrap();
        assert_eq!(p.layout, Layout::four_bit(kind, double));
        let mut rec = Recorder::new(gpu);
        let y = dequantize(&mut rec, &p).unwrap();
        rec.submit().unwrap();
        assert_eq!(block_on(y.to_vec::<f32>(gpu)).unwrap(), q.dequantize(), "{kind:?} double={double}");
        let qw = QWeight::from_nf4(gpu, &q, rows, cols).unwrap();
        assert_eq!(block_on(qw.to_f32(gpu)).unwrap(), q.dequantize(), "{kind:?} double={double} as a weight");
        // Double quantization stores 1 byte per block instead of 4.
        if double {
            let plain = quantize_4bit(&weight(10 + i as u64, rows, cols), kind, false);
            assert!(q.bytes() < plain.bytes(), "{} vs {}", q.bytes(), plain.bytes());
        }
    }
}

#[test]
fn every_layout_through_every_matmul_kernel() {
    let gpu = gpu();
    for (i, (kind, double)) in KINDS.into_iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        for (m, rows, cols, variant) in [
            (37, 68, 128, QVariant::Tiled),
            (13, 21, 50, QVariant::Tiled), // blocks span rows: the scalar kernel
            (9, 20, 36, QVariant::Naive),
            (37, 68, 96, QVariant::subgroup()),
            (37, 68, 96, QVariant::Blocked(Blocks::MEDIUM)),
            (3, 68, 1056, QVariant::Gemv(GemvTiles::DEFAULT)),
        ] {
            let q = quantize_4bit(&weight(seed, rows, cols), kind, double);
            let qw = QWeight::from_nf4(gpu, &q, rows, cols).unwrap();
            check(gpu, &q, &qw, m, variant, seed);
        }
    }
}

/// A device that binds at most 8 KiB cuts a (1300, 40) weight into chunks
/// of 48 rows (what fits as f32, since a chunk is dequantized whole, rounded
/// to whole blocks of 64): 30 absmaxes each, so chunks start at blocks 270,
/// 510, 780… inside nested blocks 1, 2 and 3.
#[test]
fn chunks_start_inside_a_nested_block() {
    let small =
        block_on(Gpu::with_options(GpuOptions { max_binding_bytes: Some(8192), ..Default::default() })).unwrap();
    for (i, (kind, double)) in KINDS.into_iter().enumerate() {
        let (rows, cols) = (1300, 40);
        let q = quantize_4bit(&weight(200 + i as u64, rows, cols), kind, double);
        let qw = QWeight::from_nf4(&small, &q, rows, cols).unwrap();
        assert!(qw.chunks.len() > 1, "{kind:?}: {} chunk(s)", qw.chunks.len());
        assert_eq!(block_on(qw.to_f32(&small)).unwrap(), q.dequantize(), "{kind:?} double={double}");
        check(&small, &q, &qw, 1, QVariant::Tiled, 200 + i as u64);
    }
}
