//! Causal GQA attention: forward (out and the saved logsumexp) and backward
//! against the CPU reference, the backward against finite differences of the
//! reference forward, and the KV-cache forward against the full-sequence one;
//! each for every kernel variant (the subgroup one where the device has
//! 8-lane subgroups; the flash one forced, as real GPUs get it), on shapes
//! that cut the register tiles and the flash kernels' blocks at every edge.

mod common;
mod finite_diff;
use common::attention::{inputs, Dims, Inputs, FORCED_SPLITS, GRAD_ABS, GRAD_REL, OUT_ABS, OUT_REL, VARIANTS};
use common::{block_on, gpu, randn};
use finite_diff::{dot64, gather, numeric_grad, sample};
use webpeft::gpu::Recorder;
use webpeft::kernels::attention::{
    attention_backward, attention_forward, attention_forward_cached, write_kv_cache, FlashTiles, Variant,
    DKV_FILL_INVOCATIONS, MAX_DKV_PARTS,
};
use webpeft::kernels::reference::{assert_close, attention as cpu};
use webpeft::{DType, Error, Tensor};

const FD_TOL: f32 = 3e-3;

/// GPU out, lse, dq, dk, dv of the plain kernels in one submit.
fn run(s: Dims, x: &Inputs, variant: Variant) -> [Vec<f32>; 5] {
    common::attention::run(s, x, None, variant)
}

/// logsumexp over keys 0..=i of each row of scaled scores, in f64: (batch, hq, seq).
fn lse64(s: Dims, q: &[f32], k: &[f32]) -> Vec<f32> {
    let mut lse = Vec::new();
    for b in 0..s.batch {
        for h in 0..s.hq {
            let kvh = h / (s.hq / s.hkv);
            for i in 0..s.seq {
                let qi = &q[((b * s.seq + i) * s.hq + h) * s.d..][..s.d];
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        let kj = &k[((b * s.seq + j) * s.hkv + kvh) * s.d..][..s.d];
                        qi.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum::<f64>() * s.scale() as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                lse.push((max + scores.iter().map(|x| (x - max).exp()).sum::<f64>().ln()) as f32);
            }
        }
    }
    lse
}

fn check_against_reference(s: Dims, seed: u64) {
    check_variants(s, seed, &VARIANTS);
}

fn check_variants(s: Dims, seed: u64, variants: &[Variant]) {
    let x = inputs(s, seed);
    let (want_out, probs) = s.reference(&x.q, &x.k, &x.v);
    let (want_dq, want_dk, want_dv) =
        cpu::attention_backward(&x.dout, &x.q, &x.k, &x.v, &probs, s.batch, s.seq, s.hq, s.hkv, s.d, s.scale());
    let want_lse = lse64(s, &x.q, &x.k);
    for &variant in variants {
        let [out, lse, dq, dk, dv] = run(s, &x, variant);
        let name = format!("{variant:?} B{} T{} H{}/{} D{}", s.batch, s.seq, s.hq, s.hkv, s.d);
        assert_close(&format!("{name} out"), &out, &want_out, OUT_ABS, OUT_REL);
        assert_close(&format!("{name} lse"), &lse, &want_lse, OUT_ABS, OUT_REL);
        assert_close(&format!("{name} dq"), &dq, &want_dq, GRAD_ABS, GRAD_REL);
        assert_close(&format!("{name} dk"), &dk, &want_dk, GRAD_ABS, GRAD_REL);
        assert_close(&format!("{name} dv"), &dv, &want_dv, GRAD_ABS, GRAD_REL);
    }
}

#[test]
fn matches_reference_with_grouped_heads() {
    for (s, seed) in [
        (Dims { batch: 2, seq: 13, hq: 6, hkv: 2, d: 20 }, 1),
        (Dims { batch: 1, seq: 70, hq: 4, hkv: 4, d: 8 }, 2),
        (Dims { batch: 3, seq: 1, hq: 3, hkv: 1, d: 5 }, 3),
    ] {
        check_against_reference(s, seed);
    }
}

/// Shapes that cut the tiles (G heads × P positions a query tile, 8 tiles a
/// subgroup; PK keys a key tile) at their edges: seq not a multiple of P, of
/// PK or of 8·P, fewer positions than a subgroup holds, kv groups of 1, 2
/// and 4 heads, and head_dim 64 as in the models (4 rows a tile).
#[test]
fn matches_reference_at_tile_edges() {
    for (s, seed) in [
        (Dims { batch: 2, seq: 37, hq: 8, hkv: 2, d: 16 }, 4),
        (Dims { batch: 1, seq: 29, hq: 4, hkv: 2, d: 12 }, 5),
        (Dims { batch: 2, seq: 19, hq: 8, hkv: 4, d: 64 }, 6),
        (Dims { batch: 1, seq: 11, hq: 2, hkv: 2, d: 12 }, 7),
        (Dims { batch: 2, seq: 3, hq: 4, hkv: 1, d: 6 }, 8),
        // The demo's toy model at its training shape.
        (Dims { batch: 4, seq: 32, hq: 4, hkv: 2, d: 32 }, 9),
    ] {
        check_against_reference(s, seed);
    }
}

/// The flash kernels alone (forced: `Auto` picks them on real GPUs) on
/// shapes that cut their blocks (G heads × 64 / G positions a query block,
/// tiles of 16 KiB / (8 · head_dim) ≤ 64 rows, 32 keys a dkv block) at every
/// edge: seq 1, 7, 33, 70 and 45, head_dim 4 to 128 (12 and 20 repadded),
/// kv groups of 1, 2, 3 (a block of 63 rows) and 4 heads, batch 1 and 3;
/// each with the dk and dv work unsplit, in 2 and 3 parts, and as chosen.
#[test]
fn flash_kernels_match_reference() {
    let variants: Vec<Variant> = [Variant::Flash].into_iter().chain(FORCED_SPLITS).collect();
    for (s, seed) in [
        (Dims { batch: 1, seq: 70, hq: 4, hkv: 1, d: 64 }, 40),
        (Dims { batch: 3, seq: 33, hq: 4, hkv: 2, d: 12 }, 41),
        (Dims { batch: 1, seq: 7, hq: 2, hkv: 2, d: 4 }, 42),
        (Dims { batch: 3, seq: 1, hq: 2, hkv: 1, d: 8 }, 43),
        (Dims { batch: 2, seq: 45, hq: 6, hkv: 2, d: 20 }, 44),
        (Dims { batch: 1, seq: 37, hq: 2, hkv: 1, d: 128 }, 45),
    ] {
        check_variants(s, seed, &variants);
    }
}

/// How many parts the flash dk and dv work is cut into: enough to bring the
/// launch near [`DKV_FILL_INVOCATIONS`] (67,584) where the key blocks alone
/// fall short, at most [`MAX_DKV_PARTS`], never more than the query tiles of
/// the longest key block, and none where the launch is big enough.
#[test]
fn flash_dkv_parts_fill_a_large_gpu() {
    // Llama-3.2-1B: 32 query heads, 8 kv heads of 64; key blocks of 32, query tiles of 32.
    let t = FlashTiles::new(64, 4);
    assert_eq!((t.kb, t.bk), (32, 32));
    // 1×512: 16 key blocks × 8 kv heads, 128 workgroups of 32 (4,096 invocations).
    assert_eq!(t.dkv_blocks(1, 512, 8), 128);
    assert_eq!(t.dkv_parts(1, 512, 512, 32, 8), MAX_DKV_PARTS);
    // 8×512: 32,768 invocations, 3 parts reach 67,584; 16×512: 65,536, 2 parts; 17×512: none.
    assert_eq!(t.dkv_parts(8, 512, 512, 32, 8), 3);
    assert_eq!(t.dkv_parts(16, 512, 512, 32, 8), 2);
    assert_eq!(t.dkv_parts(17, 512, 512, 32, 8), 1);
    // Few query tiles: 40 queries of one head per kv head are 2 tiles of 32, 7 are one.
    let t = FlashTiles::new(64, 1);
    assert_eq!(t.dkv_parts(1, 40, 40, 2, 2), 2);
    assert_eq!(t.dkv_parts(3, 7, 7, 2, 2), 1);
    // ... and 7 queries of each of 4 heads per kv head are 4.
    assert_eq!(FlashTiles::new(64, 4).dkv_parts(1, 7, 7, 4, 1), 4);
    assert_eq!(DKV_FILL_INVOCATIONS, 67_584);
}

#[test]
fn backward_matches_finite_differences() {
    let s = Dims { batch: 2, seq: 7, hq: 6, hkv: 2, d: 6 };
    let x = inputs(s, 10);
    let loss = |q: &[f32], k: &[f32], v: &[f32]| dot64(&s.reference(q, k, v).0, &x.dout);
    let iq = sample(x.q.len(), 40, 11);
    let num_dq = numeric_grad(&x.q, &iq, 1e-2, |q| loss(q, &x.k, &x.v));
    let ik = sample(x.k.len(), 40, 12);
    let num_dk = numeric_grad(&x.k, &ik, 1e-2, |k| loss(&x.q, k, &x.v));
    let num_dv = numeric_grad(&x.v, &ik, 1e-2, |v| loss(&x.q, &x.k, v));
    for variant in VARIANTS {
        let [_, _, dq, dk, dv] = run(s, &x, variant);
        assert_close(&format!("{variant:?} dq vs finite differences"), &gather(&dq, &iq), &num_dq, FD_TOL, FD_TOL);
        assert_close(&format!("{variant:?} dk vs finite differences"), &gather(&dk, &ik), &num_dk, FD_TOL, FD_TOL);
        assert_close(&format!("{variant:?} dv vs finite differences"), &gather(&dv, &ik), &num_dv, FD_TOL, FD_TOL);
    }
}

/// Runs `full`'s queries in `segments` (prefill, chunks, single decoding
/// steps) against a KV cache of `capacity` rows, for each variant, and
/// compares each with the full-sequence reference.
fn check_cached(full: Dims, capacity: usize, segments: &[(usize, usize)], seed: u64) {
    check_cached_variants(full, capacity, segments, seed, &VARIANTS);
}

fn check_cached_variants(full: Dims, capacity: usize, segments: &[(usize, usize)], seed: u64, variants: &[Variant]) {
    let gpu = gpu();
    let x = inputs(full, seed);
    let (want, _) = full.reference(&x.q, &x.k, &x.v);
    let (hq_row, kv_row) = (full.hq * full.d, full.hkv * full.d);
    let rows = |data: &[f32], width: usize, from: usize, to: usize| -> Vec<f32> {
        (0..full.batch)
            .flat_map(|b| data[(b * full.seq + from) * width..(b * full.seq + to) * width].to_vec())
            .collect()
    };
    let cache_shape = [full.batch, capacity, full.hkv, full.d];
    for &variant in variants {
        // Caches full of garbage: rows past the current position must never be read.
        let k_cache = Tensor::from_slice(gpu, &cache_shape, &randn(98, full.batch * capacity * kv_row)).unwrap();
        let v_cache = Tensor::from_slice(gpu, &cache_shape, &randn(99, full.batch * capacity * kv_row)).unwrap();
        for &(from, to) in segments {
            let n = to - from;
            let q = Tensor::from_slice(gpu, &[full.batch, n, full.hq, full.d], &rows(&x.q, hq_row, from, to)).unwrap();
            let k = Tensor::from_slice(gpu, &[full.batch, n, full.hkv, full.d], &rows(&x.k, kv_row, from, to)).unwrap();
            let v = Tensor::from_slice(gpu, &[full.batch, n, full.hkv, full.d], &rows(&x.v, kv_row, from, to)).unwrap();
            let mut rec = Recorder::new(gpu);
            write_kv_cache(&mut rec, &k, &k_cache, from).unwrap();
            write_kv_cache(&mut rec, &v, &v_cache, from).unwrap();
            let out =
                attention_forward_cached(&mut rec, &q, &k_cache, &v_cache, None, from, full.scale(), variant).unwrap();
            rec.submit().unwrap();
            let got: Vec<f32> = block_on(out.to_vec(gpu)).unwrap();
            let name = format!("{variant:?} H{}/{} D{} cached positions {from}..{to}", full.hq, full.hkv, full.d);
            assert_close(&name, &got, &rows(&want, hq_row, from, to), OUT_ABS, OUT_REL);
        }
    }
}

#[test]
fn kv_cache_forward_matches_full_sequence() {
    // 12 positions in all: a prefill of 7, then 4 more, then one decode step.
    check_cached(Dims { batch: 2, seq: 12, hq: 6, hkv: 2, d: 20 }, 17, &[(0, 7), (7, 11), (11, 12)], 20);
    // A prefill that fills a subgroup, decoding steps (seq 1) and a chunk of
    // 10, with kv groups of 4 and of 1 head.
    let steps = [(0, 9), (9, 10), (10, 11), (11, 21)];
    check_cached(Dims { batch: 2, seq: 21, hq: 8, hkv: 2, d: 16 }, 24, &steps, 21);
    check_cached(Dims { batch: 1, seq: 6, hq: 4, hkv: 4, d: 64 }, 8, &[(0, 5), (5, 6)], 22);
    // The flash kernels on a longer cache: a prefill of 17 (two query
    // blocks), one step, then a chunk of 22 from offset 18 whose keys span
    // three tiles.
    let flash = [Variant::Flash];
    check_cached_variants(
        Dims { batch: 2, seq: 40, hq: 8, hkv: 2, d: 64 },
        45,
        &[(0, 17), (17, 18), (18, 40)],
        23,
        &flash,
    );
}

/// The split-KV forward (forced: `Auto` picks it on real GPUs for fewer than
/// 16 queries): out and lse of whole sequences whose rows (heads × positions)
/// fill one, two and three blocks of 32 and keys several blocks of 64
/// (its backward is the portable one); then decoding steps against long
/// caches, where the keys are cut into splits (the last one partial, and
/// splits with keys some rows do not see), head dims 4 to 128 (20 repadded)
/// and kv groups of 1, 3 and 4 heads.
#[test]
fn split_kv_forward_matches_reference() {
    let split = [Variant::SplitKv];
    for (s, seed) in [
        (Dims { batch: 2, seq: 13, hq: 6, hkv: 2, d: 20 }, 30),
        (Dims { batch: 1, seq: 70, hq: 4, hkv: 4, d: 8 }, 31),
        (Dims { batch: 2, seq: 19, hq: 8, hkv: 2, d: 64 }, 32),
        (Dims { batch: 3, seq: 1, hq: 3, hkv: 1, d: 4 }, 33),
    ] {
        check_variants(s, seed, &split);
    }
    // A prefill, a chunk, then single steps far into the cache.
    let steps = [(0, 150), (150, 161), (161, 162), (162, 163), (163, 200), (200, 201)];
    check_cached_variants(Dims { batch: 2, seq: 201, hq: 8, hkv: 2, d: 64 }, 230, &steps, 34, &split);
    check_cached_variants(Dims { batch: 1, seq: 131, hq: 3, hkv: 1, d: 128 }, 140, &[(0, 130), (130, 131)], 35, &split);
    check_cached_variants(
        Dims { batch: 1, seq: 70, hq: 4, hkv: 4, d: 20 },
        90,
        &[(0, 5), (5, 69), (69, 70)],
        36,
        &split,
    );
}

/// The default entry points pick the subgroup kernels for training-sized
/// sequences where they run, the portable ones for decoding; both agree.
#[test]
fn default_variant_matches_reference() {
    let gpu = gpu();
    let s = Dims { batch: 1, seq: 16, hq: 4, hkv: 2, d: 8 };
    let x = inputs(s, 30);
    let tq = Tensor::from_slice(gpu, &s.q(), &x.q).unwrap();
    let tk = Tensor::from_slice(gpu, &s.kv(), &x.k).unwrap();
    let tv = Tensor::from_slice(gpu, &s.kv(), &x.v).unwrap();
    let tdout = Tensor::from_slice(gpu, &s.q(), &x.dout).unwrap();
    let mut rec = Recorder::new(gpu);
    let (out, lse) = attention_forward(&mut rec, &tq, &tk, &tv, s.scale(), Variant::Auto).unwrap();
    let (dq, _, _) = attention_backward(&mut rec, &tdout, &tq, &tk, &tv, &out, &lse, s.scale(), Variant::Auto).unwrap();
    let cached = attention_forward_cached(&mut rec, &tq, &tk, &tv, None, 0, s.scale(), Variant::Auto).unwrap();
    rec.submit().unwrap();
    let [out, dq, cached] = [&out, &dq, &cached].map(|t| block_on(t.to_vec::<f32>(gpu)).unwrap());
    let [want_out, _, want_dq, _, _] = run(s, &x, Variant::Portable);
    assert_close("default out", &out, &want_out, OUT_ABS, OUT_REL);
    assert_close("default dq", &dq, &want_dq, GRAD_ABS, GRAD_REL);
    assert_close("default cached", &cached, &want_out, OUT_ABS, OUT_REL);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let t = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32).unwrap();
    let (q, k) = (t(&[1, 5, 6, 8]), t(&[1, 5, 2, 8]));
    let err = attention_forward(&mut rec, &q, &t(&[1, 5, 4, 8]), &t(&[1, 5, 4, 8]), 0.3, Variant::Auto).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "attention_forward", .. }), "{err}");
    let err = attention_forward(&mut rec, &q, &k, &t(&[1, 5, 2, 7]), 0.3, Variant::Auto).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = attention_forward(&mut rec, &q, &t(&[1, 6, 2, 8]), &t(&[1, 6, 2, 8]), 0.3, Variant::Auto).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = attention_forward(
        &mut rec,
        &Tensor::zeros(gpu, &[1, 5, 6, 8], DType::U32).unwrap(),
        &k,
        &k,
        0.3,
        Variant::Auto,
    )
    .unwrap_err();
    assert!(matches!(err, Error::DType { arg: "q", expected: "f32", got: "u32", .. }), "{err}");
    let err = attention_backward(&mut rec, &q, &q, &k, &k, &q, &t(&[1, 6, 4]), 0.3, Variant::Auto).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "attention_backward", .. }), "{err}");
    // Positions 6..11 do not fit a cache of 10.
    let cache = t(&[1, 10, 2, 8]);
    let err = attention_forward_cached(&mut rec, &q, &cache, &cache, None, 6, 0.3, Variant::Auto).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "attention_forward_cached", .. }), "{err}");
    let err = write_kv_cache(&mut rec, &k, &cache, 6).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "write_kv_cache", .. }), "{err}");
    let wide = t(&[1, 5, 1, MAX + 1]);
    let err = attention_forward(&mut rec, &t(&[1, 5, 1, MAX + 1]), &wide, &wide, 0.3, Variant::Auto).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(rec.is_empty());
}

const MAX: usize = webpeft::kernels::attention::MAX_HEAD_DIM;
