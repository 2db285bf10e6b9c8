//! The decoding GEMV (`shaders/gemv.wgsl`) in each form: the portable
//! reduction (a tree in workgroup memory) and the subgroup one
//! (`shaders/gemv_subgroup.wgsl`), forced here on lavapipe, against the CPU
//! reference with seeded inputs: 1, 2, 3 and 8 rows of x, N cutting the last
//! workgroup, K not a multiple of the lanes' pass, f32 and NF4, Q8_0 and f16
//! weights, accumulation and alpha. Its f16 compute is checked against the
//! reference of the f16 arithmetic in tests/f16_compute.rs. And which GEMV
//! each kernel family picks.

mod common;

use common::{block_on, check_weight_matmul, gpu, randn};
use webpeft::gpu::{KernelFamily, Recorder};
use webpeft::kernels::blocked::GemvTiles;
use webpeft::kernels::matmul::{gemm_with, linear, Gemm, Tiles, Variant};
use webpeft::kernels::qmatmul::{qlinear, qlinear_accumulate, QVariant, QWeight};
use webpeft::kernels::reference::{assert_close, matmul as cpu};
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::{Gpu, GpuOptions, Tensor};

/// Each GEMV form, and what it exercises on lavapipe's 8-lane subgroups.
fn forms() -> Vec<(GemvTiles, &'static str)> {
    let sg = |lanes, rows| GemvTiles { lanes, rows, ..GemvTiles::SUBGROUP };
    let wide = |t: GemvTiles| GemvTiles { wide: true, ..t };
    vec![
        (GemvTiles::DEFAULT, "portable 32x8: a 5-step tree in workgroup memory"),
        (GemvTiles { lanes: 8, rows: 4, ..GemvTiles::DEFAULT }, "portable 8x4"),
        (wide(GemvTiles::DEFAULT), "portable 32x8, wide spans"),
        (wide(GemvTiles::SUBGROUP), "subgroup 32x8, wide spans: spans of a chunk dealt to 4 subgroups"),
        (wide(sg(3, 4)), "subgroup 3x4, wide spans: 12 invocations stage the 16 levels"),
        (GemvTiles::SUBGROUP, "subgroup 32x8: 4 subgroups a row meet in workgroup memory"),
        (sg(16, 3), "subgroup 16x3: 48 invocations, 2 subgroups a row"),
        (sg(8, 4), "subgroup 8x4: one subgroup a row"),
        (sg(4, 8), "subgroup 4x8: one subgroup takes 2 rows, 8 lanes each"),
        (sg(3, 4), "subgroup 3x4: 12 invocations, a full and a partial subgroup of 4"),
        (GemvTiles::SKINNY, "portable 256x1 (skinny products): an 8-step tree"),
        (GemvTiles { subgroup: true, ..GemvTiles::SKINNY }, "subgroup 256x1: 32 subgroups a row"),
    ]
}

/// Where the device has no subgroups the subgroup forms fall back to the
/// portable reduction, which these tests then check; lavapipe has them.
fn note_subgroups(gpu: &Gpu) {
    let info = gpu.info();
    eprintln!("subgroups {} (width {}..{})", info.subgroups, info.subgroup_min_size, info.subgroup_max_size);
}

// Sums of k products of N(0,1) values: f32 rounding grows like sqrt(k).
const ABS: f32 = 1e-4;
const REL: f32 = 1e-4;

/// C = alpha·A·Bᵀ (+ C) for contiguous A (m, k), B (n, k), C (m, n) from
/// seeded values, against the CPU.
fn run(gpu: &Gpu, g: Gemm, t: GemvTiles, seed: u64) {
    assert!(g.gemv_ok(), "{g:?}");
    let a = randn(seed, g.m * g.k);
    let b = randn(seed + 1, g.n * g.k);
    let c0 = randn(seed + 2, g.m * g.n);
    let ta = Tensor::from_slice(gpu, &[g.m, g.k], &a).unwrap();
    let tb = Tensor::from_slice(gpu, &[g.n, g.k], &b).unwrap();
    let tc = Tensor::from_slice(gpu, &[g.m, g.n], &c0).unwrap();
    let mut rec = Recorder::new(gpu);
    gemm_with(&mut rec, &g, &ta, &tb, &tc, Variant::Gemv(t)).unwrap();
    rec.submit().unwrap();
    let got: Vec<f32> = block_on(tc.to_vec(gpu)).unwrap();
    let mut prod = vec![0.0; g.m * g.n];
    cpu::matmul(&a, &b, &mut prod, g.m, g.n, g.k, false, true, false);
    let want: Vec<f32> =
        prod.iter().zip(&c0).map(|(p, c)| if g.accumulate { c + g.alpha * p } else { g.alpha * p }).collect();
    let name = format!("{}x{}x{} acc={} alpha={} {t:?}", g.m, g.n, g.k, g.accumulate, g.alpha);
    assert_close(&name, &got, &want, ABS, REL * (g.k as f32).sqrt());
}

/// f32 weights: N = 45 and 13 cut the last workgroup; K = 1100 (275 vec4
/// steps) and 132 (33) are not multiples of any form's pass of lanes × 4
/// steps, and 132 leaves most lanes of the wide forms without a step; K =
/// 1088, a multiple of 32, takes the wide spans' loads where the form has them.
#[test]
fn f32_weights_every_form() {
    let gpu = gpu();
    note_subgroups(gpu);
    for (i, (t, what)) in forms().into_iter().enumerate() {
        eprintln!("{what}");
        for (j, m) in [1usize, 2, 3, 8].into_iter().enumerate() {
            let seed = 1000 + 100 * i as u64 + 10 * j as u64;
            run(gpu, Gemm::new(m, 45, 1100, false, true), t, seed);
            run(gpu, Gemm::new(m, 13, 132, false, true).accumulate(true).alpha(-0.75), t, seed + 3);
            run(gpu, Gemm::new(m, 19, 260, false, true).alpha(2.0), t, seed + 6);
            run(gpu, Gemm::new(m, 21, 1088, false, true), t, seed + 9);
        }
    }
}

/// NF4, Q8_0 and f16 weights, forward through the GEMV (the backward, which
/// the GEMV does not take, through the blocked kernel): W 45×1056 (N cuts
/// the last workgroup, K = 264 vec4 steps is no multiple of a pass) and, but
/// for Q8_0 (whose rows are whole blocks of 32), 13×132 (NF4 blocks spanning
/// rows).
#[test]
fn quantized_weights_every_form() {
    let gpu = gpu();
    note_subgroups(gpu);
    let formats = [QuantFormat::Nf4, QuantFormat::Q8_0, QuantFormat::F16, QuantFormat::Bf16];
    for (f, format) in formats.into_iter().enumerate() {
        let shapes: &[(usize, usize)] =
            if format == QuantFormat::Q8_0 { &[(45, 1056)] } else { &[(45, 1056), (13, 132)] };
        for (w, &(n, k)) in shapes.iter().enumerate() {
            let seed = 2000 + 1000 * f as u64 + 500 * w as u64;
            let qw = QWeight::from_f32(gpu, &randn(seed, n * k), n, k, format).unwrap();
            let deq = block_on(qw.to_f32(gpu)).unwrap();
            for (i, (t, _)) in forms().into_iter().enumerate() {
                for (j, m) in [1usize, 2, 3, 8].into_iter().enumerate() {
                    let seed = seed + 100 * i as u64 + 10 * j as u64;
                    check_weight_matmul(gpu, &qw, &deq, m, QVariant::Gemv(t), seed, format.name());
                }
            }
        }
    }
}

/// On the real-GPU kernel family (forced on lavapipe, as `--kernel-family
/// gpu` does) a decoding step's products take the GEMV, with the subgroup
/// reduction where the device has subgroups and in f16 for a weight
/// computing in f16 (the kernels that ran are read from the profile), with
/// wide spans for 4-bit codes untuned (`GemvTiles::for_weight`), and
/// the results hold: y = x·Wᵀ in f32, then += x·Wᵀ in f16. lavapipe's own
/// family keeps its few-rows tiles.
#[test]
fn decoding_picks_the_gemv_on_the_gpu_family() {
    let (m, n, k) = (2, 45, 1056);
    let g = Gemm::new(m, n, k, false, true);
    let cpu_family = gpu();
    assert_eq!(Variant::tuned(cpu_family, &g), Variant::Tiled(Tiles::few_rows(m, false).unwrap()));
    assert_eq!(QVariant::tuned(cpu_family, QuantFormat::Nf4, &g, true, false, ComputeDtype::F32), QVariant::Tiled);

    let options = GpuOptions { kernels: KernelFamily::Gpu, autotune: false, ..Default::default() };
    let gpu = &block_on(Gpu::with_options(options)).unwrap();
    let gemv = GemvTiles::for_gpu(gpu);
    assert_eq!(gemv.subgroup, gpu.info().subgroups, "{}", gpu.describe());
    // 45 rows of an f32 W: a skinny product (LoRA's x·Aᵀ has r), 256 lanes a row.
    let skinny = GemvTiles { subgroup: gemv.subgroup, ..GemvTiles::SKINNY };
    assert_eq!(Variant::tuned(gpu, &g), Variant::Gemv(skinny));
    assert_eq!(Variant::tuned(gpu, &Gemm::new(m, 64, k, false, true)), Variant::Gemv(gemv));
    let nf4 = GemvTiles::for_weight(gpu, QuantFormat::Nf4);
    assert!(nf4.wide && !GemvTiles::for_weight(gpu, QuantFormat::Q8_0).wide && !gemv.wide);
    assert_eq!(QVariant::tuned(gpu, QuantFormat::Nf4, &g, true, false, ComputeDtype::F32), QVariant::Gemv(nf4));

    let w = randn(3000, n * k).iter().map(|v| v * 0.05).collect::<Vec<_>>();
    let x = randn(3001, m * k);
    let tx = Tensor::from_slice(gpu, &[m, k], &x).unwrap();
    let tw = Tensor::from_slice(gpu, &[n, k], &w).unwrap();
    let mut qw = QWeight::from_f32(gpu, &w, n, k, QuantFormat::Nf4).unwrap();
    let deq = block_on(qw.to_f32(gpu)).unwrap();
    gpu.set_profiling(true).unwrap();
    let mut rec = Recorder::new(gpu);
    let y32 = linear(&mut rec, &tx, &tw).unwrap();
    let y = qlinear(&mut rec, &tx, &qw).unwrap();
    rec.submit().unwrap();
    let half = qw.set_compute(gpu, ComputeDtype::F16).unwrap() == ComputeDtype::F16;
    let mut rec = Recorder::new(gpu);
    qlinear_accumulate(&mut rec, &tx, &qw, &y, false).unwrap();
    rec.submit().unwrap();
    gpu.set_profiling(false).unwrap();

    let mut ran: Vec<String> = block_on(gpu.take_profile()).unwrap().into_iter().map(|t| t.kernel).collect();
    let (sg, entry) = if gemv.subgroup { ("_subgroup", "gemv_nt_sg") } else { ("", "gemv_nt") };
    let mut want = vec![format!("matmul_gemv{sg}/{entry}"), format!("qmatmul_gemv{sg}/{entry}")];
    if half {
        want.push(format!("qmatmul_gemv_f16{sg}/{entry}"));
    }
    ran.sort();
    want.sort();
    assert_eq!(ran, want, "kernels that ran on {}", gpu.describe());

    let mut want_y32 = vec![0.0; m * n];
    cpu::matmul(&x, &w, &mut want_y32, m, n, k, false, true, false);
    assert_close("f32 weight", &block_on(y32.to_vec::<f32>(gpu)).unwrap(), &want_y32, ABS, REL * (k as f32).sqrt());
    // y = x·Wᵀ twice, once in f16: within f16's 2^-8 of Σ|x||W| of the exact sum.
    let got = block_on(y.to_vec::<f32>(gpu)).unwrap();
    for i in 0..m {
        for j in 0..n {
            let (xr, wr) = (&x[i * k..(i + 1) * k], &deq[j * k..(j + 1) * k]);
            let exact: f64 = xr.iter().zip(wr).map(|(a, b)| *a as f64 * *b as f64).sum();
            let mag: f64 = xr.iter().zip(wr).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            let err = (got[i * n + j] as f64 - 2.0 * exact).abs();
            let bound = if half { mag / 256.0 } else { 1e-5 * mag };
            assert!(err <= bound, "y[{i}, {j}] = {}, want {}: off by {err:e} > {bound:e}", got[i * n + j], 2.0 * exact);
        }
    }
}
