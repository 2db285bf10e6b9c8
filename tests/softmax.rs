//! Row softmax forward and backward against the CPU reference, and the
//! backward against finite differences of the reference forward.

mod common;
mod finite_diff;
use common::{block_on, gpu, randn};
use finite_diff::{dot64, gather, numeric_grad, sample};
use webpeft::gpu::Recorder;
use webpeft::kernels::reference::{assert_close, softmax as cpu};
use webpeft::kernels::softmax::{softmax_backward, softmax_forward};
use webpeft::{DType, Error, Tensor};

// exp to a few ulp and a tree sum instead of a running one.
const ABS: f32 = 1e-6;
const REL: f32 = 1e-5;
const FD_TOL: f32 = 2e-3;

fn run(rows: usize, cols: usize, spread: f32, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let gpu = gpu();
    let x: Vec<f32> = randn(seed, rows * cols).into_iter().map(|v| v * spread).collect();
    let dy = randn(seed + 1, rows * cols);
    let tx = Tensor::from_slice(gpu, &[rows, cols], &x).unwrap();
    let tdy = Tensor::from_slice(gpu, &[rows, cols], &dy).unwrap();
    let mut rec = Recorder::new(gpu);
    let y = softmax_forward(&mut rec, &tx).unwrap();
    let dx = softmax_backward(&mut rec, &tdy, &y).unwrap();
    rec.submit().unwrap();
    let read = |t: &Tensor| block_on(t.to_vec::<f32>(gpu)).unwrap();
    (x, dy, read(&y), read(&dx))
}

#[test]
fn matches_reference_on_odd_shapes() {
    for (rows, cols, spread, seed) in [(37, 83, 1.0, 1), (13, 1, 1.0, 2), (5, 1000, 10.0, 3), (2, 64, 30.0, 4)] {
        let (x, dy, y, dx) = run(rows, cols, spread, seed);
        let want_y = cpu::softmax_forward(&x, rows, cols);
        let want_dx = cpu::softmax_backward(&dy, &want_y, rows, cols);
        assert_close(&format!("y {rows}x{cols}"), &y, &want_y, ABS, REL);
        assert_close(&format!("dx {rows}x{cols}"), &dx, &want_dx, ABS, REL);
    }
}

#[test]
fn backward_matches_finite_differences() {
    let (rows, cols) = (4, 29);
    let (x, dy, _, dx) = run(rows, cols, 2.0, 5);
    let idx = sample(rows * cols, 40, 6);
    let num = numeric_grad(&x, &idx, 1e-2, |x| dot64(&cpu::softmax_forward(x, rows, cols), &dy));
    assert_close("dx vs finite differences", &gather(&dx, &idx), &num, FD_TOL, FD_TOL);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let a = Tensor::zeros(gpu, &[4, 8], DType::F32).unwrap();
    let b = Tensor::zeros(gpu, &[4, 9], DType::F32).unwrap();
    let err = softmax_backward(&mut rec, &a, &b).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "softmax_backward", .. }), "{err}");
    let scalar = Tensor::zeros(gpu, &[], DType::F32).unwrap();
    let err = softmax_forward(&mut rec, &scalar).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "softmax_forward", .. }), "{err}");
    let u = Tensor::zeros(gpu, &[4, 8], DType::I32).unwrap();
    let err = softmax_forward(&mut rec, &u).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "x", expected: "f32", got: "i32", .. }), "{err}");
    assert!(rec.is_empty());
}
