//! f32 matmul against the CPU reference: every orientation, odd shapes, both
//! the vec4 fast path and the scalar path, batches, offsets and accumulation.

mod common;
use common::{block_on, gpu, randn};
use webpeft::gpu::Recorder;
use webpeft::kernels::blocked::{self, Blocks, GemvTiles};
use webpeft::kernels::matmul::{gemm_with, subgroups_usable, Gemm, SgTiles, Tiles, Variant};
use webpeft::kernels::reference::{assert_close, matmul as cpu};
use webpeft::{DType, Error, Tensor};

// Sums of k products of N(0,1) values: f32 rounding grows like sqrt(k).
const ABS: f32 = 1e-4;
const REL: f32 = 1e-4;

fn run(g: Gemm, variant: Variant, seed: u64) {
    let gpu = gpu();
    let (a_rows, a_cols) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
    let (b_rows, b_cols) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
    let a = randn(seed, g.batch * a_rows * a_cols);
    let b = randn(seed + 1, g.batch * b_rows * b_cols);
    let c0 = randn(seed + 2, g.batch * g.m * g.n);
    let ta = Tensor::from_slice(gpu, &[g.batch, a_rows, a_cols], &a).unwrap();
    let tb = Tensor::from_slice(gpu, &[g.batch, b_rows, b_cols], &b).unwrap();
    let tc = Tensor::from_slice(gpu, &[g.batch, g.m, g.n], &c0).unwrap();
    let mut rec = Recorder::new(gpu);
    gemm_with(&mut rec, &g, &ta, &tb, &tc, variant).unwrap();
    rec.submit().unwrap();
    let got: Vec<f32> = block_on(tc.to_vec(gpu)).unwrap();

    let mut want = c0.clone();
    for z in 0..g.batch {
        let mut prod = vec![0.0; g.m * g.n];
        cpu::matmul(
            &a[z * a_rows * a_cols..(z + 1) * a_rows * a_cols],
            &b[z * b_rows * b_cols..(z + 1) * b_rows * b_cols],
            &mut prod,
            g.m,
            g.n,
            g.k,
            g.trans_a,
            g.trans_b,
            false,
        );
        let out = &mut want[z * g.m * g.n..(z + 1) * g.m * g.n];
        for (o, p) in out.iter_mut().zip(&prod) {
            *o = if g.accumulate { *o + g.alpha * p } else { g.alpha * p };
        }
    }
    let name = format!("{}x{}x{} ta={} tb={} batch={} {:?}", g.m, g.n, g.k, g.trans_a, g.trans_b, g.batch, variant);
    assert_close(&name, &got, &want, ABS, REL * (g.k as f32).sqrt());
}

const ORIENTATIONS: [(bool, bool); 3] = [(false, true), (false, false), (true, false)];

#[test]
fn vec4_path_every_orientation_with_ragged_edges() {
    // Multiples of 4 (the vec4 path) but not of the 64×64 tile.
    for (i, (ta, tb)) in ORIENTATIONS.into_iter().enumerate() {
        run(Gemm::new(68, 92, 36, ta, tb), Variant::Tiled(Tiles::default()), 10 + i as u64);
        run(Gemm::new(4, 4, 4, ta, tb), Variant::Tiled(Tiles::default()), 20 + i as u64);
        run(Gemm::new(132, 8, 260, ta, tb), Variant::Tiled(Tiles::default()), 30 + i as u64);
    }
}

#[test]
fn scalar_path_odd_shapes() {
    for (i, (ta, tb)) in ORIENTATIONS.into_iter().chain([(true, true)]).enumerate() {
        run(Gemm::new(37, 53, 29, ta, tb), Variant::Tiled(Tiles::default()), 40 + i as u64);
        run(Gemm::new(1, 3, 1, ta, tb), Variant::Tiled(Tiles::default()), 50 + i as u64);
        run(Gemm::new(65, 1, 7, ta, tb), Variant::Tiled(Tiles::default()), 60 + i as u64);
    }
}

#[test]
fn few_rows_path_for_decoding() {
    // What `gemm` picks for 1–8 rows (a decoding step): tiles of exactly those
    // rows, vec4 and scalar layouts, odd N and K.
    for (i, m) in [1usize, 2, 3, 5, 8].into_iter().enumerate() {
        for (ta, tb) in [(false, true), (false, false)] {
            let g = Gemm::new(m, 44, 132, ta, tb);
            let t = Tiles::few_rows(m, ta).expect("few rows");
            // Exactly the rows up to 4 (no clamped copies of a decoding step's row), then 8.
            assert_eq!(t.tm as usize, if m <= 4 { m } else { 8 }, "{t:?}");
            run(g, Variant::Tiled(t), 70 + i as u64);
            run(Gemm::new(m, 37, 29, ta, tb), Variant::Tiled(t), 80 + i as u64);
            assert_eq!(Variant::tuned(gpu(), &g), Variant::Tiled(t), "gemm picks the few-rows tiles");
        }
    }
    assert_eq!(Tiles::few_rows(9, false), None);
    assert_eq!(Tiles::few_rows(1, true), None, "Aᵀ loads vec4 along M: not for few rows");
}

#[test]
fn naive_kernel_matches() {
    for (i, (ta, tb)) in ORIENTATIONS.into_iter().enumerate() {
        run(Gemm::new(33, 17, 21, ta, tb), Variant::Naive, 70 + i as u64);
    }
}

#[test]
fn batched_accumulate_and_alpha() {
    for (i, (ta, tb)) in ORIENTATIONS.into_iter().enumerate() {
        run(
            Gemm::new(20, 24, 12, ta, tb).batched(3).accumulate(true).alpha(0.5),
            Variant::Tiled(Tiles::default()),
            80 + i as u64,
        );
        run(
            Gemm::new(19, 23, 11, ta, tb).batched(2).accumulate(true).alpha(-2.0),
            Variant::Tiled(Tiles::default()),
            90 + i as u64,
        );
    }
}

#[test]
fn other_tile_shapes_agree() {
    for tiles in [
        Tiles { tm: 4, tn: 4, wx: 16, wy: 4 },
        Tiles { tm: 16, tn: 8, wx: 8, wy: 8 },
        Tiles { tm: 8, tn: 16, wx: 4, wy: 8 },
    ] {
        for (i, (ta, tb)) in ORIENTATIONS.into_iter().enumerate() {
            run(Gemm::new(52, 76, 40, ta, tb), Variant::Tiled(tiles), 100 + i as u64);
            run(Gemm::new(51, 77, 41, ta, tb), Variant::Scalar(tiles), 110 + i as u64);
        }
    }
}

/// The subgroup kernels run where the device has 8-lane subgroups (lavapipe
/// on a 256-bit CPU); elsewhere `Variant::Subgroup` falls back to the tiled
/// kernels, which these checks then cover again.
fn subgroup_path_note() {
    let gpu = gpu();
    let info = gpu.info();
    eprintln!(
        "subgroup kernels {} (subgroups {}, sizes {}..={})",
        if subgroups_usable(gpu) { "in use" } else { "not usable here: checking the fallback" },
        info.subgroups,
        info.subgroup_min_size,
        info.subgroup_max_size
    );
}

#[test]
fn subgroup_path_every_orientation_with_ragged_edges() {
    subgroup_path_note();
    for tiles in [SgTiles::tuned(false, true), SgTiles { sr: 32, tn: 4 }, SgTiles { sr: 32, tn: 8 }] {
        for (i, (ta, tb)) in ORIENTATIONS.into_iter().enumerate() {
            let v = Variant::Subgroup(tiles);
            // Multiples of 4 but not of the block; a block larger than the whole
            // matrix; several blocks with a ragged last one in both directions.
            run(Gemm::new(68, 92, 36, ta, tb), v, 200 + i as u64);
            run(Gemm::new(4, 4, 4, ta, tb), v, 210 + i as u64);
            run(Gemm::new(132, 8, 260, ta, tb), v, 220 + i as u64);
            run(Gemm::new(100, 300, 20, ta, tb), v, 230 + i as u64);
            // K past 256, where an over-large block once went wrong.
            run(Gemm::new(36, 136, 300, ta, tb), v, 235 + i as u64);
        }
    }
}

/// LoRA's skinny products (r columns, or a K or M of r) get blocks sized for
/// them, in both kernel families, and still match the reference at ragged r.
#[test]
fn skinny_lora_products_get_their_own_blocks() {
    let gpu = gpu();
    let cases = [
        (Gemm::new(132, 16, 72, false, true), SgTiles { sr: 32, tn: 4 }), // h = x·Aᵀ
        (Gemm::new(132, 72, 12, false, true), SgTiles { sr: 32, tn: 8 }), // y += h·Bᵀ
        (Gemm::new(132, 20, 72, false, false), SgTiles { sr: 32, tn: 4 }), // dh = dy·B
        (Gemm::new(132, 72, 20, false, false), SgTiles { sr: 32, tn: 8 }), // dx += dh·A
        (Gemm::new(12, 72, 132, true, false), SgTiles { sr: 32, tn: 8 }), // dA = dhᵀ·x
        (Gemm::new(72, 28, 132, true, false), SgTiles { sr: 32, tn: 4 }), // dB = dyᵀ·h
    ];
    for (i, (g, want)) in cases.into_iter().enumerate() {
        assert_eq!(SgTiles::for_gemm(&g), want, "{g:?}");
        let tiled = if g.n <= 32 { Tiles { tm: 16, tn: 16, wx: 4, wy: 4 } } else { Tiles::tuned(g.trans_a, g.trans_b) };
        assert_eq!(Tiles::for_gemm(&g), tiled, "{g:?}");
        run(g, Variant::tuned(gpu, &g), 300 + i as u64);
        run(g, Variant::Tiled(Tiles::for_gemm(&g)), 310 + i as u64);
    }
    let big = Gemm::new(512, 1376, 512, false, true);
    assert_eq!(SgTiles::for_gemm(&big), SgTiles::tuned(false, true));
}

#[test]
fn subgroup_path_batched_accumulate_and_alpha() {
    for (i, (ta, tb)) in ORIENTATIONS.into_iter().enumerate() {
        let v = Variant::Subgroup(SgTiles::tuned(ta, tb));
        run(Gemm::new(20, 24, 12, ta, tb).batched(3).accumulate(true).alpha(0.5), v, 240 + i as u64);
        run(Gemm::new(72, 136, 44, ta, tb).batched(2).accumulate(true).alpha(-2.0), v, 250 + i as u64);
        // Shapes the vec4 layout refuses go to the scalar kernel instead.
        run(Gemm::new(19, 23, 11, ta, tb).batched(2).accumulate(true).alpha(-2.0), v, 260 + i as u64);
    }
}

#[test]
fn subgroup_block_too_large_is_a_typed_error() {
    let gpu = gpu();
    let a = Tensor::zeros(gpu, &[64, 64], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = gemm_with(
        &mut rec,
        &Gemm::new(64, 64, 64, false, true),
        &a,
        &a,
        &a,
        Variant::Subgroup(SgTiles { sr: 64, tn: 16 }),
    );
    if webpeft::kernels::matmul::subgroups_usable(gpu) {
        assert!(matches!(err, Err(Error::Shape { .. })), "{err:?}");
    }
}

#[test]
fn subgroup_path_with_offsets_and_strides() {
    for (ta, tb) in ORIENTATIONS {
        column_slices_at_offsets(ta, tb, Variant::Subgroup(SgTiles::tuned(ta, tb)));
    }
}

/// C[:, 8..20] = A · B[8..20, :]ᵀ inside a wider C, A and B at offsets: a
/// weight split by rows across bindings, in orientation (ta, tb).
fn column_slices_at_offsets(ta: bool, tb: bool, variant: Variant) {
    let gpu = gpu();
    let (m, k, n_total) = (36, 16, 28);
    let seed = 270 + 2 * ta as u64 + tb as u64;
    let a = randn(seed, 4 + m * k);
    let b = randn(seed + 10, n_total * k);
    let ta_t = Tensor::from_slice(gpu, &[4 + m * k], &a).unwrap();
    let tb_t = Tensor::from_slice(gpu, &[n_total * k], &b).unwrap();
    let tc = Tensor::zeros(gpu, &[m, n_total], DType::F32).unwrap();
    // B as (N_total, K) for nt, (K, N_total) otherwise.
    let mut rec = Recorder::new(gpu);
    for (start, len) in [(0, 8), (8, 12), (20, 8)] {
        let mut g = Gemm::new(m, len, k, ta, tb);
        g.a_off = 4;
        if tb {
            g.b_off = start * k;
        } else {
            g.b_off = start;
            g.ldb = n_total;
        }
        g.c_off = start;
        g.ldc = n_total;
        gemm_with(&mut rec, &g, &ta_t, &tb_t, &tc, variant).unwrap();
    }
    rec.submit().unwrap();
    let got: Vec<f32> = block_on(tc.to_vec(gpu)).unwrap();
    let mut want = vec![0.0; m * n_total];
    cpu::matmul(&a[4..], &b, &mut want, m, n_total, k, ta, tb, false);
    assert_close(&format!("column slices ta={ta} tb={tb} {variant:?}"), &got, &want, ABS, REL * (k as f32).sqrt());
}

/// The workgroup-memory kernel of real GPUs, every block shape it picks (and
/// a small one with a K slice of 4), with one staging buffer and two, in
/// every orientation: edges ragged in M, N and K (K not a multiple of the
/// slice), a product smaller than one block, batches with accumulation and
/// alpha, offsets and row strides; A and B staged by scalars, as vec4s, or
/// one of each (the layouts decide).
#[test]
fn blocked_kernel_every_orientation_and_block() {
    let blocks = [
        Blocks::LARGE,
        Blocks::MEDIUM,
        Blocks::for_shape(100, 16, 1),
        Blocks::for_shape(100, 32, 1),
        Blocks::for_shape(16, 100, 1),
        Blocks::for_shape(32, 100, 1),
        Blocks::new(32, 64, 4, 4, 8),
        Blocks::LARGE.double_buffered(),
        Blocks::MEDIUM.double_buffered(),
        Blocks::new(32, 64, 4, 4, 8).double_buffered(),
    ];
    for (bi, b) in blocks.into_iter().enumerate() {
        let v = Variant::Blocked(b);
        for (i, (ta, tb)) in ORIENTATIONS.into_iter().chain([(true, true)]).enumerate() {
            let seed = 400 + 10 * bi as u64 + i as u64;
            run(Gemm::new(37, 53, 29, ta, tb), v, seed);
            run(Gemm::new(3, 5, 2, ta, tb), v, seed + 100);
            run(Gemm::new(133, 150, 19, ta, tb).batched(2).accumulate(true).alpha(-0.5), v, seed + 200);
            // Vec4 loads: both operands aligned (batched), or one of them.
            run(Gemm::new(132, 148, 20, ta, tb).batched(2).accumulate(true).alpha(-0.5), v, seed + 300);
            run(Gemm::new(36, 53, 28, ta, tb), v, seed + 400);
            run(Gemm::new(37, 52, 29, ta, tb), v, seed + 500);
        }
    }
    for (ta, tb) in ORIENTATIONS {
        column_slices_at_offsets(ta, tb, Variant::Blocked(Blocks::MEDIUM));
    }
}

/// Split-K: K cut into 2, 3 and 7 parts (uneven, not multiples of the
/// slice), batches with accumulation and alpha, offsets; and the launcher
/// splits LoRA's long skinny products by itself, never the big squares.
#[test]
fn blocked_split_k() {
    for (i, (ta, tb)) in ORIENTATIONS.into_iter().chain([(true, true)]).enumerate() {
        for (j, splits) in [2u32, 3, 7].into_iter().enumerate() {
            let seed = 600 + 10 * i as u64 + j as u64;
            let b = Blocks::for_shape(16, 100, 1);
            run(Gemm::new(16, 37, 301, ta, tb), Variant::BlockedSplit(b, splits), seed);
            let g = Gemm::new(45, 20, 150, ta, tb).batched(3).accumulate(true).alpha(0.25);
            run(g, Variant::BlockedSplit(Blocks::MEDIUM, splits), seed + 100);
            // Aligned for vec4 loads: each split's K stays a multiple of 4.
            run(Gemm::new(16, 36, 300, ta, tb), Variant::BlockedSplit(b, splits), seed + 200);
            let g = Gemm::new(44, 20, 152, ta, tb).batched(3).accumulate(true).alpha(0.25);
            run(g, Variant::BlockedSplit(Blocks::MEDIUM, splits), seed + 300);
        }
        column_slices_at_offsets(ta, tb, Variant::BlockedSplit(Blocks::MEDIUM, 3));
    }
    let lora_xa = Gemm::new(512, 16, 2048, false, true);
    let s = blocked::auto_splits(Blocks::for_gemm(&lora_xa), 512, 16, 2048, 1);
    assert!(s >= 4, "x·Aᵀ at 512 tokens: {s} splits");
    run(Gemm::new(64, 16, 1100, false, true), Variant::Blocked(Blocks::for_shape(64, 16, 1)), 690);
    assert_eq!(blocked::auto_splits(Blocks::LARGE, 4096, 4096, 4096, 1), 1);
    assert_eq!(blocked::auto_splits(Blocks::MEDIUM, 512, 16, 100, 1), 1, "K too short to split");
}

#[test]
fn blocked_block_shapes_are_checked() {
    let gpu = gpu();
    let a = Tensor::zeros(gpu, &[64, 64], DType::F32).unwrap();
    let g = Gemm::new(64, 64, 64, false, true);
    for bad in [
        Blocks::new(64, 64, 8, 2, 4),   // tm not a multiple of 4
        Blocks::new(64, 60, 8, 4, 8),   // tn does not divide bn
        Blocks::new(128, 128, 8, 4, 4), // 1024 invocations
        Blocks::new(128, 128, 0, 8, 8),
        Blocks { buffers: 3, ..Blocks::MEDIUM },
    ] {
        let mut rec = Recorder::new(gpu);
        let err = gemm_with(&mut rec, &g, &a, &a, &a, Variant::Blocked(bad));
        assert!(matches!(err, Err(Error::Shape { .. })), "{bad:?}: {err:?}");
    }
}

/// The decoding GEMV: 1-8 rows, K from one to several unrolled passes of the
/// lanes, N ragged against the rows a workgroup takes, a narrower lane
/// count, column slices at offsets; shapes it cannot take fall back to the
/// blocked kernel.
#[test]
fn gemv_for_decoding() {
    for (i, m) in [1usize, 2, 3, 5, 8].into_iter().enumerate() {
        let seed = 500 + 10 * i as u64;
        run(Gemm::new(m, 45, 132, false, true), Variant::Gemv(GemvTiles::DEFAULT), seed);
        run(Gemm::new(m, 9, 1100, false, true), Variant::Gemv(GemvTiles::DEFAULT), seed + 1);
        run(
            Gemm::new(m, 33, 68, false, true).accumulate(true).alpha(2.0),
            Variant::Gemv(GemvTiles { lanes: 8, rows: 4, ..GemvTiles::DEFAULT }),
            seed + 2,
        );
    }
    column_slices_at_offsets(false, true, Variant::Gemv(GemvTiles::DEFAULT));
    // Not y = x·Wᵀ, too many rows, K not a multiple of 4, batched: the blocked kernel.
    for g in [
        Gemm::new(3, 20, 36, false, false),
        Gemm::new(9, 20, 36, false, true),
        Gemm::new(2, 20, 37, false, true),
        Gemm::new(2, 20, 36, false, true).batched(2),
    ] {
        assert!(!g.gemv_ok(), "{g:?}");
        run(g, Variant::Gemv(GemvTiles::DEFAULT), 560);
    }
}

#[test]
fn column_slice_with_offsets() {
    // C[:, 8..20] = A · B[8..20, :]ᵀ inside a wider C: how a weight split by
    // rows across bindings writes its part of the output.
    let gpu = gpu();
    let (m, k, n_total) = (9, 16, 28);
    let a = randn(1, m * k);
    let b = randn(2, n_total * k);
    let ta = Tensor::from_slice(gpu, &[m, k], &a).unwrap();
    let tb = Tensor::from_slice(gpu, &[n_total, k], &b).unwrap();
    let tc = Tensor::zeros(gpu, &[m, n_total], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    for (start, len) in [(0, 8), (8, 12), (20, 8)] {
        let mut g = Gemm::new(m, len, k, false, true);
        g.b_off = start * k;
        g.c_off = start;
        g.ldc = n_total;
        gemm_with(&mut rec, &g, &ta, &tb, &tc, Variant::Tiled(Tiles::default())).unwrap();
    }
    rec.submit().unwrap();
    let got: Vec<f32> = block_on(tc.to_vec(gpu)).unwrap();
    let mut want = vec![0.0; m * n_total];
    cpu::matmul(&a, &b, &mut want, m, n_total, k, false, true, false);
    assert_close("column slices", &got, &want, ABS, REL);
}

#[test]
fn mismatched_shapes_are_a_typed_error() {
    let gpu = gpu();
    let a = Tensor::zeros(gpu, &[4, 8], DType::F32).unwrap();
    let b = Tensor::zeros(gpu, &[6, 7], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = webpeft::kernels::matmul::linear(&mut rec, &a, &b).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "linear", .. }), "{err}");
    assert!(err.to_string().contains("[4, 8]") && err.to_string().contains("[6, 7]"), "{err}");
    let c = Tensor::zeros(gpu, &[4, 4], DType::F32).unwrap();
    let err = gemm_with(&mut rec, &Gemm::new(4, 6, 8, false, true), &a, &b, &c, Variant::Naive).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}

#[test]
fn wrong_dtype_is_a_typed_error() {
    let gpu = gpu();
    let a = Tensor::zeros(gpu, &[4, 8], DType::U32).unwrap();
    let b = Tensor::zeros(gpu, &[6, 8], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = webpeft::kernels::matmul::linear(&mut rec, &a, &b).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "a", expected: "f32", got: "u32", .. }), "{err}");
}
