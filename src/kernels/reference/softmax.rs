//! Row softmax, the reference for `shaders/softmax.wgsl`.

/// `y = exp(x - max) / Σ exp(x - max)` along each row.
///
/// - x: (rows, cols)
/// - y: (rows, cols)
///
/// The max is subtracted so large logits cannot overflow; the sum is f32 in
/// order. A row that is all `-inf` gives NaN (0/0), as torch does.
pub fn softmax_forward(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * cols, "softmax_forward: x must be (rows, cols)");
    let mut y = vec![0.0f32; rows * cols];
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let yr = &mut y[r * cols..(r + 1) * cols];
        let max = xr.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = (v - max).exp();
            sum += *o;
        }
        for o in yr.iter_mut() {
            *o /= sum;
        }
    }
    y
}

/// `dx = y * (dy - Σ_j dy_j y_j)` along each row.
///
/// - dy: (rows, cols)
/// - y: (rows, cols), the forward output (all the backward needs)
/// - dx: (rows, cols)
pub fn softmax_backward(dy: &[f32], y: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(dy.len(), rows * cols, "softmax_backward: dy must be (rows, cols)");
    assert_eq!(y.len(), rows * cols, "softmax_backward: y must be (rows, cols)");
    let mut dx = vec![0.0f32; rows * cols];
    for r in 0..rows {
        let (dyr, yr) = (&dy[r * cols..(r + 1) * cols], &y[r * cols..(r + 1) * cols]);
        let mut dot = 0.0f32;
        for j in 0..cols {
            dot += dyr[j] * yr[j];
        }
        for j in 0..cols {
            dx[r * cols + j] = yr[j] * (dyr[j] - dot);
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::assert_close;
    use crate::kernels::reference::testing::{dot64, numeric_grad};
    use crate::util::rng::Rng;

    #[test]
    fn rows_sum_to_one_and_survive_large_logits() {
        let x = [1000.0, 1001.0, 1002.0, -5.0, 0.0, 5.0];
        let y = softmax_forward(&x, 2, 3);
        for row in y.chunks(3) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // softmax([0, 1, 2]) = [0.09003057, 0.24472847, 0.66524096]
        assert_close("row0", &y[..3], &[0.090_030_57, 0.244_728_47, 0.665_240_96], 0.0, 1e-6);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(41);
        let (rows, cols) = (3, 29);
        let x = rng.normal_vec(rows * cols, 2.0);
        let dy = rng.normal_vec(rows * cols, 1.0);
        let y = softmax_forward(&x, rows, cols);
        let dx = softmax_backward(&dy, &y, rows, cols);
        let num = numeric_grad(&x, 1e-2, |x| dot64(&softmax_forward(x, rows, cols), &dy));
        assert_close("dx", &dx, &num, 1e-3, 5e-3);
    }
}
