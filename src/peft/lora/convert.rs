//! Saving an adapter that changed its base so that it loads on the original
//! one, as PEFT's `save_pretrained(…, path_initial_model_for_weight_conversion=…)`
//! (`LoraModel.subtract_mutated_init`) does for PiSSA and OLoRA.
//!
//! PiSSA/OLoRA train on W_res = W − s·B₀·A₀, so the trained model is
//! W_res + s·B·A = W + s·(B·A − B₀·A₀). That update is the rank-2r LoRA
//! A' = [A; A₀] (2r, in), B' = [B, −B₀] (out, 2r), with r' = 2r and an alpha
//! that keeps the scaling s (2·alpha, or √2·alpha with rsLoRA), saved with
//! `init_lora_weights: true` as PEFT saves it.
//!
//! LoftQ's adapter belongs to its own quantized base, NF4(W − B₀·A₀), which
//! no rank-2r update of W reproduces; PEFT's LoftQ recipe saves it with
//! `init_lora_weights: true` next to that base, and so does webpeft.

use std::collections::BTreeMap;

use super::{InitLoraWeights, LoraAdapter, LoraConfig, LoraPair, LoraWeights};
use crate::gpu::Gpu;
use crate::{Error, Result};

/// The config a trained adapter of `config` is saved with (`converted`: its
/// weights are [`to_original_base`]'s).
pub fn export_config(config: &LoraConfig, converted: bool) -> LoraConfig {
    let mut c = config.clone();
    let init = c.init_lora_weights;
    if converted {
        c.r *= 2;
        c.lora_alpha *= if c.use_rslora { 2f64.sqrt() } else { 2.0 };
        // As PEFT's save_pretrained (rsLoRA with patterns is refused by LoraConfig::validate).
        c.rank_pattern.values_mut().for_each(|r| *r *= 2);
        c.alpha_pattern.values_mut().for_each(|a| *a *= 2.0);
    }
    if init.adjusts_base() {
        c.init_lora_weights = InitLoraWeights::Kaiming;
    }
    c
}

impl LoraAdapter {
    /// The config and weights this adapter is saved as: converted to the
    /// original base when it holds PiSSA's or OLoRA's initial factors.
    pub async fn export(&self, gpu: &Gpu) -> Result<(LoraConfig, LoraWeights)> {
        let weights = self.download(gpu).await?;
        Ok(match &self.initial {
            Some(initial) => (export_config(&self.config, true), to_original_base(&weights, initial)?),
            None => (export_config(&self.config, false), weights),
        })
    }
}

/// `trained` (each module of rank r) as the rank-2r LoRA of the original
/// base, given the initial factors `initial` (module by module, the same
/// names and shapes).
pub fn to_original_base(trained: &LoraWeights, initial: &LoraWeights) -> Result<LoraWeights> {
    let mismatch = |name: &str| Error::invalid("to_original_base", format!("{name}: no initial factors of its shape"));
    if initial.modules.len() != trained.modules.len() {
        return Err(mismatch("the adapter"));
    }
    let mut modules = BTreeMap::new();
    for (name, p) in &trained.modules {
        let p0 = initial.modules.get(name).ok_or_else(|| mismatch(name))?;
        if (p0.r, p0.in_features, p0.out_features) != (p.r, p.in_features, p.out_features) || p.m.is_some() {
            return Err(mismatch(name));
        }
        let r = p.r;
        // A' (2r, in): A's rows, then A₀'s.
        let a = p.a.iter().chain(&p0.a).copied().collect();
        // B' (out, 2r): each row is B's row, then −B₀'s.
        let b = (0..p.out_features)
            .flat_map(|o| p.b[o * r..(o + 1) * r].iter().copied().chain(p0.b[o * r..(o + 1) * r].iter().map(|v| -v)))
            .collect();
        let (in_features, out_features) = (p.in_features, p.out_features);
        modules.insert(name.clone(), LoraPair { r: 2 * r, a, b, m: None, in_features, out_features });
    }
    Ok(LoraWeights {
        modules,
        tokens: trained.tokens.clone(),
        head_tokens: trained.head_tokens.clone(),
        saved: trained.saved.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peft::lora::TargetModules;

    #[test]
    fn the_converted_update_is_b_a_minus_b0_a0_at_the_same_scaling() {
        let pair = |a: Vec<f32>, b: Vec<f32>| LoraPair { r: 1, a, b, m: None, in_features: 3, out_features: 2 };
        let one = |p: LoraPair| LoraWeights {
            modules: [("m".to_string(), p)].into(),
            tokens: None,
            head_tokens: None,
            saved: Default::default(),
        };
        let trained = one(pair(vec![1.0, 2.0, 3.0], vec![4.0, 5.0]));
        let initial = one(pair(vec![0.5, 0.0, -1.0], vec![2.0, -3.0]));
        let c = to_original_base(&trained, &initial).unwrap();
        let p = &c.modules["m"];
        assert_eq!((p.r, &p.a[..], &p.b[..]), (2, &[1.0, 2.0, 3.0, 0.5, 0.0, -1.0][..], &[4.0, -2.0, 5.0, 3.0][..]));
        // B'·A' = B·A − B₀·A₀, entry (1, 2): 5·3 − (−3)·(−1).
        assert_eq!(p.b[2] * p.a[2] + p.b[3] * p.a[5], 15.0 - 3.0);
        let mut cfg = LoraConfig::new(4, 8.0, TargetModules::AllLinear).unwrap();
        cfg.init_lora_weights = InitLoraWeights::Pissa;
        let e = export_config(&cfg, true);
        assert_eq!((e.r, e.lora_alpha, e.init_lora_weights), (8, 16.0, InitLoraWeights::Kaiming));
        let q = "model.layers.0.self_attn.q_proj";
        assert_eq!(e.scaling_of(q), cfg.scaling_of(q));
        // rank_pattern and alpha_pattern double with r and lora_alpha (PEFT's save_pretrained).
        cfg.rank_pattern.insert("q_proj".into(), 2);
        cfg.alpha_pattern.insert("q_proj".into(), 3.0);
        let e = export_config(&cfg, true);
        assert_eq!((e.rank_of(q), e.alpha_of(q), e.scaling_of(q)), (4, 6.0, cfg.scaling_of(q)));
        cfg.rank_pattern.clear();
        cfg.alpha_pattern.clear();
        cfg.use_rslora = true;
        assert!((export_config(&cfg, true).scaling_of(q) - cfg.scaling_of(q)).abs() < 1e-12);
    }
}
