//! RMSNorm, the reference for `shaders/rmsnorm.wgsl`.
//!
//! As Hugging Face `LlamaRMSNorm` in f32:
//! `y = w * (x * rsqrt(mean(x²) + eps))`.
//! The forward saves `rstd = rsqrt(mean(x²) + eps)` per row, which is all the
//! backward needs besides x and w.

/// Returns `(y, rstd)`.
///
/// - x: (rows, dim)
/// - weight: (dim)
/// - y: (rows, dim)
/// - rstd: (rows), `1 / sqrt(mean(x²) + eps)`
///
/// The mean is the f32 sum of squares in order divided by `dim`; `rsqrt` is
/// `1 / sqrt` in f32 (what torch's CPU kernel computes). Then `x * rstd` is
/// rounded before the multiply by the weight, as in transformers
/// (`self.weight * hidden_states`).
pub fn rmsnorm_forward(x: &[f32], weight: &[f32], rows: usize, dim: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), rows * dim, "rmsnorm_forward: x must be (rows, dim)");
    assert_eq!(weight.len(), dim, "rmsnorm_forward: weight must be (dim)");
    let mut y = vec![0.0f32; rows * dim];
    let mut rstd = vec![0.0f32; rows];
    for r in 0..rows {
        let xr = &x[r * dim..(r + 1) * dim];
        let mut sum_sq = 0.0f32;
        for &v in xr {
            sum_sq += v * v;
        }
        let mean_sq = sum_sq / dim as f32;
        let rs = 1.0 / (mean_sq + eps).sqrt();
        rstd[r] = rs;
        for i in 0..dim {
            y[r * dim + i] = weight[i] * (xr[i] * rs);
        }
    }
    (y, rstd)
}

/// Returns `(dx, dweight)`.
///
/// - dy: (rows, dim)
/// - x: (rows, dim), the forward input
/// - weight: (dim)
/// - rstd: (rows), saved by [`rmsnorm_forward`]
/// - dx: (rows, dim)
/// - dweight: (dim), summed over rows
///
/// With `r = rstd` and `g = dy * w`:
/// `dx = r * g - x * r³ * (Σ_i g_i x_i) / dim` and `dweight = Σ_rows dy * x * r`.
pub fn rmsnorm_backward(
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    rstd: &[f32],
    rows: usize,
    dim: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(dy.len(), rows * dim, "rmsnorm_backward: dy must be (rows, dim)");
    assert_eq!(x.len(), rows * dim, "rmsnorm_backward: x must be (rows, dim)");
    assert_eq!(weight.len(), dim, "rmsnorm_backward: weight must be (dim)");
    assert_eq!(rstd.len(), rows, "rmsnorm_backward: rstd must be (rows)");
    let mut dx = vec![0.0f32; rows * dim];
    let mut dweight = vec![0.0f32; dim];
    for r in 0..rows {
        let xr = &x[r * dim..(r + 1) * dim];
        let dyr = &dy[r * dim..(r + 1) * dim];
        let rs = rstd[r];
        // Σ_i dy_i w_i x_i: the projection of the upstream gradient on x.
        let mut dot = 0.0f32;
        for i in 0..dim {
            dot += dyr[i] * weight[i] * xr[i];
        }
        let coef = rs * rs * rs * dot / dim as f32;
        for i in 0..dim {
            dx[r * dim + i] = rs * dyr[i] * weight[i] - coef * xr[i];
            dweight[i] += dyr[i] * xr[i] * rs;
        }
    }
    (dx, dweight)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::assert_close;
    use crate::kernels::reference::testing::{dot64, numeric_grad};
    use crate::util::rng::Rng;

    #[test]
    fn unit_weight_gives_unit_rms() {
        let x = [3.0, 4.0];
        let (y, rstd) = rmsnorm_forward(&x, &[1.0, 1.0], 1, 2, 0.0);
        // mean(x²) = 12.5, rms = 3.5355...
        assert_close("rstd", &rstd, &[1.0 / 12.5f32.sqrt()], 0.0, 1e-7);
        assert_close("y", &y, &[3.0 / 12.5f32.sqrt(), 4.0 / 12.5f32.sqrt()], 0.0, 1e-6);
    }

    #[test]
    fn backward_matches_finite_differences() {
        let mut rng = Rng::new(11);
        let (rows, dim, eps) = (3, 37, 1e-5);
        let x = rng.normal_vec(rows * dim, 1.0);
        let w = rng.uniform_vec(dim, 0.5, 1.5);
        let dy = rng.normal_vec(rows * dim, 1.0);
        let (_, rstd) = rmsnorm_forward(&x, &w, rows, dim, eps);
        let (dx, dw) = rmsnorm_backward(&dy, &x, &w, &rstd, rows, dim);
        let num_dx = numeric_grad(&x, 1e-2, |x| dot64(&rmsnorm_forward(x, &w, rows, dim, eps).0, &dy));
        let num_dw = numeric_grad(&w, 1e-2, |w| dot64(&rmsnorm_forward(&x, w, rows, dim, eps).0, &dy));
        assert_close("dx", &dx, &num_dx, 2e-3, 5e-3);
        assert_close("dweight", &dw, &num_dw, 2e-3, 5e-3);
    }
}
