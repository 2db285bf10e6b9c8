//! CPU reference of `shaders/classification.wgsl`: transformers'
//! `ForSequenceClassificationLoss`, in f64.

use crate::kernels::classification::ProblemType;

/// `(stats, dlogits)` of `kernels::classification::classification_loss` for
/// logits (rows, labels) and `targets` ((rows, labels), or (rows) class
/// indices with −100 for none): stats = [scale·loss, rows predicted right,
/// rows counted] (the last two single-label only), dlogits = ∂(scale·loss)/∂z.
pub fn classification_loss(
    logits: &[f32],
    targets: &[f32],
    labels: usize,
    problem: ProblemType,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let rows = logits.len() / labels;
    let k = scale as f64;
    let mut d = vec![0f32; logits.len()];
    if problem == ProblemType::SingleLabelClassification {
        let counted = targets.iter().filter(|&&t| t != -100.0).count() as f64;
        let (mut loss, mut correct) = (0.0, 0.0);
        for b in 0..rows {
            let z: Vec<f64> = logits[b * labels..(b + 1) * labels].iter().map(|&v| v as f64).collect();
            if targets[b] == -100.0 {
                continue;
            }
            let c = targets[b] as usize;
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let best = z.iter().position(|&v| v == m).unwrap_or(0);
            let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
            loss += m + sum.ln() - z[c];
            correct += f64::from(u8::from(best == c));
            for j in 0..labels {
                let onehot = f64::from(u8::from(j == c));
                d[b * labels + j] = (((z[j] - m).exp() / sum - onehot) * k / counted) as f32;
            }
        }
        return (vec![(loss / counted * k) as f32, correct as f32, counted as f32], d);
    }
    let n = logits.len() as f64;
    let mut loss = 0.0;
    for (i, (&z, &y)) in logits.iter().zip(targets).enumerate() {
        let (z, y) = (z as f64, y as f64);
        if problem == ProblemType::Regression {
            loss += (z - y) * (z - y);
            d[i] = (2.0 * (z - y) * k / n) as f32;
        } else {
            loss += z.max(0.0) + (-z.abs()).exp().ln_1p() - z * y;
            d[i] = ((1.0 / (1.0 + (-z).exp()) - y) * k / n) as f32;
        }
    }
    (vec![(loss / n * k) as f32, 0.0, 0.0], d)
}
