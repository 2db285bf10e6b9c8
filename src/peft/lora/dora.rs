//! DoRA (`use_dora: true`), PEFT 0.21's `DoraLinearLayer` and
//! `DoraLinearVariant` (peft/tuners/lora/{dora,variants}.py): LoRA's factors
//! plus a magnitude m (out) per adapted Linear. With s the scaling, W the
//! frozen weight (dequantized for a quantized base) and d = drop(x):
//!
//! ```text
//! n  = ‖W + s·B·A‖ per output row     recomputed every forward, no gradient (B·A and n detached)
//! g  = m / n
//! z₀ = x·Wᵀ without dropout (the Linear's own y − bias), d·Wᵀ with it
//! y  = x·Wᵀ + b + (g − 1)·z₀ + g·s·(d·Aᵀ)·Bᵀ
//! ```
//!
//! Backward, with t = z₀ + s·(d·Aᵀ)·Bᵀ (saved) and dy the output gradient:
//! dm = Σ_rows dy ⊙ t / n; the LoRA term's dA, dB and dx take g ⊙ dy; W's path
//! takes g ⊙ dy without dropout (y = g·x·Wᵀ + …), and with it dy through x·Wᵀ
//! plus (g − 1) ⊙ dy through d·Wᵀ, back through the dropout mask.

use super::layer::{lora_backward, lora_forward, LoraDropout, LoraFactors, LoraSaved};
use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::dora::{magnitude_scale, Scales};
use crate::kernels::elementwise::{add_scaled, copy, dropout, mul, mul_columns, scale_columns_inplace};
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::qmatmul::{qlinear_write, ChunkData, QWeight};
use crate::kernels::quant::dequantize;
use crate::model::llama::block::Linear;
use crate::peft::columns::add_column_sums;

/// What [`dora_forward`] saves for the backward.
#[derive(Clone, Debug)]
pub struct DoraSaved {
    /// The LoRA term's input d (M, in) and d·Aᵀ (M, r).
    pub lora: LoraSaved,
    /// t = z₀ + s·(d·Aᵀ)·Bᵀ (M, out): what m multiplies, over n.
    pub t: Tensor,
    /// g = m / n (out)
    pub g: Tensor,
    /// 1 / n (out)
    pub inv_n: Tensor,
}

impl DoraSaved {
    /// As the hook's saved list: d, xa, t, g, 1/n.
    pub fn into_vec(self) -> Vec<Tensor> {
        vec![self.lora.x, self.lora.xa, self.t, self.g, self.inv_n]
    }

    /// From [`into_vec`](Self::into_vec)'s list.
    pub fn from_slice(op: &'static str, s: &[Tensor]) -> Result<DoraSaved> {
        match s {
            [x, xa, t, g, inv_n] => Ok(DoraSaved {
                lora: LoraSaved { x: x.clone(), xa: xa.clone() },
                t: t.clone(),
                g: g.clone(),
                inv_n: inv_n.clone(),
            }),
            _ => Err(Error::invalid(op, format!("DoRA saves 5 tensors, the forward saved {}", s.len()))),
        }
    }
}

fn magnitude<'f>(op: &'static str, f: &'f LoraFactors) -> Result<&'f Tensor> {
    f.m.as_ref().ok_or_else(|| Error::invalid(op, "a DoRA layer needs lora_magnitude_vector"))
}

/// For each row chunk of `w`: the dense chunk of W + s·B·A (a copy, or the
/// dequantized chunk) and its first row, recorded into `rec`.
pub(crate) fn dense_plus_delta(
    rec: &mut Recorder,
    w: &QWeight,
    f: &LoraFactors,
    scaling: f32,
) -> Result<Vec<(Tensor, usize)>> {
    let (r, inp, out) = f.dims("dora")?;
    if (out, inp) != (w.rows, w.cols) {
        return Err(Error::shape(
            "dora",
            format!("LoRA factors ({out}, {inp}) do not fit the weight ({}, {})", w.rows, w.cols),
        ));
    }
    w.chunks
        .iter()
        .map(|chunk| {
            let n = chunk.rows;
            let dense = match &chunk.data {
                ChunkData::F32(t) => {
                    let d = rec.alloc(&[n, inp], DType::F32)?;
                    copy(rec, t, &d)?;
                    d
                }
                ChunkData::Quant(packed) => dequantize(rec, packed)?.reshape(&[n, inp])?,
            };
            // dense += s·B[rows]·A (B's rows of this chunk)
            let mut g = Gemm::new(n, inp, r, false, false).alpha(scaling).accumulate(true);
            g.a_off = chunk.row_start * r;
            gemm(rec, &g, &f.b, &f.a, &dense)?;
            Ok((dense, chunk.row_start))
        })
        .collect()
}

/// n = ‖W + s·B·A‖ per row of `w`, g = m / n and 1 / n.
pub fn magnitude_scales(rec: &mut Recorder, w: &QWeight, f: &LoraFactors, scaling: f32) -> Result<Scales> {
    let m = magnitude("dora", f)?;
    let mut vector = || rec.alloc(&[w.rows], DType::F32);
    let out = Scales { n: vector()?, g: vector()?, inv_n: vector()? };
    for (dense, row_off) in dense_plus_delta(rec, w, f, scaling)? {
        magnitude_scale(rec, &dense, row_off, m, &out)?;
    }
    Ok(out)
}

/// PEFT's `DoraLinearLayer.update_layer`: m = ‖W + s·B·A‖ per row (‖W‖ for
/// a fresh adapter, whose B is zero), recorded into `rec`.
pub fn init_magnitude(rec: &mut Recorder, w: &QWeight, f: &LoraFactors, scaling: f32) -> Result<()> {
    let s = magnitude_scales(rec, w, f, scaling)?;
    copy(rec, &s.n, magnitude("dora init", f)?)
}

/// y (M, out), which holds `base`'s x·Wᵀ + b for x (M, in), becomes the DoRA
/// Linear's output, given its [`magnitude_scales`]; returns what the
/// backward needs.
#[allow(clippy::too_many_arguments)] // the Linear, its input and output, the factors and how they apply
pub fn dora_forward(
    rec: &mut Recorder,
    base: &Linear,
    x: &Tensor,
    f: &LoraFactors,
    scaling: f32,
    drop: Option<LoraDropout>,
    y: &Tensor,
    scales: Scales,
) -> Result<DoraSaved> {
    let Scales { g, inv_n, .. } = scales;
    let (m, out) = (y.shape()[0], y.shape()[1]);
    // t = z₀ first.
    let t = rec.alloc(&[m, out], DType::F32)?;
    let d = match drop {
        Some(dr) if dr.p > 0.0 => {
            let d = dropout(rec, x, dr.p, dr.seed)?;
            qlinear_write(rec, &d, &base.weight, &t, false)?; // d·Wᵀ
            d
        }
        _ => {
            copy(rec, y, &t)?;
            if let Some(b) = &base.bias {
                // y − b, as PEFT's `base_result - bias`
                let ones = rec.gpu().ones(m)?.reshape(&[m, 1])?;
                gemm(rec, &Gemm::new(m, out, 1, false, false).alpha(-1.0).accumulate(true), &ones, b, &t)?;
            }
            x.clone()
        }
    };
    add_scaled(rec, y, &t, -1.0)?; // y = x·Wᵀ + b − z₀
    let lora = lora_forward(rec, &d, f, scaling, None, &t)?; // t = z₀ + s·lora
    let gt = mul_columns(rec, &t, &g)?;
    add_scaled(rec, y, &gt, 1.0)?; // y = x·Wᵀ + b + (g − 1)·z₀ + g·s·lora
    Ok(DoraSaved { lora, t, g, inv_n })
}

/// What a generation keeps of a DoRA Linear for [`dora_generate`]: g = m / n
/// (out), and with a bias (1 − g) ⊙ b (out).
pub fn dora_generation_scales(rec: &mut Recorder, base: &Linear, f: &LoraFactors, scaling: f32) -> Result<Vec<Tensor>> {
    let Scales { g, .. } = magnitude_scales(rec, &base.weight, f, scaling)?;
    let mut kept = vec![g.clone()];
    if let Some(b) = &base.bias {
        let shift = rec.alloc(b.shape(), DType::F32)?;
        copy(rec, b, &shift)?;
        let gb = mul(rec, &g, b)?;
        add_scaled(rec, &shift, &gb, -1.0)?; // b − g ⊙ b
        kept.push(shift);
    }
    Ok(kept)
}

/// [`dora_forward`] in a generation (no dropout, no backward), given
/// [`dora_generation_scales`]' `kept`: y (M, out), which holds x·Wᵀ + b +
/// s·(x·Aᵀ)·Bᵀ (the LoRA term went in as the frozen product stored y, as a
/// plain LoRA's does), becomes `g ⊙ (x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ) + (1 − g) ⊙ b`
/// in place: PEFT's sum `x·Wᵀ + b + (g − 1)·x·Wᵀ + g·s·(x·Aᵀ)·Bᵀ` in another
/// order, one launch after the product where the forward takes six.
pub fn dora_generate(rec: &mut Recorder, y: &Tensor, kept: &[Tensor]) -> Result<()> {
    let [g, rest @ ..] = kept else {
        return Err(Error::invalid("dora_generate", "the generation's DoRA scales are missing"));
    };
    scale_columns_inplace(rec, y, g, rest.first())
}

/// The gradient at W's output for dy (M, out): g ⊙ dy without dropout
/// (y = g·x·Wᵀ + …); `None` (dy itself) with it, where
/// [`dora_backward`] adds the dropped path.
pub fn dora_backward_dy(rec: &mut Recorder, dy: &Tensor, saved: &DoraSaved, dropped: bool) -> Result<Option<Tensor>> {
    if dropped {
        return Ok(None);
    }
    Ok(Some(mul_columns(rec, dy, &saved.g)?))
}

/// The rest of the backward for dy (M, out): dm, dA, dB into `grads` and the
/// LoRA term's (and, with dropout, d·Wᵀ's) share of dx into `dx` (M, in).
#[allow(clippy::too_many_arguments)] // the forward's inputs, its saved tensors, and two accumulators
pub fn dora_backward(
    rec: &mut Recorder,
    base: &Linear,
    dy: &Tensor,
    saved: &DoraSaved,
    f: &LoraFactors,
    scaling: f32,
    drop: Option<LoraDropout>,
    grads: &LoraFactors,
    dx: &Tensor,
) -> Result<()> {
    const OP: &str = "dora_backward";
    let dm = magnitude(OP, grads)?;
    let out = dm.numel();
    // dm += (Σ_rows dy ⊙ t) / n
    let sums = rec.zeros(&[out], DType::F32)?;
    add_column_sums(rec, dy, &saved.t, &sums)?;
    let per_m = crate::kernels::elementwise::mul(rec, &sums, &saved.inv_n)?;
    add_scaled(rec, dm, &per_m, 1.0)?;
    let dyg = mul_columns(rec, dy, &saved.g)?; // the LoRA term is g·s·lora
    match drop {
        Some(d) if d.p > 0.0 => {
            // dd = ((g − 1) ⊙ dy)·W + the LoRA term's; dx += drop⁻¹(dd)
            let dyg1 = rec.alloc(dy.shape(), DType::F32)?;
            copy(rec, &dyg, &dyg1)?;
            add_scaled(rec, &dyg1, dy, -1.0)?;
            let dd = rec.alloc(dx.shape(), DType::F32)?;
            qlinear_write(rec, &dyg1, &base.weight, &dd, true)?;
            lora_backward(rec, &dyg, &saved.lora, f, scaling, None, grads, &dd)?;
            let back = dropout(rec, &dd, d.p, d.seed)?;
            add_scaled(rec, dx, &back, 1.0)
        }
        _ => lora_backward(rec, &dyg, &saved.lora, f, scaling, None, grads, dx),
    }
}

impl super::LoraAdapter {
    /// Sets every magnitude to PEFT's init for `model`'s weights
    /// ([`init_magnitude`]), in one submission.
    pub fn init_magnitudes(&self, gpu: &crate::Gpu, model: &crate::model::Model) -> Result<()> {
        if self.layers.len() != model.layers.len() {
            return Err(Error::invalid(
                "dora init",
                format!("the adapter has {} layers, the model {}", self.layers.len(), model.layers.len()),
            ));
        }
        let mut rec = Recorder::new(gpu);
        for (i, (factors, block)) in self.layers.iter().zip(&model.layers).enumerate() {
            for (j, (f, (_, linear))) in factors.iter().zip(block.linears()).enumerate() {
                if let Some(f) = f.as_ref().filter(|f| f.m.is_some()) {
                    init_magnitude(&mut rec, &linear.weight, f, self.scalings.at(i, j))?;
                }
            }
        }
        rec.submit()
    }
}
