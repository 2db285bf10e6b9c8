//! Reductions and elementwise arithmetic, the reference for `shaders/reduce.wgsl`
//! (gradient norms for clipping, greedy decoding's argmax, gradient accumulation, scaling).

/// `Σ x²`, accumulated in f64 and rounded once to f32 (for the global gradient
/// norm, where an f32 running sum over millions of values would drift).
///
/// - x: (n)
pub fn sum_squares(x: &[f32]) -> f32 {
    x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() as f32
}

/// The index of each row's largest value: NaN skipped, ties (-0 and +0
/// among them) to the lowest index, `u32::MAX` for a row with nothing to pick.
///
/// - x: (rows, n)
pub fn argmax_rows(x: &[f32], rows: usize, n: usize) -> Vec<u32> {
    assert_eq!(x.len(), rows * n, "argmax_rows: x must be (rows, n)");
    (0..rows)
        .map(|r| {
            let mut best: Option<(usize, f32)> = None;
            for (i, &v) in x[r * n..(r + 1) * n].iter().enumerate() {
                if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
                    best = Some((i, v));
                }
            }
            best.map_or(u32::MAX, |(i, _)| i as u32)
        })
        .collect()
}

/// `a + b`, elementwise. a, b: (n).
pub fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "add: a and b must have the same shape");
    a.iter().zip(b).map(|(&x, &y)| x + y).collect()
}

/// `s * x`, elementwise. x: (n).
pub fn scale(x: &[f32], s: f32) -> Vec<f32> {
    x.iter().map(|&v| v * s).collect()
}

/// `a + s * b`, elementwise (the product is rounded before the add). a, b: (n).
pub fn add_scaled(a: &[f32], b: &[f32], s: f32) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "add_scaled: a and b must have the same shape");
    a.iter().zip(b).map(|(&x, &y)| x + s * y).collect()
}

/// x (rows, cols) with each row scaled by g (cols), then shifted by `shift`
/// (cols) where given: `x·g + shift`, the product rounded before the add.
pub fn affine_columns(x: &[f32], g: &[f32], shift: Option<&[f32]>) -> Vec<f32> {
    let cols = g.len();
    assert!(cols > 0 && x.len() % cols == 0, "affine_columns: x must be whole rows of g's length");
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            let scaled = v * g[i % cols];
            shift.map_or(scaled, |s| scaled + s[i % cols])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
        assert_eq!(sum_squares(&[]), 0.0);
        assert_eq!(add(&[1.0, 2.0], &[0.5, -2.0]), [1.5, 0.0]);
        assert_eq!(scale(&[1.0, -2.0], 0.5), [0.5, -1.0]);
        assert_eq!(add_scaled(&[1.0, 2.0], &[2.0, 4.0], -0.5), [0.0, 0.0]);
    }

    #[test]
    fn sum_squares_does_not_drift() {
        // A running f32 sum of a million 0.01s is off by ~1e-3 relative; f64 is not.
        let x = vec![0.1f32; 1_000_000];
        let want = 1_000_000.0 * (0.1f32 as f64).powi(2);
        assert!((sum_squares(&x) as f64 - want).abs() / want < 1e-7);
        let naive: f32 = x.iter().map(|v| v * v).sum();
        assert!((naive as f64 - want).abs() / want > 1e-5);
    }
}
