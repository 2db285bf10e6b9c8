//! Linears of one layer that read one input (q, k and v read the normed
//! residual stream; gate and up the normed stream after attention): in a
//! generation, the low-rank methods (LoRA, DoRA, AdaLoRA) compute their
//! h = x·Aᵀ for all of them in one product, x·[A_1; A_2; …]ᵀ, with the A's
//! stacked once per generation in the pass's [`Memo`]; each Linear's term
//! then reads its own columns of h ([`LowRank::columns`]).

use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::low_rank::LowRank;
use crate::kernels::matmul::{gemm, Gemm};
use crate::model::llama::hooks::Proj;
use crate::peft::lora::layer::LoraFactors;
use crate::peft::pass::Memo;

/// The groups of Linears that share an input.
pub const SHARED_INPUTS: [&[Proj]; 2] = [&[Proj::Q, Proj::K, Proj::V], &[Proj::Gate, Proj::Up]];

/// Whether two Linears of one group are adapted, by `adapted(proj)`.
pub fn any_shared(adapted: impl Fn(Proj) -> bool) -> bool {
    SHARED_INPUTS.iter().any(|g| g.iter().filter(|p| adapted(**p)).count() > 1)
}

/// The term `scaling·(x·Aᵀ)·Bᵀ` of `proj` in layer `layer` for x (M, in),
/// where other Linears of its group are adapted too: from the layer's shared
/// h if the memo holds one for x, else the group's h computed now (and
/// kept). `factors(p)` gives each Linear's A (r, in) and B (out, r), where
/// it is adapted (the methods' A: lora_A, or AdaLoRA's A∘E). `None`: `proj`
/// has no group with another adapted Linear, or an input of another width;
/// it computes its own term.
pub fn shared_term(
    rec: &mut Recorder,
    memo: &Memo,
    (layer, proj): (usize, Proj),
    x: &Tensor,
    scaling: f32,
    mut factors: impl FnMut(&mut Recorder, Proj) -> Result<Option<LoraFactors>>,
) -> Result<Option<LowRank>> {
    const OP: &str = "lora_forward";
    let Some(f) = factors(rec, proj)? else { return Ok(None) };
    if let Some((h, col)) = memo.shared(layer, proj, x) {
        return Ok(Some(LowRank::columns(h, col, f.b, scaling)));
    }
    let Some(group) = SHARED_INPUTS.iter().find(|g| g.contains(&proj)) else { return Ok(None) };
    let mut members = Vec::with_capacity(group.len());
    for &p in group.iter() {
        if let Some(f) = factors(rec, p)? {
            members.push((p, f));
        }
    }
    let (_, inp, _) = f.dims(OP)?;
    if members.len() < 2 || x.shape().last() != Some(&inp) {
        return Ok(None); // a lone Linear, or the term's own product says what is wrong
    }
    let mut columns = Vec::with_capacity(members.len());
    let mut r = 0;
    for (p, f) in &members {
        let (rp, ip, _) = f.dims(OP)?;
        if ip != inp {
            return Ok(None);
        }
        columns.push((*p, r));
        r += rp;
    }
    let stacked = memo.get_or_make((layer, proj, "stacked A"), || {
        let a = rec.alloc(&[r, inp], DType::F32)?; // (Σ r, in): the A's one after another
        let mut at = 0;
        for (_, f) in &members {
            let bytes = (f.a.numel() * 4) as u64;
            rec.copy(&f.a, 0, &a, at, bytes)?;
            at += bytes;
        }
        Ok(vec![a])
    })?;
    let m = x.numel() / inp.max(1);
    let h = rec.alloc(&[m, r], DType::F32)?; // (M, Σ r)
    gemm(rec, &Gemm::new(m, r, inp, false, true), x, &stacked[0], &h)?;
    memo.share(layer, x, &h, columns);
    Ok(memo.shared(layer, proj, x).map(|(h, col)| LowRank::columns(h, col, f.b, scaling)))
}
