//! Benchmarks that print figures (speed lives here, never in timed tests).
//! Each figure is the median of several repeats of one submission that holds
//! enough launches to dwarf the per-submit overhead.

pub mod attention;
pub mod generate;
pub mod gpu;
pub mod sample;
pub mod train;

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::blocked::{Blocks, GemvTiles};
use crate::kernels::matmul::{gemm_with, subgroups_usable, Gemm, SgTiles, Tiles, Variant};
use crate::kernels::qmatmul::{qgemm_with, QVariant, QWeight};
use crate::quant::{ComputeDtype, QuantFormat};

/// One measured shape.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub kernel: String,
    pub shape: String,
    pub gflops: f64,
    pub ms_per_call: f64,
    /// The product (per batch): rows, columns, inner dimension, and the
    /// orientation ("nt": A·Bᵀ, "nn": A·B, "tn": Aᵀ·B), so a comparison
    /// script can time the same product elsewhere.
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub op: &'static str,
    /// Frozen weight bytes read per second (GB/s), for products through a
    /// weight (the decoding GEMV is bound by it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight_gbps: Option<f64>,
}

fn op_name(trans_a: bool, trans_b: bool) -> &'static str {
    match (trans_a, trans_b) {
        (false, true) => "nt",
        (false, false) => "nn",
        (true, false) => "tn",
        (true, true) => "tt",
    }
}

/// The foundation shapes: squares, and a projection (x·W with W 512×1376, and
/// the same weight transposed as y = x·Wᵀ).
pub fn matmul_shapes() -> Vec<(String, Gemm)> {
    let mut shapes = Vec::new();
    for n in [256, 512, 1024] {
        shapes.push((format!("{n}³ A·Bᵀ"), Gemm::new(n, n, n, false, true)));
        shapes.push((format!("{n}³ A·B"), Gemm::new(n, n, n, false, false)));
        shapes.push((format!("{n}³ Aᵀ·B"), Gemm::new(n, n, n, true, false)));
    }
    shapes.push(("[512×512]·[512×1376]".into(), Gemm::new(512, 1376, 512, false, false)));
    shapes.push(("[512×512]·[1376×512]ᵀ".into(), Gemm::new(512, 1376, 512, false, true)));
    shapes.extend(lora_shapes());
    shapes
}

/// The six products of a LoRA r 16 Linear (512 → 512) on 4×128 tokens:
/// skinny in N, K or M.
pub fn lora_shapes() -> Vec<(String, Gemm)> {
    vec![
        ("LoRA h = x·Aᵀ [512×512]·[16×512]ᵀ".into(), Gemm::new(512, 16, 512, false, true)),
        ("LoRA y += h·Bᵀ [512×16]·[512×16]ᵀ".into(), Gemm::new(512, 512, 16, false, true)),
        ("LoRA dh = dy·B [512×512]·[512×16]".into(), Gemm::new(512, 16, 512, false, false)),
        ("LoRA dx += dh·A [512×16]·[16×512]".into(), Gemm::new(512, 512, 16, false, false)),
        ("LoRA dA = dhᵀ·x [512×16]ᵀ·[512×512]".into(), Gemm::new(16, 512, 512, true, false)),
        ("LoRA dB = dyᵀ·h [512×512]ᵀ·[512×16]".into(), Gemm::new(512, 16, 512, true, false)),
    ]
}

/// The quantized shapes: y = x·Wᵀ (forward) and dx = dy·W (backward) at the
/// squares and the projection.
pub fn qmatmul_shapes() -> Vec<(String, Gemm, bool)> {
    let mut shapes = Vec::new();
    for n in [256, 512, 1024] {
        shapes.push((format!("{n}³ x·Wᵀ"), Gemm::new(n, n, n, false, true), false));
    }
    shapes.push(("1024³ dy·W".into(), Gemm::new(1024, 1024, 1024, false, false), true));
    shapes.push(("[512×512]·[1376×512]ᵀ".into(), Gemm::new(512, 1376, 512, false, true), false));
    shapes.push(("[512×1376]·[1376×512]".into(), Gemm::new(512, 512, 1376, false, false), true));
    shapes
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn time_calls(
    gpu: &Gpu,
    calls: usize,
    repeats: usize,
    mut record: impl FnMut(&mut Recorder) -> Result<()>,
) -> Result<f64> {
    // Warm up: builds the pipeline and touches the buffers.
    let mut rec = Recorder::new(gpu);
    record(&mut rec)?;
    rec.submit()?;
    gpu.synchronize().await?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let mut rec = Recorder::new(gpu);
        for _ in 0..calls {
            record(&mut rec)?;
        }
        let start = Instant::now();
        rec.submit()?;
        gpu.synchronize().await?;
        times.push(start.elapsed().as_secs_f64() / calls as f64);
    }
    Ok(median(times))
}

fn calls_for(flops: f64, variant_is_naive: bool) -> usize {
    // About 2 GFLOP per submission (less for the slow kernel), at least 1 call.
    let budget = if variant_is_naive { 3e8 } else { 2e9 };
    ((budget / flops) as usize).clamp(1, 64)
}

/// f32 matmul figures for a kernel variant.
pub async fn bench_matmul(gpu: &Gpu, name: &str, g: &Gemm, variant: Variant, repeats: usize) -> Result<Figure> {
    let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
    let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
    let a = Tensor::from_slice(gpu, &[ar, ac], &fill(ar * ac, 1))?;
    let b = Tensor::from_slice(gpu, &[br, bc], &fill(br * bc, 2))?;
    let c = Tensor::zeros(gpu, &[g.m, g.n], DType::F32)?;
    let calls = calls_for(g.flops(), variant == Variant::Naive);
    let secs = time_calls(gpu, calls, repeats, |rec| gemm_with(rec, g, &a, &b, &c, variant)).await?;
    Ok(Figure {
        kernel: format!("f32 {}", variant_name(variant)),
        shape: name.into(),
        gflops: g.flops() / secs / 1e9,
        ms_per_call: secs * 1e3,
        m: g.m,
        n: g.n,
        k: g.k,
        op: op_name(g.trans_a, g.trans_b),
        // The GEMV's B is a Linear weight W (n, k), read once.
        weight_gbps: matches!(variant, Variant::Gemv(_)).then(|| (4 * g.n * g.k) as f64 / secs / 1e9),
    })
}

/// Quantized matmul figures: y = x·Wᵀ with W (n, k) in `format`, or with
/// `backward` dx = dy·W with W (k, n), computing in `compute`.
#[allow(clippy::too_many_arguments)]
pub async fn bench_qmatmul(
    gpu: &Gpu,
    name: &str,
    g: &Gemm,
    backward: bool,
    format: QuantFormat,
    compute: ComputeDtype,
    variant: QVariant,
    repeats: usize,
) -> Result<Figure> {
    let x = Tensor::from_slice(gpu, &[g.m, g.k], &fill(g.m * g.k, 3))?;
    let mut w = if backward {
        QWeight::from_f32(gpu, &fill(g.k * g.n, 4), g.k, g.n, format)?
    } else {
        QWeight::from_f32(gpu, &fill(g.n * g.k, 4), g.n, g.k, format)?
    };
    let compute = w.set_compute(gpu, compute)?;
    let y = Tensor::zeros(gpu, &[g.m, g.n], DType::F32)?;
    let calls = calls_for(g.flops(), variant == QVariant::Naive);
    let secs = time_calls(gpu, calls, repeats, |rec| qgemm_with(rec, &x, &w, &y, backward, variant)).await?;
    Ok(Figure {
        kernel: match compute {
            // An f32 weight goes through `gemm`, which picks its own kernel.
            ComputeDtype::F32 if format == QuantFormat::F32 => "f32-weight gemm".into(),
            ComputeDtype::F32 => format!("{} {}", format.name(), qvariant_name(variant)),
            // f16 compute: the GEMV's and the blocked kernel's f16 forms, else qmatmul_f16.wgsl's tiles.
            ComputeDtype::F16 => match variant {
                QVariant::Gemv(t) if !backward && g.m <= GemvTiles::MAX_M && g.k % 4 == 0 => {
                    format!("{} f16-compute {t}", format.name())
                }
                QVariant::Blocked(_) | QVariant::BlockedSplit(..) => {
                    format!("{} f16-compute {}", format.name(), qvariant_name(variant))
                }
                _ => format!("{} f16-compute tiled", format.name()),
            },
        },
        shape: name.into(),
        gflops: g.flops() / secs / 1e9,
        ms_per_call: secs * 1e3,
        m: g.m,
        n: g.n,
        k: g.k,
        op: if backward { "nn" } else { "nt" },
        weight_gbps: Some(w.bytes() as f64 / secs / 1e9),
    })
}

fn variant_name(v: Variant) -> String {
    match v {
        Variant::Tiled(t) => format!("tiled {}x{} wg {}x{}", t.tm, t.tn, t.wx, t.wy),
        Variant::Scalar(t) => format!("scalar {}x{} wg {}x{}", t.tm, t.tn, t.wx, t.wy),
        Variant::Naive => "naive".into(),
        Variant::Subgroup(t) => format!("subgroup {}x{}/lane", t.sr, t.tn),
        Variant::Blocked(b) => blocks_name(b),
        Variant::BlockedSplit(b, s) => format!("{} split {s}", blocks_name(b)),
        Variant::Gemv(t) => t.to_string(),
    }
}

fn blocks_name(b: Blocks) -> String {
    let buffers = if b.buffers == 2 { " double-buffered" } else { "" };
    format!("blocked {}x{}x{} {}x{}{buffers}", b.bm, b.bn, b.bk, b.tm, b.tn)
}

fn qvariant_name(v: QVariant) -> String {
    match v {
        QVariant::Tiled => "tiled".into(),
        QVariant::Naive => "naive".into(),
        QVariant::Subgroup(t) => format!("subgroup {}x{}/lane", t.sr, t.tn),
        QVariant::Blocked(b) => blocks_name(b),
        QVariant::BlockedSplit(b, s) => format!("{} split {s}", blocks_name(b)),
        QVariant::Gemv(t) => t.to_string(),
    }
}

fn fill(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::util::rng::Rng::new(seed);
    (0..n).map(|_| rng.normal() as f32 * 0.1).collect()
}

/// Every kernel figure the foundation asks for, and attention's (`attention`).
/// `report` sees each figure as soon as it is measured.
pub async fn kernel_figures(
    gpu: &Gpu,
    repeats: usize,
    tiles: Option<Tiles>,
    with_naive: bool,
    report: &mut dyn FnMut(&Figure),
) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    let mut push = |f: Figure, out: &mut Vec<Figure>| {
        report(&f);
        out.push(f);
    };
    // Each shape: first the kernel `gemm` (or `qlinear`) picks on this adapter,
    // then the other families' kernels for comparison.
    for (name, g) in matmul_shapes() {
        let tuned = Variant::tuned(gpu, &g);
        push(bench_matmul(gpu, &name, &g, tuned, repeats).await?, &mut out);
        let mut others = vec![Variant::Tiled(tiles.unwrap_or(Tiles::for_gemm(&g)))];
        if subgroups_usable(gpu) {
            others.push(Variant::Subgroup(SgTiles::for_gemm(&g)));
        }
        if with_naive {
            others.push(Variant::Naive);
        }
        for v in others.into_iter().filter(|v| *v != tuned) {
            push(bench_matmul(gpu, &name, &g, v, repeats).await?, &mut out);
        }
    }
    // f16 compute where the device has it (the vec4 kernels; naive is f32 only).
    let computes: &[ComputeDtype] =
        if gpu.info().shader_f16 { &[ComputeDtype::F32, ComputeDtype::F16] } else { &[ComputeDtype::F32] };
    for format in [QuantFormat::Nf4, QuantFormat::Q8_0, QuantFormat::F16] {
        for (name, g, backward) in qmatmul_shapes() {
            for &c in computes {
                // f16 compute: the blocked kernel on real GPUs, the tiled one elsewhere.
                let tuned = QVariant::tuned(gpu, format, &g, g.k % 4 == 0, backward, c);
                push(bench_qmatmul(gpu, &name, &g, backward, format, c, tuned, repeats).await?, &mut out);
                if c == ComputeDtype::F16 {
                    continue;
                }
                let mut others = vec![QVariant::Tiled];
                if subgroups_usable(gpu) {
                    others.push(QVariant::subgroup());
                }
                for v in others.into_iter().filter(|v| *v != tuned) {
                    push(bench_qmatmul(gpu, &name, &g, backward, format, c, v, repeats).await?, &mut out);
                }
            }
            if with_naive {
                let v = QVariant::Naive;
                push(bench_qmatmul(gpu, &name, &g, backward, format, ComputeDtype::F32, v, repeats).await?, &mut out);
            }
        }
    }
    out.extend(attention::attention_figures(gpu, repeats, report).await?);
    out.extend(sample::sample_figures(gpu, repeats, report).await?);
    Ok(out)
}

/// The shapes the sweeps time: 1024³, the projections and LoRA's.
fn swept(name: &str) -> bool {
    name.starts_with("1024") || name.starts_with('[') || name.starts_with("LoRA")
}

/// f32 matmul figures for one tile shape at 1024³, the projections and LoRA's (for tuning).
pub async fn sweep_tiles(gpu: &Gpu, tiles: Tiles, repeats: usize) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    for (name, g) in matmul_shapes().into_iter().filter(|(n, _)| swept(n)) {
        out.push(bench_matmul(gpu, &name, &g, Variant::Tiled(tiles), repeats).await?);
    }
    Ok(out)
}

/// Like [`sweep_tiles`] for a block of the subgroup kernels.
pub async fn sweep_subgroup(gpu: &Gpu, tiles: SgTiles, repeats: usize) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    for (name, g) in matmul_shapes().into_iter().filter(|(n, _)| swept(n)) {
        out.push(bench_matmul(gpu, &name, &g, Variant::Subgroup(tiles), repeats).await?);
    }
    Ok(out)
}
