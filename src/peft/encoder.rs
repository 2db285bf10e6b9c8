//! The reparametrisation two of PEFT's prompt-learning methods train
//! through: an embedding table of N rows and an MLP over them, whose output
//! is the prompt the model sees; the table and the MLP are what is trained.
//!
//! ```text
//! X₀ = E                                  (N, in)    nn.Embedding(N, in) at indices 0..N
//! Zᵢ = Xᵢ·Wᵢᵀ + bᵢ,  Xᵢ₊₁ = act(Zᵢ)       (N, hidden) every Linear but the last
//! Y  = X·Wᵀ + b                           (N, out)   the last Linear: the prompt
//! ```
//!
//! - prefix tuning with `prefix_projection` (PEFT's `PrefixEncoder`):
//!   Linear(token_dim, hidden) → Tanh → Linear(hidden, layers·2·token_dim);
//! - P-tuning (PEFT's `PromptEncoder`, MLP): Linear(token_dim, hidden) → ReLU
//!   → Linear(hidden, hidden) → ReLU → Linear(hidden, token_dim).
//!
//! The method decides where Y goes: [`Encoder::record_forward`] writes it as
//! column blocks into the tensors its hooks read (prefix tuning's per-layer
//! keys and values), and [`Encoder::record_backward`] takes those tensors'
//! gradients back through the MLP. The forward keeps every Zᵢ and Xᵢ₊₁, which
//! the backward needs (a few (N, hidden) tensors).

use super::torch_init::kaiming_uniform_sqrt5;
use crate::error::Result;
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::elementwise::copy;
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::swiglu::{activation_backward, activation_forward, Activation};
use crate::util::rng::Rng;

/// One `nn.Linear`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor, // (out, in)
    pub bias: Tensor,   // (out)
}

/// The embedding table and the MLP on the GPU, with what the last forward
/// saved. Its gradients and AdamW moments are values of the same type.
#[derive(Clone, Debug)]
pub struct Encoder {
    /// PEFT's module name of the MLP (`transform`, `mlp_head`); the Linears
    /// are its entries 0, 2, 4, … (an activation between each two).
    pub mlp_name: &'static str,
    pub act: Activation,
    pub embedding: Tensor, // (N, in)
    pub layers: Vec<Linear>,
    /// Zᵢ of every Linear but the last, (N, hidden).
    pre: Vec<Tensor>,
    /// act(Zᵢ), the next Linear's input, (N, hidden).
    post: Vec<Tensor>,
}

/// The checkpoint key of the embedding table: an adapter whose tensors hold
/// it trains through an encoder.
pub const TABLE_KEY: &str = "prompt_encoder.embedding.weight";

/// Where a Linear's output goes: (tensor (N, width), first column).
pub type Blocks<'a> = [(&'a Tensor, usize)];

impl Encoder {
    /// A fresh encoder of `n` rows and Linears of widths `sizes` (in,
    /// hidden, …, out), initialised as torch does from `rng`: the table
    /// N(0, 1) (`nn.Embedding`), each weight Kaiming-uniform (a = √5) and each
    /// bias U(−1/√fan_in, 1/√fan_in) (`nn.Linear.reset_parameters`).
    pub fn init(
        gpu: &Gpu,
        n: usize,
        sizes: &[usize],
        mlp_name: &'static str,
        act: Activation,
        rng: &mut Rng,
    ) -> Result<Encoder> {
        let embedding = Tensor::from_slice(gpu, &[n, sizes[0]], &rng.normal_vec(n * sizes[0], 1.0))?;
        let mut layers = Vec::with_capacity(sizes.len() - 1);
        for w in sizes.windows(2) {
            let (fan_in, out) = (w[0], w[1]);
            let weight = Tensor::from_slice(gpu, &[out, fan_in], &kaiming_uniform_sqrt5(out * fan_in, fan_in, rng))?;
            let bound = 1.0 / (fan_in as f64).sqrt();
            let bias = Tensor::from_slice(gpu, &[out], &rng.uniform_vec(out, -bound as f32, bound as f32))?;
            layers.push(Linear { weight, bias });
        }
        let hidden = |gpu: &Gpu| -> Result<Vec<Tensor>> {
            sizes[1..sizes.len() - 1].iter().map(|&h| Tensor::zeros(gpu, &[n, h], DType::F32)).collect()
        };
        Ok(Encoder { mlp_name, act, embedding, layers, pre: hidden(gpu)?, post: hidden(gpu)? })
    }

    pub fn zeros_like(&self, gpu: &Gpu) -> Result<Encoder> {
        let z = |t: &Tensor| Tensor::zeros(gpu, t.shape(), DType::F32);
        let zs = |ts: &[Tensor]| ts.iter().map(z).collect::<Result<Vec<_>>>();
        Ok(Encoder {
            mlp_name: self.mlp_name,
            act: self.act,
            embedding: z(&self.embedding)?,
            layers: self
                .layers
                .iter()
                .map(|l| Ok(Linear { weight: z(&l.weight)?, bias: z(&l.bias)? }))
                .collect::<Result<Vec<_>>>()?,
            pre: zs(&self.pre)?,
            post: zs(&self.post)?,
        })
    }

    /// The trainable tensors under PEFT's parameter names (without the
    /// adapter name): `prompt_encoder.embedding.weight`,
    /// `prompt_encoder.<mlp>.<2i>.weight`, `….bias`.
    pub fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![(TABLE_KEY.to_string(), &self.embedding)];
        for (i, l) in self.layers.iter().enumerate() {
            let name = format!("prompt_encoder.{}.{}", self.mlp_name, 2 * i);
            out.push((format!("{name}.weight"), &l.weight));
            out.push((format!("{name}.bias"), &l.bias));
        }
        out
    }

    /// Records the forward: every Zᵢ and act(Zᵢ) kept, Y written into `out`.
    pub fn record_forward(&self, rec: &mut Recorder, out: &Blocks) -> Result<()> {
        let mut x = &self.embedding;
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == self.layers.len() {
                return linear_forward(rec, x, layer, out);
            }
            linear_forward(rec, x, layer, &[(&self.pre[i], 0)])?;
            let y = activation_forward(rec, &self.pre[i], self.act)?;
            copy(rec, &y, &self.post[i])?;
            x = &self.post[i];
        }
        Ok(())
    }

    /// Records the backward of the last [`Encoder::record_forward`] from
    /// Y's gradient (the blocks `dout`, as `out` was): the gradients are added
    /// into `grads`.
    pub fn record_backward(&self, rec: &mut Recorder, grads: &Encoder, dout: &Blocks) -> Result<()> {
        let mut dy: Vec<(Tensor, usize)> = dout.iter().map(|(t, off)| ((*t).clone(), *off)).collect();
        for i in (0..self.layers.len()).rev() {
            let blocks: Vec<(&Tensor, usize)> = dy.iter().map(|(t, off)| (t, *off)).collect();
            let (layer, g) = (&self.layers[i], &grads.layers[i]);
            if i == 0 {
                return linear_backward(rec, &self.embedding, layer, g, &blocks, &grads.embedding, true);
            }
            let dx = rec.alloc(self.post[i - 1].shape(), DType::F32)?; // (N, hidden)
            linear_backward(rec, &self.post[i - 1], layer, g, &blocks, &dx, false)?;
            dy = vec![(activation_backward(rec, &dx, &self.pre[i - 1], self.act)?, 0)];
        }
        Ok(())
    }
}

/// out = x·Wᵀ + b for x (N, in), written as column blocks: each block
/// (N, w) at column c gets W's rows c..c+w and b's entries c..c+w.
fn linear_forward(rec: &mut Recorder, x: &Tensor, layer: &Linear, out: &Blocks) -> Result<()> {
    let (n, k) = (x.shape()[0], x.shape()[1]);
    let ones = rec.gpu().ones(n)?.reshape(&[n, 1])?;
    for &(c, col) in out {
        let w = c.numel() / n;
        let mut bias = Gemm::new(n, w, 1, false, false); // 1 (N, 1) · b (1, w)
        bias.b_off = col;
        gemm(rec, &bias, &ones, &layer.bias, c)?;
        let mut prod = Gemm::new(n, w, k, false, true).accumulate(true); // + x (N, k) · W[col..col+w]ᵀ
        prod.b_off = col * k;
        gemm(rec, &prod, x, &layer.weight, c)?;
    }
    Ok(())
}

/// The backward of [`linear_forward`] from the blocks' gradients `dout`:
/// dW and db added into `g`, dx = Σ_blocks dblock·W[block] written into `dx`
/// (added, with `accumulate`).
fn linear_backward(
    rec: &mut Recorder,
    x: &Tensor,
    layer: &Linear,
    g: &Linear,
    dout: &Blocks,
    dx: &Tensor,
    accumulate: bool,
) -> Result<()> {
    let (n, k) = (x.shape()[0], x.shape()[1]);
    let ones = rec.gpu().ones(n)?.reshape(&[1, n])?;
    for (i, &(d, col)) in dout.iter().enumerate() {
        let w = d.numel() / n;
        let mut dw = Gemm::new(w, k, n, true, false).accumulate(true); // dW[col..col+w] += dᵀ (w, N) · x (N, k)
        dw.c_off = col * k;
        gemm(rec, &dw, d, x, &g.weight)?;
        let mut db = Gemm::new(1, w, n, false, false).accumulate(true); // db[col..col+w] += 1 (1, N) · d (N, w)
        db.c_off = col;
        gemm(rec, &db, &ones, d, &g.bias)?;
        let mut dxg = Gemm::new(n, k, w, false, false).accumulate(accumulate || i > 0); // dx += d (N, w) · W[col..col+w] (w, k)
        dxg.b_off = col * k;
        gemm(rec, &dxg, d, &layer.weight, dx)?;
    }
    Ok(())
}
