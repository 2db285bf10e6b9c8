//! Plain-Rust CPU references for every GPU kernel family.
//!
//! Each file mirrors one `shaders/*.wgsl` family, forward and backward side by
//! side. They are written to be obviously correct, not fast: straight loops,
//! f32 storage, row-major layouts, f32 arithmetic in the natural order unless a
//! function says otherwise. The GPU tests run a kernel and its reference on the
//! same seeded random inputs and compare with [`assert_close`] and a tolerance
//! stated per kernel.
//!
//! Where the result must match PyTorch/transformers bit for bit (RoPE
//! frequencies, AdamW), the function follows the library's operation order and
//! its doc comment says where that order comes from.

pub mod adalora;
pub mod adamw;
pub mod attention;
pub mod classification;
pub mod cross_entropy;
pub mod dora;
pub mod dropout;
pub mod embedding;
pub mod grpo;
pub mod matmul;
pub mod preference;
pub mod reduce;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod swiglu;
pub mod token_rows;

/// Panics unless every `got[i]` is within `abs + rel * |want[i]|` of `want[i]`.
///
/// The message names the worst element (the one furthest over its tolerance):
/// its index, both values, the difference and the tolerance. A NaN in either
/// slice fails unless both are NaN at the same index.
pub fn assert_close(name: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length mismatch, got {} values, want {}", got.len(), want.len());
    let tolerance = |w: f32| abs as f64 + rel as f64 * (w as f64).abs();
    let passes = |g: f32, w: f32| (g.is_nan() && w.is_nan()) || g == w || (g as f64 - w as f64).abs() <= tolerance(w);
    // (index, |diff| / tolerance) of the element furthest over its tolerance.
    let mut worst: Option<(usize, f64)> = None;
    let mut bad = 0;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if passes(g, w) {
            continue;
        }
        bad += 1;
        let diff = (g as f64 - w as f64).abs();
        // NaN against a number, or any difference at zero tolerance, is infinitely bad.
        let excess = if diff.is_nan() { f64::INFINITY } else { diff / tolerance(w) };
        if worst.is_none_or(|(_, e)| excess > e) {
            worst = Some((i, excess));
        }
    }
    if let Some((i, _)) = worst {
        let (g, w) = (got[i], want[i]);
        panic!(
            "{name}: {bad} of {} values out of tolerance; worst at index {i}: got {g:e}, want {w:e}, \
             |diff| {:e} > tolerance {:e} (abs {abs:e} + rel {rel:e} * |want|)",
            got.len(),
            (g as f64 - w as f64).abs(),
            tolerance(w),
        );
    }
}

/// Helpers shared by the reference tests: random inputs and central finite
/// differences.
#[cfg(test)]
pub(crate) mod testing {
    /// `Σ y·w` in f64: the scalar loss whose gradient with respect to `y` is `w`.
    /// Tests check a backward function by feeding it `dy = w` and comparing with
    /// finite differences of this loss.
    pub fn dot64(y: &[f32], w: &[f32]) -> f64 {
        assert_eq!(y.len(), w.len());
        y.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    /// Central finite differences of `loss` with respect to every element of
    /// `x`: `(loss(x + h e_i) - loss(x - h e_i)) / 2h`, evaluated in f64 from the
    /// f32 forward. With `h` around 1e-2 and O(1) inputs the truncation error is
    /// ~1e-4 relative, so tests compare with tolerances of a few 1e-3.
    pub fn numeric_grad(x: &[f32], h: f32, loss: impl Fn(&[f32]) -> f64) -> Vec<f32> {
        let mut xp = x.to_vec();
        (0..x.len())
            .map(|i| {
                let orig = xp[i];
                xp[i] = orig + h;
                // The step actually taken, after f32 rounding of x ± h.
                let up = xp[i] as f64;
                let lp = loss(&xp);
                xp[i] = orig - h;
                let down = xp[i] as f64;
                let lm = loss(&xp);
                xp[i] = orig;
                ((lp - lm) / (up - down)) as f32
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::assert_close;

    #[test]
    fn close_values_pass() {
        assert_close("same", &[1.0, -2.0, 0.0], &[1.0, -2.0, 0.0], 0.0, 0.0);
        assert_close("abs", &[1.0005], &[1.0], 1e-3, 0.0);
        assert_close("rel", &[100.05], &[100.0], 0.0, 1e-3);
        assert_close("nan", &[f32::NAN], &[f32::NAN], 0.0, 0.0);
        assert_close("inf", &[f32::INFINITY], &[f32::INFINITY], 0.0, 0.0);
    }

    #[test]
    #[should_panic(expected = "worst at index 2")]
    fn names_the_worst_index() {
        assert_close("x", &[1.1, 2.0, 3.5, 4.0], &[1.0, 2.0, 3.0, 4.0], 0.01, 0.0);
    }

    #[test]
    #[should_panic(expected = "worst at index 0")]
    fn nan_fails() {
        assert_close("x", &[f32::NAN], &[1.0], 1.0, 1.0);
    }
}
