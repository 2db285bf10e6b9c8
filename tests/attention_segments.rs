//! Block-diagonal causal attention for packed rows: the segmented kernels
//! (every variant, the flash one forced, its dk and dv work split as chosen
//! and in 1, 2 and 3 parts) against the CPU reference on seeded random inputs with
//! odd shapes and several examples per row, the reference against each
//! example run alone, and all-zero starts against the plain kernels bit for bit;
//! sliding windows (starts too) in training and through a KV cache.

mod common;
use common::attention::{inputs, run, Dims, FORCED_SPLITS, GRAD_ABS, GRAD_REL, OUT_ABS, OUT_REL, VARIANTS};
use common::gpu;
use webpeft::gpu::Recorder;
use webpeft::kernels::attention::{attention_forward_cached, attention_forward_segmented, write_kv_cache, Variant};
use webpeft::kernels::reference::{assert_close, attention as cpu};
use webpeft::{DType, Error, Tensor};

/// Each row's starts (batch, seq) from its examples' lengths, which sum to seq.
fn starts_of(lengths: &[Vec<usize>]) -> Vec<u32> {
    let mut starts = Vec::new();
    for row in lengths {
        let mut at = 0;
        for &n in row {
            starts.extend(std::iter::repeat_n(at as u32, n));
            at += n;
        }
    }
    starts
}

fn check(s: Dims, lengths: &[Vec<usize>], seed: u64) {
    let x = inputs(s, seed);
    let starts = starts_of(lengths);
    let (want_out, probs) =
        cpu::attention_forward_segmented(&x.q, &x.k, &x.v, &starts, s.batch, s.seq, s.hq, s.hkv, s.d, s.scale());
    let (want_dq, want_dk, want_dv) =
        cpu::attention_backward(&x.dout, &x.q, &x.k, &x.v, &probs, s.batch, s.seq, s.hq, s.hkv, s.d, s.scale());
    for variant in VARIANTS.into_iter().chain(FORCED_SPLITS) {
        let [out, _, dq, dk, dv] = run(s, &x, Some(&starts), variant);
        let name = format!("{variant:?} {s:?} {lengths:?}");
        assert_close(&format!("{name} out"), &out, &want_out, OUT_ABS, OUT_REL);
        assert_close(&format!("{name} dq"), &dq, &want_dq, GRAD_ABS, GRAD_REL);
        assert_close(&format!("{name} dk"), &dk, &want_dk, GRAD_ABS, GRAD_REL);
        assert_close(&format!("{name} dv"), &dv, &want_dv, GRAD_ABS, GRAD_REL);
    }
}

#[test]
fn segmented_kernels_match_the_reference() {
    // Odd lengths that cut the tiles (and the subgroups' 8 · P positions) anywhere.
    check(Dims { batch: 2, seq: 37, hq: 6, hkv: 2, d: 12 }, &[vec![5, 13, 1, 18], vec![37]], 21);
    check(Dims { batch: 3, seq: 19, hq: 3, hkv: 1, d: 20 }, &[vec![1; 19], vec![9, 10], vec![2, 3, 5, 7, 2]], 22);
    check(Dims { batch: 1, seq: 70, hq: 4, hkv: 4, d: 6 }, &[vec![33, 3, 34]], 23);
}

#[test]
fn reference_rows_equal_each_example_alone() {
    let s = Dims { batch: 1, seq: 23, hq: 4, hkv: 2, d: 8 };
    let lengths = [7, 11, 5];
    let x = inputs(s, 31);
    let starts = starts_of(&[lengths.to_vec()]);
    let (out, _) = cpu::attention_forward_segmented(&x.q, &x.k, &x.v, &starts, 1, s.seq, s.hq, s.hkv, s.d, s.scale());
    let mut at = 0;
    for n in lengths {
        let cut = |a: &[f32], heads: usize| a[at * heads * s.d..(at + n) * heads * s.d].to_vec();
        let (alone, _) = cpu::attention_forward(
            &cut(&x.q, s.hq),
            &cut(&x.k, s.hkv),
            &cut(&x.v, s.hkv),
            1,
            n,
            s.hq,
            s.hkv,
            s.d,
            s.scale(),
        );
        assert_eq!(cut(&out, s.hq), alone, "example at {at} of {n} tokens");
        at += n;
    }
}

#[test]
fn one_example_per_row_is_the_plain_kernel_bit_for_bit() {
    let s = Dims { batch: 2, seq: 29, hq: 4, hkv: 2, d: 16 };
    let x = inputs(s, 41);
    let zeros = vec![0u32; s.batch * s.seq];
    for variant in VARIANTS.into_iter().chain([Variant::FlashSplit(3)]) {
        assert_eq!(run(s, &x, Some(&zeros), variant), run(s, &x, None, variant), "{variant:?}");
    }
}

#[test]
fn starts_of_the_wrong_shape_or_type_are_typed_errors() {
    let gpu = gpu();
    let s = Dims { batch: 1, seq: 5, hq: 2, hkv: 1, d: 4 };
    let q = Tensor::zeros(gpu, &s.q(), DType::F32).unwrap();
    let kv = Tensor::zeros(gpu, &s.kv(), DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let short = Tensor::zeros(gpu, &[1, 4], DType::U32).unwrap();
    let r = attention_forward_segmented(&mut rec, &q, &kv, &kv, &short, 0.5, Variant::Auto);
    assert!(matches!(r, Err(Error::Shape { op: "attention_forward_segmented", .. })), "{r:?}");
    let floats = Tensor::zeros(gpu, &[1, 5], DType::F32).unwrap();
    let r = attention_forward_segmented(&mut rec, &q, &kv, &kv, &floats, 0.5, Variant::Auto);
    assert!(matches!(r, Err(Error::DType { arg: "starts", .. })), "{r:?}");
}

/// Sliding-window starts (the model's `RopeTables::slide`): query i sees keys
/// from the later of its example's start and `i + 1 − window`.
fn windowed(starts: &[u32], seq: usize, window: usize) -> Vec<u32> {
    starts.iter().enumerate().map(|(k, &s)| s.max((k % seq + 1).saturating_sub(window) as u32)).collect()
}

/// Sliding windows (Mistral's, Qwen2's sliding layers) are starts too: the
/// forward and backward of every variant against the CPU reference with
/// windows of 1, 4 and 9 keys, alone and within packed examples.
#[test]
fn sliding_windows_match_the_reference() {
    let cases = [
        (Dims { batch: 2, seq: 37, hq: 6, hkv: 2, d: 12 }, vec![vec![37], vec![5, 13, 1, 18]], 9, 51),
        (Dims { batch: 1, seq: 70, hq: 4, hkv: 4, d: 64 }, vec![vec![70]], 4, 52),
        (Dims { batch: 2, seq: 19, hq: 3, hkv: 1, d: 20 }, vec![vec![19], vec![9, 10]], 1, 53),
    ];
    for (s, lengths, window, seed) in cases {
        let x = inputs(s, seed);
        let starts = windowed(&starts_of(&lengths), s.seq, window);
        let (want_out, probs) =
            cpu::attention_forward_segmented(&x.q, &x.k, &x.v, &starts, s.batch, s.seq, s.hq, s.hkv, s.d, s.scale());
        let (want_dq, want_dk, want_dv) =
            cpu::attention_backward(&x.dout, &x.q, &x.k, &x.v, &probs, s.batch, s.seq, s.hq, s.hkv, s.d, s.scale());
        for variant in VARIANTS.into_iter().chain([Variant::FlashSplit(2)]) {
            let [out, _, dq, dk, dv] = run(s, &x, Some(&starts), variant);
            let name = format!("{variant:?} {s:?} window {window} {lengths:?}");
            assert_close(&format!("{name} out"), &out, &want_out, OUT_ABS, OUT_REL);
            assert_close(&format!("{name} dq"), &dq, &want_dq, GRAD_ABS, GRAD_REL);
            assert_close(&format!("{name} dk"), &dk, &want_dk, GRAD_ABS, GRAD_REL);
            assert_close(&format!("{name} dv"), &dv, &want_dv, GRAD_ABS, GRAD_REL);
        }
    }
}

/// Generation through a sliding window: queries at positions `from..to` of
/// a KV cache (garbage past them) with their window's starts, a prefill then
/// decoding steps and a chunk, every variant (`Auto` picks the split-KV
/// forward for few queries on a real GPU; with starts it runs the portable
/// one), against the full sequence's windowed reference.
#[test]
fn cached_sliding_windows_match_the_reference() {
    let gpu = gpu();
    let (s, window, capacity) = (Dims { batch: 2, seq: 30, hq: 8, hkv: 2, d: 16 }, 7, 33);
    let x = inputs(s, 61);
    let starts = windowed(&vec![0; s.batch * s.seq], s.seq, window);
    let (want, _) =
        cpu::attention_forward_segmented(&x.q, &x.k, &x.v, &starts, s.batch, s.seq, s.hq, s.hkv, s.d, s.scale());
    let rows = |data: &[f32], width: usize, from: usize, to: usize| -> Vec<f32> {
        (0..s.batch).flat_map(|b| data[(b * s.seq + from) * width..(b * s.seq + to) * width].to_vec()).collect()
    };
    let starts_of_rows = |from: usize, to: usize| -> Vec<u32> {
        (0..s.batch).flat_map(|b| starts[b * s.seq + from..b * s.seq + to].to_vec()).collect()
    };
    let (hq_row, kv_row) = (s.hq * s.d, s.hkv * s.d);
    let cache_shape = [s.batch, capacity, s.hkv, s.d];
    for variant in VARIANTS.into_iter().chain([Variant::SplitKv, Variant::Auto]) {
        let k_cache = Tensor::from_slice(gpu, &cache_shape, &common::randn(98, s.batch * capacity * kv_row)).unwrap();
        let v_cache = Tensor::from_slice(gpu, &cache_shape, &common::randn(99, s.batch * capacity * kv_row)).unwrap();
        for (from, to) in [(0, 11), (11, 12), (12, 13), (13, 30)] {
            let n = to - from;
            let upload = |data: &[f32], heads: usize, width: usize| {
                Tensor::from_slice(gpu, &[s.batch, n, heads, s.d], &rows(data, width, from, to)).unwrap()
            };
            let (q, k, v) = (upload(&x.q, s.hq, hq_row), upload(&x.k, s.hkv, kv_row), upload(&x.v, s.hkv, kv_row));
            let first = Tensor::from_slice(gpu, &[s.batch, n], &starts_of_rows(from, to)).unwrap();
            let mut rec = Recorder::new(gpu);
            write_kv_cache(&mut rec, &k, &k_cache, from).unwrap();
            write_kv_cache(&mut rec, &v, &v_cache, from).unwrap();
            let out =
                attention_forward_cached(&mut rec, &q, &k_cache, &v_cache, Some(&first), from, s.scale(), variant)
                    .unwrap();
            rec.submit().unwrap();
            let got: Vec<f32> = common::block_on(out.to_vec(gpu)).unwrap();
            let name = format!("{variant:?} window {window}, cached positions {from}..{to}");
            assert_close(&name, &got, &rows(&want, hq_row, from, to), OUT_ABS, OUT_REL);
        }
    }
    // Starts of the wrong shape are a typed error.
    let q = Tensor::zeros(gpu, &[1, 2, 2, 4], DType::F32).unwrap();
    let cache = Tensor::zeros(gpu, &[1, 8, 1, 4], DType::F32).unwrap();
    let bad = Tensor::zeros(gpu, &[1, 3], DType::U32).unwrap();
    let r = attention_forward_cached(&mut Recorder::new(gpu), &q, &cache, &cache, Some(&bad), 4, 0.5, Variant::Auto);
    assert!(matches!(r, Err(Error::Shape { op: "attention_forward_cached", .. })), "{r:?}");
}
