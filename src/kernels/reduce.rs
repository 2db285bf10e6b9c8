//! Sums of squares for global gradient-norm clipping (`shaders/reduce.wgsl`),
//! and each row's argmax (greedy decoding's token, picked on the GPU).
//!
//! Two passes of workgroup reductions, no float atomics: each tensor is
//! reduced by up to [`MAX_GROUPS`] workgroups into its slots of one partials
//! buffer (4 bytes a slot), then one workgroup sums the partials. The result
//! stays on the GPU: [`clip_coefficient`] turns it into torch's clipping factor,
//! which `adamw` reads there, so a training step still reads back only its loss.

use bytemuck::{Pod, Zeroable};

use super::checks::{all_f32, u32_count};
use crate::error::{Error, Result};
use crate::gpu::{Const, DType, Kernel, PipelineKey, Recorder, Tensor};

const WG: u32 = 256;
/// Most workgroups (and partial sums) per tensor.
pub const MAX_GROUPS: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    n: u32,
    groups: u32,
    offset: u32,
    count: u32,
    max_norm: f32,
    _pad: [u32; 3],
}

fn key(entry: &'static str) -> PipelineKey {
    PipelineKey::new(Kernel::Reduce, entry).with("WG", Const::U32(WG))
}

/// Workgroups for n values: about 4 values per invocation, at most MAX_GROUPS.
fn groups_for(n: usize) -> usize {
    n.div_ceil(WG as usize * 4).min(MAX_GROUPS)
}

/// Σ x² over every element, as a (1) tensor.
pub fn sum_squares(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    sum_squares_many(rec, &[x])
}

/// Σ x² over every element of every tensor (all the adapter gradients), as a
/// (1) tensor; 0 for no tensors.
pub fn sum_squares_many(rec: &mut Recorder, xs: &[&Tensor]) -> Result<Tensor> {
    const OP: &str = "sum_squares";
    for x in xs {
        all_f32(OP, &[("x", x)])?;
        u32_count(OP, "element count", x.numel())?;
    }
    let count: usize = xs.iter().map(|x| groups_for(x.numel())).sum();
    let partials = rec.alloc(&[count.max(1)], DType::F32)?;
    // No tensor at all sums to 0: then nothing writes `total`, so it must
    // start cleared (a reused pool buffer holds an old value).
    let total = if count > 0 { rec.alloc(&[1], DType::F32)? } else { rec.zeros(&[1], DType::F32)? };
    let mut offset = 0;
    for x in xs {
        let groups = groups_for(x.numel());
        let p = Params {
            n: x.numel() as u32,
            groups: groups as u32,
            offset: offset as u32,
            count: 0,
            max_norm: 0.0,
            _pad: [0; 3],
        };
        rec.dispatch_bound(&key("sum_squares_partial"), &p, &[(1, x), (2, &partials)], [groups as u32, 1, 1])?;
        offset += groups;
    }
    if count > 0 {
        let p = Params {
            n: 0,
            groups: 0,
            offset: 0,
            count: u32_count(OP, "partial count", count)?,
            max_norm: 0.0,
            _pad: [0; 3],
        };
        rec.dispatch_bound(&key("sum_partials"), &p, &[(3, &partials), (4, &total)], [1, 1, 1])?;
    }
    Ok(total)
}

/// torch's `clip_grad_norm_` factor from a sum of squares (1): returns a (2)
/// tensor `[norm, min(max_norm / (norm + 1e-6), 1)]`, norm = sqrt(sumsq).
/// Gradients are multiplied by the second value (see `adamw::GradScale`).
pub fn clip_coefficient(rec: &mut Recorder, sumsq: &Tensor, max_norm: f32) -> Result<Tensor> {
    const OP: &str = "clip_coefficient";
    all_f32(OP, &[("sumsq", sumsq)])?;
    if sumsq.numel() != 1 {
        return Err(Error::shape(OP, format!("sumsq {:?} must hold one value", sumsq.shape())));
    }
    if !(max_norm > 0.0 && max_norm.is_finite()) {
        return Err(Error::invalid(OP, format!("max_norm must be positive and finite, got {max_norm}")));
    }
    let clip = rec.alloc(&[2], DType::F32)?;
    let p = Params { n: 0, groups: 0, offset: 0, count: 0, max_norm, _pad: [0; 3] };
    rec.dispatch_bound(&key("clip_coef"), &p, &[(5, sumsq), (6, &clip)], [1, 1, 1])?;
    Ok(clip)
}

/// The index of each row's largest value, x (rows, n) f32 → (rows) u32:
/// NaN skipped, ties to the lowest index, [`NO_INDEX`] for a row of only NaN
/// (or n = 0). The same rule as `model::llama::argmax` on the CPU, compared
/// as integers on the GPU so no float shortcut can change it.
pub fn argmax_rows(rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
    const OP: &str = "argmax_rows";
    all_f32(OP, &[("x", x)])?;
    let &[rows, n] = x.shape() else {
        return Err(Error::shape(OP, format!("x {:?} must be (rows, n)", x.shape())));
    };
    u32_count(OP, "element count", rows * n)?;
    let groups = u32_count(OP, "rows", rows)?;
    if groups > rec.gpu().limits().max_compute_workgroups_per_dimension {
        return Err(Error::shape(OP, format!("{rows} rows are more workgroups than one dispatch holds")));
    }
    let ids = rec.alloc(&[rows], DType::U32)?;
    let p = Params { n: n as u32, groups: 0, offset: 0, count: groups, max_norm: 0.0, _pad: [0; 3] };
    if rows > 0 {
        rec.dispatch_bound(&key("argmax_rows"), &p, &[(1, x), (7, &ids)], [groups, 1, 1])?;
    }
    Ok(ids)
}

/// What [`argmax_rows`] writes for a row with nothing to pick.
pub const NO_INDEX: u32 = u32::MAX;

/// Every pipeline this file's launchers can request (`kernels::variants`).
pub(crate) fn pipeline_keys() -> Vec<PipelineKey> {
    ["sum_squares_partial", "sum_partials", "clip_coef", "argmax_rows"].map(key).to_vec()
}
