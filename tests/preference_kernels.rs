//! The preference-loss kernels (`shaders/preference.wgsl`) and the per-row
//! cross-entropy backward against their CPU references, on seeded random
//! inputs with odd shapes: 3 and 5 pairs, 37 rows a sequence, vocab 97.

mod common;
use common::{block_on, gpu, randn};
use webpeft::gpu::Recorder;
use webpeft::kernels::cross_entropy::{cross_entropy_backward_rows_inplace, cross_entropy_forward};
use webpeft::kernels::preference::{
    preference_loss, preference_row_scale, sequence_logps, CpoLoss, CpoLossType, DpoLoss, DpoLossType, FDivergence,
    KtoLoss, PreferenceLoss, Scores, STATS,
};
use webpeft::kernels::reference::{assert_close, cross_entropy as ce_cpu, preference as cpu};
use webpeft::util::rng::Rng;
use webpeft::{DType, Error, Tensor};

// Sums of 37 f32 products against f64 sums: a few ulp of values up to ~100.
const LOGP_ABS: f32 = 2e-5;
const LOGP_REL: f32 = 1e-6;
// The loss kernel's transcendental functions in f32 against f64.
const LOSS_ABS: f32 = 1e-6;
const LOSS_REL: f32 = 2e-5;

fn read(t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec::<f32>(gpu())).unwrap()
}

/// Completion weights (0 on a prompt and padding, `w` on completion rows) of `seqs` sequences of `per` rows.
fn weights(rng: &mut Rng, seqs: usize, per: usize, w: impl Fn(usize) -> f32) -> Vec<f32> {
    let mut out = vec![0.0; seqs * per];
    for s in 0..seqs {
        let start = 1 + rng.below(per / 2);
        let len = 1 + rng.below(per - start);
        for r in start..start + len {
            out[s * per + r] = w(s);
        }
    }
    out
}

fn check_loss(loss: PreferenceLoss, pairs: usize, seed: u64) {
    let gpu = gpu();
    let (seqs, per) = (2 * pairs, 37);
    let mut rng = Rng::new(seed);
    // Cross-entropies of a small vocabulary: 0..~6 nats a token.
    let token_loss: Vec<f32> = (0..seqs * per).map(|_| rng.uniform_range(0.05, 6.05)).collect();
    let averages = loss.averages();
    let lp_w = weights(&mut rng, seqs, per, |_| if averages { 1.0 / 7.0 } else { 1.0 });
    let nll_w = if loss.nll_alpha().is_some() {
        weights(&mut rng, seqs, per, |s| if s < pairs { 0.01 } else { 0.0 })
    } else {
        vec![0.0; seqs * per]
    };
    let reference: Vec<f32> = randn(seed + 1, seqs).iter().map(|v| -60.0 + 5.0 * v).collect();
    let scale = 0.5;

    // KTO's labels: both kinds among the examples (the first desirable, the second not); without KL rows
    // (apo_zero_unpaired) every row is an example.
    let kl = !matches!(loss, PreferenceLoss::Kto(k) if !k.loss_type.uses_kl());
    let examples = if kl { pairs } else { seqs };
    let desirable: Vec<f32> = (0..examples).map(|i| if i < 2 { (1 - i) as f32 } else { rng.below(2) as f32 }).collect();
    let up = |v: &[f32]| Tensor::from_slice(gpu, &[v.len()], v).unwrap();
    let labels = up(&desirable);
    let (tl, lw, nw, rf) = (up(&token_loss), up(&lp_w), up(&nll_w), up(&reference));
    let stats = Tensor::from_slice(gpu, &[STATS], &[0.25f32; STATS]).unwrap();
    let mut rec = Recorder::new(gpu);
    let (logps, nll) = sequence_logps(&mut rec, &tl, &lw, &nw, seqs).unwrap();
    let kto = matches!(loss, PreferenceLoss::Kto(_));
    // bco_pair's running mean after 3 earlier micro-batches.
    let mut running = [0.3f32, 3.0];
    let run = up(&running);
    let scores = Scores {
        policy: &logps,
        reference: Some(&rf),
        nll: &nll,
        desirable: kto.then_some(&labels),
        running: Some(&run),
    };
    let dlogp = preference_loss(&mut rec, loss, scores, scale, &stats).unwrap();
    let nll_scale = scale * loss.nll_alpha().unwrap_or(0.0);
    let row_scale = preference_row_scale(&mut rec, &dlogp, &lw, &nw, nll_scale).unwrap();
    rec.submit().unwrap();

    let (want_logps, want_nll) = cpu::sequence_logps(&token_loss, &lp_w, &nll_w, seqs);
    let got_logps = read(&logps);
    assert_close("logps", &got_logps, &want_logps, LOGP_ABS, LOGP_REL);
    assert_close("nll", &read(&nll), &want_nll, LOGP_ABS, LOGP_REL);
    // The loss from the GPU's log-probabilities, so that it checks the loss kernel alone.
    let (mut want_stats, want_dlogp) =
        cpu::preference_loss(loss, &got_logps, &reference, &read(&nll), &desirable, scale, &mut running);
    assert_close("running", &read(&run), &running, 1e-6, 1e-6);
    want_stats.iter_mut().for_each(|v| *v += 0.25); // added to what `stats` held
    assert_close("stats", &read(&stats), &want_stats, LOSS_ABS, LOSS_REL);
    let got_dlogp = read(&dlogp);
    assert_close("dlogp", &got_dlogp, &want_dlogp, LOSS_ABS, LOSS_REL);
    // Hinge's gradient is 0 where 1 − βh < 0, the α-divergence's where its exponent is capped (or
    // e^(−α·c) underflows); every other loss gives every sequence one.
    let hinge = matches!(
        loss,
        PreferenceLoss::Dpo(DpoLoss { loss_type, f_divergence, .. })
            if loss_type.contains(DpoLossType::Hinge) || matches!(f_divergence, FDivergence::Alpha(_))
    ) || matches!(loss, PreferenceLoss::Cpo(CpoLoss { loss_type: CpoLossType::Hinge, .. }));
    // sft's gradient is the NLL's, through the row scale: none here.
    let sft = matches!(loss, PreferenceLoss::Dpo(d) if d.loss_type.single() == Some(DpoLossType::Sft));
    let nonzero = got_dlogp.iter().filter(|v| **v != 0.0).count();
    if kto && !kl {
        assert!(got_dlogp.iter().all(|v| *v != 0.0), "{got_dlogp:?}");
    } else if kto {
        // The examples have a gradient, their KL rows none.
        let half = got_dlogp.len() / 2;
        assert!(got_dlogp[..half].iter().all(|v| *v != 0.0), "{got_dlogp:?}");
        assert!(got_dlogp[half..].iter().all(|v| *v == 0.0), "{got_dlogp:?}");
    } else if sft {
        assert_eq!(nonzero, 0, "{got_dlogp:?}");
    } else {
        assert!(nonzero == got_dlogp.len() || (hinge && nonzero > 0), "the sequences' gradients: {got_dlogp:?}");
    }
    let want_rows = cpu::preference_row_scale(&got_dlogp, &lp_w, &nll_w, nll_scale);
    assert_close("row_scale", &read(&row_scale), &want_rows, 1e-7, 1e-6);
}

fn dpo(beta: f32, label_smoothing: f32, loss_type: DpoLossType) -> PreferenceLoss {
    PreferenceLoss::Dpo(DpoLoss { beta, label_smoothing, loss_type: loss_type.into(), ..DpoLoss::TRL })
}

#[test]
fn dpo_loss_matches_the_cpu_reference() {
    check_loss(PreferenceLoss::DPO, 3, 71);
    check_loss(dpo(0.5, 0.2, DpoLossType::Sigmoid), 5, 72);
}

/// Every loss type, with and without the RPO term; β 0.1 and 0.5 (the random log-ratios are a few nats:
/// hinge's 1 − βh falls on both sides of 0, discopop's βh/τ spans the modulation).
#[test]
fn every_dpo_loss_type_matches_the_cpu_reference() {
    for (i, t) in DpoLossType::ALL.into_iter().enumerate() {
        let eps = if t.smooths() { 0.15 } else { 0.0 };
        let seed = 80 + 2 * i as u64;
        check_loss(dpo(0.1, eps, t), 3, seed);
        let with_rpo = DpoLoss { rpo_alpha: Some(0.7), discopop_tau: 0.3, ..DpoLoss { beta: 0.5, ..DpoLoss::TRL } };
        check_loss(PreferenceLoss::Dpo(DpoLoss { loss_type: t.into(), ..with_rpo }), 5, seed + 1);
    }
    // Lists of loss types with weights (TRL's loss_type list and loss_weights): MPO's, sorted ones with
    // per-pair ones, EXO with another smoothed loss, the same loss twice.
    use DpoLossType::*;
    for (i, (types, weights)) in [
        (&[Sigmoid, BcoPair, Sft][..], Some(&[0.8f32, 0.2, 1.0][..])),
        (&[Aot, Hinge, AotPair][..], None),
        (&[ExoPair, Robust][..], Some(&[0.5, 1.5][..])),
        (&[BcoPair, Ipo, BcoPair, Sft][..], Some(&[1.0, 0.25, 2.0, 0.5][..])),
    ]
    .into_iter()
    .enumerate()
    {
        let loss_type = webpeft::kernels::preference::DpoLossTypes::new(types, weights).unwrap();
        let d = DpoLoss { loss_type, label_smoothing: 0.1, rpo_alpha: (i == 1).then_some(0.3), ..DpoLoss::TRL };
        check_loss(PreferenceLoss::Dpo(d), 3 + 2 * i, 140 + i as u64);
    }
    // EXO with no smoothing runs at ε = 1e-3, as TRL's dpo_loss sets it.
    check_loss(dpo(0.1, 0.0, DpoLossType::ExoPair), 4, 79);
    // The f-divergences' h on each loss of h alone, alone and beside one it does not change.
    for (i, f) in [FDivergence::Js, FDivergence::Alpha(0.5), FDivergence::Alpha(1.3)].into_iter().enumerate() {
        for (j, t) in [Sigmoid, Robust, ExoPair, Hinge, Ipo].into_iter().enumerate() {
            let eps = if t.smooths() { 0.1 } else { 0.0 };
            let PreferenceLoss::Dpo(d) = dpo(0.3, eps, t) else { unreachable!() };
            check_loss(PreferenceLoss::Dpo(DpoLoss { f_divergence: f, ..d }), 3, 160 + (5 * i + j) as u64);
        }
        let loss_type = webpeft::kernels::preference::DpoLossTypes::new(&[Sigmoid, ApoZero], None).unwrap();
        check_loss(PreferenceLoss::Dpo(DpoLoss { loss_type, f_divergence: f, ..DpoLoss::TRL }), 4, 190 + i as u64);
    }
    // reference_free: the loss without the reference (where TRL's loss type reads it through the log-ratios).
    for t in [DpoLossType::Sigmoid, DpoLossType::ApoDown, DpoLossType::NcaPair] {
        let d = DpoLoss { loss_type: t.into(), reference_free: true, ..DpoLoss::TRL };
        check_loss(PreferenceLoss::Dpo(d), 3, 100 + t as u64);
    }
}

/// KTO: the KL estimate from the second half's rows, desirable and undesirable examples with their weights.
#[test]
fn kto_loss_matches_the_cpu_reference() {
    check_loss(PreferenceLoss::Kto(KtoLoss::TRL), 3, 120);
    let k = KtoLoss { beta: 0.5, desirable_weight: 1.3, undesirable_weight: 0.7, ..KtoLoss::TRL };
    check_loss(PreferenceLoss::Kto(k), 5, 121);
    // apo_zero_unpaired: every row an example (here 2·5 of them), no KL estimate.
    let apo = KtoLoss { loss_type: webpeft::kernels::preference::KtoLossType::ApoZeroUnpaired, ..k };
    check_loss(PreferenceLoss::Kto(apo), 5, 122);
}

/// CPO's loss types on the policy alone (the reference buffer bound but unread), with and without the NLL term.
#[test]
fn every_cpo_loss_type_matches_the_cpu_reference() {
    for (i, loss_type) in CpoLossType::ALL.into_iter().enumerate() {
        let eps = if loss_type.smooths() { 0.15 } else { 0.0 };
        let seed = 110 + 2 * i as u64;
        let c = CpoLoss { loss_type, label_smoothing: eps, ..CpoLoss::TRL };
        check_loss(PreferenceLoss::Cpo(c), 3, seed);
        let simpo = CpoLoss { beta: 2.0, cpo_alpha: 0.4, simpo_gamma: 1.5, ..c };
        check_loss(PreferenceLoss::Cpo(simpo), 5, seed + 1);
        // AlphaPO's rewards (1 − p^−α)/α: on means (ipo, simpo) and on sums, α of both signs.
        let alpha = if loss_type.averages() { 0.25 } else { -0.02 };
        check_loss(PreferenceLoss::Cpo(CpoLoss { alpha, ..simpo }), 4, seed + 50);
    }
}

#[test]
fn orpo_loss_matches_the_cpu_reference() {
    check_loss(PreferenceLoss::Orpo { beta: 0.1 }, 3, 73);
    check_loss(PreferenceLoss::Orpo { beta: 1.0 }, 5, 74);
}

#[test]
fn cross_entropy_backward_with_a_scale_per_row() {
    let gpu = gpu();
    let (rows, vocab) = (45, 97);
    let logits = randn(75, rows * vocab).iter().map(|v| 2.0 * v).collect::<Vec<f32>>();
    let mut rng = Rng::new(76);
    let targets: Vec<i32> = (0..rows).map(|_| if rng.below(4) == 0 { -100 } else { rng.below(vocab) as i32 }).collect();
    let row_scale: Vec<f32> = (0..rows).map(|_| rng.uniform_range(-0.5, 0.5)).collect();
    let tio = Tensor::from_slice(gpu, &[rows, vocab], &logits).unwrap();
    let tt = Tensor::from_slice(gpu, &[rows], &targets).unwrap();
    let ts = Tensor::from_slice(gpu, &[rows], &row_scale).unwrap();
    let mut rec = Recorder::new(gpu);
    let (_, lse) = cross_entropy_forward(&mut rec, &tio, &tt).unwrap();
    cross_entropy_backward_rows_inplace(&mut rec, &tio, &tt, &lse, &ts).unwrap();
    rec.submit().unwrap();
    let (_, want_lse) = ce_cpu::cross_entropy_forward(&logits, &targets, rows, vocab);
    let want = ce_cpu::cross_entropy_backward_rows(&logits, &targets, &want_lse, rows, vocab, &row_scale);
    assert_close("dlogits", &read(&tio), &want, 1e-7, 1e-5);
}

#[test]
fn bad_shapes_are_typed_errors() {
    let gpu = gpu();
    let t = |n: usize| Tensor::zeros(gpu, &[n], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu);
    let e = sequence_logps(&mut rec, &t(10), &t(10), &t(10), 3).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let e = sequence_logps(&mut rec, &t(10), &t(9), &t(10), 2).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let (four, stats) = (t(4), t(STATS));
    let scores = |reference, desirable| Scores { policy: &four, reference, nll: &four, desirable, running: None };
    let e = preference_loss(&mut rec, PreferenceLoss::DPO, scores(None, None), 1.0, &stats).unwrap_err();
    assert!(e.to_string().contains("reference"), "{e}");
    let e = preference_loss(&mut rec, PreferenceLoss::ORPO, scores(None, None), 1.0, &t(3)).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    let kto = PreferenceLoss::Kto(KtoLoss::TRL);
    let e = preference_loss(&mut rec, kto, scores(Some(&four), None), 1.0, &stats).unwrap_err();
    assert!(e.to_string().contains("label"), "{e}");
    let e = preference_loss(&mut rec, kto, scores(Some(&four), Some(&four)), 1.0, &stats).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
}
