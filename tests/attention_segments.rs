//! Block-diagonal causal attention for packed rows: the segmented kernels
//! (every variant, the flash one forced, its dk and dv work split as chosen
//! and in 1, 2 and 3 parts) against the CPU reference on seeded random inputs with
//! odd shapes and several examples per row, the reference against each
//! example run alone, and all-zero starts against the plain kernels bit for bit.

mod common;
use common::attention::{inputs, run, Dims, FORCED_SPLITS, GRAD_ABS, GRAD_REL, OUT_ABS, OUT_REL, VARIANTS};
use common::gpu;
use webpeft::gpu::Recorder;
use webpeft::kernels::attention::{attention_forward_segmented, Variant};
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
