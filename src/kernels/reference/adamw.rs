//! AdamW, the reference for `shaders/adamw.wgsl`.
//!
//! Exactly PyTorch's `torch.optim.AdamW` with `foreach=False`, `fused=False`,
//! `amsgrad=False`, `maximize=False`
//! (<https://pytorch.org/docs/stable/generated/torch.optim.AdamW.html>). Since
//! torch 2.6 AdamW is `Adam(decoupled_weight_decay=True)`, and one step of one
//! tensor is `_single_tensor_adam` in `torch/optim/adam.py`:
//!
//! ```python
//! step_t += 1
//! if weight_decay != 0:
//!     param.mul_(1 - lr * weight_decay)                     # decoupled decay first
//! exp_avg.lerp_(grad, 1 - beta1)                            # m
//! exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v
//! bias_correction1 = 1 - beta1 ** step                      # Python floats (f64)
//! bias_correction2 = 1 - beta2 ** step
//! step_size = lr / bias_correction1
//! bias_correction2_sqrt = bias_correction2 ** 0.5
//! denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
//! param.addcdiv_(exp_avg, denom, value=-step_size)
//! ```
//!
//! The hyperparameters are Python floats, so everything scalar is computed in
//! f64 and rounded to f32 once, where it meets a tensor ([`AdamWScalars`]).
//! Elementwise, in f32, following torch's CPU kernels:
//! - `lerp_(end, w)` is `fma(w, end - m, m)` when `|w| < 0.5`, else
//!   `fma(w - 1, end - m, end)` (ATen `lerp_vec`; the CUDA kernel contracts the
//!   same formula to an FMA);
//! - `addcmul_(g, g, value=c)` is `v + (c * g) * g`;
//! - `addcdiv_(m, d, value=c)` is `p + (c * m) / d`;
//! - dividing by a Python float is a true f32 division on the CPU (CUDA
//!   multiplies by the reciprocal, which can differ by an ulp).

pub use crate::kernels::adamw::{AdamWParams, AdamWScalars};

/// One AdamW step on one tensor, in place.
///
/// - param: (n)
/// - grad: (n)
/// - m: (n), first moment (`exp_avg`), zeros before step 1
/// - v: (n), second moment (`exp_avg_sq`), zeros before step 1
/// - step: 1-based count of steps including this one
pub fn adamw_step(param: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], p: &AdamWParams, step: u32) {
    let n = param.len();
    assert_eq!(grad.len(), n, "adamw_step: grad must have the shape of param");
    assert_eq!(m.len(), n, "adamw_step: m must have the shape of param");
    assert_eq!(v.len(), n, "adamw_step: v must have the shape of param");
    let s = AdamWScalars::new(p, step);
    for i in 0..n {
        let g = grad[i];
        if s.apply_decay {
            param[i] *= s.decay;
        }
        m[i] = lerp(m[i], g, s.lerp_weight);
        v[i] *= s.beta2;
        v[i] += (s.one_minus_beta2 * g) * g;
        let denom = v[i].sqrt() / s.bias_correction2_sqrt + s.eps;
        param[i] += (s.neg_step_size * m[i]) / denom;
    }
}

/// torch's `lerp(start, end, weight)` on the CPU (ATen `lerp_vec`), one FMA.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        weight.mul_add(end - start, start)
    } else {
        (weight - 1.0).mul_add(end - start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference::assert_close;
    use crate::util::rng::Rng;

    /// AdamW as written in Loshchilov & Hutter with torch's placement of the
    /// bias corrections, all in f64.
    fn textbook(param: &mut [f64], grad: &[f64], m: &mut [f64], v: &mut [f64], p: &AdamWParams, t: u32) {
        for i in 0..param.len() {
            param[i] *= 1.0 - p.lr * p.weight_decay;
            m[i] = p.beta1 * m[i] + (1.0 - p.beta1) * grad[i];
            v[i] = p.beta2 * v[i] + (1.0 - p.beta2) * grad[i] * grad[i];
            let m_hat = m[i] / (1.0 - p.beta1.powi(t as i32));
            let v_hat = v[i] / (1.0 - p.beta2.powi(t as i32));
            param[i] -= p.lr * m_hat / (v_hat.sqrt() + p.eps);
        }
    }

    #[test]
    fn first_step_moves_each_weight_by_lr() {
        // At step 1, m̂ = g and v̂ = g², so the Adam update is lr * sign(g) (|g| ≫ eps).
        let p = AdamWParams { lr: 0.01, weight_decay: 0.0, ..Default::default() };
        let mut param = vec![1.0, -2.0, 0.5];
        let grad = [0.3, -7.0, 1e-3];
        let (mut m, mut v) = (vec![0.0; 3], vec![0.0; 3]);
        adamw_step(&mut param, &grad, &mut m, &mut v, &p, 1);
        assert_close("param", &param, &[0.99, -1.99, 0.49], 1e-6, 0.0);
        assert_close("m", &m, &[0.03, -0.7, 1e-4], 0.0, 1e-6);
    }

    #[test]
    fn weight_decay_is_decoupled() {
        // Zero gradient: only the decay acts, param * (1 - lr * wd).
        let p = AdamWParams { lr: 0.1, weight_decay: 0.5, ..Default::default() };
        let mut param = vec![2.0, -4.0];
        let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
        adamw_step(&mut param, &[0.0, 0.0], &mut m, &mut v, &p, 1);
        assert_eq!(param, [2.0 * 0.95f32, -4.0 * 0.95f32]);
    }

    #[test]
    fn ten_steps_track_the_textbook_update() {
        let mut rng = Rng::new(71);
        let n = 37;
        let p = AdamWParams { lr: 2e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut param = rng.normal_vec(n, 1.0);
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        let mut param64: Vec<f64> = param.iter().map(|&x| x as f64).collect();
        let (mut m64, mut v64) = (vec![0.0f64; n], vec![0.0f64; n]);
        for t in 1..=10 {
            let grad = rng.normal_vec(n, 1.0);
            let grad64: Vec<f64> = grad.iter().map(|&x| x as f64).collect();
            adamw_step(&mut param, &grad, &mut m, &mut v, &p, t);
            textbook(&mut param64, &grad64, &mut m64, &mut v64, &p, t);
        }
        let want: Vec<f32> = param64.iter().map(|&x| x as f32).collect();
        assert_close("param after 10 steps", &param, &want, 1e-6, 1e-6);
    }

    #[test]
    fn scalars_follow_python_float_arithmetic() {
        let p = AdamWParams::default();
        let s = AdamWScalars::new(&p, 1);
        // 1 - 0.9 is 0.09999999999999998 in f64; f32 of that is 0.1f32.
        assert_eq!(s.lerp_weight, 0.1f32);
        assert_eq!(s.one_minus_beta2, 0.001f32);
        assert_eq!(s.decay, (1.0f64 - 1e-5) as f32);
        // step 1: step_size = lr / (1 - 0.9) = 0.010000000000000002
        assert_eq!(s.neg_step_size, -0.010000000000000002f64 as f32);
        assert_eq!(s.bias_correction2_sqrt, (0.0010000000000000009f64).sqrt() as f32);
    }

    #[test]
    fn lerp_matches_its_definition() {
        assert_eq!(lerp(1.0, 3.0, 0.25), 1.5);
        assert_eq!(lerp(1.0, 3.0, 0.75), 2.5);
        assert_eq!(lerp(1.0, 3.0, 1.0), 3.0);
        assert_eq!(lerp(1.0, 3.0, 0.0), 1.0);
    }
}
