//! AdamW steps against the CPU reference (PyTorch's operation order), with
//! and without weight decay, both lerp branches, and a gradient scale from
//! the CPU or from the GPU's clipping factor.

mod common;
use common::{block_on, gpu, randn};
use webpeft::gpu::Recorder;
use webpeft::kernels::adamw::{adamw_step, AdamWParams, GradScale};
use webpeft::kernels::reference::{adamw as cpu, assert_close};
use webpeft::{DType, Error, Tensor};

// The same f32 scalars and operation order; the shader compiler may contract a
// multiply-add, and Vulkan's sqrt and division are good to ~2.5 ulp. Over a
// few steps that is a few ulp of each value.
const ABS: f32 = 1e-7;
const REL: f32 = 2e-6;
const STEPS: u32 = 5;

/// Runs STEPS steps on the GPU (one submit) and on the CPU reference, from the
/// same start, with a fresh gradient each step; compares param, m and v.
fn check(name: &str, hp: AdamWParams, scale: Option<f32>, on_gpu_clip: bool) {
    let gpu = gpu();
    let shape = [37, 83];
    let n = 37 * 83;
    let param0 = randn(1, n);
    let grads: Vec<Vec<f32>> = (0..STEPS).map(|s| randn(10 + s as u64, n)).collect();
    let tp = Tensor::from_slice(gpu, &shape, &param0).unwrap();
    let tm = Tensor::zeros(gpu, &shape, DType::F32).unwrap();
    let tv = Tensor::zeros(gpu, &shape, DType::F32).unwrap();
    let clip = Tensor::from_slice(gpu, &[2], &[123.0f32, scale.unwrap_or(1.0)]).unwrap();
    let tgrads: Vec<Tensor> = grads.iter().map(|g| Tensor::from_slice(gpu, &shape, g).unwrap()).collect();
    let mut rec = Recorder::new(gpu);
    for (s, g) in tgrads.iter().enumerate() {
        let how = match (scale, on_gpu_clip) {
            (None, _) => GradScale::None,
            (Some(_), true) => GradScale::Clip(&clip),
            (Some(c), false) => GradScale::By(c),
        };
        adamw_step(&mut rec, &tp, g, &tm, &tv, &hp, s as u32 + 1, how).unwrap();
    }
    rec.submit().unwrap();

    let (mut param, mut m, mut v) = (param0.clone(), vec![0.0; n], vec![0.0; n]);
    for (s, g) in grads.iter().enumerate() {
        // torch clips the gradient in place (one f32 multiply), then steps.
        let g: Vec<f32> = g.iter().map(|&x| scale.map_or(x, |c| x * c)).collect();
        cpu::adamw_step(&mut param, &g, &mut m, &mut v, &hp, s as u32 + 1);
    }
    let read = |t: &Tensor| block_on(t.to_vec::<f32>(gpu)).unwrap();
    assert_close(&format!("{name} param"), &read(&tp), &param, ABS, REL);
    assert_close(&format!("{name} m"), &read(&tm), &m, ABS, REL);
    assert_close(&format!("{name} v"), &read(&tv), &v, ABS, REL);
}

#[test]
fn matches_reference() {
    let hp = AdamWParams { lr: 1e-2, weight_decay: 0.1, ..AdamWParams::default() };
    check("defaults with decay", hp, None, false);
    check("no decay", AdamWParams { weight_decay: 0.0, ..hp }, None, false);
    // 1 − β1 ≥ 0.5 takes lerp's other branch.
    check("beta1 0.3", AdamWParams { beta1: 0.3, beta2: 0.9, eps: 1e-6, ..hp }, None, false);
}

#[test]
fn gradient_scale_from_cpu_and_gpu() {
    let hp = AdamWParams { lr: 3e-3, ..AdamWParams::default() };
    check("scaled by value", hp, Some(0.37), false);
    check("scaled by the clip tensor", hp, Some(0.37), true);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let t = |shape: &[usize], dtype| Tensor::zeros(gpu, shape, dtype).unwrap();
    let (p, g, m, v) = (t(&[8], DType::F32), t(&[8], DType::F32), t(&[8], DType::F32), t(&[8], DType::F32));
    let hp = AdamWParams::default();
    let err = adamw_step(&mut rec, &p, &g, &t(&[9], DType::F32), &v, &hp, 1, GradScale::None).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "adamw_step", .. }), "{err}");
    let err = adamw_step(&mut rec, &p, &t(&[8], DType::U32), &m, &v, &hp, 1, GradScale::None).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "grad", expected: "f32", got: "u32", .. }), "{err}");
    let err = adamw_step(&mut rec, &p, &g, &m, &v, &hp, 0, GradScale::None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { op: "adamw_step", .. }), "{err}");
    let bad = AdamWParams { beta1: 1.0, ..hp };
    let err = adamw_step(&mut rec, &p, &g, &m, &v, &bad, 1, GradScale::None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = adamw_step(&mut rec, &p, &g, &m, &m, &hp, 1, GradScale::None).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = adamw_step(&mut rec, &p, &g, &m, &v, &hp, 1, GradScale::Clip(&t(&[1], DType::F32))).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    assert!(rec.is_empty());
}
