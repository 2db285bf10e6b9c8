//! CPU references for `shaders/dora.wgsl`, w (rows, cols) row-major.

/// (n, g, inv_n): n[i] = ‖w[i, :]‖₂, g[i] = m[i] / n[i], inv_n[i] = 1 / n[i],
/// with Σ w² in f64 (the GPU sums in f32, in another order).
pub fn magnitude_scale(w: &[f32], rows: usize, cols: usize, m: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(w.len(), rows * cols);
    assert_eq!(m.len(), rows);
    let n: Vec<f32> =
        w.chunks(cols).map(|r| r.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt() as f32).collect();
    let g = n.iter().zip(m).map(|(n, m)| m / n).collect();
    let inv_n = n.iter().map(|n| 1.0 / n).collect();
    (n, g, inv_n)
}

/// Row i of w times g[i], or divided by it with `divide`.
pub fn scale_rows(w: &[f32], cols: usize, g: &[f32], divide: bool) -> Vec<f32> {
    w.chunks(cols).zip(g).flat_map(|(r, &s)| r.iter().map(move |&v| if divide { v / s } else { v * s })).collect()
}
