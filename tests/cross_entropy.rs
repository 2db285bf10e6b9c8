//! Cross-entropy forward and backward (also in place) against the CPU
//! reference, the backward against finite differences of the reference
//! forward, and what happens to ignored and invalid targets.

mod common;
mod finite_diff;
use common::{block_on, gpu, randn};
use finite_diff::{dot64, gather, numeric_grad, sample};
use webpeft::gpu::Recorder;
use webpeft::kernels::cross_entropy::{cross_entropy_backward, cross_entropy_backward_inplace, cross_entropy_forward};
use webpeft::kernels::reference::assert_close;
use webpeft::kernels::reference::cross_entropy::{self as cpu, IGNORE_INDEX};
use webpeft::util::rng::Rng;
use webpeft::{DType, Error, Tensor};

// lse (up to ~16 here) against an f64 logsumexp: the GPU merges per-thread
// (max, sum) pairs in a tree, so it is good to a few ulp.
const LSE_ABS: f32 = 1e-5;
const LSE_REL: f32 = 1e-6;
// Against the f32 reference, whose running sum over the row drifts like
// sqrt(vocab) roundings: abs LSE_ABS + LSE_DRIFT · sqrt(vocab).
const LSE_DRIFT: f32 = 1e-6;
const GRAD_ABS: f32 = 1e-7;
const GRAD_REL: f32 = 1e-5;

fn targets(seed: u64, rows: usize, vocab: usize) -> Vec<i32> {
    let mut rng = Rng::new(seed);
    (0..rows).map(|_| if rng.below(4) == 0 { IGNORE_INDEX } else { rng.below(vocab) as i32 }).collect()
}

/// logsumexp of each row in f64, rounded once.
fn lse64(logits: &[f32], vocab: usize) -> Vec<f32> {
    logits
        .chunks(vocab)
        .map(|row| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            (max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln()) as f32
        })
        .collect()
}

struct Out {
    loss: Vec<f32>,
    lse: Vec<f32>,
    dlogits: Vec<f32>,
    inplace: Vec<f32>,
}

fn run(logits: &[f32], targets: &[i32], vocab: usize, scale: f32) -> Out {
    let gpu = gpu();
    let rows = targets.len();
    let tl = Tensor::from_slice(gpu, &[rows, vocab], logits).unwrap();
    let tio = Tensor::from_slice(gpu, &[rows, vocab], logits).unwrap();
    let tt = Tensor::from_slice(gpu, &[rows], targets).unwrap();
    let mut rec = Recorder::new(gpu);
    let (loss, lse) = cross_entropy_forward(&mut rec, &tl, &tt).unwrap();
    let dlogits = cross_entropy_backward(&mut rec, &tl, &tt, &lse, scale).unwrap();
    cross_entropy_backward_inplace(&mut rec, &tio, &tt, &lse, scale).unwrap();
    rec.submit().unwrap();
    let read = |t: &Tensor| block_on(t.to_vec::<f32>(gpu)).unwrap();
    Out { loss: read(&loss), lse: read(&lse), dlogits: read(&dlogits), inplace: read(&tio) }
}

#[test]
fn matches_reference_on_odd_shapes() {
    for (rows, vocab, seed) in [(37, 83, 1), (5, 1000, 2), (3, 70_001, 3), (1, 1, 4)] {
        let logits: Vec<f32> = randn(seed, rows * vocab).into_iter().map(|v| 3.0 * v).collect();
        let targets = targets(seed + 10, rows, vocab);
        let valid = targets.iter().filter(|&&t| t != IGNORE_INDEX).count().max(1);
        let scale = 1.0 / valid as f32;
        let out = run(&logits, &targets, vocab, scale);
        let (want_loss, want_lse) = cpu::cross_entropy_forward(&logits, &targets, rows, vocab);
        // The backward given the same lse as the GPU's, so forward drift doesn't count against it.
        let want_d = cpu::cross_entropy_backward(&logits, &targets, &out.lse, rows, vocab, scale);
        let name = format!("{rows}x{vocab}");
        assert_close(&format!("lse {name} vs f64"), &out.lse, &lse64(&logits, vocab), LSE_ABS, LSE_REL);
        let abs = LSE_ABS + LSE_DRIFT * (vocab as f32).sqrt();
        assert_close(&format!("lse {name}"), &out.lse, &want_lse, abs, LSE_REL);
        assert_close(&format!("loss {name}"), &out.loss, &want_loss, abs, LSE_REL);
        assert_close(&format!("dlogits {name}"), &out.dlogits, &want_d, GRAD_ABS, GRAD_REL);
        assert_close(&format!("dlogits in place {name}"), &out.inplace, &want_d, GRAD_ABS, GRAD_REL);
    }
}

#[test]
fn backward_matches_finite_differences() {
    // A short row, so probabilities (and the gradient) are large next to f32 noise in the loss.
    let (rows, vocab, scale) = (5, 13, 0.37);
    let logits = randn(20, rows * vocab);
    let mut targets = targets(21, rows, vocab);
    targets[0] = 4;
    targets[1] = IGNORE_INDEX;
    let out = run(&logits, &targets, vocab, scale);
    let weights = vec![scale; rows];
    let idx = sample(rows * vocab, 40, 22);
    let num =
        numeric_grad(&logits, &idx, 3e-2, |l| dot64(&cpu::cross_entropy_forward(l, &targets, rows, vocab).0, &weights));
    assert_close("dlogits vs finite differences", &gather(&out.dlogits, &idx), &num, 1e-4, 3e-3);
}

#[test]
fn invalid_targets_give_nan_loss_and_no_gradient() {
    let (rows, vocab) = (4, 83);
    let logits = randn(30, rows * vocab);
    let targets = [5, vocab as i32, -3, IGNORE_INDEX];
    let out = run(&logits, &targets, vocab, 1.0);
    assert!(out.loss[0].is_finite() && out.loss[0] > 0.0, "{:?}", out.loss);
    assert!(out.loss[1].is_nan() && out.loss[2].is_nan(), "{:?}", out.loss);
    assert_eq!(out.loss[3], 0.0);
    assert!(out.dlogits[vocab..].iter().all(|&g| g == 0.0));
    assert!(out.inplace[vocab..].iter().all(|&g| g == 0.0));
    assert!(out.dlogits[..vocab].iter().any(|&g| g != 0.0));
}

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let mut rec = Recorder::new(gpu);
    let logits = Tensor::zeros(gpu, &[4, 10], DType::F32).unwrap();
    let targets = Tensor::zeros(gpu, &[4], DType::I32).unwrap();
    let err = cross_entropy_forward(&mut rec, &logits, &Tensor::zeros(gpu, &[4], DType::U32).unwrap()).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "targets", expected: "i32", got: "u32", .. }), "{err}");
    let err = cross_entropy_forward(&mut rec, &logits, &Tensor::zeros(gpu, &[5], DType::I32).unwrap()).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "cross_entropy_forward", .. }), "{err}");
    let err = cross_entropy_forward(&mut rec, &Tensor::zeros(gpu, &[40], DType::F32).unwrap(), &targets).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let lse3 = Tensor::zeros(gpu, &[3], DType::F32).unwrap();
    let err = cross_entropy_backward(&mut rec, &logits, &targets, &lse3, 1.0).unwrap_err();
    assert!(matches!(err, Error::Shape { op: "cross_entropy_backward", .. }), "{err}");
    let lse_i = Tensor::zeros(gpu, &[4], DType::I32).unwrap();
    let err = cross_entropy_backward_inplace(&mut rec, &logits, &targets, &lse_i, 1.0).unwrap_err();
    assert!(matches!(err, Error::DType { arg: "lse", .. }), "{err}");
    assert!(rec.is_empty());
}

/// The softmax entropy per row (GRPO's metric) against the reference given
/// the GPU's lse, on odd shapes; 0 on ignored rows; a uniform row's is ln V.
#[test]
fn entropy_matches_reference() {
    use webpeft::kernels::cross_entropy::cross_entropy_entropy;
    let gpu = gpu();
    for (rows, vocab, seed) in [(37, 83, 21), (5, 1000, 22), (2, 70_001, 23)] {
        let logits: Vec<f32> = randn(seed, rows * vocab).into_iter().map(|v| 3.0 * v).collect();
        let targets = targets(seed + 10, rows, vocab);
        let tl = Tensor::from_slice(gpu, &[rows, vocab], &logits).unwrap();
        let tt = Tensor::from_slice(gpu, &[rows], &targets).unwrap();
        let mut rec = Recorder::new(gpu);
        let (_, lse) = cross_entropy_forward(&mut rec, &tl, &tt).unwrap();
        let h = cross_entropy_entropy(&mut rec, &tl, &tt, &lse).unwrap();
        rec.submit().unwrap();
        let lse = block_on(lse.to_vec::<f32>(gpu)).unwrap();
        let want = cpu::cross_entropy_entropy(&logits, &targets, &lse, rows, vocab);
        let got = block_on(h.to_vec::<f32>(gpu)).unwrap();
        assert_close(&format!("entropy {rows}x{vocab}"), &got, &want, 1e-5, 1e-5);
        assert!(got.iter().zip(&targets).all(|(&h, &t)| (t == IGNORE_INDEX) == (h == 0.0)));
    }
    let uniform = Tensor::from_slice(gpu, &[1, 64], &[0.5f32; 64]).unwrap();
    let t = Tensor::from_slice(gpu, &[1], &[3i32]).unwrap();
    let mut rec = Recorder::new(gpu);
    let (_, lse) = cross_entropy_forward(&mut rec, &uniform, &t).unwrap();
    let h = cross_entropy_entropy(&mut rec, &uniform, &t, &lse).unwrap();
    rec.submit().unwrap();
    let h = block_on(h.to_vec::<f32>(gpu)).unwrap()[0];
    assert!((h - 64f32.ln()).abs() < 1e-5, "{h}");
}

/// SFT's metrics per row against the reference: the weighted entropy, and a
/// hit exactly where the target is torch.argmax's pick. The logits are
/// rounded to quarters, so rows hold ties at their maximum, and some targets
/// are set on the first or a later one of a tie (argmax keeps the first).
#[test]
fn metrics_match_reference_with_ties() {
    use webpeft::kernels::cross_entropy::cross_entropy_metrics;
    let gpu = gpu();
    for (rows, vocab, seed) in [(41, 7, 31), (13, 517, 32), (3, 70_001, 33)] {
        let logits: Vec<f32> = randn(seed, rows * vocab).into_iter().map(|v| (v * 4.0).round() / 4.0).collect();
        let mut targets = targets(seed + 10, rows, vocab);
        let mut rng = Rng::new(seed + 20);
        for (r, t) in targets.iter_mut().enumerate() {
            let row = &logits[r * vocab..(r + 1) * vocab];
            let top = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let tied: Vec<usize> = (0..vocab).filter(|&i| row[i] == top).collect();
            match rng.below(3) {
                0 => *t = tied[0] as i32,              // argmax's pick: a hit
                1 => *t = tied[tied.len() - 1] as i32, // the last of the tie: a hit only alone
                _ => {}
            }
        }
        let weights: Vec<[f32; 2]> = (0..rows).map(|r| [(r % 3) as f32 * 0.25, 1.0 + (r % 2) as f32]).collect();
        let tl = Tensor::from_slice(gpu, &[rows, vocab], &logits).unwrap();
        let tt = Tensor::from_slice(gpu, &[rows], &targets).unwrap();
        let flat: Vec<f32> = weights.iter().flatten().copied().collect();
        let tw = Tensor::from_slice(gpu, &[rows, 2], &flat).unwrap();
        let mut rec = Recorder::new(gpu);
        let (_, lse) = cross_entropy_forward(&mut rec, &tl, &tt).unwrap();
        let m = cross_entropy_metrics(&mut rec, &tl, &tt, &lse, &tw).unwrap();
        rec.submit().unwrap();
        let lse = block_on(lse.to_vec::<f32>(gpu)).unwrap();
        let want = cpu::cross_entropy_metrics(&logits, &targets, &lse, &weights, rows, vocab);
        let got = block_on(m.to_vec::<f32>(gpu)).unwrap();
        let (got_h, want_h): (Vec<f32>, Vec<f32>) = got.chunks(2).zip(&want).map(|(g, w)| (g[0], w[0])).unzip();
        assert_close(&format!("weighted entropy {rows}x{vocab}"), &got_h, &want_h, 1e-5, 1e-5);
        let got_hits: Vec<f32> = got.chunks(2).map(|g| g[1]).collect();
        let want_hits: Vec<f32> = want.iter().map(|w| w[1]).collect();
        assert_eq!(got_hits, want_hits, "hits {rows}x{vocab}");
        let hits = want_hits.iter().filter(|&&h| h > 0.0).count();
        let misses = targets.iter().zip(&want_hits).filter(|(&t, &h)| t != IGNORE_INDEX && h == 0.0).count();
        assert!(hits > 0 && misses > 0, "{rows}x{vocab}: {hits} hits, {misses} misses");
    }
    // A tie's later member is not argmax's pick.
    let tl = Tensor::from_slice(gpu, &[1, 5], &[0.0f32, 2.0, 1.0, 2.0, -1.0]).unwrap();
    let tw = Tensor::from_slice(gpu, &[1, 2], &[0.0f32, 1.0]).unwrap();
    for (target, hit) in [(1, 1.0), (3, 0.0), (2, 0.0), (IGNORE_INDEX, 0.0)] {
        let tt = Tensor::from_slice(gpu, &[1], &[target]).unwrap();
        let mut rec = Recorder::new(gpu);
        let (_, lse) = cross_entropy_forward(&mut rec, &tl, &tt).unwrap();
        let m = cross_entropy_metrics(&mut rec, &tl, &tt, &lse, &tw).unwrap();
        rec.submit().unwrap();
        assert_eq!(block_on(m.to_vec::<f32>(gpu)).unwrap(), vec![0.0, hit], "target {target}");
    }
}

/// DFT's weighting (TRL's SFT loss_type "dft") against the reference: each
/// row's loss becomes p·CE with p its target's probability, and the
/// gradient rows' scales p·scale; an ignored row keeps loss 0. The gradient
/// through those scales is the cross-entropy's times p, p held constant.
#[test]
fn dft_weights_match_reference() {
    use webpeft::kernels::cross_entropy::{cross_entropy_backward_rows_inplace, cross_entropy_dft};
    let gpu = gpu();
    for (rows, vocab, seed) in [(29, 11, 41), (7, 3001, 42)] {
        let logits: Vec<f32> = randn(seed, rows * vocab).into_iter().map(|v| 2.0 * v).collect();
        let targets = targets(seed + 10, rows, vocab);
        let scale = 0.37;
        let tl = Tensor::from_slice(gpu, &[rows, vocab], &logits).unwrap();
        let tt = Tensor::from_slice(gpu, &[rows], &targets).unwrap();
        let mut rec = Recorder::new(gpu);
        let (loss, lse) = cross_entropy_forward(&mut rec, &tl, &tt).unwrap();
        let plain = Tensor::zeros(gpu, &[rows], DType::F32).unwrap();
        rec.copy(&loss, 0, &plain, 0, rows as u64 * 4).unwrap();
        let row_scale = cross_entropy_dft(&mut rec, &loss, scale).unwrap();
        cross_entropy_backward_rows_inplace(&mut rec, &tl, &tt, &lse, &row_scale).unwrap();
        rec.submit().unwrap();
        let ce = block_on(plain.to_vec::<f32>(gpu)).unwrap();
        let (want_loss, want_scale) = cpu::cross_entropy_dft(&ce, scale);
        assert_close(
            &format!("dft loss {rows}x{vocab}"),
            &block_on(loss.to_vec::<f32>(gpu)).unwrap(),
            &want_loss,
            1e-6,
            1e-6,
        );
        let got_scale = block_on(row_scale.to_vec::<f32>(gpu)).unwrap();
        assert_close(&format!("dft scales {rows}x{vocab}"), &got_scale, &want_scale, 1e-7, 1e-6);
        let lse = block_on(lse.to_vec::<f32>(gpu)).unwrap();
        let want_d = cpu::cross_entropy_backward_rows(&logits, &targets, &lse, rows, vocab, &want_scale);
        assert_close(
            &format!("dft dlogits {rows}x{vocab}"),
            &block_on(tl.to_vec::<f32>(gpu)).unwrap(),
            &want_d,
            GRAD_ABS,
            GRAD_REL,
        );
        for (r, &t) in targets.iter().enumerate() {
            let p = (-ce[r]).exp();
            if t == IGNORE_INDEX {
                assert_eq!(want_loss[r], 0.0);
            } else {
                // p is the target's softmax probability.
                let x = &logits[r * vocab..(r + 1) * vocab];
                let z: f64 = x.iter().map(|&v| (v as f64).exp()).sum();
                assert!((p as f64 - (x[t as usize] as f64).exp() / z).abs() < 1e-6, "row {r}: p {p}");
            }
        }
    }
}
