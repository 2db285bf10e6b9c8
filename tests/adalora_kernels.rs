//! AdaLoRA's kernels (`kernels::adalora`) against the CPU reference on seeded
//! random inputs of odd shapes: A ∘ E and its backward, the orthogonality
//! regulariser (its gradient also against finite differences of the
//! reference's loss, so the formula itself is checked), the importance
//! averages with and without clipping, triplet scores, the budget mask with
//! ties and k at both ends, the rank mask, and bad arguments as typed errors.

mod common;
use common::{block_on, gpu, randn, uniform};
use webpeft::gpu::Recorder;
use webpeft::kernels::adalora::{
    apply_rank_mask, mask_to_budget, orth_regularizer, scale_rows, scale_rows_backward, triplet_scores,
    update_importance, OrthSide,
};
use webpeft::kernels::reference::adalora::{self as cpu, Factor};
use webpeft::kernels::reference::assert_close;
use webpeft::{DType, Error, Tensor};

fn read(t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec::<f32>(gpu())).unwrap()
}

fn upload(shape: &[usize], data: &[f32]) -> Tensor {
    Tensor::from_slice(gpu(), shape, data).unwrap()
}

/// assert_close, after printing the largest absolute and relative
/// differences (relative to |want|, where want is not 0).
fn check(name: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    let (mut max_abs, mut max_rel, mut largest) = (0.0f64, 0.0f64, 0.0f32);
    for (&g, &w) in got.iter().zip(want) {
        let d = (g as f64 - w as f64).abs();
        max_abs = max_abs.max(d);
        largest = largest.max(w.abs());
        if w != 0.0 {
            max_rel = max_rel.max(d / (w as f64).abs());
        }
    }
    eprintln!("{name}: max |diff| {max_abs:.2e}, max rel {max_rel:.2e} over {} values up to {largest:.2e}", got.len());
    assert_close(name, got, want, abs, rel);
}

// ---- A ∘ E and its backward

/// (r, in) of lora_A: ranks not powers of two, rows shorter and longer than a
/// workgroup, and one single element.
const SHAPES: [(usize, usize); 5] = [(3, 37), (5, 130), (12, 29), (1, 1), (7, 600)];

#[test]
fn scale_rows_matches_reference() {
    for (s, &(r, cols)) in SHAPES.iter().enumerate() {
        let seed = 100 + 10 * s as u64;
        let a = randn(seed, r * cols);
        let e = randn(seed + 1, r);
        let d = randn(seed + 2, r * cols);
        let da0 = randn(seed + 3, r * cols);
        let de0 = randn(seed + 4, r);
        let (ta, te, td) = (upload(&[r, cols], &a), upload(&[r, 1], &e), upload(&[r, cols], &d));
        let (tda, tde) = (upload(&[r, cols], &da0), upload(&[r, 1], &de0));
        let mut rec = Recorder::new(gpu());
        let scaled = scale_rows(&mut rec, &ta, &te).unwrap();
        scale_rows_backward(&mut rec, &td, &ta, &te, &tda, &tde).unwrap();
        rec.submit().unwrap();

        // One f32 multiply per value: exact.
        check(&format!("A∘E ({r}, {cols})"), &read(&scaled), &cpu::scale_rows(&a, &e, r, cols), 0.0, 0.0);
        let (da, de) = cpu::scale_rows_backward(&d, &a, &e, r, cols);
        let da: Vec<f32> = da0.iter().zip(&da).map(|(x, y)| x + y).collect();
        let de: Vec<f32> = de0.iter().zip(&de).map(|(x, y)| x + y).collect();
        // dA: one multiply-add (the compiler may fuse it): an ulp.
        check(&format!("dA ({r}, {cols})"), &read(&tda), &da, 1e-7, 2e-7);
        // dE: an f32 tree over `in` products against the reference's f64 sum,
        // then one add; cancellation makes an absolute term necessary.
        check(&format!("dE ({r}, {cols})"), &read(&tde), &de, 1e-5, 1e-5);
    }
}

// ---- the orthogonality regulariser

/// Seeded factors of AdaLoRA-like shapes: lora_A (r, in) and lora_B (out, r)
/// for r 5 and 12, a lone lora_A with r 3, and r 17 (r² over a workgroup).
fn factors() -> Vec<(OrthSide, Vec<usize>, Vec<f32>)> {
    let shapes = [
        (OrthSide::Rows, [5, 37]),
        (OrthSide::Cols, [29, 5]),
        (OrthSide::Rows, [12, 130]),
        (OrthSide::Cols, [29, 12]),
        (OrthSide::Rows, [3, 37]),
        (OrthSide::Cols, [40, 17]),
    ];
    shapes
        .iter()
        .enumerate()
        .map(|(i, &(side, s))| {
            // std 0.2: cov − I is far from 0 and of order 1.
            let p: Vec<f32> = randn(200 + i as u64, s[0] * s[1]).iter().map(|v| 0.2 * v).collect();
            (side, s.to_vec(), p)
        })
        .collect()
}

fn as_ref(fs: &[(OrthSide, Vec<usize>, Vec<f32>)]) -> Vec<Factor<'_>> {
    fs.iter().map(|(side, s, p)| Factor { side: *side, p, rows: s[0], cols: s[1] }).collect()
}

/// Runs the GPU regulariser from loss0 and dP0; returns (loss, dPs).
fn run_orth(
    fs: &[(OrthSide, Vec<usize>, Vec<f32>)],
    dp0: &[Vec<f32>],
    weight: f32,
    loss0: f32,
) -> (f32, Vec<Vec<f32>>) {
    let ps: Vec<Tensor> = fs.iter().map(|(_, s, p)| upload(s, p)).collect();
    let dps: Vec<Tensor> = fs.iter().zip(dp0).map(|((_, s, _), d)| upload(s, d)).collect();
    let loss = upload(&[1], &[loss0]);
    let list: Vec<(OrthSide, &Tensor, &Tensor)> =
        fs.iter().zip(ps.iter().zip(&dps)).map(|(f, (p, d))| (f.0, p, d)).collect();
    let mut rec = Recorder::new(gpu());
    orth_regularizer(&mut rec, &list, weight, &loss).unwrap();
    rec.submit().unwrap();
    (read(&loss)[0], dps.iter().map(read).collect())
}

#[test]
fn orth_regularizer_matches_reference() {
    let fs = factors();
    let weight = 0.1; // PEFT's default orth_reg_weight
    let loss0 = 2.5;
    let dp0: Vec<Vec<f32>> = fs.iter().enumerate().map(|(i, f)| randn(300 + i as u64, f.2.len())).collect();
    let (loss, dps) = run_orth(&fs, &dp0, weight, loss0);
    let (want_loss, grads) = cpu::orth_regularizer(&as_ref(&fs), weight);
    // The norms: f32 gemm sums then an f32 tree, against f64 throughout.
    check("orth loss", &[loss], &[loss0 + want_loss], 0.0, 1e-6);
    for (i, ((dp, d0), g)) in dps.iter().zip(&dp0).zip(&grads).enumerate() {
        let want: Vec<f32> = d0.iter().zip(g).map(|(x, y)| x + y).collect();
        // Two f32 products of length ≤ 130 and a norm, then one add to dP0.
        check(&format!("orth dP {i} {:?} {:?}", fs[i].0, fs[i].1), dp, &want, 5e-7, 1e-6);
        // The regulariser's term itself, so a missing gradient is not hidden by dP0.
        let term: Vec<f32> = dp.iter().zip(d0).map(|(x, y)| x - y).collect();
        check(&format!("orth dP {i} term"), &term, g, 5e-7, 1e-4);
    }
}

/// Central finite differences of the reference's f64 loss with respect to
/// every element of factor `i` (the step actually taken after f32 rounding).
fn finite_differences(fs: &[(OrthSide, Vec<usize>, Vec<f32>)], i: usize, weight: f32, h: f32) -> Vec<f32> {
    let mut moved = fs.to_vec();
    (0..fs[i].2.len())
        .map(|j| {
            let x = fs[i].2[j];
            moved[i].2[j] = x + h;
            let (up, loss_up) = (moved[i].2[j] as f64, cpu::orth_loss(&as_ref(&moved), weight));
            moved[i].2[j] = x - h;
            let (down, loss_down) = (moved[i].2[j] as f64, cpu::orth_loss(&as_ref(&moved), weight));
            moved[i].2[j] = x;
            ((loss_up - loss_down) / (up - down)) as f32
        })
        .collect()
}

/// The reference's gradient formula, and the GPU's, against central finite
/// differences of the reference's f64 loss, element by element (h = 1e-3:
/// truncation error ~1e-8 of gradients up to ~1e-2). A factor 2 or a
/// transpose wrong is off by ~1e-3.
#[test]
fn orth_gradient_is_the_loss_derivative() {
    let fs = factors();
    let weight = 0.1;
    let (_, grads) = cpu::orth_regularizer(&as_ref(&fs), weight);
    let dp0: Vec<Vec<f32>> = fs.iter().map(|f| vec![0.0; f.2.len()]).collect();
    let (_, dps) = run_orth(&fs, &dp0, weight, 0.0);
    for i in 0..fs.len() {
        let numeric = finite_differences(&fs, i, weight, 1e-3);
        let name = format!("orth dP {i} {:?} {:?}", fs[i].0, fs[i].1);
        check(&format!("{name} (reference) vs finite differences"), &grads[i], &numeric, 5e-8, 1e-4);
        check(&format!("{name} (GPU) vs finite differences"), &dps[i], &numeric, 1e-7, 1e-4);
    }
}

/// f = 0 (P with orthonormal rows or columns, cov = I exactly) adds nothing to
/// the loss or the gradient, as torch's norm backward; no factors add nothing.
#[test]
fn orth_regularizer_at_zero_norm_and_without_factors() {
    let (r, inner) = (3, 37);
    let mut rows = vec![0.0f32; r * inner]; // lora_A (3, 37): P·Pᵀ = I
    let mut cols = vec![0.0f32; inner * r]; // lora_B (37, 3): Pᵀ·P = I
    for i in 0..r {
        rows[i * inner + 2 * i + 1] = 1.0;
        cols[(5 * i + 4) * r + i] = -1.0;
    }
    let fs = vec![(OrthSide::Rows, vec![r, inner], rows), (OrthSide::Cols, vec![inner, r], cols)];
    let dp0: Vec<Vec<f32>> = fs.iter().enumerate().map(|(i, f)| randn(400 + i as u64, f.2.len())).collect();
    let (loss, dps) = run_orth(&fs, &dp0, 0.1, 1.25);
    assert_eq!(loss, 1.25);
    assert_eq!(dps, dp0);
    assert_eq!(cpu::orth_regularizer(&as_ref(&fs), 0.1).0, 0.0);

    let loss = upload(&[1], &[1.25]);
    let mut rec = Recorder::new(gpu());
    orth_regularizer(&mut rec, &[], 0.1, &loss).unwrap();
    assert!(rec.is_empty(), "no factors records nothing");
    rec.submit().unwrap();
    assert_eq!(read(&loss), [1.25]);
}

// ---- the rank allocator

/// Several steps of importance updates (one submit) against the reference,
/// from PEFT's zero state, with and without the clipping factor on the GPU.
#[test]
fn update_importance_matches_reference() {
    const STEPS: u64 = 4;
    for (shape, clip) in
        [(vec![12, 130], None), (vec![29, 5], Some(0.37f32)), (vec![3, 1], Some(1.0)), (vec![5, 37], None)]
    {
        let n: usize = shape.iter().product();
        let (beta1, beta2) = (0.85, 0.85); // PEFT's defaults
        let params: Vec<Vec<f32>> = (0..STEPS).map(|s| randn(500 + s, n)).collect();
        let grads: Vec<Vec<f32>> = (0..STEPS).map(|s| randn(600 + s, n)).collect();
        let tclip = upload(&[2], &[9.0, clip.unwrap_or(1.0)]);
        let tipt = Tensor::zeros(gpu(), &shape, DType::F32).unwrap();
        let tunc = Tensor::zeros(gpu(), &shape, DType::F32).unwrap();
        let tp: Vec<Tensor> = params.iter().map(|p| upload(&shape, p)).collect();
        let tg: Vec<Tensor> = grads.iter().map(|g| upload(&shape, g)).collect();
        let mut rec = Recorder::new(gpu());
        for (p, g) in tp.iter().zip(&tg) {
            update_importance(&mut rec, p, g, clip.map(|_| &tclip), &tipt, &tunc, beta1, beta2).unwrap();
        }
        rec.submit().unwrap();

        let (mut ipt, mut unc) = (vec![0.0; n], vec![0.0; n]);
        for (p, g) in params.iter().zip(&grads) {
            cpu::update_importance(p, g, clip, &mut ipt, &mut unc, beta1, beta2);
        }
        // The same f32 operations in the same order; a fused multiply-add
        // differs by an ulp, a few over the steps.
        check(&format!("ipt_avg {shape:?} clip {clip:?}"), &read(&tipt), &ipt, 1e-7, 1e-6);
        check(&format!("unc_avg {shape:?} clip {clip:?}"), &read(&tunc), &unc, 1e-7, 1e-6);
    }
}

/// The clipping factor is applied: the clipped run differs from the plain one
/// where the reference says it should.
#[test]
fn update_importance_uses_the_clipping_factor() {
    let n = 37;
    let (p, g) = (randn(700, n), randn(701, n));
    let run = |clip: Option<f32>| {
        let (tp, tg, tclip) = (upload(&[n], &p), upload(&[n], &g), upload(&[2], &[3.0, clip.unwrap_or(1.0)]));
        let (ti, tu) = (upload(&[n], &vec![0.5; n]), upload(&[n], &vec![0.25; n]));
        let mut rec = Recorder::new(gpu());
        update_importance(&mut rec, &tp, &tg, clip.map(|_| &tclip), &ti, &tu, 0.85, 0.95).unwrap();
        rec.submit().unwrap();
        (read(&ti), read(&tu))
    };
    let (plain, clipped) = (run(None), run(Some(0.25)));
    let (mut ipt, mut unc) = (vec![0.5; n], vec![0.25; n]);
    cpu::update_importance(&p, &g, Some(0.25), &mut ipt, &mut unc, 0.85, 0.95);
    check("clipped ipt_avg", &clipped.0, &ipt, 1e-7, 1e-6);
    check("clipped unc_avg", &clipped.1, &unc, 1e-7, 1e-6);
    assert_ne!(plain.0, clipped.0, "the clipping factor changed nothing");
}

/// Three modules' scores into one buffer at their offsets; the slots around
/// them stay as they were.
#[test]
fn triplet_scores_match_reference() {
    // (r, in, out): in and out also over a workgroup.
    let modules = [(5, 37, 29), (12, 130, 29), (3, 37, 1), (4, 300, 270)];
    let total = 2 + modules.iter().map(|m| m.0).sum::<usize>() + 2;
    let sentinel = -7.5f32;
    let tscores = upload(&[total], &vec![sentinel; total]);
    let mut want = vec![sentinel; total];
    let mut state = Vec::new();
    let mut offset = 2;
    for (m, &(r, cols, out)) in modules.iter().enumerate() {
        let seed = 800 + 10 * m as u64;
        // Importance and uncertainty averages are ≥ 0.
        let v: Vec<Vec<f32>> = [r * cols, r * cols, r, r, out * r, out * r]
            .iter()
            .enumerate()
            .map(|(i, &n)| uniform(seed + i as u64, n, 0.0, 1.0))
            .collect();
        let s = cpu::triplet_scores((&v[0], &v[1]), (&v[2], &v[3]), (&v[4], &v[5]), r, cols, out);
        want[offset..offset + r].copy_from_slice(&s);
        let shapes = [[r, cols], [r, cols], [r, 1], [r, 1], [out, r], [out, r]];
        let t: Vec<Tensor> = v.iter().zip(&shapes).map(|(v, s)| upload(s, v)).collect();
        state.push((t, offset));
        offset += r;
    }
    let mut rec = Recorder::new(gpu());
    for (t, offset) in &state {
        triplet_scores(&mut rec, (&t[0], &t[1]), (&t[2], &t[3]), (&t[4], &t[5]), &tscores, *offset).unwrap();
    }
    rec.submit().unwrap();
    // Two f32 trees against f64 sums of positive terms, a divide and two adds.
    check("triplet scores", &read(&tscores), &want, 0.0, 2e-6);
}

/// Scores with many ties (20 distinct values among 1000), k at both ends and
/// inside a run of ties; distinct scores over several workgroups; one score.
#[test]
fn mask_to_budget_matches_reference() {
    let tied: Vec<f32> = uniform(900, 1000, 0.0, 5.0).iter().map(|v| (v * 4.0).floor() / 4.0).collect();
    let distinct = uniform(901, 1500, -1.0, 1.0);
    let cases: [(&[f32], &[usize]); 3] =
        [(&tied, &[1, 7, 333, 500, 999, 1000]), (&distinct, &[1, 2, 750, 1499, 1500]), (&[0.5], &[1])];
    for (scores, ks) in cases {
        let n = scores.len();
        let ts = upload(&[n], scores);
        let keeps: Vec<Tensor> = ks.iter().map(|_| Tensor::zeros(gpu(), &[n], DType::F32).unwrap()).collect();
        let mut rec = Recorder::new(gpu());
        for (&k, keep) in ks.iter().zip(&keeps) {
            mask_to_budget(&mut rec, &ts, k, keep).unwrap();
        }
        rec.submit().unwrap();
        for (&k, keep) in ks.iter().zip(&keeps) {
            let want = cpu::mask_to_budget(scores, k);
            let got = read(keep);
            assert_eq!(got, want, "keep for n = {n}, k = {k}");
            let threshold = cpu::kth_smallest(scores, k);
            let pruned = scores.iter().filter(|&&s| s <= threshold).count();
            assert_eq!(got.iter().filter(|&&v| v == 0.0).count(), pruned, "n = {n}, k = {k}");
            assert!(pruned >= k, "at least k pruned");
            if k == n {
                assert!(got.iter().all(|&v| v == 0.0), "k = n prunes everything");
            }
        }
    }
    // Ties at the threshold are all pruned: k = 1 over [1, 1, 2] keeps only 2.
    let ts = upload(&[3], &[1.0, 1.0, 2.0]);
    let keep = Tensor::zeros(gpu(), &[3], DType::F32).unwrap();
    let mut rec = Recorder::new(gpu());
    mask_to_budget(&mut rec, &ts, 1, &keep).unwrap();
    rec.submit().unwrap();
    assert_eq!(read(&keep), [0.0, 0.0, 1.0]);
}

#[test]
fn apply_rank_mask_matches_reference() {
    let (r, offset, total) = (12, 5, 20);
    let mut e = randn(1000, r);
    e[3] = f32::NAN; // masked_fill_ clears even NaN
    e[4] = -2.0;
    let keep: Vec<f32> = (0..total).map(|i| if i % 3 == 0 || i == 8 || i == 9 { 0.0 } else { 1.0 }).collect();
    let te = upload(&[r, 1], &e);
    let tk = upload(&[total], &keep);
    let mut rec = Recorder::new(gpu());
    apply_rank_mask(&mut rec, &te, &tk, offset).unwrap();
    rec.submit().unwrap();
    let mut want = e.clone();
    cpu::apply_rank_mask(&mut want, &keep, offset);
    let got = read(&te);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&got), bits(&want), "got {got:?}, want {want:?}");
    assert!(got.iter().all(|v| !v.is_nan()), "the NaN was masked");
}

// ---- bad arguments

#[test]
fn bad_arguments_are_typed_errors() {
    let gpu = gpu();
    let f = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32).unwrap();
    let shape_err = |e: Error| assert!(matches!(e, Error::Shape { .. }), "want a shape error, got {e}");
    let invalid = |e: Error| assert!(matches!(e, Error::InvalidArgument { .. }), "want an invalid argument, got {e}");
    let (a, e, b) = (f(&[5, 37]), f(&[5, 1]), f(&[29, 5]));
    let mut rec = Recorder::new(gpu);

    // scale_rows and its backward
    shape_err(scale_rows(&mut rec, &a, &f(&[6, 1])).unwrap_err());
    shape_err(scale_rows(&mut rec, &f(&[185]), &e).unwrap_err());
    let u = Tensor::zeros(gpu, &[5, 37], DType::U32).unwrap();
    let err = scale_rows(&mut rec, &u, &e).unwrap_err();
    assert!(matches!(err, Error::DType { expected: "f32", got: "u32", .. }), "{err}");
    shape_err(scale_rows_backward(&mut rec, &a, &a, &e, &f(&[5, 36]), &f(&[5, 1])).unwrap_err());
    shape_err(scale_rows_backward(&mut rec, &f(&[5, 36]), &a, &e, &f(&[5, 37]), &f(&[5, 1])).unwrap_err());
    shape_err(scale_rows_backward(&mut rec, &a, &a, &e, &f(&[5, 37]), &f(&[4, 1])).unwrap_err());
    invalid(scale_rows_backward(&mut rec, &f(&[5, 37]), &a, &e, &a, &f(&[5, 1])).unwrap_err());

    // orth_regularizer: nothing is recorded when a later factor is bad
    let loss = f(&[1]);
    let good = (OrthSide::Rows, &a, &f(&[5, 37]));
    shape_err(orth_regularizer(&mut rec, &[good, (OrthSide::Cols, &b, &f(&[29, 4]))], 0.1, &loss).unwrap_err());
    shape_err(
        orth_regularizer(&mut rec, &[good, (OrthSide::Cols, &f(&[2, 3, 4]), &f(&[2, 3, 4]))], 0.1, &loss).unwrap_err(),
    );
    shape_err(orth_regularizer(&mut rec, &[good], 0.1, &f(&[2])).unwrap_err());
    shape_err(orth_regularizer(&mut rec, &[(OrthSide::Cols, &f(&[29, 0]), &f(&[29, 0]))], 0.1, &loss).unwrap_err());
    invalid(orth_regularizer(&mut rec, &[good], -0.1, &loss).unwrap_err());
    invalid(orth_regularizer(&mut rec, &[good], f32::NAN, &loss).unwrap_err());
    invalid(orth_regularizer(&mut rec, &[(OrthSide::Rows, &a, &a)], 0.1, &loss).unwrap_err());

    // update_importance
    let (ipt, unc) = (f(&[5, 37]), f(&[5, 37]));
    shape_err(update_importance(&mut rec, &a, &f(&[37, 5]), None, &ipt, &unc, 0.85, 0.85).unwrap_err());
    shape_err(update_importance(&mut rec, &a, &a, Some(&f(&[3])), &ipt, &unc, 0.85, 0.85).unwrap_err());
    shape_err(update_importance(&mut rec, &a, &a, None, &ipt, &f(&[5, 36]), 0.85, 0.85).unwrap_err());
    invalid(update_importance(&mut rec, &a, &a, None, &ipt, &unc, 1.0, 0.85).unwrap_err());
    invalid(update_importance(&mut rec, &a, &a, None, &ipt, &unc, 0.85, 0.0).unwrap_err());
    invalid(update_importance(&mut rec, &a, &a, None, &ipt, &ipt, 0.85, 0.85).unwrap_err());

    // triplet_scores
    let scores = f(&[10]);
    let (ea, eb) = ((&a, &a), (&b, &b));
    shape_err(triplet_scores(&mut rec, ea, (&e, &e), eb, &scores, 6).unwrap_err());
    shape_err(triplet_scores(&mut rec, ea, (&e, &e), (&f(&[29, 4]), &f(&[29, 4])), &scores, 0).unwrap_err());
    shape_err(triplet_scores(&mut rec, ea, (&f(&[4, 1]), &f(&[4, 1])), eb, &scores, 0).unwrap_err());
    shape_err(triplet_scores(&mut rec, (&a, &f(&[5, 36])), (&e, &e), eb, &scores, 0).unwrap_err());

    // mask_to_budget and apply_rank_mask
    let keep = f(&[10]);
    invalid(mask_to_budget(&mut rec, &scores, 0, &keep).unwrap_err());
    invalid(mask_to_budget(&mut rec, &scores, 11, &keep).unwrap_err());
    shape_err(mask_to_budget(&mut rec, &scores, 3, &f(&[9])).unwrap_err());
    shape_err(apply_rank_mask(&mut rec, &e, &keep, 6).unwrap_err());
    shape_err(apply_rank_mask(&mut rec, &f(&[5, 2]), &keep, 0).unwrap_err());

    assert!(rec.is_empty(), "a rejected call recorded work");
    // The good calls still work afterwards.
    scale_rows(&mut rec, &a, &e).unwrap();
    mask_to_budget(&mut rec, &scores, 10, &keep).unwrap();
    rec.submit().unwrap();
    gpu.check("after the bad arguments").unwrap();
}
