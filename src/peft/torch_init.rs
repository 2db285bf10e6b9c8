//! `torch.nn.init` as PEFT and AdapterHub call it on fresh adapter weights,
//! drawn from the crate's seeded [`Rng`] (the distributions, not torch's bits).

use crate::util::rng::Rng;

/// torch's `kaiming_uniform_(w, a=√5)` for a weight with `fan_in` inputs:
/// U(−b, b), b = √3 · gain / √fan_in with gain = √(2 / (1 + a²)), i.e. b = 1/√fan_in.
pub fn kaiming_uniform_sqrt5(n: usize, fan_in: usize, rng: &mut Rng) -> Vec<f32> {
    let bound = kaiming_sqrt5_bound(fan_in);
    rng.uniform_vec(n, -bound, bound)
}

/// The bound of [`kaiming_uniform_sqrt5`], computed as torch does (`calculate_gain("leaky_relu", √5)`).
pub fn kaiming_sqrt5_bound(fan_in: usize) -> f32 {
    let a = 5.0f64.sqrt();
    let gain = (2.0 / (1.0 + a * a)).sqrt();
    let std = gain / (fan_in.max(1) as f64).sqrt();
    (3.0f64.sqrt() * std) as f32
}

/// N(0, std²) conditioned on [lo, hi], by rejection (as the distribution of
/// torch's `trunc_normal_`; lo < 0 < hi so acceptance is high).
pub fn trunc_normal(rng: &mut Rng, std: f64, lo: f64, hi: f64) -> f32 {
    loop {
        let x = rng.normal() * std;
        if (lo..=hi).contains(&x) {
            return x as f32;
        }
    }
}
