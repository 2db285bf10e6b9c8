//! SwiGLU and the elementwise activations, the reference for `shaders/swiglu.wgsl`.
//!
//! The Llama MLP is `down(silu(gate(x)) * up(x))`; this file holds the middle
//! `h = silu(gate) * up` and its gradient. Bottleneck adapters use one of
//! [`Activation`] between their down and up projections.

/// `silu(x) = x * sigmoid(x)`, evaluated as torch's CPU kernel does:
/// `x / (1 + exp(-x))` in f32.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `silu'(x) = s * (1 + x * (1 - s))` with `s = sigmoid(x)` (torch's
/// `silu_backward` formula).
pub fn silu_grad(x: f32) -> f32 {
    let s = 1.0 / (1.0 + (-x).exp());
    s * (1.0 + x * (1.0 - s))
}

/// `h = silu(gate) * up`, elementwise.
///
/// - gate: (n), the gate projection's output (pre-activation)
/// - up: (n), the up projection's output
/// - h: (n)
pub fn swiglu_forward(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "swiglu_forward: gate and up must have the same shape");
    gate.iter().zip(up).map(|(&g, &u)| silu(g) * u).collect()
}

/// Returns `(dgate, dup)`.
///
/// - dh: (n), gradient of h
/// - gate, up: (n), the forward inputs (the forward saves both)
/// - dgate = dh * up * silu'(gate), dup = dh * silu(gate); both (n)
pub fn swiglu_backward(dh: &[f32], gate: &[f32], up: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(dh.len(), gate.len(), "swiglu_backward: dh and gate must have the same shape");
    assert_eq!(dh.len(), up.len(), "swiglu_backward: dh and up must have the same shape");
    let dgate = dh.iter().zip(gate).zip(up).map(|((&d, &g), &u)| d * u * silu_grad(g)).collect();
    let dup = dh.iter().zip(gate).map(|(&d, &g)| d * silu(g)).collect();
    (dgate, dup)
}

pub use crate::kernels::swiglu::Activation;

/// The CPU evaluation of each [`Activation`] (the kernels' own enum).
impl Activation {
    /// f(x). GELU is evaluated in f64 and rounded once to f32.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::Relu => x.max(0.0),
            Self::Silu => silu(x),
            Self::Gelu => {
                let x = x as f64;
                (x * 0.5 * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
            }
            Self::Tanh => x.tanh(),
        }
    }

    /// f'(x), the derivative with respect to the pre-activation x.
    pub fn grad(self, x: f32) -> f32 {
        match self {
            Self::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Silu => silu_grad(x),
            Self::Gelu => {
                // Φ(x) + x φ(x)
                let x = x as f64;
                let cdf = 0.5 * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                (cdf + x * pdf) as f32
            }
            Self::Tanh => {
                let t = x.tanh();
                1.0 - t * t
            }
        }
    }
}

/// The error function, in f64, accurate to a few 1e-16 (Rust's std has no
/// stable `erf`).
///
/// |x| < 2.5: the Maclaurin series `2/√π Σ (-1)ⁿ x²ⁿ⁺¹ / (n! (2n+1))`;
/// otherwise `1 - erfc(|x|)` with erfc from its continued fraction
/// `erfc(x) = exp(-x²)/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + …))))`,
/// evaluated by the modified Lentz method.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let ax = x.abs();
    let r = if ax < 2.5 {
        let x2 = ax * ax;
        let mut term = ax; // (-1)ⁿ x²ⁿ⁺¹ / n!
        let mut sum = ax;
        // At |x| < 2.5 the terms are below 1e-17 of the sum by n = 45.
        for n in 1..60 {
            let n = n as f64;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        1.0 - erfc_continued_fraction(ax)
    };
    r.copysign(x)
}

/// erfc(x) for x ≥ 2.5 (where the continued fraction converges in a few dozen terms).
fn erfc_continued_fraction(x: f64) -> f64 {
    if x > 27.0 {
        return 0.0; // exp(-x²) underflows
    }
    const TINY: f64 = 1e-300;
    let mut f = x;
    let mut c = f;
    let mut d = 0.0;
    for n in 1..500 {
        let a = n as f64 * 0.5;
        d = x + a * d;
        d = if d == 0.0 { 1.0 / TINY } else { 1.0 / d };
        c = x + a / c;
        if c == 0.0 {
            c = TINY;
        }
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / std::f64::consts::PI.sqrt() / f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::assert_close;
    use crate::kernels::reference::testing::{dot64, numeric_grad};
    use crate::util::rng::Rng;

    #[test]
    fn erf_known_values() {
        // Values from mpmath / Abramowitz & Stegun table 7.1.
        let cases = [
            (0.0, 0.0),
            (0.1, 0.1124629160182849),
            (0.5, 0.5204998778130465),
            (1.0, 0.8427007929497149),
            (2.0, 0.9953222650189527),
            (2.5, 0.999_593_047_982_555),
            (3.0, 0.9999779095030014),
            (4.0, 0.9999999845827421),
            (-1.0, -0.8427007929497149),
        ];
        for (x, want) in cases {
            let got = erf(x);
            assert!((got - want).abs() < 1e-15, "erf({x}) = {got}, want {want}");
        }
        // 1 - erf(3) = erfc(3), relative accuracy where the tail matters for GELU.
        let erfc3 = 2.209049699858544e-05;
        assert!(((1.0 - erf(3.0)) / erfc3 - 1.0).abs() < 1e-10);
        // Continuous across the switch between the series and the fraction.
        assert!((erf(2.5 - 1e-12) - erf(2.5)).abs() < 1e-14);
        assert_eq!(erf(30.0), 1.0);
    }

    #[test]
    fn activations_known_values() {
        assert_eq!(Activation::Relu.apply(-2.0), 0.0);
        assert_eq!(Activation::Relu.apply(3.0), 3.0);
        assert_eq!(Activation::Relu.grad(0.0), 0.0);
        // torch: F.gelu(torch.tensor(1.0)) = 0.8413447, F.gelu(-1.0) = -0.1586553
        assert_close(
            "gelu",
            &[Activation::Gelu.apply(1.0), Activation::Gelu.apply(-1.0)],
            &[0.841_344_7, -0.158_655_3],
            0.0,
            1e-6,
        );
        // torch: F.silu(torch.tensor(1.0)) = 0.7310586
        assert_close("silu", &[Activation::Silu.apply(1.0)], &[0.731_058_6], 0.0, 1e-6);
        assert_eq!(Activation::from_name("swish"), Some(Activation::Silu));
        assert_eq!(Activation::from_name("gelu_new"), None);
    }

    #[test]
    fn activation_grads_match_finite_differences() {
        let mut rng = Rng::new(31);
        // Keep away from relu's kink at 0.
        let x: Vec<f32> =
            rng.uniform_vec(41, -4.0, 4.0).into_iter().map(|v| if v.abs() < 0.05 { v + 0.2 } else { v }).collect();
        for act in [Activation::Relu, Activation::Silu, Activation::Gelu, Activation::Tanh] {
            let grad: Vec<f32> = x.iter().map(|&v| act.grad(v)).collect();
            let num: Vec<f32> = x
                .iter()
                .map(|&v| {
                    let h = 1e-3f64;
                    let f = |t: f64| act.apply(t as f32) as f64;
                    ((f(v as f64 + h) - f(v as f64 - h)) / (2.0 * h)) as f32
                })
                .collect();
            assert_close(&format!("{act:?}'"), &grad, &num, 2e-3, 2e-3);
        }
    }

    #[test]
    fn swiglu_backward_matches_finite_differences() {
        let mut rng = Rng::new(32);
        let n = 53;
        let gate = rng.normal_vec(n, 2.0);
        let up = rng.normal_vec(n, 1.0);
        let dh = rng.normal_vec(n, 1.0);
        let (dgate, dup) = swiglu_backward(&dh, &gate, &up);
        let num_dgate = numeric_grad(&gate, 1e-2, |g| dot64(&swiglu_forward(g, &up), &dh));
        let num_dup = numeric_grad(&up, 1e-2, |u| dot64(&swiglu_forward(&gate, u), &dh));
        assert_close("dgate", &dgate, &num_dgate, 2e-3, 2e-3);
        assert_close("dup", &dup, &num_dup, 2e-3, 2e-3);
    }
}
