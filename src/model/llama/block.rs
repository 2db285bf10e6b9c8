//! One Llama decoder layer, in the checkpoint's own names:
//!
//! ```text
//! h   = x + self_attn(input_layernorm(x))
//! out = h + mlp(post_attention_layernorm(h))
//! ```
//!
//! Every tensor here is f32 on the GPU. Shapes: B batch, T sequence, D hidden,
//! I intermediate, H query heads, KV key/value heads, hd head_dim.
//!
//! Training (the next step) adds a hand-written backward beside each forward;
//! the pieces are split so each sub-layer's forward can hand back what its
//! backward needs (the norms' rstd, the attention's logsumexp, the MLP's gate
//! and up), which the kernels already return and this inference path drops.

use super::rope::RopeTables;
use crate::error::{Error, Result};
use crate::gpu::{Recorder, Tensor};
use crate::kernels::attention::attention_forward;
use crate::kernels::elementwise::add;
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::qmatmul::{qlinear, QWeight};
use crate::kernels::rmsnorm::rmsnorm_forward;
use crate::kernels::rope::rope_forward_inplace;
use crate::kernels::swiglu::swiglu_forward;

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
}

/// A frozen `nn.Linear`: `y = x·Wᵀ (+ b)`, W stored f32, Q8_0 or NF4.
#[derive(Clone, Debug)]
pub struct Linear {
    /// (out, in), in row chunks that each fit one binding.
    pub weight: QWeight,
    /// (out), when the checkpoint has one (Qwen2's q/k/v, Llama's `attention_bias`).
    pub bias: Option<Tensor>,
}

impl Linear {
    /// x (…, in) → (…, out).
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        let y = qlinear(rec, x, &self.weight)?;
        if let Some(bias) = &self.bias {
            add_bias(rec, &y, bias)?;
        }
        Ok(y)
    }
}

/// y (M, N) += 1 (M, 1) · bias (1, N): the bias broadcast over rows, recorded
/// as a k = 1 matmul (one exact product per element, then one add), so no
/// broadcast kernel is needed.
fn add_bias(rec: &mut Recorder, y: &Tensor, bias: &Tensor) -> Result<()> {
    let n = bias.numel();
    if n == 0 || y.numel() % n != 0 || y.shape().last() != Some(&n) {
        return Err(Error::shape(
            "Linear::forward",
            format!("bias {:?} does not match output {:?}", bias.shape(), y.shape()),
        ));
    }
    let m = y.numel() / n;
    let ones = Tensor::from_slice(rec.gpu(), &[m, 1], &vec![1.0f32; m])?;
    gemm(rec, &Gemm::new(m, n, 1, false, false).accumulate(true), &ones, bias, y)
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

impl Attention {
    /// x (B, T, D), already normed → (B, T, D). Positions are 0..T.
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor, rope: &RopeTables) -> Result<Tensor> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        let (h, kv, hd) = (self.num_heads, self.num_key_value_heads, self.head_dim);
        let q = self.q_proj.forward(rec, x)?.reshape(&[b, t, h, hd])?; // (B, T, H, hd)
        let k = self.k_proj.forward(rec, x)?.reshape(&[b, t, kv, hd])?; // (B, T, KV, hd)
        let v = self.v_proj.forward(rec, x)?.reshape(&[b, t, kv, hd])?; // (B, T, KV, hd)
        rope_forward_inplace(rec, &q, &rope.cos, &rope.sin, 0)?;
        rope_forward_inplace(rec, &k, &rope.cos, &rope.sin, 0)?;
        let (out, _lse) = attention_forward(rec, &q, &k, &v, self.scaling)?; // (B, T, H, hd)
        self.o_proj.forward(rec, &out.reshape(&[b, t, h * hd])?)
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

impl Mlp {
    /// x (…, D) → (…, D).
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate_proj.forward(rec, x)?; // (…, I)
        let up = self.up_proj.forward(rec, x)?; // (…, I)
        let hidden = swiglu_forward(rec, &gate, &up)?; // (…, I)
        self.down_proj.forward(rec, &hidden)
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
    /// x (B, T, D) → (B, T, D), the residual stream after this layer.
    pub fn forward(&self, rec: &mut Recorder, x: &Tensor, rope: &RopeTables) -> Result<Tensor> {
        let attn = self.input_layernorm.forward(rec, x)?;
        let attn = self.self_attn.forward(rec, &attn, rope)?;
        let h = add(rec, x, &attn)?; // h = x + attn(norm1(x))
        let mlp = self.post_attention_layernorm.forward(rec, &h)?;
        let mlp = self.mlp.forward(rec, &mlp)?;
        add(rec, &h, &mlp) // out = h + mlp(norm2(h))
    }
}
