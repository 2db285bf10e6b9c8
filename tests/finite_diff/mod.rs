//! Central finite differences for the backward-kernel tests: the GPU gradient
//! of `L = Σ dy·forward(x)` is compared, on a sample of elements, with
//! `(L(x + h·eᵢ) − L(x − h·eᵢ)) / 2h` of the CPU reference forward, the loss
//! summed in f64.
#![allow(dead_code)]

use webpeft::util::rng::Rng;

/// `Σ y·w` in f64: the loss whose gradient with respect to `y` is `w`.
pub fn dot64(y: &[f32], w: &[f32]) -> f64 {
    assert_eq!(y.len(), w.len());
    y.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// `count` distinct indices below `n` (all of them when `n <= count`), seeded.
pub fn sample(n: usize, count: usize, seed: u64) -> Vec<usize> {
    if n <= count {
        return (0..n).collect();
    }
    let mut rng = Rng::new(seed);
    let mut picked: Vec<usize> = Vec::with_capacity(count);
    while picked.len() < count {
        let i = rng.below(n);
        if !picked.contains(&i) {
            picked.push(i);
        }
    }
    picked
}

/// `v[i]` for each index.
pub fn gather(v: &[f32], indices: &[usize]) -> Vec<f32> {
    indices.iter().map(|&i| v[i]).collect()
}

/// Central differences of `loss` at `x[i]` for each index, dividing by the
/// step actually taken after f32 rounding of `x ± h`.
pub fn numeric_grad(x: &[f32], indices: &[usize], h: f32, loss: impl Fn(&[f32]) -> f64) -> Vec<f32> {
    let mut xp = x.to_vec();
    indices
        .iter()
        .map(|&i| {
            let orig = xp[i];
            xp[i] = orig + h;
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
