//! Figures for real GPUs (too slow for a CPU rasterizer): the big square
//! products, the Llama-3.2-1B layer shapes, decoding's matrix-vector
//! products beside the adapter's copy bandwidth, and a sweep of the blocked
//! kernel's block shapes.

use std::time::Instant;

use super::{bench_matmul, bench_qmatmul, median, Figure};
use crate::error::Result;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::blocked::{Blocks, GemvTiles};
use crate::kernels::matmul::{Gemm, Tiles, Variant};
use crate::kernels::qmatmul::QVariant;
use crate::quant::{ComputeDtype, QuantFormat};

/// Llama-3.2-1B: hidden 2048, 8 KV heads of 64 (k/v project to 512),
/// intermediate 8192, vocabulary 128,256.
const D: usize = 2048;
const KV: usize = 512;
const FF: usize = 8192;
const VOCAB: usize = 128_256;
/// Tokens in the 1B training figure (1×512).
const TOKENS: usize = 512;

/// f32 products: big squares, and the 1B Linears at 512 tokens in the
/// orientations training runs them.
pub fn f32_shapes() -> Vec<(String, Gemm)> {
    let mut shapes = vec![
        ("2048³ A·Bᵀ".to_string(), Gemm::new(2048, 2048, 2048, false, true)),
        ("4096³ A·Bᵀ".into(), Gemm::new(4096, 4096, 4096, false, true)),
        ("4096³ A·B".into(), Gemm::new(4096, 4096, 4096, false, false)),
        ("4096³ Aᵀ·B".into(), Gemm::new(4096, 4096, 4096, true, false)),
    ];
    for (what, out, inp) in [("q/o", D, D), ("k/v", KV, D), ("gate/up", FF, D), ("down", D, FF)] {
        shapes.push((
            format!("1B {what} x·Wᵀ [{TOKENS}×{inp}]·[{out}×{inp}]ᵀ"),
            Gemm::new(TOKENS, out, inp, false, true),
        ));
        shapes.push((
            format!("1B {what} dy·W [{TOKENS}×{out}]·[{out}×{inp}]"),
            Gemm::new(TOKENS, inp, out, false, false),
        ));
    }
    // LoRA r 16 on a 2048 → 2048 projection at 512 tokens.
    shapes.push(("1B LoRA h = x·Aᵀ".into(), Gemm::new(TOKENS, 16, D, false, true)));
    shapes.push(("1B LoRA dA = dhᵀ·x".into(), Gemm::new(16, D, TOKENS, true, false)));
    shapes.push(("1B LoRA dB = dyᵀ·h".into(), Gemm::new(D, 16, TOKENS, true, false)));
    shapes
}

/// Products through a frozen weight: the 1B Linears forward and backward at
/// 512 tokens, and the lm_head forward (y = x·Wᵀ, W (out, in); backward dx =
/// dy·W) over as many vocabulary rows as one binding of the logits holds on
/// `gpu` (the model computes the loss over such column chunks too).
pub fn layer_shapes_on(gpu: &Gpu) -> Vec<(String, Gemm, bool)> {
    let mut shapes = layer_shapes();
    let rows = (gpu.max_binding_bytes() as usize / (4 * TOKENS)).min(VOCAB) / 64 * 64;
    shapes.push((format!("1B lm_head x·Wᵀ ({rows} of {VOCAB} rows)"), Gemm::new(TOKENS, rows, D, false, true), false));
    shapes
}

/// [`layer_shapes_on`] without the lm_head.
pub fn layer_shapes() -> Vec<(String, Gemm, bool)> {
    let mut shapes = Vec::new();
    for (what, out, inp) in [("q/o", D, D), ("gate/up", FF, D), ("down", D, FF)] {
        shapes.push((format!("1B {what} x·Wᵀ"), Gemm::new(TOKENS, out, inp, false, true), false));
        shapes.push((format!("1B {what} dy·W"), Gemm::new(TOKENS, inp, out, false, false), true));
    }
    shapes
}

/// A decoding step's products: one token through each 1B Linear and the lm_head.
pub fn decode_shapes() -> Vec<(String, Gemm)> {
    [("q/o", D, D), ("k/v", KV, D), ("gate/up", FF, D), ("down", D, FF), ("lm_head", VOCAB, D)]
        .into_iter()
        .map(|(what, out, inp)| {
            (format!("decode 1B {what} [1×{inp}]·[{out}×{inp}]ᵀ"), Gemm::new(1, out, inp, false, true))
        })
        .collect()
}

/// Device copy bandwidth: bytes read plus bytes written per second (GB/s)
/// by `copy_buffer_to_buffer` of 256 MiB, the median of `repeats`.
pub async fn copy_gbps(gpu: &Gpu, repeats: usize) -> Result<f64> {
    let n = (256usize << 20).min(gpu.max_binding_bytes() as usize) / 4;
    let src = Tensor::zeros(gpu, &[n], DType::F32)?;
    let dst = Tensor::zeros(gpu, &[n], DType::F32)?;
    let bytes = (n * 4) as u64;
    let calls = 8;
    let mut times = Vec::new();
    for r in 0..=repeats {
        let mut rec = Recorder::new(gpu);
        for _ in 0..calls {
            rec.copy(&src, 0, &dst, 0, bytes)?;
        }
        let start = Instant::now();
        rec.submit()?;
        gpu.synchronize().await?;
        if r > 0 {
            times.push(start.elapsed().as_secs_f64() / calls as f64);
        }
    }
    Ok(2.0 * bytes as f64 / median(times) / 1e9)
}

/// Every real-GPU figure: each shape with the kernel webpeft picks, and the
/// CPU-tuned one beside it where that finishes in reasonable time.
///
/// A figure that fails (a shape over this device's limits) is reported on
/// stderr and skipped: one missing row must not cost a lent GPU's run the rest.
pub async fn gpu_figures(gpu: &Gpu, repeats: usize, report: &mut dyn FnMut(&Figure)) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    let mut push = |f: Result<Figure>, out: &mut Vec<Figure>| match f {
        Ok(f) => {
            report(&f);
            out.push(f);
        }
        Err(e) => eprintln!("skipped a figure: {e}"),
    };
    for (name, g) in f32_shapes() {
        push(bench_matmul(gpu, &name, &g, Variant::tuned(gpu, &g), repeats).await, &mut out);
        if g.flops() < 2e10 {
            push(bench_matmul(gpu, &name, &g, Variant::Tiled(Tiles::for_gemm(&g)), repeats).await, &mut out);
        }
    }
    for (name, g, backward) in layer_shapes_on(gpu) {
        // The head is f32, or bf16 as a bf16 checkpoint stores it under a quantized base.
        let formats: &[QuantFormat] = match name.contains("lm_head") {
            true => &[QuantFormat::Nf4, QuantFormat::F32, QuantFormat::Bf16],
            false => &[QuantFormat::Nf4, QuantFormat::F32],
        };
        for &format in formats {
            let v = QVariant::tuned(gpu, format, &g, true, backward, ComputeDtype::F32);
            push(bench_qmatmul(gpu, &name, &g, backward, format, ComputeDtype::F32, v, repeats).await, &mut out);
        }
        if gpu.info().shader_f16 && !name.contains("lm_head") {
            let (f, c) = (QuantFormat::Nf4, ComputeDtype::F16);
            for v in [QVariant::tuned(gpu, f, &g, true, backward, c), QVariant::Tiled] {
                push(bench_qmatmul(gpu, &name, &g, backward, f, c, v, repeats).await, &mut out);
            }
        }
    }
    // Decoding: the kernel webpeft picks (the GEMV, with the subgroup
    // reduction where the device has subgroups and wide spans for NF4, or
    // the tuned layout), the GEMV's other layouts (the other reduction, each
    // with wide spans and without), the GEMV computing in f16, and the tiled
    // kernel of CPUs.
    let mut gemvs = vec![GemvTiles::for_gpu(gpu)];
    if gemvs[0] != GemvTiles::DEFAULT {
        gemvs.push(GemvTiles::DEFAULT);
    }
    gemvs.extend(gemvs.clone().into_iter().map(|t| GemvTiles { wide: true, ..t }));
    for (name, g) in decode_shapes() {
        let head = name.contains("lm_head");
        let formats: &[QuantFormat] = match head {
            true => &[QuantFormat::Nf4, QuantFormat::Q8_0, QuantFormat::F32, QuantFormat::Bf16],
            false => &[QuantFormat::Nf4, QuantFormat::Q8_0, QuantFormat::F32],
        };
        for &format in formats {
            let tuned = QVariant::tuned(gpu, format, &g, true, false, ComputeDtype::F32);
            push(bench_qmatmul(gpu, &name, &g, false, format, ComputeDtype::F32, tuned, repeats).await, &mut out);
            if format == QuantFormat::Bf16 {
                continue; // the bf16 head: the picked kernel only, beside the f32 head's
            }
            if format == QuantFormat::F32 {
                // An f32 weight that fits one binding: the GEMV's other reduction.
                if 4 * (g.n * g.k) as u64 <= gpu.max_binding_bytes() {
                    for &t in &gemvs[1..] {
                        push(bench_matmul(gpu, &name, &g, Variant::Gemv(t), repeats).await, &mut out);
                    }
                }
                continue;
            }
            let mut computes = vec![ComputeDtype::F32];
            if gpu.info().shader_f16 {
                computes.push(ComputeDtype::F16);
            }
            for &c in &computes {
                for &t in &gemvs {
                    let v = QVariant::Gemv(t);
                    if c == ComputeDtype::F16 || v != tuned {
                        push(bench_qmatmul(gpu, &name, &g, false, format, c, v, repeats).await, &mut out);
                    }
                }
            }
            let v = QVariant::Tiled;
            push(bench_qmatmul(gpu, &name, &g, false, format, ComputeDtype::F32, v, repeats).await, &mut out);
        }
    }
    Ok(out)
}

/// The blocked kernel with each block shape of `blocks` on the shapes that
/// decide its defaults: 1024³ and 4096³ in every orientation, the 1B
/// Linears, LoRA's skinny products, and NF4 through the 1B Linears.
pub async fn sweep_blocks(gpu: &Gpu, blocks: &[Blocks], repeats: usize, report: &mut dyn FnMut(&Figure)) -> Result<()> {
    let mut shapes: Vec<(String, Gemm)> =
        super::matmul_shapes().into_iter().filter(|(n, _)| n.starts_with("1024") || n.starts_with("LoRA")).collect();
    shapes.extend(f32_shapes());
    for &b in blocks {
        if let Err(e) = b.check(gpu) {
            eprintln!("skipped: {e}");
            continue;
        }
        for (name, g) in &shapes {
            match bench_matmul(gpu, name, g, Variant::Blocked(b), repeats).await {
                Ok(f) => report(&f),
                Err(e) => eprintln!("skipped {name}: {e}"),
            }
        }
        for (name, g, backward) in layer_shapes() {
            let v = QVariant::Blocked(b);
            match bench_qmatmul(gpu, &name, &g, backward, QuantFormat::Nf4, ComputeDtype::F32, v, repeats).await {
                Ok(f) => report(&f),
                Err(e) => eprintln!("skipped {name}: {e}"),
            }
        }
    }
    Ok(())
}
