//! Matrix multiply, the reference for `shaders/matmul.wgsl`.
//!
//! `C (m, n) = op(A) · op(B)`, optionally added onto the existing C. The
//! transposes cover every product the model needs without copying:
//! `y = x·Wᵀ` (trans_b), `dx = dy·W`, `dW = dyᵀ·x` (trans_a).
//! Sums run over `p = 0..k` in f32, in order.

/// C = op(A)·op(B), or C += op(A)·op(B) when `accumulate`.
///
/// - a: (m, k) row-major, or (k, m) when `trans_a` (op(A) = Aᵀ)
/// - b: (k, n) row-major, or (n, k) when `trans_b` (op(B) = Bᵀ)
/// - c: (m, n)
///
/// With `accumulate` each element becomes `c + Σ_p a·b` (the sum is formed
/// first, then added), like `torch.addmm(c, a, b)`.
#[allow(clippy::too_many_arguments)] // the BLAS-style signature every launcher mirrors
pub fn matmul(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    assert_eq!(a.len(), m * k, "matmul: a must hold m*k = {} values", m * k);
    assert_eq!(b.len(), k * n, "matmul: b must hold k*n = {} values", k * n);
    assert_eq!(c.len(), m * n, "matmul: c must hold m*n = {} values", m * n);
    // op(A)[i, p] and op(B)[p, j] in storage coordinates.
    let a_at = |i: usize, p: usize| if trans_a { a[p * m + i] } else { a[i * k + p] };
    let b_at = |p: usize, j: usize| if trans_b { b[j * k + p] } else { b[p * n + j] };
    for i in 0..m {
        for j in 0..n {
            let mut sum = 0.0f32;
            for p in 0..k {
                sum += a_at(i, p) * b_at(p, j);
            }
            let out = &mut c[i * n + j];
            *out = if accumulate { *out + sum } else { sum };
        }
    }
}

/// `batch` independent products, each exactly [`matmul`], with contiguous batches.
///
/// - a: (batch, m, k), or (batch, k, m) when `trans_a`
/// - b: (batch, k, n), or (batch, n, k) when `trans_b`
/// - c: (batch, m, n)
#[allow(clippy::too_many_arguments)]
pub fn matmul_batched(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    assert_eq!(a.len(), batch * m * k, "matmul_batched: a must hold batch*m*k values");
    assert_eq!(b.len(), batch * k * n, "matmul_batched: b must hold batch*k*n values");
    assert_eq!(c.len(), batch * m * n, "matmul_batched: c must hold batch*m*n values");
    for z in 0..batch {
        matmul(
            &a[z * m * k..(z + 1) * m * k],
            &b[z * k * n..(z + 1) * k * n],
            &mut c[z * m * n..(z + 1) * m * n],
            m,
            n,
            k,
            trans_a,
            trans_b,
            accumulate,
        );
    }
}

/// Products per f16 partial sum in the f16-compute kernels (RUN vec4 steps in
/// `shaders/qmatmul.wgsl`).
pub const F16_RUN: usize = 32;

/// C = A·op(B) as `shaders/qmatmul.wgsl` computes it in f16 (HALF): each row
/// of A scaled by the power of two putting its largest |value| in [1, 2) and
/// rounded to f16, B rounded to f16, products and runs of [`F16_RUN`]
/// products summed in f16, the runs in f32, and the scale divided back out.
/// Within a run, y = x·Wᵀ adds four products at a time
/// (`((p0 + p1) + p2) + p3`, the kernel's `dot`) and dx = dy·W one at a time.
/// The GPU may order a dot product's sum differently or fuse a multiply-add,
/// so the kernels agree with this to within a few f16 roundings of a run,
/// not bit for bit.
///
/// - a: (m, k); b: (n, k) when `trans_b` (y = x·Wᵀ), else (k, n) (dx = dy·W)
pub fn matmul_f16_compute(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, trans_b: bool) -> Vec<f32> {
    use half::f16;
    assert_eq!(a.len(), m * k, "matmul_f16_compute: a must hold m*k = {} values", m * k);
    assert_eq!(b.len(), k * n, "matmul_f16_compute: b must hold k*n = {} values", k * n);
    let h = |v: f32| f16::from_f32(v);
    let b_at = |p: usize, j: usize| h(if trans_b { b[j * k + p] } else { b[p * n + j] });
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        let row = &a[i * k..(i + 1) * k];
        let max = row.iter().fold(0.0f32, |mx, v| mx.max(v.abs()));
        let exponent = ((max.to_bits() >> 23) & 0xff).min(253);
        let scale = f32::from_bits((254 - exponent) << 23);
        let xs: Vec<f16> = row.iter().map(|&v| h(v * scale)).collect();
        for j in 0..n {
            let mut acc = 0.0f32;
            for run in (0..k).step_by(F16_RUN) {
                let mut part = f16::ZERO;
                let group = if trans_b { 4 } else { 1 };
                for q in (run..(run + F16_RUN).min(k)).step_by(group) {
                    let mut dot = f16::ZERO;
                    for (p, &x) in xs.iter().enumerate().take((q + group).min(k)).skip(q) {
                        dot += x * b_at(p, j);
                    }
                    part += dot;
                }
                acc += part.to_f32();
            }
            c[i * n + j] = acc / scale;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::assert_close;
    use crate::util::rng::Rng;

    /// Stores the (rows, cols) matrix `x` transposed, as (cols, rows).
    fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0.0; x.len()];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = x[r * cols + c];
            }
        }
        t
    }

    #[test]
    fn small_known_product() {
        // [1 2 3; 4 5 6] · [7 8; 9 10; 11 12] = [58 64; 139 154]
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
        let mut c = [0.0; 4];
        matmul(&a, &b, &mut c, 2, 2, 3, false, false, false);
        assert_eq!(c, [58.0, 64.0, 139.0, 154.0]);
        matmul(&a, &b, &mut c, 2, 2, 3, false, false, true);
        assert_eq!(c, [116.0, 128.0, 278.0, 308.0]);
    }

    #[test]
    fn transposes_agree_with_explicit_transpose() {
        let mut rng = Rng::new(1);
        let (m, n, k) = (7, 5, 13);
        let a = rng.normal_vec(m * k, 1.0);
        let b = rng.normal_vec(k * n, 1.0);
        let mut want = vec![0.0; m * n];
        matmul(&a, &b, &mut want, m, n, k, false, false, false);
        let at = transpose(&a, m, k);
        let bt = transpose(&b, k, n);
        for (ta, tb) in [(true, false), (false, true), (true, true)] {
            let mut got = vec![0.0; m * n];
            let a_in = if ta { &at } else { &a };
            let b_in = if tb { &bt } else { &b };
            matmul(a_in, b_in, &mut got, m, n, k, ta, tb, false);
            // Same products summed in the same order: bit-identical.
            assert_close(&format!("matmul ta={ta} tb={tb}"), &got, &want, 0.0, 0.0);
        }
    }

    /// Small integers are exact in f16, so the f16 arithmetic gives the exact
    /// product, in both orientations, whatever power of two scales a row.
    #[test]
    fn f16_compute_is_exact_on_small_integers_at_any_row_scale() {
        let mut rng = Rng::new(3);
        let (m, n, k) = (3, 5, 70);
        let row_scale = [1.0f32, 2f32.powi(-30), 2f32.powi(20)];
        let a: Vec<f32> = (0..m * k).map(|i| (rng.below(7) as f32 - 3.0) * row_scale[i / k]).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.below(5) as f32 - 2.0).collect();
        for trans_b in [false, true] {
            let mut want = vec![0.0; m * n];
            matmul(&a, &b, &mut want, m, n, k, false, trans_b, false);
            assert_eq!(matmul_f16_compute(&a, &b, m, n, k, trans_b), want, "trans_b={trans_b}");
        }
        // A value f16 cannot hold exactly is rounded: 1 + 2^-12 becomes 1.
        let got = matmul_f16_compute(&[1.0 + 2f32.powi(-12)], &[1.0], 1, 1, 1, true);
        assert_eq!(got, vec![1.0]);
    }

    #[test]
    fn batched_is_each_batch_alone() {
        let mut rng = Rng::new(2);
        let (batch, m, n, k) = (3, 4, 3, 5);
        let a = rng.normal_vec(batch * m * k, 1.0);
        let b = rng.normal_vec(batch * n * k, 1.0);
        let c0 = rng.normal_vec(batch * m * n, 1.0);
        let mut got = c0.clone();
        matmul_batched(&a, &b, &mut got, batch, m, n, k, false, true, true);
        for z in 0..batch {
            let mut want = c0[z * m * n..(z + 1) * m * n].to_vec();
            matmul(
                &a[z * m * k..(z + 1) * m * k],
                &b[z * n * k..(z + 1) * n * k],
                &mut want,
                m,
                n,
                k,
                false,
                true,
                true,
            );
            assert_close("batched", &got[z * m * n..(z + 1) * m * n], &want, 0.0, 0.0);
        }
    }

    /// The gradients of `C = A·Bᵀ` (a Linear layer) are themselves matmuls:
    /// dA = dC·B and dB = dCᵀ·A. Checked against finite differences.
    #[test]
    fn linear_gradients_match_finite_differences() {
        use crate::kernels::reference::testing::{dot64, numeric_grad};
        let mut rng = Rng::new(3);
        let (m, n, k) = (3, 5, 7);
        let a = rng.normal_vec(m * k, 1.0);
        let b = rng.normal_vec(n * k, 1.0);
        let dc = rng.normal_vec(m * n, 1.0);
        let forward = |a: &[f32], b: &[f32]| {
            let mut c = vec![0.0; m * n];
            matmul(a, b, &mut c, m, n, k, false, true, false);
            c
        };
        let mut da = vec![0.0; m * k];
        matmul(&dc, &b, &mut da, m, k, n, false, false, false);
        let mut db = vec![0.0; n * k];
        matmul(&dc, &a, &mut db, n, k, m, true, false, false);
        let num_da = numeric_grad(&a, 1e-2, |a| dot64(&forward(a, &b), &dc));
        let num_db = numeric_grad(&b, 1e-2, |b| dot64(&forward(&a, b), &dc));
        assert_close("da", &da, &num_da, 2e-3, 2e-3);
        assert_close("db", &db, &num_db, 2e-3, 2e-3);
    }
}
