//! Softmax cross-entropy over the vocabulary, the reference for
//! `shaders/cross_entropy.wgsl`.
//!
//! Rows whose target is [`IGNORE_INDEX`] (prompt tokens, padding) contribute
//! neither loss nor gradient. The mean is taken over the non-ignored rows of the
//! whole (accumulated) batch by the caller, through `scale` in the backward
//! and [`mean_loss`] for the reported number.

/// The label value that marks a row as ignored, as in PyTorch and transformers.
pub const IGNORE_INDEX: i32 = -100;

/// Returns `(loss, lse)`, both (rows).
///
/// - logits: (rows, vocab)
/// - targets: (rows), each in `0..vocab` or [`IGNORE_INDEX`]
/// - loss[r] = lse[r] - logits[r, target], 0 for ignored rows
/// - lse[r] = max + ln Σ exp(logit - max) (f32, in order), computed for every
///   row, ignored or not; the backward reuses it
pub fn cross_entropy_forward(logits: &[f32], targets: &[i32], rows: usize, vocab: usize) -> (Vec<f32>, Vec<f32>) {
    check_shapes("cross_entropy_forward", logits, targets, rows, vocab);
    let mut loss = vec![0.0f32; rows];
    let mut lse = vec![0.0f32; rows];
    for r in 0..rows {
        let x = &logits[r * vocab..(r + 1) * vocab];
        let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for &v in x {
            sum += (v - max).exp();
        }
        lse[r] = max + sum.ln();
        if let Some(t) = target_index(targets[r], vocab) {
            loss[r] = lse[r] - x[t];
        }
    }
    (loss, lse)
}

/// Each row's softmax entropy, (rows): `lse − Σ softmax·logits` (the sum in
/// f64), 0 for ignored rows.
pub fn cross_entropy_entropy(logits: &[f32], targets: &[i32], lse: &[f32], rows: usize, vocab: usize) -> Vec<f32> {
    check_shapes("cross_entropy_entropy", logits, targets, rows, vocab);
    (0..rows)
        .map(|r| {
            if target_index(targets[r], vocab).is_none() {
                return 0.0;
            }
            let x = &logits[r * vocab..(r + 1) * vocab];
            let mean: f64 = x.iter().map(|&v| ((v - lse[r]).exp() * v) as f64).sum();
            lse[r] - mean as f32
        })
        .collect()
}

/// DFT's weighting of the forward's per-row losses: `(p·loss, p·scale)` per
/// row, p = exp(−loss) (0 and `scale` for an ignored row's loss of 0).
pub fn cross_entropy_dft(loss: &[f32], scale: f32) -> (Vec<f32>, Vec<f32>) {
    loss.iter().map(|&l| ((-l).exp() * l, (-l).exp() * scale)).unzip()
}

/// SFT's metrics of each row, (rows): `[weights[r][0] · entropy,
/// weights[r][1] · hit]`, the entropy as [`cross_entropy_entropy`]'s and hit
/// 1 where the target is the row's first largest logit (`torch.argmax`), 0
/// where not or ignored.
pub fn cross_entropy_metrics(
    logits: &[f32],
    targets: &[i32],
    lse: &[f32],
    weights: &[[f32; 2]],
    rows: usize,
    vocab: usize,
) -> Vec<[f32; 2]> {
    check_shapes("cross_entropy_metrics", logits, targets, rows, vocab);
    assert_eq!(weights.len(), rows, "cross_entropy_metrics: weights");
    let every = vec![0; rows]; // a target for every row: the entropy counts where its weight says
    let entropy = cross_entropy_entropy(logits, &every, lse, rows, vocab);
    (0..rows)
        .map(|r| {
            let x = &logits[r * vocab..(r + 1) * vocab];
            // The first of the largest, as torch.argmax.
            let argmax = (1..vocab).fold(0, |best, i| if x[i] > x[best] { i } else { best });
            let hit = target_index(targets[r], vocab) == Some(argmax);
            let [we, wh] = weights[r];
            [if we == 0.0 { 0.0 } else { we * entropy[r] }, if hit { wh } else { 0.0 }]
        })
        .collect()
}

/// `dlogits = (softmax(logits) - onehot(target)) * scale`, zero rows where the
/// target is ignored.
///
/// - logits: (rows, vocab)
/// - targets: (rows)
/// - lse: (rows), from [`cross_entropy_forward`]; `softmax = exp(logit - lse)`
/// - scale: the upstream gradient of the summed loss, usually
///   `1 / (non-ignored rows in the whole accumulated batch)`
/// - dlogits: (rows, vocab)
pub fn cross_entropy_backward(
    logits: &[f32],
    targets: &[i32],
    lse: &[f32],
    rows: usize,
    vocab: usize,
    scale: f32,
) -> Vec<f32> {
    cross_entropy_backward_rows(logits, targets, lse, rows, vocab, &vec![scale; rows])
}

/// [`cross_entropy_backward`] with a scale per row (`row_scale`, (rows)), as
/// the preference losses weigh each sequence's tokens.
pub fn cross_entropy_backward_rows(
    logits: &[f32],
    targets: &[i32],
    lse: &[f32],
    rows: usize,
    vocab: usize,
    row_scale: &[f32],
) -> Vec<f32> {
    check_shapes("cross_entropy_backward", logits, targets, rows, vocab);
    assert_eq!(lse.len(), rows, "cross_entropy_backward: lse must be (rows)");
    assert_eq!(row_scale.len(), rows, "cross_entropy_backward: row_scale must be (rows)");
    let mut dlogits = vec![0.0f32; rows * vocab];
    for r in 0..rows {
        let Some(t) = target_index(targets[r], vocab) else {
            continue;
        };
        for c in 0..vocab {
            let p = (logits[r * vocab + c] - lse[r]).exp();
            let onehot = if c == t { 1.0 } else { 0.0 };
            dlogits[r * vocab + c] = (p - onehot) * row_scale[r];
        }
    }
    dlogits
}

/// The mean of `per_row` over the rows whose target is not ignored, summed in
/// f64 and rounded once.
///
/// - per_row: (rows), from [`cross_entropy_forward`]
/// - targets: (rows)
///
/// With no non-ignored row the result is NaN (0/0), the same as torch's
/// `cross_entropy(..., reduction="mean")` on an all-ignored batch; a trainer
/// should skip such a batch rather than report it.
pub fn mean_loss(per_row: &[f32], targets: &[i32]) -> f32 {
    assert_eq!(per_row.len(), targets.len(), "mean_loss: per_row and targets must both be (rows)");
    let mut sum = 0.0f64;
    let mut count = 0usize;
    for (&l, &t) in per_row.iter().zip(targets) {
        if t != IGNORE_INDEX {
            sum += l as f64;
            count += 1;
        }
    }
    (sum / count as f64) as f32
}

/// The target's column, or `None` when the row is ignored.
fn target_index(target: i32, vocab: usize) -> Option<usize> {
    if target == IGNORE_INDEX {
        return None;
    }
    assert!(
        target >= 0 && (target as usize) < vocab,
        "cross_entropy: target {target} is neither {IGNORE_INDEX} nor in 0..{vocab}"
    );
    Some(target as usize)
}

fn check_shapes(op: &str, logits: &[f32], targets: &[i32], rows: usize, vocab: usize) {
    assert_eq!(logits.len(), rows * vocab, "{op}: logits must be (rows, vocab)");
    assert_eq!(targets.len(), rows, "{op}: targets must be (rows)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::assert_close;
    use crate::kernels::reference::testing::numeric_grad;
    use crate::util::rng::Rng;

    #[test]
    fn known_values_and_ignored_rows() {
        // Uniform logits over 4 classes: loss ln 4 whatever the target.
        let logits = [0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0];
        let targets = [2, 3, IGNORE_INDEX];
        let (loss, lse) = cross_entropy_forward(&logits, &targets, 3, 4);
        let ln4 = 4f32.ln();
        // logsumexp(1, 2, 3, 4) = 4.4401897; row 1's loss is that minus 4.
        let lse1 = (1..=4).map(|v| (v as f64).exp()).sum::<f64>().ln() as f32;
        assert_close("loss", &loss, &[ln4, lse1 - 4.0, 0.0], 1e-6, 1e-6);
        assert_close("lse", &lse, &[ln4, lse1, 5.0 + ln4], 1e-6, 1e-6);
        let mean = mean_loss(&loss, &targets);
        assert_close("mean", &[mean], &[(ln4 + lse1 - 4.0) / 2.0], 1e-6, 1e-6);
        let d = cross_entropy_backward(&logits, &targets, &lse, 3, 4, 1.0);
        assert_eq!(&d[8..], &[0.0; 4]);
        assert_close("d row 0", &d[..4], &[0.25, 0.25, -0.75, 0.25], 1e-7, 0.0);
        assert!(mean_loss(&[0.0, 0.0], &[IGNORE_INDEX, IGNORE_INDEX]).is_nan());
    }

    #[test]
    fn backward_matches_finite_differences_of_the_mean() {
        let mut rng = Rng::new(61);
        let (rows, vocab) = (5, 23);
        let logits = rng.normal_vec(rows * vocab, 2.0);
        let targets = [3, IGNORE_INDEX, 0, 22, 7];
        let counted = targets.iter().filter(|&&t| t != IGNORE_INDEX).count();
        let (_, lse) = cross_entropy_forward(&logits, &targets, rows, vocab);
        let d = cross_entropy_backward(&logits, &targets, &lse, rows, vocab, 1.0 / counted as f32);
        let num = numeric_grad(&logits, 1e-2, |x| {
            let (loss, _) = cross_entropy_forward(x, &targets, rows, vocab);
            loss.iter().map(|&l| l as f64).sum::<f64>() / counted as f64
        });
        assert_close("dlogits", &d, &num, 1e-3, 5e-3);
    }
}
