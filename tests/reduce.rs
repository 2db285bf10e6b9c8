//! Sums of squares (one tensor, several tensors, a large one) against the
//! CPU reference, and the clipping coefficient against torch's formula.

mod common;
use common::{block_on, gpu, randn};
use webpeft::gpu::Recorder;
use webpeft::kernels::reduce::{clip_coefficient, sum_squares, sum_squares_many};
use webpeft::kernels::reference::{assert_close, reduce as cpu};
use webpeft::{DType, Error, Tensor};

// f32 partial sums of a few values per invocation, then trees, against the
// reference's f64 sum: a few 1e-7 relative.
const ABS: f32 = 0.0;
const REL: f32 = 2e-6;

fn read(t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec(gpu())).unwrap()
}

#[test]
fn sum_squares_matches_reference() {
    let gpu = gpu();
    for (n, seed) in [(37 * 83, 1), (1, 2), (255, 3), (3_000_017, 4)] {
        let x = randn(seed, n);
        let t = Tensor::from_slice(gpu, &[n], &x).unwrap();
        let mut rec = Recorder::new(gpu);
        let s = sum_squares(&mut rec, &t).unwrap();
        rec.submit().unwrap();
        assert_close(&format!("sum of squares of {n}"), &read(&s), &[cpu::sum_squares(&x)], ABS, REL);
    }
}

#[test]
fn several_tensors_share_one_reduction() {
    let gpu = gpu();
    let sizes = [37 * 83, 1, 0, 20 * 8, 100_003];
    let xs: Vec<Vec<f32>> = sizes.iter().enumerate().map(|(i, &n)| randn(10 + i as u64, n)).collect();
    let ts: Vec<Tensor> = xs.iter().map(|x| Tensor::from_slice(gpu, &[x.len()], x).unwrap()).collect();
    let mut rec = Recorder::new(gpu);
    let s = sum_squares_many(&mut rec, &ts.iter().collect::<Vec<_>>()).unwrap();
    let none = sum_squares_many(&mut rec, &[]).unwrap();
    rec.submit().unwrap();
    let all: Vec<f32> = xs.concat();
    assert_close("sum over tensors", &read(&s), &[cpu::sum_squares(&all)], ABS, REL);
    assert_eq!(read(&none), [0.0]);
}

#[test]
fn clip_coefficient_follows_torch() {
    let gpu = gpu();
    for (sumsq, max_norm) in [(16.0f32, 1.0f32), (16.0, 10.0), (0.0, 1.0), (2.5e7, 0.3)] {
        let t = Tensor::from_slice(gpu, &[1], &[sumsq]).unwrap();
        let mut rec = Recorder::new(gpu);
        let clip = clip_coefficient(&mut rec, &t, max_norm).unwrap();
        rec.submit().unwrap();
        // torch: total_norm (f32); clip_coef = max_norm / (total_norm + 1e-6); clamp(max=1.0).
        let norm = sumsq.sqrt();
        let coef = (max_norm / (norm + 1e-6)).min(1.0);
        assert_close(&format!("clip of {sumsq}, {max_norm}"), &read(&clip), &[norm, coef], 0.0, 1e-6);
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let u = Tensor::zeros(gpu, &[8], DType::U32).unwrap();
    let err = sum_squares(&mut rec, &u).unwrap_err();
    assert!(matches!(err, Error::DType { op: "sum_squares", expected: "f32", got: "u32", .. }), "{err}");
    let two = Tensor::zeros(gpu, &[2], DType::F32).unwrap();
    let err = clip_coefficient(&mut rec, &two, 1.0).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "clip_coefficient", .. }), "{err}");
    let one = Tensor::zeros(gpu, &[1], DType::F32).unwrap();
    let err = clip_coefficient(&mut rec, &one, -1.0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "clip_coefficient", .. }), "{err}");
    assert!(rec.is_empty());
}
