//! RMSNorm forward and backward against the CPU reference, and the backward
//! against finite differences of the reference forward.

mod common;
mod finite_diff;
use common::{block_on, gpu, randn, uniform};
use finite_diff::{dot64, gather, numeric_grad, sample};
use webpeft::gpu::Recorder;
use webpeft::kernels::reference::assert_close;
use webpeft::kernels::reference::rmsnorm as cpu;
use webpeft::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_backward_weight, rmsnorm_forward};
use webpeft::{DType, Error, Tensor};

const EPS: f32 = 1e-5;
// A tree sum instead of the reference's running sum: a few ulps on rstd, y, dx.
const ABS: f32 = 1e-5;
const REL: f32 = 1e-5;
// dweight sums `rows` products: rounding grows with the row count.
const DW_ABS: f32 = 1e-4;
const DW_REL: f32 = 1e-4;
// Finite differences with h = 1e-2 on O(1) inputs: ~1e-4 truncation error.
const FD_TOL: f32 = 3e-3;

struct Case {
    x: Vec<f32>,
    w: Vec<f32>,
    dy: Vec<f32>,
    dim: usize,
}

fn case(rows: usize, dim: usize, seed: u64) -> Case {
    Case { x: randn(seed, rows * dim), w: uniform(seed + 1, dim, 0.5, 1.5), dy: randn(seed + 2, rows * dim), dim }
}

/// GPU (y, rstd, dx, dweight) in one submit.
fn run_gpu(c: &Case, shape: &[usize]) -> [Vec<f32>; 4] {
    let gpu = gpu();
    let x = Tensor::from_slice(gpu, shape, &c.x).unwrap();
    let w = Tensor::from_slice(gpu, &[c.dim], &c.w).unwrap();
    let dy = Tensor::from_slice(gpu, shape, &c.dy).unwrap();
    let mut rec = Recorder::new(gpu);
    let (y, rstd) = rmsnorm_forward(&mut rec, &x, &w, EPS).unwrap();
    let dx = rmsnorm_backward(&mut rec, &dy, &x, &w, &rstd).unwrap();
    let dw = rmsnorm_backward_weight(&mut rec, &dy, &x, &rstd).unwrap();
    rec.submit().unwrap();
    [&y, &rstd, &dx, &dw].map(|t| block_on(t.to_vec::<f32>(gpu)).unwrap())
}

fn check_against_reference(rows: usize, dim: usize, shape: &[usize], seed: u64) {
    let c = case(rows, dim, seed);
    let [y, rstd, dx, dw] = run_gpu(&c, shape);
    let (want_y, want_rstd) = cpu::rmsnorm_forward(&c.x, &c.w, rows, dim, EPS);
    let (want_dx, want_dw) = cpu::rmsnorm_backward(&c.dy, &c.x, &c.w, &want_rstd, rows, dim);
    let name = format!("rmsnorm {rows}x{dim}");
    assert_close(&format!("{name} y"), &y, &want_y, ABS, REL);
    assert_close(&format!("{name} rstd"), &rstd, &want_rstd, ABS, REL);
    assert_close(&format!("{name} dx"), &dx, &want_dx, ABS, 10.0 * REL);
    assert_close(&format!("{name} dweight"), &dw, &want_dw, DW_ABS, DW_REL);
}

#[test]
fn matches_reference_on_odd_shapes() {
    check_against_reference(37, 83, &[37, 83], 1);
    check_against_reference(1, 1, &[1, 1], 2);
    // Wider than the workgroup, with leading dimensions (batch, seq, dim).
    check_against_reference(3 * 13, 301, &[3, 13, 301], 3);
}

#[test]
fn more_rows_than_one_grid_dimension() {
    // 70000 rows need a 2-D grid (over 65535 workgroups).
    check_against_reference(70_000, 3, &[70_000, 3], 4);
}

#[test]
fn backward_matches_finite_differences() {
    let (rows, dim) = (5, 37);
    let c = case(rows, dim, 5);
    let [_, _, dx, dw] = run_gpu(&c, &[rows, dim]);
    let loss = |x: &[f32], w: &[f32]| dot64(&cpu::rmsnorm_forward(x, w, rows, dim, EPS).0, &c.dy);
    let ix = sample(rows * dim, 40, 6);
    let num_dx = numeric_grad(&c.x, &ix, 1e-2, |x| loss(x, &c.w));
    assert_close("dx vs finite differences", &gather(&dx, &ix), &num_dx, FD_TOL, FD_TOL);
    let iw = sample(dim, 20, 7);
    let num_dw = numeric_grad(&c.w, &iw, 1e-2, |w| loss(&c.x, w));
    assert_close("dweight vs finite differences", &gather(&dw, &iw), &num_dw, FD_TOL, FD_TOL);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let x = Tensor::zeros(gpu, &[4, 8], DType::F32).unwrap();
    let w7 = Tensor::zeros(gpu, &[7], DType::F32).unwrap();
    let err = rmsnorm_forward(&mut rec, &x, &w7, EPS).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "rmsnorm_forward", .. }), "{err}");
    let xu = Tensor::zeros(gpu, &[4, 8], DType::U32).unwrap();
    let w = Tensor::zeros(gpu, &[8], DType::F32).unwrap();
    let err = rmsnorm_forward(&mut rec, &xu, &w, EPS).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "x", expected: "f32", got: "u32", .. }), "{err}");
    let rstd3 = Tensor::zeros(gpu, &[3], DType::F32).unwrap();
    let err = rmsnorm_backward(&mut rec, &x, &x, &w, &rstd3).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "rmsnorm_backward", .. }), "{err}");
    let dy = Tensor::zeros(gpu, &[4, 9], DType::F32).unwrap();
    let rstd = Tensor::zeros(gpu, &[4], DType::F32).unwrap();
    let err = rmsnorm_backward_weight(&mut rec, &dy, &x, &rstd).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "rmsnorm_backward_weight", .. }), "{err}");
    assert!(rec.is_empty());
}
