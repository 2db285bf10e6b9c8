//! Elementwise arithmetic against the CPU reference, including a launch of
//! more than 65535 workgroups (the 2-D grid).

mod common;
use common::{block_on, gpu, randn};
use webpeft::gpu::Recorder;
use webpeft::kernels::elementwise::{
    add, add_scaled, copy, fill, mul, mul_columns, scale, scale_columns_inplace, scale_inplace,
};
use webpeft::kernels::reference::{assert_close, reduce as cpu};
use webpeft::{DType, Error, Tensor};

// One rounding each: add, mul and scale are bit-exact; add_scaled may be
// contracted to an FMA by the shader compiler (one rounding fewer).
const FMA_ABS: f32 = 1e-7;
const FMA_REL: f32 = 1e-6;

fn read(t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec(gpu())).unwrap()
}

#[test]
fn matches_reference_on_odd_shapes() {
    let gpu = gpu();
    let shape = [37, 83];
    let n = 37 * 83;
    let (a, b) = (randn(1, n), randn(2, n));
    let ta = Tensor::from_slice(gpu, &shape, &a).unwrap();
    let tb = Tensor::from_slice(gpu, &shape, &b).unwrap();
    let acc = Tensor::from_slice(gpu, &shape, &a).unwrap();
    let scaled = Tensor::from_slice(gpu, &shape, &a).unwrap();
    let filled = Tensor::zeros(gpu, &shape, DType::F32).unwrap();
    let copied = Tensor::zeros(gpu, &[n], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let sum = add(&mut rec, &ta, &tb).unwrap();
    let prod = mul(&mut rec, &ta, &tb).unwrap();
    let sc = scale(&mut rec, &ta, -0.37).unwrap();
    add_scaled(&mut rec, &acc, &tb, 0.3).unwrap();
    scale_inplace(&mut rec, &scaled, 1.7).unwrap();
    fill(&mut rec, &filled, -2.5).unwrap();
    copy(&mut rec, &tb, &copied).unwrap();
    rec.submit().unwrap();

    assert_close("add", &read(&sum), &cpu::add(&a, &b), 0.0, 0.0);
    let want_mul: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x * y).collect();
    assert_close("mul", &read(&prod), &want_mul, 0.0, 0.0);
    assert_close("scale", &read(&sc), &cpu::scale(&a, -0.37), 0.0, 0.0);
    assert_close("add_scaled", &read(&acc), &cpu::add_scaled(&a, &b, 0.3), FMA_ABS, FMA_REL);
    assert_close("scale_inplace", &read(&scaled), &cpu::scale(&a, 1.7), 0.0, 0.0);
    assert_close("fill", &read(&filled), &vec![-2.5; n], 0.0, 0.0);
    assert_close("copy", &read(&copied), &b, 0.0, 0.0);
}

/// Rows scaled by a column vector, into a new tensor and in place, with and
/// without a shift, at odd shapes and one row (a decoding step's).
#[test]
fn column_scales_match_reference() {
    let gpu = gpu();
    for (i, (rows, cols)) in [(37, 83), (1, 45), (5, 1)].into_iter().enumerate() {
        let n = rows * cols;
        let (x, g, b) = (randn(10 + i as u64, n), randn(20 + i as u64, cols), randn(30 + i as u64, cols));
        let scaled = Tensor::from_slice(gpu, &[rows, cols], &x).unwrap();
        let shifted = Tensor::from_slice(gpu, &[rows, cols], &x).unwrap();
        let (tg, tb) = (Tensor::from_slice(gpu, &[cols], &g).unwrap(), Tensor::from_slice(gpu, &[cols], &b).unwrap());
        let mut rec = Recorder::new(gpu);
        let product = mul_columns(&mut rec, &Tensor::from_slice(gpu, &[rows, cols], &x).unwrap(), &tg).unwrap();
        scale_columns_inplace(&mut rec, &scaled, &tg, None).unwrap();
        scale_columns_inplace(&mut rec, &shifted, &tg, Some(&tb)).unwrap();
        rec.submit().unwrap();
        let label = format!("{rows}x{cols}");
        assert_close(&format!("{label} mul_columns"), &read(&product), &cpu::affine_columns(&x, &g, None), 0.0, 0.0);
        assert_close(&label, &read(&scaled), &cpu::affine_columns(&x, &g, None), 0.0, 0.0);
        let want = cpu::affine_columns(&x, &g, Some(&b));
        assert_close(&format!("{label} shifted"), &read(&shifted), &want, FMA_ABS, FMA_REL);
    }
    // g must hold one value a column, and not be the updated tensor.
    let acc = Tensor::zeros(gpu, &[3, 8], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = scale_columns_inplace(&mut rec, &acc, &Tensor::zeros(gpu, &[3], DType::F32).unwrap(), None).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "scale_columns_inplace", .. }), "{err}");
    let err = mul_columns(&mut rec, &acc, &Tensor::zeros(gpu, &[9], DType::F32).unwrap()).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "mul_columns", .. }), "{err}");
    let row = acc.reshape(&[24]).unwrap();
    let err = scale_columns_inplace(&mut rec, &acc.reshape(&[1, 24]).unwrap(), &row, None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "scale_columns_inplace", .. }), "{err}");
    assert!(rec.is_empty());
}

#[test]
fn more_than_65535_workgroups() {
    let gpu = gpu();
    let n = 65_535 * 256 + 37; // 65536 workgroups of 256: a 2-D grid
    let x = Tensor::zeros(gpu, &[n], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    fill(&mut rec, &x, 1.5).unwrap();
    scale_inplace(&mut rec, &x, 2.0).unwrap();
    rec.submit().unwrap();
    let got = read(&x);
    let bad = got.iter().position(|&v| v != 3.0);
    assert_eq!(bad, None, "element {bad:?} of {n} was not written");
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let a = Tensor::zeros(gpu, &[4, 8], DType::F32).unwrap();
    let b = Tensor::zeros(gpu, &[8, 4], DType::F32).unwrap();
    let err = add(&mut rec, &a, &b).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "add", .. }), "{err}");
    let err = add_scaled(&mut rec, &a, &b, 1.0).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "add_scaled", .. }), "{err}");
    let err = add_scaled(&mut rec, &a, &a, 1.0).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "add_scaled", .. }), "{err}");
    let u = Tensor::zeros(gpu, &[4, 8], DType::U32).unwrap();
    let err = mul(&mut rec, &a, &u).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "b", expected: "f32", got: "u32", .. }), "{err}");
    let err = fill(&mut rec, &u, 1.0).unwrap_err();
    assert!(matches!(err, Error::DType { op: "fill", .. }), "{err}");
    let err = copy(&mut rec, &a, &u).unwrap_err();
    assert!(matches!(err, Error::DType { op: "copy", .. }), "{err}");
    let c = Tensor::zeros(gpu, &[33], DType::F32).unwrap();
    let err = copy(&mut rec, &a, &c).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "copy", .. }), "{err}");
    assert!(rec.is_empty());
}

/// NEFTune's noise: the CPU reference's draws (up to an FMA's rounding in
/// `acc + s·u`), uniform in [−s, s) with the uniform's mean and variance,
/// another seed another draw.
#[test]
fn uniform_noise_matches_reference_and_is_uniform() {
    use webpeft::kernels::reference::dropout::{uniform_noise, unit_noise};
    let gpu = gpu();
    let n = 61 * 89;
    let x = randn(11, n);
    for (magnitude, seed) in [(0.0f32, 3u32), (0.0724, 9), (1.5, 0xDEAD_BEEF)] {
        let t = Tensor::from_slice(gpu, &[61, 89], &x).unwrap();
        let mut rec = Recorder::new(gpu);
        webpeft::kernels::elementwise::add_uniform_noise(&mut rec, &t, magnitude, seed).unwrap();
        rec.submit().unwrap();
        let got = read(&t);
        assert_close("uniform_noise", &got, &uniform_noise(&x, magnitude, seed), FMA_ABS, FMA_REL);
        let units: Vec<f64> = (0..n as u32).map(|i| unit_noise(seed, i) as f64).collect();
        assert!(units.iter().all(|u| (-1.0..1.0).contains(u)));
        let mean = units.iter().sum::<f64>() / n as f64;
        let var = units.iter().map(|u| (u - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0 / 3.0).abs() < 0.02, "seed {seed}: mean {mean}, var {var}");
        let noise = got.iter().zip(&x).map(|(g, v)| (g - v).abs()).fold(0f32, f32::max);
        assert!(noise <= magnitude * (1.0 + 1e-6) + 1e-6 && noise >= magnitude * 0.99, "{magnitude}: {noise}");
    }
    assert_ne!(unit_noise(1, 0), unit_noise(2, 0));
    let t = Tensor::from_slice(gpu, &[3], &[0f32; 3]).unwrap();
    let mut rec = Recorder::new(gpu);
    for bad in [-0.1f32, f32::NAN, f32::INFINITY] {
        let err = webpeft::kernels::elementwise::add_uniform_noise(&mut rec, &t, bad, 0).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "add_uniform_noise", .. }), "{err}");
    }
}

#[test]
fn dropout_matches_reference_bit_for_bit_and_its_rate() {
    let gpu = gpu();
    let n = 53 * 97;
    let x = randn(7, n);
    let tx = Tensor::from_slice(gpu, &[53, 97], &x).unwrap();
    for (p, seed) in [(0.0f32, 1u32), (0.1, 2), (0.37, 0xDEAD_BEEF), (0.9, 5)] {
        let mut rec = Recorder::new(gpu);
        let y = webpeft::kernels::elementwise::dropout(&mut rec, &tx, p, seed).unwrap();
        rec.submit().unwrap();
        let got = read(&y);
        let want = webpeft::kernels::reference::dropout::dropout(&x, p, seed);
        assert_eq!(got, want, "p {p} seed {seed}");
        let dropped = got.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
        assert!((dropped - p as f64).abs() < 0.03, "p {p}: dropped {dropped}");
    }
    // Another seed gives another mask.
    let a = webpeft::kernels::reference::dropout::dropout(&x, 0.5, 1);
    let b = webpeft::kernels::reference::dropout::dropout(&x, 0.5, 2);
    assert_ne!(a, b);
    let mut rec = Recorder::new(gpu);
    for p in [1.0f32, -0.1, f32::NAN] {
        let err = webpeft::kernels::elementwise::dropout(&mut rec, &tx, p, 0).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { op: "dropout", .. }), "{err}");
    }
}
