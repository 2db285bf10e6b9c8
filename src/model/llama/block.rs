//! One Llama decoder layer, in the checkpoint's own names:
//!
//! ```text
//! h   = x + self_attn(input_layernorm(x))
//! out = h + mlp(post_attention_layernorm(h))
//! ```
//!
//! plus the hook points where a PEFT method changes it ([`super::hooks`]: after
//! each Linear, and where each sub-layer joins the residual stream). Every
//! tensor here is f32 on the GPU.
//! Shapes: B batch, T sequence, M = B·T rows, D hidden, I intermediate,
//! H query heads, KV key/value heads, hd head_dim.
//!
//! Each forward returns what its backward needs (the "saved" structs: the
//! norms' inputs and rstd, the attention's roped q and k, v, output and
//! logsumexp, the MLP's gate and up, each Linear's input), and each backward
//! sits right after its forward. The frozen weights never get a gradient:
//! the backward computes dx and the adapter's gradients only.

use super::hooks::{LayerHooks, Proj, Saved, Sublayer};
use super::rope::RopeTables;
use super::rows;
use crate::error::{Error, Result};
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::attention::{
    attention_backward, attention_backward_segmented, attention_forward, attention_forward_segmented, Variant,
};
use crate::kernels::elementwise::{add, add_scaled, copy};
use crate::kernels::low_rank::LowRank;
use crate::kernels::qmatmul::{qlinear_accumulate, qlinear_backward_low_rank, qlinear_into, qlinear_write, QWeight};
use crate::kernels::rmsnorm::{rmsnorm_backward, rmsnorm_forward};
use crate::kernels::rope::{rope_backward_inplace, rope_forward_inplace};

/// RoPE in place on x (B, T, heads, hd), or its backward: every row at
/// positions `offset..`, or (packed rows) each token at its own position,
/// whose cos and sin are the tables' row b·T + t.
fn rope_inplace(rec: &mut Recorder, x: &Tensor, rope: &RopeTables, offset: usize, backward: bool) -> Result<()> {
    let apply = if backward { rope_backward_inplace } else { rope_forward_inplace };
    match rope.segment_starts {
        None => apply(rec, x, &rope.cos, &rope.sin, offset),
        Some(_) => {
            let s = x.shape();
            apply(rec, &x.reshape(&[1, s[0] * s[1], s[2], s[3]])?, &rope.cos, &rope.sin, 0)
        }
    }
}
use crate::kernels::swiglu::{swiglu_backward, swiglu_forward};

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

/// A frozen `nn.Linear`: `y = x·Wᵀ (+ b)`, W stored f32, Q8_0 or NF4.
#[derive(Clone, Debug)]
pub struct Linear {
    /// (out, in), in row chunks that each fit one binding.
    pub weight: QWeight,
    /// (out), when the checkpoint has one (Qwen2's q/k/v, Llama's `attention_bias`).
    pub bias: Option<Tensor>,
}

/// x as (M, cols).
pub(super) fn rows2d(x: &Tensor) -> Result<Tensor> {
    let cols = x.shape().last().copied().unwrap_or(0);
    x.reshape(&[x.numel() / cols.max(1), cols])
}

/// The saved state of each hook point a layer passed through.
type HookSlot = Option<Saved>;

/// A Linear's hook state: its input's and its output's.
#[derive(Clone, Debug, Default)]
pub struct LinearSaved {
    input: HookSlot,
    output: HookSlot,
}

impl Linear {
    /// x (…, in) → (…, out).
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        let y = self.output(rec, x)?;
        self.product_into(rec, x, None, &y, false)?;
        Ok(y)
    }

    /// An output for x (…, in): (…, out), its contents undefined.
    fn output(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        let mut shape = x.shape().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = self.weight.rows;
        }
        rec.alloc(&shape, DType::F32)
    }

    /// x·Wᵀ + b, with a hook's low-rank `term` where there is one, into `out`
    /// (…, out) (added to what it holds with `accumulate`, as decoding adds
    /// into the residual stream): the product adds the term and the bias as
    /// it stores `out` where it fuses the term ([`qlinear_into`]).
    pub(super) fn product_into(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        term: Option<&LowRank>,
        out: &Tensor,
        accumulate: bool,
    ) -> Result<()> {
        qlinear_into(rec, x, &self.weight, out, accumulate, (term, self.bias.as_ref()))
    }

    /// [`Linear::forward`] between the `linear_input` and `linear` hook
    /// points of `proj`, or with the low-rank term the `linear_low_rank`
    /// point gives added by the product itself ([`Linear::product_into`]).
    pub fn forward_hooked(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        hooks: LayerHooks,
        proj: Proj,
    ) -> Result<(Tensor, LinearSaved)> {
        let (x, input) = match hooks.hooks.linear_input(rec, hooks.layer, proj, &rows2d(x)?)? {
            Some((x2, saved)) => (x2.reshape(x.shape())?, Some(saved)),
            None => (x.clone(), None),
        };
        if let Some((term, output)) = hooks.hooks.linear_low_rank(rec, hooks.layer, proj, &rows2d(&x)?)? {
            let y = self.output(rec, &x)?;
            self.product_into(rec, &x, Some(&term), &y, false)?;
            // A term's Linear may still change y where the pass keeps nothing
            // for a backward (DoRA in a generation rescales it).
            let after = hooks.hooks.linear_forward(rec, hooks.layer, proj, self, &rows2d(&x)?, &rows2d(&y)?)?;
            if after.is_some_and(|s| !s.0.is_empty()) {
                let detail = format!("layer {}: a hook gave both a term and a changed output to save", hooks.layer);
                return Err(Error::invalid(proj.name(), detail));
            }
            return Ok((y, LinearSaved { input, output: Some(output) }));
        }
        let y = self.forward(rec, &x)?;
        let output = hooks.hooks.linear_forward(rec, hooks.layer, proj, self, &rows2d(&x)?, &rows2d(&y)?)?;
        Ok((y, LinearSaved { input, output }))
    }

    /// dx (M, in) += dy·W, or dx = dy·W when `first` (dx's old contents
    /// ignored), for dy (…, out), through the hooks' backwards where their
    /// forwards saved something (see [`super::hooks`] for the order). The
    /// frozen W and bias get no gradient.
    pub fn backward(
        &self,
        rec: &mut Recorder,
        dy: &Tensor,
        (hooks, proj, saved): (LayerHooks, Proj, &LinearSaved),
        dx: &Tensor,
        first: bool,
    ) -> Result<()> {
        let (h, layer) = (hooks.hooks, hooks.layer);
        let dy = rows2d(dy)?;
        let dy_w = match &saved.output {
            Some(s) => h.linear_backward_dy(rec, layer, proj, &dy, s)?,
            None => None,
        };
        // A low-rank term's backward that gives its share of dx as a term for
        // dx = dy·W to add (its gradients taken, `linear_backward` not called).
        let term = match (&saved.output, &saved.input, &dy_w) {
            (Some(s), None, None) => h.linear_backward_low_rank(rec, layer, proj, &dy, s)?,
            _ => None,
        };
        let dy_w = dy_w.as_ref().unwrap_or(&dy);
        match (&saved.input, &term) {
            (None, Some(t)) => qlinear_backward_low_rank(rec, dy_w, &self.weight, dx, !first, t)?,
            (None, None) if first => qlinear_write(rec, dy_w, &self.weight, dx, true)?,
            (None, None) => qlinear_accumulate(rec, dy_w, &self.weight, dx, true)?,
            (Some(s), _) => {
                let dx_input = rec.alloc(dx.shape(), DType::F32)?;
                qlinear_write(rec, dy_w, &self.weight, &dx_input, true)?;
                let dx_hook = h.linear_input_backward(rec, layer, proj, &dx_input, s)?;
                if first {
                    copy(rec, &dx_hook, dx)?;
                } else {
                    add_scaled(rec, dx, &dx_hook, 1.0)?;
                }
            }
        }
        match &saved.output {
            Some(s) if term.is_none() => h.linear_backward(rec, layer, proj, self, &dy, s, dx),
            _ => Ok(()),
        }
    }
}

/// `LlamaAttention` (eager): causal softmax attention with grouped-query heads
/// and rotate-half RoPE on q and k; `Qwen3Attention` normalizes each head of
/// q and k first (`q_norm`, `k_norm`).
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
    /// (hd) each: Qwen3's RMSNorms over each head's values of q and of k, before RoPE.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// `head_dim ** -0.5`, rounded to f32 where it meets the scores.
    pub scaling: f32,
    /// A sliding layer's window ([`Config::attention_window`]): its queries
    /// see the last `window` keys only. `None`: full attention.
    ///
    /// [`Config::attention_window`]: crate::model::Config::attention_window
    pub sliding_window: Option<usize>,
    /// Whether q and k are rotated (transformers' `use_rope`): false on
    /// SmolLM3's NoPE layers.
    pub use_rope: bool,
}

/// q and k before Qwen3's q_norm and k_norm, each with its 1/rms.
type QkNormed = [(Tensor, Tensor); 2];

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
    /// The hooks' state at q, k, v, o.
    hooks: [LinearSaved; 4],
    /// With q_norm and k_norm: q (B, T, H, hd) and k (B, T, KV, hd) before
    /// them, and their 1/rms (B·T·H), (B·T·KV).
    normed: Option<QkNormed>,
    /// P prefix keys and values before the row's (prefix tuning): then q, k,
    /// v, out and lse span P+T positions, q and out zero-padded in front.
    prefix: usize,
}

impl Attention {
    /// x (B, T, D), already normed → (B, T, D). Positions are 0..T, or
    /// (packed rows, `rope.segment_starts`) each token's in its example,
    /// attending only within it.
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        rope: &RopeTables,
        hooks: LayerHooks,
    ) -> Result<(Tensor, AttentionSaved)> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let (h, kv, hd) = (self.num_heads, self.num_key_value_heads, self.head_dim);
        let (q, sq) = self.q_proj.forward_hooked(rec, x, hooks, Proj::Q)?;
        let (k, sk) = self.k_proj.forward_hooked(rec, x, hooks, Proj::K)?;
        let (v, sv) = self.v_proj.forward_hooked(rec, x, hooks, Proj::V)?;
        let q = q.reshape(&[b, t, h, hd])?; // (B, T, H, hd)
        let k = k.reshape(&[b, t, kv, hd])?; // (B, T, KV, hd)
        let v = v.reshape(&[b, t, kv, hd])?; // (B, T, KV, hd)
        let (q, k, normed) = self.qk_norm(rec, q, k)?;
        let p = hooks.hooks.prefix_len(); // the row's positions start after the prefix
        if self.use_rope {
            rope_inplace(rec, &q, rope, p, false)?;
            rope_inplace(rec, &k, rope, p, false)?;
        }
        let (q, k, v) = if p > 0 { self.with_prefix(rec, hooks, (q, k, v), p)? } else { (q, k, v) };
        let (out, lse) = match self.key_starts(rope) {
            None => attention_forward(rec, &q, &k, &v, self.scaling, Variant::Auto)?, // (B, P+T, H, hd), (B, H, P+T)
            Some(starts) => attention_forward_segmented(rec, &q, &k, &v, starts, self.scaling, Variant::Auto)?,
        };
        let own = if p > 0 { rows::positions(rec, &out.reshape(&[b, p + t, h * hd])?, p, t)? } else { out.clone() };
        let (y, so) = self.o_proj.forward_hooked(rec, &own.reshape(&[b, t, h * hd])?, hooks, Proj::O)?;
        Ok((y, AttentionSaved { q, k, v, out, lse, hooks: [sq, sk, sv, so], normed, prefix: p }))
    }

    /// The first key each query sees, (B, T) u32: where its sliding window
    /// begins on a sliding layer whose window cuts keys, else where its
    /// example begins in a packed row; `None`: every query sees keys from 0.
    pub(crate) fn key_starts<'a>(&self, rope: &'a RopeTables) -> Option<&'a Tensor> {
        match (self.sliding_window, &rope.window_starts) {
            (Some(_), Some(starts)) => Some(starts),
            _ => rope.segment_starts.as_ref(),
        }
    }

    /// Qwen3's `q_norm(q)` and `k_norm(k)` for q (B, T, H, hd) and k (B, T,
    /// KV, hd), with q, k and their 1/rms for the backward; q and k as they
    /// are without the norms.
    fn qk_norm(&self, rec: &mut Recorder, q: Tensor, k: Tensor) -> Result<(Tensor, Tensor, Option<QkNormed>)> {
        match (&self.q_norm, &self.k_norm) {
            (Some(q_norm), Some(k_norm)) => {
                let (qn, q_rstd) = q_norm.forward_saving(rec, &q)?;
                let (kn, k_rstd) = k_norm.forward_saving(rec, &k)?;
                Ok((qn, kn, Some([(q, q_rstd), (k, k_rstd)])))
            }
            _ => Ok((q, k, None)),
        }
    }

    /// Prefix tuning: the layer's P prefix keys and values before the row's,
    /// and P rows of zero queries before the row's (their outputs are
    /// dropped, and with no gradient they add none), so causal attention
    /// over P+T positions lets every row's token see the whole prefix:
    /// (B, P+T, H, hd), (B, P+T, KV, hd) twice.
    fn with_prefix(
        &self,
        rec: &mut Recorder,
        hooks: LayerHooks,
        (q, k, v): (Tensor, Tensor, Tensor),
        p: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t) = (q.shape()[0], q.shape()[1]);
        let (h, kv, hd) = (self.num_heads, self.num_key_value_heads, self.head_dim);
        let (pk, pv) = hooks.hooks.prefix_forward(rec, hooks.layer, b)?.ok_or_else(|| {
            Error::invalid("Attention::forward", format!("the adapter has a prefix of {p} but gave no keys and values"))
        })?;
        let want = [b, p, kv, hd];
        if pk.shape() != want || pv.shape() != want {
            return Err(Error::shape(
                "Attention::forward",
                format!("prefix keys {:?} and values {:?}, expected {want:?}", pk.shape(), pv.shape()),
            ));
        }
        let cat = |rec: &mut Recorder, front: &Tensor, x: &Tensor| {
            rows::prepend(rec, &front.reshape(&[b, p, kv * hd])?, &x.reshape(&[b, t, kv * hd])?)?.reshape(&[
                b,
                p + t,
                kv,
                hd,
            ])
        };
        let k = cat(rec, &pk, &k)?;
        let v = cat(rec, &pv, &v)?;
        let q = rows::pad_front(rec, &q.reshape(&[b, t, h * hd])?, p)?.reshape(&[b, p + t, h, hd])?;
        Ok((q, k, v))
    }

    /// dx (B, T, D) for dy (B, T, D); the hooks' gradients go where they keep them.
    pub fn backward(
        &self,
        rec: &mut Recorder,
        dy: &Tensor,
        saved: &AttentionSaved,
        rope: &RopeTables,
        hooks: LayerHooks,
    ) -> Result<Tensor> {
        let (b, t, d) = (dy.shape()[0], dy.shape()[1], dy.shape()[2]);
        let (h, hd, m) = (self.num_heads, self.head_dim, b * t);
        let (kv, p) = (self.num_key_value_heads, saved.prefix);
        let dout = rec.alloc(&[m, h * hd], DType::F32)?;
        self.o_proj.backward(rec, dy, (hooks, Proj::O, &saved.hooks[3]), &dout, true)?;
        let dout = if p > 0 { rows::pad_front(rec, &dout.reshape(&[b, t, h * hd])?, p)? } else { dout };
        let dout = dout.reshape(&[b, p + t, h, hd])?;
        let (q, k, v, out, lse) = (&saved.q, &saved.k, &saved.v, &saved.out, &saved.lse);
        let (dq, dk, dv) = match self.key_starts(rope) {
            None => attention_backward(rec, &dout, q, k, v, out, lse, self.scaling, Variant::Auto)?,
            Some(starts) => {
                attention_backward_segmented(rec, &dout, q, k, v, out, lse, starts, self.scaling, Variant::Auto)?
            }
        };
        let (dq, dk, dv) = if p > 0 {
            // The row's own positions; the prefix's keys and values get theirs.
            let part = |rec: &mut Recorder, x: &Tensor, heads: usize, from: usize, n: usize| {
                rows::positions(rec, &x.reshape(&[b, p + t, heads * hd])?, from, n)
            };
            let (dpk, dpv) = (part(rec, &dk, kv, 0, p)?, part(rec, &dv, kv, 0, p)?);
            let (dpk, dpv) = (dpk.reshape(&[b, p, kv, hd])?, dpv.reshape(&[b, p, kv, hd])?);
            hooks.hooks.prefix_backward(rec, hooks.layer, &dpk, &dpv)?;
            let dq = part(rec, &dq, h, p, t)?.reshape(&[b, t, h, hd])?;
            let dk = part(rec, &dk, kv, p, t)?.reshape(&[b, t, kv, hd])?;
            let dv = part(rec, &dv, kv, p, t)?.reshape(&[b, t, kv, hd])?;
            (dq, dk, dv)
        } else {
            (dq, dk, dv)
        };
        if self.use_rope {
            rope_inplace(rec, &dq, rope, p, true)?;
            rope_inplace(rec, &dk, rope, p, true)?;
        }
        let (dq, dk) = match (&saved.normed, &self.q_norm, &self.k_norm) {
            (Some([(q, q_rstd), (k, k_rstd)]), Some(q_norm), Some(k_norm)) => {
                (q_norm.backward(rec, &dq, q, q_rstd)?, k_norm.backward(rec, &dk, k, k_rstd)?)
            }
            _ => (dq, dk),
        };
        let (dq, dk, dv) = (dq.reshape(&[m, h * hd])?, dk.reshape(&[m, kv * hd])?, dv.reshape(&[m, kv * hd])?);
        let dx = rec.alloc(&[m, d], DType::F32)?;
        self.q_proj.backward(rec, &dq, (hooks, Proj::Q, &saved.hooks[0]), &dx, true)?;
        self.k_proj.backward(rec, &dk, (hooks, Proj::K, &saved.hooks[1]), &dx, false)?;
        self.v_proj.backward(rec, &dv, (hooks, Proj::V, &saved.hooks[2]), &dx, false)?;
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
    /// The hooks' state at gate, up, down.
    hooks: [LinearSaved; 3],
}

impl Mlp {
    /// x (…, D) → (…, D).
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor, hooks: LayerHooks) -> Result<(Tensor, MlpSaved)> {
        let (gate, sg) = self.gate_proj.forward_hooked(rec, x, hooks, Proj::Gate)?; // (…, I)
        let (up, su) = self.up_proj.forward_hooked(rec, x, hooks, Proj::Up)?; // (…, I)
        let hidden = swiglu_forward(rec, &gate, &up)?; // (…, I)
        let (y, sd) = self.down_proj.forward_hooked(rec, &hidden, hooks, Proj::Down)?;
        Ok((y, MlpSaved { gate, up, hooks: [sg, su, sd] }))
    }

    /// dx (…, D) for dy (…, D); the hooks' gradients go where they keep them.
    pub fn backward(&self, rec: &mut Recorder, dy: &Tensor, saved: &MlpSaved, hooks: LayerHooks) -> Result<Tensor> {
        let dhidden = rec.alloc(saved.gate.shape(), DType::F32)?;
        self.down_proj.backward(rec, dy, (hooks, Proj::Down, &saved.hooks[2]), &rows2d(&dhidden)?, true)?;
        let (dgate, dup) = swiglu_backward(rec, &dhidden, &saved.gate, &saved.up)?;
        let dx = rec.alloc(dy.shape(), DType::F32)?;
        let dx2 = rows2d(&dx)?;
        self.gate_proj.backward(rec, &dgate, (hooks, Proj::Gate, &saved.hooks[0]), &dx2, true)?;
        self.up_proj.backward(rec, &dup, (hooks, Proj::Up, &saved.hooks[1]), &dx2, false)?;
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

impl Block {
    /// The seven Linears with their names under `model.layers.{i}.`, in checkpoint order.
    pub fn linears(&self) -> [(&'static str, &Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            ("self_attn.q_proj", &a.q_proj),
            ("self_attn.k_proj", &a.k_proj),
            ("self_attn.v_proj", &a.v_proj),
            ("self_attn.o_proj", &a.o_proj),
            ("mlp.gate_proj", &m.gate_proj),
            ("mlp.up_proj", &m.up_proj),
            ("mlp.down_proj", &m.down_proj),
        ]
    }
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
    /// The `residual` hook points' state: attention, MLP.
    residual: [HookSlot; 2],
}

impl Block {
    /// x (B, T, D) → (B, T, D), the residual stream after this layer:
    ///
    /// ```text
    /// h   = x + s₁ (+ residual hook),  s₁ = self_attn(input_layernorm(x))
    /// out = h + s₂ (+ residual hook),  s₂ = mlp(post_attention_layernorm(h))
    /// ```
    pub fn forward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        rope: &RopeTables,
        hooks: LayerHooks,
    ) -> Result<(Tensor, BlockSaved)> {
        let (n1, rstd1) = self.input_layernorm.forward_saving(rec, x)?;
        let (attn_out, attn) = self.self_attn.forward(rec, &n1, rope, hooks)?;
        let (h, res_attn) = Self::residual(rec, x, &attn_out, hooks, Sublayer::Attention)?;
        let (n2, rstd2) = self.post_attention_layernorm.forward_saving(rec, &h)?;
        let (mlp_out, mlp) = self.mlp.forward(rec, &n2, hooks)?;
        let (out, res_mlp) = Self::residual(rec, &h, &mlp_out, hooks, Sublayer::Mlp)?;
        Ok((out, BlockSaved { x: x.clone(), h, rstd1, rstd2, attn, mlp, residual: [res_attn, res_mlp] }))
    }

    /// `out = r + s`, then the `residual` hook point of `site`.
    pub(super) fn residual(
        rec: &mut Recorder,
        r: &Tensor,
        s: &Tensor,
        hooks: LayerHooks,
        site: Sublayer,
    ) -> Result<(Tensor, HookSlot)> {
        let out = add(rec, r, s)?;
        let saved = hooks.hooks.residual_forward(rec, hooks.layer, site, r, s, &out)?;
        Ok((out, saved))
    }

    /// (∂/∂s, ∂/∂r) of `out = r + s` (+ the hook's term) for dout.
    fn residual_backward(
        rec: &mut Recorder,
        dout: &Tensor,
        hooks: LayerHooks,
        site: Sublayer,
        saved: &HookSlot,
    ) -> Result<(Tensor, Tensor)> {
        match saved {
            None => Ok((dout.clone(), dout.clone())),
            Some(saved) => hooks.hooks.residual_backward(rec, hooks.layer, site, dout, saved),
        }
    }

    /// dx (B, T, D) for dout (B, T, D), the hooks' gradients going where they
    /// keep them:
    ///
    /// ```text
    /// dh = dout + norm2ᵀ(mlpᵀ(dout))
    /// dx = dh   + norm1ᵀ(attnᵀ(dh))
    /// ```
    ///
    /// with each residual hook's share where its forward ran.
    pub fn backward(
        &self,
        rec: &mut Recorder,
        dout: &Tensor,
        saved: &BlockSaved,
        rope: &RopeTables,
        hooks: LayerHooks,
    ) -> Result<Tensor> {
        let (dmlp, dres) = Self::residual_backward(rec, dout, hooks, Sublayer::Mlp, &saved.residual[1])?;
        let dn2 = self.mlp.backward(rec, &dmlp, &saved.mlp, hooks)?;
        let dh_mlp = self.post_attention_layernorm.backward(rec, &dn2, &saved.h, &saved.rstd2)?;
        let dh = add(rec, &dres, &dh_mlp)?;
        let (dattn, dh) = Self::residual_backward(rec, &dh, hooks, Sublayer::Attention, &saved.residual[0])?;
        let dn1 = self.self_attn.backward(rec, &dattn, &saved.attn, rope, hooks)?;
        let dx_attn = self.input_layernorm.backward(rec, &dn1, &saved.x, &saved.rstd1)?;
        add(rec, &dh, &dx_attn)
    }
}
