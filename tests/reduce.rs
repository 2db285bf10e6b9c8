//! Sums of squares (one tensor, several tensors, a large one) against the
//! CPU reference, the clipping coefficient against torch's formula, and each
//! row's argmax (greedy decoding's token).

mod common;
use common::{block_on, gpu, randn};
use webpeft::gpu::Recorder;
use webpeft::kernels::reduce::{argmax_rows, clip_coefficient, sum_squares, sum_squares_many, NO_INDEX};
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

/// Greedy decoding's argmax on the GPU against the CPU reference: odd row
/// lengths (one value, less than a workgroup, several strides of it), ties
/// (the lowest index wins, -0 and +0 tie), NaN skipped, infinities, a row of
/// only NaN (nothing to pick) and a row of only -inf (index 0).
#[test]
fn argmax_rows_matches_reference() {
    let gpu = gpu();
    for (rows, n, seed) in [(1, 1, 1), (3, 7, 2), (5, 300, 3), (4, 1000, 4), (2, 4099, 5)] {
        let mut x = randn(seed, rows * n);
        if n >= 7 {
            let r0 = &mut x[..n];
            r0[2] = 9.0;
            r0[n - 1] = 9.0; // a tie: index 2
            r0[0] = f32::NAN;
            let r1 = &mut x[n..2 * n];
            r1.fill(-1.0);
            r1[3] = -0.0;
            r1[5] = 0.0; // -0 ties +0: index 3
            r1[6] = f32::NAN;
        }
        if rows >= 4 {
            x[2 * n..3 * n].fill(f32::NAN);
            x[3 * n..4 * n].fill(f32::NEG_INFINITY);
        }
        if rows == 5 {
            x[4 * n + 17] = f32::INFINITY;
        }
        let t = Tensor::from_slice(gpu, &[rows, n], &x).unwrap();
        let mut rec = Recorder::new(gpu);
        let ids = argmax_rows(&mut rec, &t).unwrap();
        rec.submit().unwrap();
        let got: Vec<u32> = block_on(ids.to_vec(gpu)).unwrap();
        let want = cpu::argmax_rows(&x, rows, n);
        assert_eq!(got, want, "{rows}x{n}");
        if n >= 7 {
            assert_eq!(&got[..2], &[2, 3], "{rows}x{n}: ties go to the lowest index");
        }
        if rows >= 4 {
            assert_eq!(&got[2..4], &[NO_INDEX, 0], "{rows}x{n}: all NaN, all -inf");
        }
    }
    let mut rec = Recorder::new(gpu);
    let err = argmax_rows(&mut rec, &Tensor::zeros(gpu, &[6], DType::F32).unwrap()).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "argmax_rows", .. }), "{err}");
    let err = argmax_rows(&mut rec, &Tensor::zeros(gpu, &[2, 3], DType::U32).unwrap()).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
    assert!(rec.is_empty());
}
