//! LoRA-adapted frozen Linear on the GPU: forward and backward against a CPU
//! computation from `reference::matmul` on the dequantized base, plus central
//! finite differences (f64 loss) of dA and dB.

mod common;
mod finite_diff;
use common::{block_on, gpu, randn};
use finite_diff::{gather, numeric_grad, sample};
use webpeft::gpu::Recorder;
use webpeft::kernels::qmatmul::QWeight;
use webpeft::kernels::reference::{assert_close, matmul::matmul};
use webpeft::peft::lora::layer::LoraLinear;
use webpeft::quant::QuantFormat;
use webpeft::{DType, Error, Tensor};

const ABS: f32 = 1e-4;
const REL: f32 = 1e-4;

/// y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ in f64 (for the finite differences).
#[allow(clippy::too_many_arguments)]
fn loss64(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    g: &[f32],
    s: f64,
    m: usize,
    inp: usize,
    out: usize,
    r: usize,
) -> f64 {
    let mut total = 0.0;
    for i in 0..m {
        let xa: Vec<f64> =
            (0..r).map(|k| (0..inp).map(|p| x[i * inp + p] as f64 * a[k * inp + p] as f64).sum()).collect();
        for j in 0..out {
            let base: f64 = (0..inp).map(|p| x[i * inp + p] as f64 * w[j * inp + p] as f64).sum();
            let lora: f64 = (0..r).map(|k| xa[k] * b[j * r + k] as f64).sum();
            total += (base + s * lora) * g[i * out + j] as f64;
        }
    }
    total
}

fn check(format: QuantFormat, m: usize, inp: usize, out: usize, r: usize, seed: u64) {
    let gpu = gpu();
    let s = 1.7f32;
    let w0 = randn(seed, out * inp);
    let x = randn(seed + 1, m * inp);
    let a: Vec<f32> = randn(seed + 2, r * inp).iter().map(|v| v * 0.3).collect();
    let b: Vec<f32> = randn(seed + 3, out * r).iter().map(|v| v * 0.3).collect();
    let g = randn(seed + 4, m * out);

    let base = QWeight::from_f32(gpu, &w0, out, inp, format).unwrap();
    let w = block_on(base.to_f32(gpu)).unwrap();
    let lora = LoraLinear::new(
        &base,
        Tensor::from_slice(gpu, &[r, inp], &a).unwrap(),
        Tensor::from_slice(gpu, &[out, r], &b).unwrap(),
        s,
    )
    .unwrap();
    let xt = Tensor::from_slice(gpu, &[m, inp], &x).unwrap();
    let gt = Tensor::from_slice(gpu, &[m, out], &g).unwrap();
    let mut rec = Recorder::new(gpu);
    let (y, xa) = lora.forward(&mut rec, &xt).unwrap();
    let (dx, da, db) = lora.backward(&mut rec, &xt, &xa, &gt).unwrap();
    rec.submit().unwrap();
    let get = |t: &Tensor| block_on(t.to_vec::<f32>(gpu)).unwrap();

    // CPU reference.
    let mut y_ref = vec![0.0; m * out];
    matmul(&x, &w, &mut y_ref, m, out, inp, false, true, false);
    let mut xa_ref = vec![0.0; m * r];
    matmul(&x, &a, &mut xa_ref, m, r, inp, false, true, false);
    let mut lo = vec![0.0; m * out];
    matmul(&xa_ref, &b, &mut lo, m, out, r, false, true, false);
    for (y, l) in y_ref.iter_mut().zip(&lo) {
        *y += s * l;
    }
    let mut db_ref = vec![0.0; out * r];
    matmul(&g, &xa_ref, &mut db_ref, out, r, m, true, false, false);
    db_ref.iter_mut().for_each(|v| *v *= s);
    let mut dxa = vec![0.0; m * r];
    matmul(&g, &b, &mut dxa, m, r, out, false, false, false);
    dxa.iter_mut().for_each(|v| *v *= s);
    let mut da_ref = vec![0.0; r * inp];
    matmul(&dxa, &x, &mut da_ref, r, inp, m, true, false, false);
    let mut dx_ref = vec![0.0; m * inp];
    matmul(&g, &w, &mut dx_ref, m, inp, out, false, false, false);
    matmul(&dxa, &a, &mut dx_ref, m, inp, r, false, false, true);

    let tag = format!("{format:?}");
    assert_close(&format!("{tag} xa"), &get(&xa), &xa_ref, ABS, REL);
    assert_close(&format!("{tag} y"), &get(&y), &y_ref, ABS, REL);
    assert_close(&format!("{tag} dx"), &get(&dx), &dx_ref, ABS, REL);
    let (da, db) = (get(&da), get(&db));
    assert_close(&format!("{tag} dA"), &da, &da_ref, ABS, REL);
    assert_close(&format!("{tag} dB"), &db, &db_ref, ABS, REL);

    // Finite differences of L = Σ y·g (f64; L is linear in A and in B).
    let sd = s as f64;
    let ia = sample(r * inp, 8, seed + 5);
    let num_a = numeric_grad(&a, &ia, 1e-2, |a| loss64(&x, &w, a, &b, &g, sd, m, inp, out, r));
    assert_close(&format!("{tag} dA vs finite differences"), &gather(&da, &ia), &num_a, 1e-3, 1e-3);
    let ib = sample(out * r, 8, seed + 6);
    let num_b = numeric_grad(&b, &ib, 1e-2, |b| loss64(&x, &w, &a, b, &g, sd, m, inp, out, r));
    assert_close(&format!("{tag} dB vs finite differences"), &gather(&db, &ib), &num_b, 1e-3, 1e-3);
}

#[test]
fn lora_linear_f32_base_matches_cpu() {
    check(QuantFormat::F32, 13, 64, 48, 5, 100);
}

#[test]
fn lora_linear_nf4_base_matches_cpu() {
    check(QuantFormat::Nf4, 13, 128, 48, 5, 200);
}

#[test]
fn lora_linear_rejects_wrong_shapes() {
    let gpu = gpu();
    let base = QWeight::from_f32(gpu, &randn(1, 48 * 64), 48, 64, QuantFormat::F32).unwrap();
    let b = Tensor::from_slice(gpu, &[48, 5], &randn(2, 48 * 5)).unwrap();
    // A with in = 63 instead of 64.
    let bad_a = Tensor::from_slice(gpu, &[5, 63], &randn(3, 5 * 63)).unwrap();
    let err = LoraLinear::new(&base, bad_a.clone(), b.clone(), 1.0).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err:?}");
    // Built directly, forward still rejects it.
    let lora = LoraLinear { base: &base, a: bad_a, b: b.clone(), scaling: 1.0 };
    let x = Tensor::from_slice(gpu, &[3, 64], &randn(4, 3 * 64)).unwrap();
    let mut rec = Recorder::new(gpu);
    assert!(matches!(lora.forward(&mut rec, &x), Err(Error::Shape { .. })));
    // B with the wrong rank; x with the wrong width.
    let a = Tensor::from_slice(gpu, &[5, 64], &randn(5, 5 * 64)).unwrap();
    let bad_b = Tensor::from_slice(gpu, &[48, 4], &randn(6, 48 * 4)).unwrap();
    assert!(matches!(LoraLinear::new(&base, a.clone(), bad_b, 1.0), Err(Error::Shape { .. })));
    let lora = LoraLinear::new(&base, a, b, 1.0).unwrap();
    let bad_x = Tensor::from_slice(gpu, &[3, 65], &randn(7, 3 * 65)).unwrap();
    assert!(matches!(lora.forward(&mut rec, &bad_x), Err(Error::Shape { .. })));
    // A u32 input is a dtype error.
    let u32_x = Tensor::zeros(gpu, &[3, 64], DType::U32).unwrap();
    assert!(matches!(lora.forward(&mut rec, &u32_x), Err(Error::DType { .. })));
}

/// LoRA dropout (PEFT: the LoRA branch sees drop(x); the frozen path sees x):
/// forward and backward against the CPU with the reference mask.
#[test]
fn lora_dropout_matches_cpu_with_the_reference_mask() {
    use webpeft::kernels::reference::dropout::dropout as cpu_dropout;
    use webpeft::peft::lora::layer::{lora_backward, lora_forward, LoraDropout, LoraFactors};
    let gpu = gpu();
    let (m, inp, out, r, s, p, seed) = (11, 40, 24, 3, 2.0f32, 0.3f32, 77u32);
    let x = randn(1, m * inp);
    let a = randn(2, r * inp);
    let b = randn(3, out * r);
    let g = randn(4, m * out);
    let f = LoraFactors::new(
        Tensor::from_slice(gpu, &[r, inp], &a).unwrap(),
        Tensor::from_slice(gpu, &[out, r], &b).unwrap(),
    );
    let grads = f.zeros_like(gpu).unwrap();
    let xt = Tensor::from_slice(gpu, &[m, inp], &x).unwrap();
    let gt = Tensor::from_slice(gpu, &[m, out], &g).unwrap();
    let y = Tensor::zeros(gpu, &[m, out], DType::F32).unwrap();
    let dx = Tensor::zeros(gpu, &[m, inp], DType::F32).unwrap();
    let drop = Some(LoraDropout { p, seed });
    let mut rec = Recorder::new(gpu);
    let saved = lora_forward(&mut rec, &xt, &f, s, drop, &y).unwrap();
    lora_backward(&mut rec, &gt, &saved, &f, s, drop, &grads, &dx).unwrap();
    rec.submit().unwrap();
    let get = |t: &Tensor| block_on(t.to_vec::<f32>(gpu)).unwrap();

    let xd = cpu_dropout(&x, p, seed);
    assert!(xd.iter().filter(|v| **v == 0.0).count() > m * inp / 5, "some inputs are dropped");
    let mut xa = vec![0.0; m * r];
    matmul(&xd, &a, &mut xa, m, r, inp, false, true, false);
    let mut y_ref = vec![0.0; m * out];
    matmul(&xa, &b, &mut y_ref, m, out, r, false, true, false);
    y_ref.iter_mut().for_each(|v| *v *= s);
    let mut dxa = vec![0.0; m * r];
    matmul(&g, &b, &mut dxa, m, r, out, false, false, false);
    dxa.iter_mut().for_each(|v| *v *= s);
    let mut da_ref = vec![0.0; r * inp];
    matmul(&dxa, &xd, &mut da_ref, r, inp, m, true, false, false);
    let mut db_ref = vec![0.0; out * r];
    matmul(&g, &xa, &mut db_ref, out, r, m, true, false, false);
    db_ref.iter_mut().for_each(|v| *v *= s);
    let mut dxd = vec![0.0; m * inp];
    matmul(&dxa, &a, &mut dxd, m, inp, r, false, false, false);
    let dx_ref = cpu_dropout(&dxd, p, seed); // the same mask and 1/(1-p)

    assert_close("dropout y", &get(&y), &y_ref, ABS, REL);
    assert_close("dropout dA", &get(&grads.a), &da_ref, ABS, REL);
    assert_close("dropout dB", &get(&grads.b), &db_ref, ABS, REL);
    assert_close("dropout dx", &get(&dx), &dx_ref, ABS, REL);
}
