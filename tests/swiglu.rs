//! SwiGLU and the adapter activations, forward and backward, against the CPU
//! reference and finite differences of the reference forward.

mod common;
mod finite_diff;
use common::{block_on, gpu, randn, uniform};
use finite_diff::{dot64, gather, numeric_grad, sample};
use webpeft::gpu::Recorder;
use webpeft::kernels::reference::{assert_close, swiglu as cpu};
use webpeft::kernels::swiglu::{activation_backward, activation_forward, swiglu_backward, swiglu_forward, Activation};
use webpeft::{DType, Error, Tensor};

// The GPU's exp, tanh and our f32 erfc are good to a few ulp (Vulkan allows
// exp 3 + 2|x| ulp); the reference's GELU is f64 rounded once.
const ABS: f32 = 2e-6;
const REL: f32 = 1e-5;
const FD_TOL: f32 = 3e-3;
const ALL: [Activation; 4] = [Activation::Relu, Activation::Silu, Activation::Gelu, Activation::Tanh];

fn read(t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec(gpu())).unwrap()
}

/// Pre-activations over the interesting range, far tails included, none near
/// relu's kink at 0 (where finite differences are meaningless).
fn inputs(seed: u64, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> =
        uniform(seed, n, -6.0, 6.0).into_iter().map(|v| if v.abs() < 0.05 { v + 0.2 } else { v }).collect();
    x.extend([-90.0, -20.0, -9.5, 9.5, 20.0, 90.0]);
    x
}

#[test]
fn swiglu_matches_reference_and_finite_differences() {
    let gpu = gpu();
    let shape = [37, 83];
    let n = 37 * 83;
    let gate = randn(1, n).into_iter().map(|v| 2.0 * v).collect::<Vec<_>>();
    let (up, dh) = (randn(2, n), randn(3, n));
    let tg = Tensor::from_slice(gpu, &shape, &gate).unwrap();
    let tu = Tensor::from_slice(gpu, &shape, &up).unwrap();
    let tdh = Tensor::from_slice(gpu, &shape, &dh).unwrap();
    let mut rec = Recorder::new(gpu);
    let h = swiglu_forward(&mut rec, &tg, &tu).unwrap();
    let (dgate, dup) = swiglu_backward(&mut rec, &tdh, &tg, &tu).unwrap();
    rec.submit().unwrap();
    let (h, dgate, dup) = (read(&h), read(&dgate), read(&dup));
    let (want_dgate, want_dup) = cpu::swiglu_backward(&dh, &gate, &up);
    assert_close("h", &h, &cpu::swiglu_forward(&gate, &up), ABS, REL);
    assert_close("dgate", &dgate, &want_dgate, ABS, REL);
    assert_close("dup", &dup, &want_dup, ABS, REL);

    let idx = sample(n, 40, 4);
    let num = numeric_grad(&gate, &idx, 1e-2, |g| dot64(&cpu::swiglu_forward(g, &up), &dh));
    assert_close("dgate vs finite differences", &gather(&dgate, &idx), &num, FD_TOL, FD_TOL);
    let num = numeric_grad(&up, &idx, 1e-2, |u| dot64(&cpu::swiglu_forward(&gate, u), &dh));
    assert_close("dup vs finite differences", &gather(&dup, &idx), &num, FD_TOL, FD_TOL);
}

#[test]
fn activations_match_reference_and_finite_differences() {
    let gpu = gpu();
    let x = inputs(5, 1001);
    let n = x.len();
    let dy = randn(6, n);
    let tx = Tensor::from_slice(gpu, &[n], &x).unwrap();
    let tdy = Tensor::from_slice(gpu, &[n], &dy).unwrap();
    for act in ALL {
        let mut rec = Recorder::new(gpu);
        let y = activation_forward(&mut rec, &tx, act).unwrap();
        let dx = activation_backward(&mut rec, &tdy, &tx, act).unwrap();
        rec.submit().unwrap();
        let (y, dx) = (read(&y), read(&dx));
        let want_y: Vec<f32> = x.iter().map(|&v| act.apply(v)).collect();
        let want_dx: Vec<f32> = x.iter().zip(&dy).map(|(&v, &d)| d * act.grad(v)).collect();
        assert_close(&format!("{act:?}"), &y, &want_y, ABS, REL);
        assert_close(&format!("{act:?} backward"), &dx, &want_dx, ABS, REL);

        let forward = |x: &[f32]| x.iter().map(|&v| act.apply(v)).collect::<Vec<f32>>();
        let idx = sample(n, 60, 7);
        let num = numeric_grad(&x, &idx, 1e-2, |x| dot64(&forward(x), &dy));
        assert_close(&format!("{act:?} backward vs finite differences"), &gather(&dx, &idx), &num, FD_TOL, FD_TOL);
    }
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let a = Tensor::zeros(gpu, &[4, 8], DType::F32).unwrap();
    let b = Tensor::zeros(gpu, &[4, 9], DType::F32).unwrap();
    let err = swiglu_forward(&mut rec, &a, &b).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "swiglu_forward", .. }), "{err}");
    let err = swiglu_backward(&mut rec, &b, &a, &a).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "swiglu_backward", .. }), "{err}");
    let err = activation_backward(&mut rec, &a, &b, Activation::Gelu).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "activation_backward", .. }), "{err}");
    let u = Tensor::zeros(gpu, &[4, 8], DType::U32).unwrap();
    let err = swiglu_forward(&mut rec, &a, &u).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "up", expected: "f32", got: "u32", .. }), "{err}");
    let err = activation_forward(&mut rec, &u, Activation::Relu).unwrap_err();
    assert!(matches!(err, Error::DType { op: "activation_forward", .. }), "{err}");
    assert!(rec.is_empty());
}
