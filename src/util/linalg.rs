//! The little dense linear algebra LoRA's weight-based initialisations need
//! (PiSSA, OLoRA, LoftQ in [`crate::peft::lora::init_weight`]), in f64 on the
//! CPU, written out here instead of pulling in a linear-algebra crate:
//!
//! - [`svd`]: the thin SVD `W = U·diag(S)·Vᵀ` by one-sided Jacobi (Hestenes):
//!   plane rotations orthogonalise the columns of `W·V` until every pair is
//!   orthogonal to 1e-15 relative; then `S` is the column norms and `U` the
//!   normalised columns. Singular values come out in descending order. Each
//!   singular pair (u_i, v_i) is determined only up to a common sign, as
//!   LAPACK's `gesdd` behind `torch.linalg.svd`.
//! - [`qr`]: the thin QR `W = Q·R` by Householder reflections with LAPACK's
//!   `geqrf` sign convention (the reflector sends x to β·e₁ with
//!   β = −sign(x₀)·‖x‖), which is `torch.linalg.qr`'s.
//!
//! Matrices are row-major `Vec<f64>` with their (rows, cols) alongside.

/// A thin SVD of an (m, n) matrix, k = min(m, n).
#[derive(Clone, Debug)]
pub struct Svd {
    /// (m, k), orthonormal columns.
    pub u: Vec<f64>,
    /// (k), descending, ≥ 0.
    pub s: Vec<f64>,
    /// Vᵀ (k, n), orthonormal rows.
    pub vt: Vec<f64>,
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// The transpose of an (m, n) row-major matrix.
pub fn transpose(a: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut t = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            t[j * m + i] = a[i * n + j];
        }
    }
    t
}

/// The product (m, n) of a (m, k) and b (k, n).
pub fn matmul(a: &[f64], b: &[f64], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for p in 0..k {
            let aip = a[i * k + p];
            if aip == 0.0 {
                continue;
            }
            let (row, brow) = (&mut c[i * n..(i + 1) * n], &b[p * n..(p + 1) * n]);
            for (c, b) in row.iter_mut().zip(brow) {
                *c += aip * b;
            }
        }
    }
    c
}

/// The thin SVD of `a` (m, n): one-sided Jacobi on the columns of the
/// taller of `a` and `aᵀ` (so the rotated vectors are the short side).
pub fn svd(a: &[f64], m: usize, n: usize) -> Svd {
    assert_eq!(a.len(), m * n, "svd: {} values for ({m}, {n})", a.len());
    if m >= n {
        let (u, s, v) = jacobi_columns(a, m, n);
        Svd { u, s, vt: transpose(&v, n, n), m, n, k: n }
    } else {
        // aᵀ = U'·S·V'ᵀ  ⇒  a = V'·S·U'ᵀ.
        let (u_t, s, v_t) = jacobi_columns(&transpose(a, m, n), n, m);
        Svd { u: v_t, s, vt: transpose(&u_t, n, m), m, n, k: m }
    }
}

/// One-sided Jacobi for a (m, n) with m ≥ n: returns U (m, n), S (n), V (n, n),
/// sorted by descending S. A zero column of `a·V` gives a zero column of U
/// (its singular value is 0; callers here take only the leading ones).
fn jacobi_columns(a: &[f64], m: usize, n: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    // Columns as contiguous vectors: w[j] is column j of a·V.
    let mut w: Vec<Vec<f64>> = (0..n).map(|j| (0..m).map(|i| a[i * n + j]).collect()).collect();
    let mut v: Vec<Vec<f64>> = (0..n).map(|j| (0..n).map(|i| if i == j { 1.0 } else { 0.0 }).collect()).collect();
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    const TOL: f64 = 1e-15;
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) = (dot(&w[p], &w[p]), dot(&w[q], &w[q]), dot(&w[p], &w[q]));
                if gamma == 0.0 || gamma.abs() <= TOL * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                // The rotation that zeroes the (p, q) entry of (a·V)ᵀ(a·V).
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for cols in [&mut w, &mut v] {
                    let (lo, hi) = cols.split_at_mut(q);
                    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
                        let (xp, yq) = (*x, *y);
                        *x = c * xp - s * yq;
                        *y = s * xp + c * yq;
                    }
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = w.iter().map(|c| dot(c, c).sqrt()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| norms[y].total_cmp(&norms[x]));
    let mut u = vec![0.0; m * n];
    let mut vm = vec![0.0; n * n];
    let mut s = Vec::with_capacity(n);
    for (k, &j) in order.iter().enumerate() {
        s.push(norms[j]);
        let inv = if norms[j] > 0.0 { 1.0 / norms[j] } else { 0.0 };
        for i in 0..m {
            u[i * n + k] = w[j][i] * inv;
        }
        for i in 0..n {
            vm[i * n + k] = v[j][i];
        }
    }
    (u, s, vm)
}

/// The thin QR of `a` (m, n), k = min(m, n): Q (m, k) with orthonormal
/// columns and R (k, n) upper triangular, by Householder reflections with
/// LAPACK's signs (R's diagonal is −sign(x₀)·‖x‖ of each reflected column).
pub fn qr(a: &[f64], m: usize, n: usize) -> (Vec<f64>, Vec<f64>) {
    assert_eq!(a.len(), m * n, "qr: {} values for ({m}, {n})", a.len());
    let k = m.min(n);
    let mut r = a.to_vec();
    // Reflector j: I − τ·v·vᵀ with v[j] = 1, v[..j] = 0.
    let mut reflectors: Vec<(Vec<f64>, f64)> = Vec::with_capacity(k);
    for j in 0..k {
        let x: Vec<f64> = (j..m).map(|i| r[i * n + j]).collect();
        let x0 = x[0];
        let tail: f64 = x[1..].iter().map(|v| v * v).sum();
        if tail == 0.0 {
            // Already reduced: LAPACK's dlarfg takes τ = 0 (H = I), keeping x₀'s sign.
            reflectors.push((vec![0.0; m - j], 0.0));
            continue;
        }
        let norm = (x0 * x0 + tail).sqrt();
        let beta = if x0 >= 0.0 { -norm } else { norm };
        let tau = (beta - x0) / beta;
        let scale = 1.0 / (x0 - beta);
        let mut v: Vec<f64> = x.iter().map(|xi| xi * scale).collect();
        v[0] = 1.0;
        // R ← H·R on rows j.., columns j..
        for c in j..n {
            let d: f64 = (j..m).map(|i| v[i - j] * r[i * n + c]).sum();
            for i in j..m {
                r[i * n + c] -= tau * v[i - j] * d;
            }
        }
        for i in j + 1..m {
            r[i * n + j] = 0.0;
        }
        reflectors.push((v, tau));
    }
    // Q = H₀·H₁·…·H_{k−1} applied to the first k columns of the identity.
    let mut q = vec![0.0; m * k];
    for i in 0..k {
        q[i * k + i] = 1.0;
    }
    for (j, (v, tau)) in reflectors.iter().enumerate().rev() {
        if *tau == 0.0 {
            continue;
        }
        for c in 0..k {
            let d: f64 = (j..m).map(|i| v[i - j] * q[i * k + c]).sum();
            for i in j..m {
                q[i * k + c] -= tau * v[i - j] * d;
            }
        }
    }
    let r = r[..k * n].to_vec();
    (q, r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rng::Rng;

    fn randn(seed: u64, n: usize) -> Vec<f64> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.normal()).collect()
    }

    fn max_diff(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// ‖XᵀX − I‖∞ for X (rows, cols).
    fn orthonormality(x: &[f64], rows: usize, cols: usize) -> f64 {
        let g = matmul(&transpose(x, rows, cols), x, cols, rows, cols);
        (0..cols * cols).map(|i| (g[i] - if i % (cols + 1) == 0 { 1.0 } else { 0.0 }).abs()).fold(0.0, f64::max)
    }

    #[test]
    fn svd_reconstructs_odd_shapes_with_orthonormal_factors_and_sorted_values() {
        for (seed, (m, n)) in [(7, 5), (5, 7), (1, 9), (9, 1), (33, 33), (64, 37), (17, 70)].into_iter().enumerate() {
            let a = randn(seed as u64, m * n);
            let d = svd(&a, m, n);
            let us: Vec<f64> = (0..m * d.k).map(|i| d.u[i] * d.s[i % d.k]).collect();
            let back = matmul(&us, &d.vt, m, d.k, n);
            assert!(max_diff(&back, &a) < 1e-12, "({m}, {n}): reconstruction {:e}", max_diff(&back, &a));
            assert!(orthonormality(&d.u, m, d.k) < 1e-12, "({m}, {n}): U");
            assert!(orthonormality(&transpose(&d.vt, d.k, n), n, d.k) < 1e-12, "({m}, {n}): V");
            assert!(d.s.windows(2).all(|w| w[0] >= w[1]) && d.s.iter().all(|&s| s >= 0.0), "({m}, {n}): {:?}", d.s);
        }
    }

    #[test]
    fn svd_of_a_known_matrix_gives_its_singular_values() {
        // diag(3, 1) rotated on both sides keeps singular values 3 and 1; a rank-1 matrix has one.
        let (c, s) = (0.6f64, 0.8f64);
        let rot = [c, -s, s, c];
        let a = matmul(&matmul(&rot, &[3.0, 0.0, 0.0, 1.0], 2, 2, 2), &transpose(&rot, 2, 2), 2, 2, 2);
        let d = svd(&a, 2, 2);
        assert!(max_diff(&d.s, &[3.0, 1.0]) < 1e-14, "{:?}", d.s);
        let rank1 = matmul(&[1.0, 2.0, 3.0], &[4.0, 5.0], 3, 1, 2);
        let d = svd(&rank1, 3, 2);
        assert!((d.s[0] - 14f64.sqrt() * 41f64.sqrt()).abs() < 1e-12 && d.s[1] < 1e-12, "{:?}", d.s);
    }

    #[test]
    fn qr_reconstructs_odd_shapes_with_lapack_s_signs() {
        for (seed, (m, n)) in [(7, 5), (5, 7), (1, 4), (6, 1), (40, 40), (70, 33)].into_iter().enumerate() {
            let a = randn(100 + seed as u64, m * n);
            let k = m.min(n);
            let (q, r) = qr(&a, m, n);
            assert!(max_diff(&matmul(&q, &r, m, k, n), &a) < 1e-12, "({m}, {n}): reconstruction");
            assert!(orthonormality(&q, m, k) < 1e-12, "({m}, {n}): Q");
            for i in 0..k {
                assert!((0..i.min(n)).all(|j| r[i * n + j] == 0.0), "({m}, {n}): R below the diagonal");
                // geqrf: β = −sign(x₀)·‖x‖, so R's diagonal has the opposite sign of the column's pivot
                // after the earlier reflections (for the first column, of a[0][0]).
            }
            if m > 1 {
                assert_eq!(r[0].signum(), -a[0].signum(), "({m}, {n}): R[0][0]");
            }
        }
    }

    #[test]
    fn qr_of_an_already_triangular_column_is_left_as_is() {
        // The first column is e₀·2: no reflection (τ = 0), so R[0][0] stays +2 and Q's first column e₀.
        let a = [2.0, 1.0, 0.0, 3.0, 0.0, 4.0];
        let (q, r) = qr(&a, 3, 2);
        assert_eq!((r[0], q[0], q[2], q[4]), (2.0, 1.0, 0.0, 0.0));
        assert!(max_diff(&matmul(&q, &r, 3, 2, 2), &a) < 1e-14);
        assert!((r[3].abs() - 5.0).abs() < 1e-14, "{r:?}");
    }
}
