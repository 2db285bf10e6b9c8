//! LoRA initialisations that start from the base weight, as PEFT 0.21.2
//! computes them (`peft/tuners/lora/layer.py`: `pissa_init`, `olora_init`,
//! `loftq_init`; `peft/utils/loftq_utils.py`). Each returns A (r, in), B
//! (out, r) and the base weight that replaces W (out, in), so that the adapted
//! Linear starts as PEFT's does.
//!
//! PEFT runs these in f32 torch; here the decompositions ([`crate::util::linalg`])
//! and products run in f64, and A, B and the new base are rounded to f32 once.
//! Singular and QR vectors carry a sign per rank that neither library fixes:
//! flipping row i of A together with column i of B changes neither B·A, the
//! forward, nor AdamW's trajectory (it is sign-equivariant), so results are
//! compared with PEFT's up to that flip.
//!
//! - PiSSA (`"pissa"`): W = U·S·Vᵀ; with S_r' = S_r / scaling,
//!   A = diag(√S_r')·V_rᵀ, B = U_r·diag(√S_r'), base = W − scaling·B·A
//!   (the residual of the principal part).
//! - `"pissa_niter_K"`: the same from `torch.svd_lowrank(W, q=r, niter=K)`
//!   (Halko et al.'s randomized range finder with K subspace iterations;
//!   our Gaussian draws are not torch's, so it matches PEFT's only as closely
//!   as both match the exact SVD).
//! - OLoRA (`"olora"`): W = Q·R (Householder, LAPACK's signs);
//!   A = R[:r], B = Q[:, :r], base = W − scaling·B·A.
//! - LoftQ (`"loftq"`, `loftq_bits` 4): res = W; `loftq_iter` times:
//!   Q = dequant(NF4(res)), W − Q = U·S·Vᵀ, B = U_r·diag(√S_r),
//!   A = diag(√S_r)·V_rᵀ, res = W − B·A (not after the last). The base is
//!   the last Q: NF4 of the residual, quantized with bitsandbytes' packing
//!   ([`crate::quant::quantize_nf4`], bit-exact with what PEFT calls). As in
//!   PEFT, LoftQ ignores `scaling`.

use crate::quant::quantize_nf4;
use crate::util::linalg::{matmul, qr, svd, transpose, Svd};
use crate::util::rng::Rng;

/// One Linear's initial factors and the base weight that goes with them.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightInit {
    /// lora_A (r, in)
    pub a: Vec<f32>,
    /// lora_B (out, r)
    pub b: Vec<f32>,
    /// The new base weight (out, in).
    pub base: Vec<f32>,
}

/// The factors in f64 and the f32 weight they came from, finished into a
/// [`WeightInit`] whose base is `W − scaling·B·A` with the f32-rounded A and
/// B (so that base + scaling·B·A gives back W as closely as f32 allows).
fn with_residual(w: &[f32], out: usize, inp: usize, r: usize, a: &[f64], b: &[f64], scaling: f64) -> WeightInit {
    let a: Vec<f32> = a.iter().map(|&v| v as f32).collect();
    let b: Vec<f32> = b.iter().map(|&v| v as f32).collect();
    let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let ba = matmul(&wide(&b), &wide(&a), out, r, inp);
    let base = w.iter().zip(&ba).map(|(&w, d)| (w as f64 - scaling * d) as f32).collect();
    WeightInit { a, b, base }
}

/// A (r, in) = diag(√s)·Vᵀ[:r] and B (out, r) = U[:, :r]·diag(√s) for the
/// leading r singular triplets, s = S[:r] / divisor.
fn split_singular(d: &Svd, r: usize, divisor: f64) -> (Vec<f64>, Vec<f64>) {
    let root: Vec<f64> = d.s[..r].iter().map(|s| (s / divisor).sqrt()).collect();
    let a = (0..r * d.n).map(|i| root[i / d.n] * d.vt[i]).collect();
    let b = (0..d.m * r).map(|i| d.u[(i / r) * d.k + i % r] * root[i % r]).collect();
    (a, b)
}

/// PiSSA from the exact SVD of `w` (out, in).
pub fn pissa(w: &[f32], out: usize, inp: usize, r: usize, scaling: f64) -> WeightInit {
    let d = svd(&wide(w), out, inp);
    let (a, b) = split_singular(&d, r, scaling);
    with_residual(w, out, inp, r, &a, &b, scaling)
}

/// PiSSA from `torch.svd_lowrank(w, q=r, niter)`'s algorithm, its Gaussian
/// test matrix drawn from `rng`.
pub fn pissa_lowrank(
    w: &[f32],
    out: usize,
    inp: usize,
    r: usize,
    scaling: f64,
    niter: usize,
    rng: &mut Rng,
) -> WeightInit {
    // svd_lowrank works on the tall one of W and Wᵀ.
    let tall = out >= inp;
    let (m, n) = if tall { (out, inp) } else { (inp, out) };
    let a_mat = if tall { wide(w) } else { transpose(&wide(w), out, inp) };
    let at = transpose(&a_mat, m, n);
    let q_of = |x: &[f64], rows: usize| qr(x, rows, r).0;
    // get_approximate_basis: Q = qr(A·R).Q, then niter times Q = qr(Aᵀ·Q).Q, Q = qr(A·Q).Q.
    let omega: Vec<f64> = (0..n * r).map(|_| rng.normal()).collect();
    let mut q = q_of(&matmul(&a_mat, &omega, m, n, r), m);
    for _ in 0..niter {
        let p = q_of(&matmul(&at, &q, n, m, r), n);
        q = q_of(&matmul(&a_mat, &p, m, n, r), m);
    }
    // B = Qᵀ·A (r, n) = U_b·S·Vᵀ; A ≈ (Q·U_b)·S·Vᵀ.
    let small = matmul(&transpose(&q, m, r), &a_mat, r, m, n);
    let d = svd(&small, r, n);
    let u_tall = matmul(&q, &d.u, m, r, d.k); // (m, r)
    let v_tall = transpose(&d.vt, d.k, n); // (n, r)
                                           // Back to W's orientation: W = U·S·Vᵀ with U (out, r), V (in, r).
    let (u, v) = if tall { (u_tall, v_tall) } else { (v_tall, u_tall) };
    let full = Svd { u, s: d.s, vt: transpose(&v, inp, r), m: out, n: inp, k: r };
    let (a, b) = split_singular(&full, r, scaling);
    with_residual(w, out, inp, r, &a, &b, scaling)
}

/// OLoRA from the QR factors of `w` (out, in).
pub fn olora(w: &[f32], out: usize, inp: usize, r: usize, scaling: f64) -> WeightInit {
    let (q, rr) = qr(&wide(w), out, inp);
    let k = out.min(inp);
    let a: Vec<f64> = rr[..r * inp].to_vec();
    let b: Vec<f64> = (0..out * r).map(|i| q[(i / r) * k + i % r]).collect();
    with_residual(w, out, inp, r, &a, &b, scaling)
}

/// LoftQ with NF4 (`loftq_bits` 4) and `iter` ≥ 1 alternations.
pub fn loftq(w: &[f32], out: usize, inp: usize, r: usize, iter: usize) -> WeightInit {
    assert!(iter >= 1, "loftq: loftq_iter is checked to be ≥ 1 by the config");
    let mut res: Vec<f32> = w.to_vec();
    let mut step = 0;
    loop {
        step += 1;
        let base = quantize_nf4(&res).dequantize();
        // res = W − Q in f32, as PEFT's torch computes it.
        let lost: Vec<f64> = w.iter().zip(&base).map(|(&w, &q)| (w - q) as f64).collect();
        let d = svd(&lost, out, inp);
        let (a, b) = split_singular(&d, r, 1.0);
        let a: Vec<f32> = a.iter().map(|&v| v as f32).collect();
        let b: Vec<f32> = b.iter().map(|&v| v as f32).collect();
        if step == iter {
            return WeightInit { a, b, base };
        }
        let ba = matmul(&wide(&b), &wide(&a), out, r, inp);
        res = w.iter().zip(&ba).map(|(&w, d)| (w as f64 - d) as f32).collect();
    }
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn randn(seed: u64, n: usize) -> Vec<f32> {
        Rng::new(seed).normal_vec(n, 1.0)
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// base + scaling·B·A, in f64.
    fn rebuilt(i: &WeightInit, out: usize, inp: usize, r: usize, scaling: f64) -> Vec<f32> {
        let ba = matmul(&wide(&i.b), &wide(&i.a), out, r, inp);
        i.base.iter().zip(&ba).map(|(&w, d)| (w as f64 + scaling * d) as f32).collect()
    }

    #[test]
    fn pissa_and_olora_split_w_into_adapter_and_residual() {
        for (out, inp, r) in [(13, 7, 3), (6, 11, 2), (9, 9, 9)] {
            let w = randn((out * inp) as u64, out * inp);
            for (name, init) in [("pissa", pissa(&w, out, inp, r, 2.0)), ("olora", olora(&w, out, inp, r, 2.0))] {
                let d = max_diff(&rebuilt(&init, out, inp, r, 2.0), &w);
                assert!(d < 1e-5, "{name} ({out}, {inp}, r {r}): base + s·B·A vs W {d:e}");
            }
            // Full rank: PiSSA leaves nothing in the residual.
            if r == out.min(inp) {
                let p = pissa(&w, out, inp, r, 2.0);
                assert!(p.base.iter().all(|v| v.abs() < 1e-5), "pissa at full rank leaves {:?}", p.base);
            }
        }
    }

    #[test]
    fn pissa_takes_the_largest_singular_values_scaled_by_one_over_scaling() {
        // W = diag(5, 3, 1) (3 × 4): r 2 keeps 5 and 3, each split as √(σ/s) into A and B.
        let mut w = vec![0.0f32; 12];
        (w[0], w[5], w[10]) = (5.0, 3.0, 1.0);
        let p = pissa(&w, 3, 4, 2, 0.5);
        let norm_a = |i: usize| p.a[i * 4..(i + 1) * 4].iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm_a(0) - 10f32.sqrt()).abs() < 1e-6 && (norm_a(1) - 6f32.sqrt()).abs() < 1e-6, "{:?}", p.a);
        let mut want = vec![0.0f32; 12];
        want[10] = 1.0;
        assert!(max_diff(&p.base, &want) < 1e-6, "{:?}", p.base);
    }

    #[test]
    fn randomized_pissa_finds_the_exact_one_on_a_matrix_with_a_clear_gap() {
        // Rank 3 plus small noise: the range finder finds the top-3 subspace.
        let (out, inp, r) = (20, 15, 3);
        let (u, v, noise) = (randn(1, out * r), randn(2, r * inp), randn(3, out * inp));
        let low = matmul(&wide(&u), &wide(&v), out, r, inp);
        let w: Vec<f32> = low.iter().zip(&noise).map(|(l, n)| (*l + 1e-3 * *n as f64) as f32).collect();
        let exact = pissa(&w, out, inp, r, 2.0);
        for niter in [2, 4] {
            let approx = pissa_lowrank(&w, out, inp, r, 2.0, niter, &mut Rng::new(9));
            let d = max_diff(&approx.base, &exact.base);
            assert!(d < 1e-3, "niter {niter}: residual vs the exact SVD's {d:e}");
        }
    }

    #[test]
    fn loftq_reduces_the_quantization_error_and_its_base_is_nf4() {
        let (out, inp, r) = (32, 24, 4);
        let w = randn(11, out * inp);
        let err = |i: &WeightInit| {
            let back = rebuilt(i, out, inp, r, 1.0);
            back.iter().zip(&w).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt()
        };
        let plain: f64 =
            quantize_nf4(&w).dequantize().iter().zip(&w).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt();
        let (one, three) = (loftq(&w, out, inp, r, 1), loftq(&w, out, inp, r, 3));
        assert!(err(&one) < 0.9 * plain, "LoftQ 1: {} vs NF4 alone {plain}", err(&one));
        assert!(err(&three) <= err(&one) * 1.001, "LoftQ 3: {} vs 1: {}", err(&three), err(&one));
        // The base is a dequantized NF4 weight: quantizing it again changes nothing.
        assert_eq!(quantize_nf4(&three.base).dequantize(), three.base);
    }
}
