//! AdaLoRA, the reference for `shaders/adalora.wgsl` (PEFT's
//! peft/tuners/adalora/{layer,model}.py): `A ∘ E` and its backward, the
//! orthogonality regulariser with its gradient, and the rank allocator's
//! importance averages, triplet scores and budget mask.
//!
//! Sums (row sums, covariances, norms, means) accumulate in f64 and round
//! once to f32; elementwise steps are f32 in PEFT's order.

use crate::kernels::adalora::OrthSide;

/// `A ∘ E`: row i of A times E[i].
///
/// - a: (r, cols), lora_A
/// - e: (r), lora_E
/// - returns (r, cols)
pub fn scale_rows(a: &[f32], e: &[f32], r: usize, cols: usize) -> Vec<f32> {
    assert_eq!(a.len(), r * cols, "scale_rows: a must be (r, cols)");
    assert_eq!(e.len(), r, "scale_rows: e must be (r)");
    (0..r * cols).map(|i| a[i] * e[i / cols]).collect()
}

/// The backward of [`scale_rows`]: returns `(da, de)`, the increments
/// `dA'[i, j]·E[i]` (r, cols) and `Σ_j dA'[i, j]·A[i, j]` (r).
///
/// - d_scaled: (r, cols)
/// - a: (r, cols)
/// - e: (r)
pub fn scale_rows_backward(d_scaled: &[f32], a: &[f32], e: &[f32], r: usize, cols: usize) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(d_scaled.len(), r * cols, "scale_rows_backward: d_scaled must be (r, cols)");
    let da = scale_rows(d_scaled, e, r, cols);
    let de = (0..r)
        .map(|i| (0..cols).map(|j| d_scaled[i * cols + j] as f64 * a[i * cols + j] as f64).sum::<f64>() as f32)
        .collect();
    (da, de)
}

/// One factor of the orthogonality regulariser: its side and P, row-major
/// (rows, cols): lora_A (r, in) with [`OrthSide::Rows`], lora_B (out, r) with
/// [`OrthSide::Cols`].
#[derive(Clone, Copy, Debug)]
pub struct Factor<'a> {
    pub side: OrthSide,
    pub p: &'a [f32],
    pub rows: usize,
    pub cols: usize,
}

impl Factor<'_> {
    /// (r, inner): the covariance's side and the dimension it sums over.
    fn r_inner(&self) -> (usize, usize) {
        assert_eq!(self.p.len(), self.rows * self.cols, "orth factor: p must be (rows, cols)");
        match self.side {
            OrthSide::Rows => (self.rows, self.cols),
            OrthSide::Cols => (self.cols, self.rows),
        }
    }

    /// P[i, t] for the covariance's row i and summed index t: cov = Σ_t P[i, t]·P[j, t].
    fn at(&self, i: usize, t: usize) -> f64 {
        let v = match self.side {
            OrthSide::Rows => self.p[i * self.cols + t],
            OrthSide::Cols => self.p[t * self.cols + i],
        };
        v as f64
    }

    /// `C = cov(P) − I` (r, r) in f64 and `‖C‖_F`.
    fn centred_cov(&self) -> (Vec<f64>, f64) {
        let (r, inner) = self.r_inner();
        let mut c = vec![0.0f64; r * r];
        for i in 0..r {
            for j in 0..r {
                let dot: f64 = (0..inner).map(|t| self.at(i, t) * self.at(j, t)).sum();
                c[i * r + j] = dot - if i == j { 1.0 } else { 0.0 };
            }
        }
        let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        (c, norm)
    }
}

/// PEFT's regulariser in f64: `weight · (Σ_f ‖cov(P_f) − I‖_F) / n`, 0 for no
/// factors. The loss the finite differences of the tests differentiate.
pub fn orth_loss(factors: &[Factor], weight: f32) -> f64 {
    if factors.is_empty() {
        return 0.0;
    }
    let sum: f64 = factors.iter().map(|f| f.centred_cov().1).sum();
    weight as f64 * (sum / factors.len() as f64)
}

/// Returns `(loss, dP for each factor)`: [`orth_loss`] rounded to f32 and its
/// gradient, `(weight/n)·2·C·P/f` for [`OrthSide::Rows`] and `(weight/n)·2·P·C/f`
/// for [`OrthSide::Cols`] (C = cov − I, f = ‖C‖_F), 0 where f = 0. Each dP has
/// its factor's shape.
pub fn orth_regularizer(factors: &[Factor], weight: f32) -> (f32, Vec<Vec<f32>>) {
    let n = factors.len() as f64;
    let grads = factors
        .iter()
        .map(|f| {
            let (r, inner) = f.r_inner();
            let (c, norm) = f.centred_cov();
            let coef = if norm > 0.0 { weight as f64 / n * 2.0 / norm } else { 0.0 };
            let mut dp = vec![0.0f32; f.p.len()];
            for i in 0..r {
                for t in 0..inner {
                    // (C·P)[i, t] over the covariance's own indexing; C is symmetric.
                    let v: f64 = (0..r).map(|j| c[i * r + j] * f.at(j, t)).sum();
                    let at = match f.side {
                        OrthSide::Rows => i * f.cols + t,
                        OrthSide::Cols => t * f.cols + i,
                    };
                    dp[at] = (coef * v) as f32;
                }
            }
            dp
        })
        .collect();
    (orth_loss(factors, weight) as f32, grads)
}

/// `RankAllocator.update_ipt` in place on one tensor's averages:
/// `g ← g · clip` (torch's in-place clipping, when given), `ipt = |p·g|`,
/// `ipt_avg = β1·ipt_avg + (1−β1)·ipt`, `unc_avg = β2·unc_avg + (1−β2)·|ipt − ipt_avg|`,
/// each product and sum rounded to f32, with β and `1 − β` (computed in f64)
/// rounded to f32 as torch rounds Python scalars.
///
/// - p, g, ipt_avg, unc_avg: (n)
pub fn update_importance(
    p: &[f32],
    g: &[f32],
    clip: Option<f32>,
    ipt_avg: &mut [f32],
    unc_avg: &mut [f32],
    beta1: f64,
    beta2: f64,
) {
    let n = p.len();
    assert!(g.len() == n && ipt_avg.len() == n && unc_avg.len() == n, "update_importance: every tensor must be (n)");
    let (b1, omb1) = (beta1 as f32, (1.0 - beta1) as f32);
    let (b2, omb2) = (beta2 as f32, (1.0 - beta2) as f32);
    for i in 0..n {
        let g = clip.map_or(g[i], |c| g[i] * c);
        let ipt = (p[i] * g).abs();
        let avg = b1 * ipt_avg[i] + omb1 * ipt;
        ipt_avg[i] = avg;
        unc_avg[i] = b2 * unc_avg[i] + omb2 * (ipt - avg).abs();
    }
}

/// One module's triplet scores (r): `s(E)[i] + (mean_j s(A)[i, j] + mean_k s(B)[k, i])`
/// with `s(X) = ipt_avg(X)·unc_avg(X)` (`RankAllocator._element_score`), means as
/// sum / count (`mask_to_budget`, `_combine_ipt`).
///
/// - ipt_a, unc_a: (r, cols)
/// - ipt_e, unc_e: (r)
/// - ipt_b, unc_b: (out, r)
#[allow(clippy::too_many_arguments)] // three pairs of state and the three sizes
pub fn triplet_scores(
    (ipt_a, unc_a): (&[f32], &[f32]),
    (ipt_e, unc_e): (&[f32], &[f32]),
    (ipt_b, unc_b): (&[f32], &[f32]),
    r: usize,
    cols: usize,
    out: usize,
) -> Vec<f32> {
    assert!(ipt_a.len() == r * cols && unc_a.len() == r * cols, "triplet_scores: A's state must be (r, cols)");
    assert!(ipt_e.len() == r && unc_e.len() == r, "triplet_scores: E's state must be (r)");
    assert!(ipt_b.len() == out * r && unc_b.len() == out * r, "triplet_scores: B's state must be (out, r)");
    let s = |ipt: &[f32], unc: &[f32], at: usize| (ipt[at] * unc[at]) as f64;
    (0..r)
        .map(|i| {
            let mean_a = ((0..cols).map(|j| s(ipt_a, unc_a, i * cols + j)).sum::<f64>() as f32) / cols as f32;
            let mean_b = ((0..out).map(|k| s(ipt_b, unc_b, k * r + i)).sum::<f64>() as f32) / out as f32;
            ipt_e[i] * unc_e[i] + (mean_a + mean_b)
        })
        .collect()
}

/// `torch.kthvalue(scores, k)[0]`: the k-th smallest score, k 1-based (by a sort).
pub fn kth_smallest(scores: &[f32], k: usize) -> f32 {
    assert!(k >= 1 && k <= scores.len(), "kth_smallest: k = {k} outside 1..={}", scores.len());
    let mut sorted = scores.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted[k - 1]
}

/// keep (n): 1 where a score is above the k-th smallest, 0 where PEFT masks
/// it (`score <= threshold`).
pub fn mask_to_budget(scores: &[f32], k: usize) -> Vec<f32> {
    let threshold = kth_smallest(scores, k);
    scores.iter().map(|&s| if s <= threshold { 0.0 } else { 1.0 }).collect()
}

/// `E.masked_fill_(keep[offset..offset + r] == 0, 0.0)` in place. e: (r).
pub fn apply_rank_mask(e: &mut [f32], keep: &[f32], offset: usize) {
    let keep = &keep[offset..offset + e.len()];
    for (v, &k) in e.iter_mut().zip(keep) {
        if k == 0.0 {
            *v = 0.0;
        }
    }
}
