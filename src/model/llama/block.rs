//! One Llama decoder layer, in the checkpoint's own names:
//!
//! ```text
//! h   = x + self_attn(input_layernorm(x))
//! out = h + mlp(post_attention_layernorm(h))
//! ```
//!
//! with an optional adapter: LoRA on any of the seven Linears, or a bottleneck
//! adapter around the sub-layers. Every tensor here is f32 on the GPU.
//! Shapes: B batch, T sequence, M = B·T rows, D hidden, I intermediate,
//! H query heads, KV key/value heads, hd head_dim.
//!
//! Each forward returns what its backward needs (the "saved" structs: the
//! norms' inputs and rstd, the attention's roped q and k, v, output and
//! logsumexp, the MLP's gate and up, each Linear's input), and each backward
//! sits right after its forward. The frozen weights never get a gradient:
//! the backward computes dx and the adapter's gradients only.

use super::rope::RopeTables;
use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::attention::{attention_backward, attention_forward, Variant};
use crate::kernels::elementwise::add;
use crate::kernels::elementwise::copy;
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::qmatmul::{qlinear, qlinear_accumulate, qlinear_write, QWeight};
use crate::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::kernels::rope::{rope_backward_inplace, rope_forward_inplace};
use crate::kernels::swiglu::Activation;
use crate::kernels::swiglu::{swiglu_backward, swiglu_forward};
use crate::peft::bottleneck::{bn_backward, bn_forward, BnCall, BnLayer, BnSaved, BnUnit};
use crate::peft::bottleneck_config::BottleneckKind;
use crate::peft::lora_linear::{lora_backward, lora_forward, LoraDropout, LoraFactors, LoraSaved};
use crate::util::rng::pcg_hash;

/// Indices into a layer's seven Linears, in PEFT's `LORA_MODULES` order.
pub mod proj {
    pub const Q: usize = 0;
    pub const K: usize = 1;
    pub const V: usize = 2;
    pub const O: usize = 3;
    pub const GATE: usize = 4;
    pub const UP: usize = 5;
    pub const DOWN: usize = 6;
}

/// The LoRA term on one Linear for one call.
#[derive(Clone, Copy, Debug)]
pub struct LoraTerm<'a> {
    pub factors: &'a LoraFactors,
    pub scaling: f32,
    pub dropout: Option<LoraDropout>,
}

/// One layer's LoRA factors (or their gradients: the same shapes), indexed
/// by [`proj`].
#[derive(Clone, Copy, Debug)]
pub struct LayerLora<'a> {
    pub factors: &'a [Option<LoraFactors>; 7],
    pub scaling: f32,
    /// Dropout on the LoRA inputs (0 = none) and this layer's seed; each
    /// Linear derives its own mask seed from it.
    pub dropout: f32,
    pub seed: u32,
}

impl<'a> LayerLora<'a> {
    fn term(&self, j: usize) -> Option<LoraTerm<'a>> {
        let dropout = (self.dropout > 0.0)
            .then(|| LoraDropout { p: self.dropout, seed: pcg_hash(self.seed ^ (j as u32).wrapping_mul(0x9E37_79B9)) });
        self.factors[j].as_ref().map(|factors| LoraTerm { factors, scaling: self.scaling, dropout })
    }
}

/// One layer's bottleneck units (or their gradients) and how they run.
#[derive(Clone, Copy, Debug)]
pub struct LayerBottleneck<'a> {
    pub kind: BottleneckKind,
    pub units: &'a BnLayer,
    pub act: Activation,
    pub scaling: f32,
    /// Dropout on the adapters' outputs (0 = none) and this layer's seed.
    pub dropout: f32,
    pub seed: u32,
}

impl<'a> LayerBottleneck<'a> {
    /// The attention-side (`attention`) or output-side unit and its call.
    fn unit(&self, attention: bool) -> Option<(&'a BnUnit, BnCall)> {
        let unit = if attention { self.units.attention.as_ref() } else { self.units.output.as_ref() }?;
        let dropout = (self.dropout > 0.0).then(|| (self.dropout, pcg_hash(self.seed ^ attention as u32)));
        Some((unit, BnCall { act: self.act, scaling: self.scaling, dropout }))
    }
}

/// What adapts one layer in a forward or backward: nothing, LoRA, or a
/// bottleneck adapter.
#[derive(Clone, Copy, Debug, Default)]
pub enum LayerAdapter<'a> {
    #[default]
    None,
    Lora(LayerLora<'a>),
    Bottleneck(LayerBottleneck<'a>),
}

impl<'a> LayerAdapter<'a> {
    pub(crate) fn lora(&self, j: usize) -> Option<LoraTerm<'a>> {
        match self {
            LayerAdapter::Lora(l) => l.term(j),
            _ => None,
        }
    }

    fn bottleneck(&self) -> Option<&LayerBottleneck<'a>> {
        match self {
            LayerAdapter::Bottleneck(b) => Some(b),
            _ => None,
        }
    }

    /// The unit at one site with its call, and the matching gradient unit
    /// from `grads` (when given).
    fn bn_unit(&self, attention: bool) -> Option<(&'a BnUnit, BnCall)> {
        self.bottleneck().and_then(|b| b.unit(attention))
    }

    /// The gradient accumulators of Linear j, when `self` holds gradients.
    fn lora_grads(&self, j: usize) -> Option<&'a LoraFactors> {
        match self {
            LayerAdapter::Lora(l) => l.factors[j].as_ref(),
            _ => None,
        }
    }
}

/// `LlamaRMSNorm`: `y = weight · x / sqrt(mean(x²) + eps)`, in f32.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    /// (D)
    pub weight: Tensor,
    pub eps: f32,
}

impl RmsNorm {
    /// x (…, D) → (…, D).
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        Ok(rmsnorm_forward(rec, x, &self.weight, self.eps)?.0)
    }

    /// x (…, D) → (y (…, D), rstd (rows)): rstd is what the backward needs.
    pub fn forward_saving(&self, rec: &mut Recorder, x: &Tensor) -> Result<(Tensor, Tensor)> {
        rmsnorm_forward(rec, x, &self.weight, self.eps)
    }

    /// dx (…, D) for dy, given the forward's input x and its rstd.
    pub fn backward(&self, rec: &mut Recorder, dy: &Tensor, x: &Tensor, rstd: &Tensor) -> Result<Tensor> {
        rmsnorm_backward(rec, dy, x, &self.weight, rstd)
    }
}

/// A frozen `nn.Linear`: `y = x·Wᵀ (+ b)`, W stored f32, Q8_0 or NF4, with an
/// optional LoRA term `+ scaling·(drop(x)·Aᵀ)·Bᵀ`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// (out, in), in row chunks that each fit one binding.
    pub weight: QWeight,
    /// (out), when the checkpoint has one (Qwen2's q/k/v, Llama's `attention_bias`).
    pub bias: Option<Tensor>,
}

/// x as (M, cols).
fn rows2d(x: &Tensor) -> Result<Tensor> {
    let cols = x.shape().last().copied().unwrap_or(0);
    x.reshape(&[x.numel() / cols.max(1), cols])
}

impl Linear {
    /// x (…, in) → (…, out).
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_lora(rec, x, None)?.0)
    }

    /// x (…, in) → (…, out), plus the LoRA term's saved tensors when there is one.
    pub fn forward_lora(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        lora: Option<LoraTerm>,
    ) -> Result<(Tensor, Option<LoraSaved>)> {
        let y = qlinear(rec, x, &self.weight)?;
        if let Some(bias) = &self.bias {
            add_bias(rec, &y, bias)?;
        }
        let saved = match lora {
            Some(l) => Some(lora_forward(rec, &rows2d(x)?, l.factors, l.scaling, l.dropout, &rows2d(&y)?)?),
            None => None,
        };
        Ok((y, saved))
    }

    /// dx (M, in) += dy·W (+ the LoRA path), or dx = … when `first` (dx's
    /// old contents ignored), and the LoRA gradients into `grads`, for dy
    /// (…, out). The frozen W and bias get no gradient.
    pub fn backward(
        &self,
        rec: &mut Recorder,
        dy: &Tensor,
        lora: Option<(LoraTerm, &LoraSaved, &LoraFactors)>,
        dx: &Tensor,
        first: bool,
    ) -> Result<()> {
        let dy = rows2d(dy)?;
        if first {
            qlinear_write(rec, &dy, &self.weight, dx, true)?;
        } else {
            qlinear_accumulate(rec, &dy, &self.weight, dx, true)?;
        }
        if let Some((l, saved, grads)) = lora {
            lora_backward(rec, &dy, saved, l.factors, l.scaling, l.dropout, grads, dx)?;
        }
        Ok(())
    }
}

/// y (M, N) += 1 (M, 1) · bias (1, N): the bias broadcast over rows, recorded
/// as a k = 1 matmul (one exact product per element, then one add), so no
/// broadcast kernel is needed.
pub(crate) fn add_bias(rec: &mut Recorder, y: &Tensor, bias: &Tensor) -> Result<()> {
    let n = bias.numel();
    if n == 0 || y.numel() % n != 0 || y.shape().last() != Some(&n) {
        return Err(Error::shape(
            "Linear::forward",
            format!("bias {:?} does not match output {:?}", bias.shape(), y.shape()),
        ));
    }
    let m = y.numel() / n;
    let ones = rec.gpu().ones(m)?.reshape(&[m, 1])?;
    gemm(rec, &Gemm::new(m, n, 1, false, false).accumulate(true), &ones, bias, y)
}

/// One Linear's LoRA forward state, kept for the backward.
type LoraSlot = Option<LoraSaved>;

fn lora_backward_args<'a>(
    ad: &LayerAdapter<'a>,
    grads: &LayerAdapter<'a>,
    saved: &'a LoraSlot,
    j: usize,
) -> Result<Option<(LoraTerm<'a>, &'a LoraSaved, &'a LoraFactors)>> {
    match (ad.lora(j), saved, grads.lora_grads(j)) {
        (None, None, _) => Ok(None),
        (Some(term), Some(saved), Some(g)) => Ok(Some((term, saved, g))),
        _ => Err(Error::invalid(
            "Block::backward",
            "the adapter, its saved activations and its gradients do not match (forward and backward with different adapters?)",
        )),
    }
}

/// `LlamaAttention` (eager): causal softmax attention with grouped-query heads
/// and rotate-half RoPE on q and k.
#[derive(Clone, Debug)]
pub struct Attention {
    /// (H·hd, D)
    pub q_proj: Linear,
    /// (KV·hd, D)
    pub k_proj: Linear,
    /// (KV·hd, D)
    pub v_proj: Linear,
    /// (D, H·hd)
    pub o_proj: Linear,
    pub num_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// `head_dim ** -0.5`, rounded to f32 where it meets the scores.
    pub scaling: f32,
}

/// What [`Attention::forward`] keeps for [`Attention::backward`].
#[derive(Clone, Debug)]
pub struct AttentionSaved {
    /// q (B, T, H, hd) and k (B, T, KV, hd) after RoPE; v (B, T, KV, hd).
    q: Tensor,
    k: Tensor,
    v: Tensor,
    /// softmax(q·kᵀ·scale)·v (B, T, H, hd): o_proj's input.
    out: Tensor,
    /// (B, H, T)
    lse: Tensor,
    /// The LoRA state of q, k, v, o.
    lora: [LoraSlot; 4],
}

impl Attention {
    /// x (B, T, D), already normed → (B, T, D). Positions are 0..T.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        rope: &RopeTables,
        ad: &LayerAdapter,
    ) -> Result<(Tensor, AttentionSaved)> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let (h, kv, hd) = (self.num_heads, self.num_key_value_heads, self.head_dim);
        let (q, lq) = self.q_proj.forward_lora(rec, x, ad.lora(proj::Q))?;
        let (k, lk) = self.k_proj.forward_lora(rec, x, ad.lora(proj::K))?;
        let (v, lv) = self.v_proj.forward_lora(rec, x, ad.lora(proj::V))?;
        let q = q.reshape(&[b, t, h, hd])?; // (B, T, H, hd)
        let k = k.reshape(&[b, t, kv, hd])?; // (B, T, KV, hd)
        let v = v.reshape(&[b, t, kv, hd])?; // (B, T, KV, hd)
        rope_forward_inplace(rec, &q, &rope.cos, &rope.sin, 0)?;
        rope_forward_inplace(rec, &k, &rope.cos, &rope.sin, 0)?;
        let (out, lse) = attention_forward(rec, &q, &k, &v, self.scaling, Variant::Auto)?; // (B, T, H, hd), (B, H, T)
        let (y, lo) = self.o_proj.forward_lora(rec, &out.reshape(&[b, t, h * hd])?, ad.lora(proj::O))?;
        Ok((y, AttentionSaved { q, k, v, out, lse, lora: [lq, lk, lv, lo] }))
    }

    /// dx (B, T, D) for dy (B, T, D); LoRA gradients go into `grads`.
    pub fn backward(
        &self,
        rec: &mut Recorder,
        dy: &Tensor,
        saved: &AttentionSaved,
        rope: &RopeTables,
        ad: &LayerAdapter,
        grads: &LayerAdapter,
    ) -> Result<Tensor> {
        let (b, t, d) = (dy.shape()[0], dy.shape()[1], dy.shape()[2]);
        let (h, hd, m) = (self.num_heads, self.head_dim, b * t);
        let dout = rec.alloc(&[m, h * hd], DType::F32)?;
        self.o_proj.backward(rec, dy, lora_backward_args(ad, grads, &saved.lora[3], proj::O)?, &dout, true)?;
        let dout = dout.reshape(&[b, t, h, hd])?;
        let (dq, dk, dv) = attention_backward(
            rec,
            &dout,
            &saved.q,
            &saved.k,
            &saved.v,
            &saved.out,
            &saved.lse,
            self.scaling,
            Variant::Auto,
        )?;
        rope_backward_inplace(rec, &dq, &rope.cos, &rope.sin, 0)?;
        rope_backward_inplace(rec, &dk, &rope.cos, &rope.sin, 0)?;
        let kv = self.num_key_value_heads;
        let (dq, dk, dv) = (dq.reshape(&[m, h * hd])?, dk.reshape(&[m, kv * hd])?, dv.reshape(&[m, kv * hd])?);
        let dx = rec.alloc(&[m, d], DType::F32)?;
        self.q_proj.backward(rec, &dq, lora_backward_args(ad, grads, &saved.lora[0], proj::Q)?, &dx, true)?;
        self.k_proj.backward(rec, &dk, lora_backward_args(ad, grads, &saved.lora[1], proj::K)?, &dx, false)?;
        self.v_proj.backward(rec, &dv, lora_backward_args(ad, grads, &saved.lora[2], proj::V)?, &dx, false)?;
        dx.reshape(&[b, t, d])
    }
}

/// `LlamaMLP`: `down_proj(silu(gate_proj(x)) · up_proj(x))`.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// (I, D)
    pub gate_proj: Linear,
    /// (I, D)
    pub up_proj: Linear,
    /// (D, I)
    pub down_proj: Linear,
}

/// What [`Mlp::forward`] keeps for [`Mlp::backward`].
#[derive(Clone, Debug)]
pub struct MlpSaved {
    /// gate_proj(x) and up_proj(x), (M, I): SwiGLU's inputs.
    gate: Tensor,
    up: Tensor,
    /// The LoRA state of gate, up, down.
    lora: [LoraSlot; 3],
}

impl Mlp {
    /// x (…, D) → (…, D).
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor, ad: &LayerAdapter) -> Result<(Tensor, MlpSaved)> {
        let (gate, lg) = self.gate_proj.forward_lora(rec, x, ad.lora(proj::GATE))?; // (…, I)
        let (up, lu) = self.up_proj.forward_lora(rec, x, ad.lora(proj::UP))?; // (…, I)
        let hidden = swiglu_forward(rec, &gate, &up)?; // (…, I)
        let (y, ld) = self.down_proj.forward_lora(rec, &hidden, ad.lora(proj::DOWN))?;
        Ok((y, MlpSaved { gate, up, lora: [lg, lu, ld] }))
    }

    /// dx (…, D) for dy (…, D); LoRA gradients go into `grads`.
    pub fn backward(
        &self,
        rec: &mut Recorder,
        dy: &Tensor,
        saved: &MlpSaved,
        ad: &LayerAdapter,
        grads: &LayerAdapter,
    ) -> Result<Tensor> {
        let dhidden = rec.alloc(saved.gate.shape(), DType::F32)?;
        self.down_proj.backward(
            rec,
            dy,
            lora_backward_args(ad, grads, &saved.lora[2], proj::DOWN)?,
            &rows2d(&dhidden)?,
            true,
        )?;
        let (dgate, dup) = swiglu_backward(rec, &dhidden, &saved.gate, &saved.up)?;
        let dx = rec.alloc(dy.shape(), DType::F32)?;
        let dx2 = rows2d(&dx)?;
        self.gate_proj.backward(rec, &dgate, lora_backward_args(ad, grads, &saved.lora[0], proj::GATE)?, &dx2, true)?;
        self.up_proj.backward(rec, &dup, lora_backward_args(ad, grads, &saved.lora[1], proj::UP)?, &dx2, false)?;
        Ok(dx)
    }
}

/// `model.layers.{i}`: one pre-norm decoder layer.
#[derive(Clone, Debug)]
pub struct Block {
    /// (D)
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    /// (D)
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

/// What [`Block::forward`] keeps for [`Block::backward`].
#[derive(Clone, Debug)]
pub struct BlockSaved {
    /// The layer's input x and the residual h after attention, (B, T, D):
    /// the norms' inputs.
    x: Tensor,
    h: Tensor,
    /// The norms' 1/rms, (M).
    rstd1: Tensor,
    rstd2: Tensor,
    attn: AttentionSaved,
    mlp: MlpSaved,
    /// The bottleneck units' state: attention side, output side.
    bn: [Option<BnSaved>; 2],
}

impl Block {
    /// x (B, T, D) → (B, T, D), the residual stream after this layer.
    ///
    /// With a bottleneck adapter `ad` (s: a sub-layer's output):
    /// - seq_bn: `out = (h + s) + ad(h + s)`;
    /// - double_seq_bn: `h = x + s + ad_attn(s)`, `out = h + s + ad_out(s)`;
    /// - par_bn: `out = h + s + ad(h)` (the un-normed residual feeds the adapter).
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        rope: &RopeTables,
        ad: &LayerAdapter,
    ) -> Result<(Tensor, BlockSaved)> {
        let (n1, rstd1) = self.input_layernorm.forward_saving(rec, x)?;
        let (attn_out, attn) = self.self_attn.forward(rec, &n1, rope, ad)?;
        let (h, bn_attn) = Self::attention_residual(rec, x, &attn_out, ad)?;
        let (n2, rstd2) = self.post_attention_layernorm.forward_saving(rec, &h)?;
        let (mlp_out, mlp) = self.mlp.forward(rec, &n2, ad)?;
        let (out, bn_out) = Self::mlp_residual(rec, &h, &mlp_out, ad)?;
        Ok((out, BlockSaved { x: x.clone(), h, rstd1, rstd2, attn, mlp, bn: [bn_attn, bn_out] }))
    }

    /// `h = x + s` (+ `ad_attn(s)` for double_seq_bn), s the attention output.
    pub(super) fn attention_residual(
        rec: &mut Recorder,
        x: &Tensor,
        s: &Tensor,
        ad: &LayerAdapter,
    ) -> Result<(Tensor, Option<BnSaved>)> {
        let h = add(rec, x, s)?; // h = x + attn(norm1(x))
        let saved = match ad.bn_unit(true) {
            Some((unit, call)) => Some(bn_forward(rec, s, unit, call, &h)?), // h += ad_attn(s)
            None => None,
        };
        Ok((h, saved))
    }

    /// `out = h + s` plus the output-side bottleneck adapter, s the MLP output.
    pub(super) fn mlp_residual(
        rec: &mut Recorder,
        h: &Tensor,
        s: &Tensor,
        ad: &LayerAdapter,
    ) -> Result<(Tensor, Option<BnSaved>)> {
        let out = add(rec, h, s)?; // out = h + mlp(norm2(h))
        let saved = match (ad.bottleneck(), ad.bn_unit(false)) {
            (Some(b), Some((unit, call))) => {
                let input = match b.kind {
                    BottleneckKind::SeqBn => add(rec, h, s)?, // h + s, before the adapter adds to it
                    BottleneckKind::DoubleSeqBn => s.clone(),
                    BottleneckKind::ParBn => h.clone(),
                };
                Some(bn_forward(rec, &input, unit, call, &out)?)
            }
            _ => None,
        };
        Ok((out, saved))
    }

    /// dx (B, T, D) for dout (B, T, D), the adapter's gradients added into `grads`:
    ///
    /// ```text
    /// dh = dout + norm2ᵀ(mlpᵀ(dout))
    /// dx = dh   + norm1ᵀ(attnᵀ(dh))
    /// ```
    ///
    /// plus each bottleneck unit's path (`adᵀ`) where the forward had one.
    pub fn backward(
        &self,
        rec: &mut Recorder,
        dout: &Tensor,
        saved: &BlockSaved,
        rope: &RopeTables,
        ad: &LayerAdapter,
        grads: &LayerAdapter,
    ) -> Result<Tensor> {
        let mismatch = || {
            Error::invalid(
                "Block::backward",
                "the bottleneck adapter, its saved activations and its gradients do not match",
            )
        };
        // d(mlp output) and the residual's share of dh, after the output-side adapter.
        let (dmlp, dres) = match (ad.bottleneck(), ad.bn_unit(false), &saved.bn[1]) {
            (None, None, None) => (dout.clone(), dout.clone()),
            (Some(b), Some((unit, call)), Some(bs)) => {
                let g = grads.bn_unit(false).ok_or_else(mismatch)?.0;
                let acc = rec.alloc(dout.shape(), DType::F32)?;
                copy(rec, dout, &acc)?;
                bn_backward(rec, dout, bs, unit, call, g, &acc)?; // acc = dout + adᵀ(dout)
                match b.kind {
                    BottleneckKind::SeqBn => (acc.clone(), acc),        // the adapter saw h + s
                    BottleneckKind::DoubleSeqBn => (acc, dout.clone()), // it saw s
                    BottleneckKind::ParBn => (dout.clone(), acc),       // it saw h
                }
            }
            _ => return Err(mismatch()),
        };
        let dn2 = self.mlp.backward(rec, &dmlp, &saved.mlp, ad, grads)?;
        let dh_mlp = self.post_attention_layernorm.backward(rec, &dn2, &saved.h, &saved.rstd2)?;
        let dh = add(rec, &dres, &dh_mlp)?;
        // d(attention output): dh, plus the attention-side adapter's path.
        let dattn = match (ad.bn_unit(true), &saved.bn[0]) {
            (None, None) => dh.clone(),
            (Some((unit, call)), Some(bs)) => {
                let g = grads.bn_unit(true).ok_or_else(mismatch)?.0;
                let acc = rec.alloc(dh.shape(), DType::F32)?;
                copy(rec, &dh, &acc)?;
                bn_backward(rec, &dh, bs, unit, call, g, &acc)?;
                acc
            }
            _ => return Err(mismatch()),
        };
        let dn1 = self.self_attn.backward(rec, &dattn, &saved.attn, rope, ad, grads)?;
        let dx_attn = self.input_layernorm.backward(rec, &dn1, &saved.x, &saved.rstd1)?;
        add(rec, &dh, &dx_attn)
    }
}
