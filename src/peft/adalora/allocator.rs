//! AdaLoRA's training-time parts outside the model, as PEFT's
//! `AdaLoraModel.forward` and `RankAllocator.update_and_allocate` define them:
//!
//! ```text
//! after the backward:  loss += w/n·Σ ‖cov(P) − I‖_F over every A (A·Aᵀ) and B (Bᵀ·B), n of them; g += its gradient
//! after AdamW, at step s (1-based), T = total_step − tfinal:
//!   s < T:  for every tensor X:  ipt = |X·g_X|  (g as clipping left it)
//!                                Ī = β1·Ī + (1−β1)·ipt;   Ū = β2·Ū + (1−β2)·|ipt − Ī|
//!           if tinit < s and s % deltaT == 0: allocate(budget(s))
//!   s = T:  allocate(target budget)
//!   s > T:  E ← E ∘ keep  (the last allocation's ranks)
//! allocate(b): score_i = S(E)_i + (mean_j S(A)_ij + mean_k S(B)_ki), S = Ī·Ū, per rank of every module;
//!              zero E_i where score_i ≤ the (Σr − b)-th smallest score; keep the flags (rank_pattern)
//! budget(s) = ⌊(Σr − target_r·modules)·(1 − (s − tinit)/(T − tinit))³ + target_r·modules⌋
//! ```
//!
//! Everything is recorded into the step's one submission: the threshold is
//! found on the GPU. With gradient accumulation the regulariser counts once
//! per optimizer step (PEFT adds it to every forward's loss).

use super::adapter::AdaLoraAdapter;
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::adalora::{
    apply_rank_mask, mask_to_budget, orth_regularizer, triplet_scores, update_importance, OrthSide,
};
use crate::kernels::elementwise::fill;
use crate::peft::step::StepDone;

/// The rank allocator's state on the GPU.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// Ī (exp_avg_ipt) of every tensor, in [`AdaLoraAdapter::tensors`] order.
    pub ipt: Vec<Tensor>,
    /// Ū (exp_avg_unc), likewise.
    pub unc: Vec<Tensor>,
    /// Every module's triplet scores, (Σr): scratch of an allocation.
    pub scores: Tensor,
    /// 1 where the last allocation kept the rank, 0 where it pruned it, (Σr).
    pub keep: Tensor,
    /// 1 once an allocation has run, (1).
    pub allocated: Tensor,
}

impl Allocator {
    /// The allocator's state for `adapter`, all zeros (PEFT's `reset_ipt`).
    pub fn new(gpu: &Gpu, adapter: &AdaLoraAdapter) -> Result<Allocator> {
        let zeros = |t: &Tensor| Tensor::zeros(gpu, t.shape(), DType::F32);
        let tensors = adapter.tensors();
        let ranks = adapter.modules().iter().map(|(_, f)| f.rank()).sum::<usize>();
        if ranks == 0 {
            return Err(Error::invalid("AdaLoRA", "no module has a rank left to train"));
        }
        Ok(Allocator {
            ipt: tensors.iter().map(|(_, t)| zeros(t)).collect::<Result<_>>()?,
            unc: tensors.iter().map(|(_, t)| zeros(t)).collect::<Result<_>>()?,
            scores: Tensor::zeros(gpu, &[ranks], DType::F32)?,
            keep: Tensor::zeros(gpu, &[ranks], DType::F32)?,
            allocated: Tensor::zeros(gpu, &[1], DType::F32)?,
        })
    }

    /// The state a checkpoint keeps, by name (`ipt.<key>`, `unc.<key>`, `keep`, `allocated`).
    pub fn tensors<'a>(&'a self, keys: &[String]) -> Vec<(String, &'a Tensor)> {
        let mut out: Vec<(String, &Tensor)> = Vec::new();
        for (k, (i, u)) in keys.iter().zip(self.ipt.iter().zip(&self.unc)) {
            out.push((format!("ipt.{k}"), i));
            out.push((format!("unc.{k}"), u));
        }
        out.push(("keep".into(), &self.keep));
        out.push(("allocated".into(), &self.allocated));
        out
    }

    /// The last allocation's flags, one a rank in module order; `None` before any.
    pub async fn kept_ranks(&self, gpu: &Gpu) -> Result<Option<Vec<bool>>> {
        if self.allocated.to_vec::<f32>(gpu).await?[0] == 0.0 {
            return Ok(None);
        }
        Ok(Some(self.keep.to_vec::<f32>(gpu).await?.into_iter().map(|k| k != 0.0).collect()))
    }
}

impl AdaLoraAdapter {
    /// The orthogonality regulariser's loss (into `loss`) and gradients (into `grads`).
    pub fn record_regularizer(&self, rec: &mut Recorder, grads: &AdaLoraAdapter, loss: &Tensor) -> Result<()> {
        let w = self.config.orth_reg_weight;
        if w == 0.0 {
            return Ok(());
        }
        let mut factors = Vec::new();
        for ((_, p), (_, g)) in self.modules().into_iter().zip(grads.modules()) {
            factors.push((OrthSide::Rows, &p.a, &g.a));
            factors.push((OrthSide::Cols, &p.b, &g.b));
        }
        orth_regularizer(rec, &factors, w as f32, loss)
    }

    /// The budget and whether to allocate at step `step` (PEFT's
    /// `budget_schedule`), for `init_bgt` ranks in all and `modules` modules.
    pub fn budget(&self, step: usize, init_bgt: usize, modules: usize) -> (usize, bool) {
        let c = &self.config;
        let target_bgt = c.target_r * modules;
        let end = c.total_step - c.tfinal;
        if step <= c.tinit {
            (init_bgt, false)
        } else if step > end {
            (target_bgt, true)
        } else {
            let mul = 1.0 - (step - c.tinit) as f64 / (end - c.tinit) as f64;
            let budget = (init_bgt as f64 - target_bgt as f64) * mul.powf(3.0) + target_bgt as f64;
            (budget as usize, step % c.delta_t == 0)
        }
    }

    /// PEFT's `update_and_allocate(step)` after the optimizer step `done`.
    pub fn record_allocation(&self, rec: &mut Recorder, grads: &AdaLoraAdapter, done: StepDone<'_>) -> Result<()> {
        let Some(state) = &self.allocator else {
            return Err(Error::invalid(
                "AdaLoRA",
                "training needs the rank allocator's state (Adapter::init_training_state)",
            ));
        };
        let c = &self.config;
        let step = usize::try_from(done.step).unwrap_or(usize::MAX);
        let end = c.total_step - c.tfinal;
        let modules = self.modules();
        let init_bgt: usize = modules.iter().map(|(_, f)| f.rank()).sum();
        if step < end {
            let params = self.tensors();
            for (((_, p), (_, g)), (ipt, unc)) in
                params.iter().zip(grads.tensors()).zip(state.ipt.iter().zip(&state.unc))
            {
                update_importance(rec, p, g, done.clip, ipt, unc, c.beta1, c.beta2)?;
            }
        }
        let budget = match step.cmp(&end) {
            std::cmp::Ordering::Less => match self.budget(step, init_bgt, modules.len()) {
                (b, true) => Some(b),
                _ => None,
            },
            std::cmp::Ordering::Equal => Some(self.budget(step, init_bgt, modules.len()).0),
            std::cmp::Ordering::Greater => None,
        };
        if let Some(budget) = budget {
            // Scores of every rank, module after module, as `keep` lays them out.
            let mut offset = 0;
            let mut at = 0;
            for (_, f) in &modules {
                let pair = |i: usize| (&state.ipt[i], &state.unc[i]);
                triplet_scores(rec, pair(at), pair(at + 1), pair(at + 2), &state.scores, offset)?;
                offset += f.rank();
                at += 3;
            }
            let k = init_bgt.saturating_sub(budget);
            if k == 0 {
                fill(rec, &state.keep, 1.0)?;
            } else {
                mask_to_budget(rec, &state.scores, k, &state.keep)?;
            }
            fill(rec, &state.allocated, 1.0)?;
        }
        if budget.is_some() || step > end {
            let mut offset = 0;
            for (_, f) in &modules {
                apply_rank_mask(rec, &f.e, &state.keep, offset)?;
                offset += f.rank();
            }
        }
        Ok(())
    }
}
