//! LoRA outside the layers, at the model's embedding and head hook points:
//!
//! ```text
//! model.embed_tokens (PEFT's lora.Embedding):  x      += s·A[:, ids]ᵀ·Bᵀ     A (r, vocab), B (hidden, r)
//! lm_head (PEFT's lora.Linear):                logits += s·(x·Aᵀ)·Bᵀ        A (r, hidden), B (vocab, r)
//! ```
//!
//! with their backwards (PEFT applies no dropout on the embedding; on the
//! head webpeft refuses it, see [`LoraConfig::validate`](super::LoraConfig::validate)).
//! Neither keeps anything for the backward: A's columns and x·Aᵀ are cheap
//! to make again.

use super::adapter::LoraAdapter;
use super::config::OuterModule::{Embedding, Head};
use super::layer::LoraFactors;
use crate::error::Result;
use crate::gpu::{DType, Recorder, Tensor};
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::token_rows::{ids_gather, ids_scatter};
use crate::peft::pass::{mismatch, Pass};

impl Pass<'_, LoraAdapter> {
    /// x (N, D) += s·A[:, ids]ᵀ·Bᵀ for ids (N).
    pub(crate) fn embedding_term(&self, rec: &mut Recorder, ids: &Tensor, x: &Tensor) -> Result<()> {
        let Some(f) = &self.params.embed else { return Ok(()) };
        let (n, (r, _, d), s) = (ids.numel(), f.dims("embedding LoRA")?, self.params.scalings.outer(Embedding));
        let h = ids_gather(rec, &f.a, ids)?; // (N, r)
        gemm(rec, &Gemm::new(n, d, r, false, true).alpha(s).accumulate(true), &h, &f.b, x)
    }

    /// The embedding term's gradients from dx (N, D) at the embedding's output.
    pub(crate) fn embedding_term_backward(&self, rec: &mut Recorder, ids: &Tensor, dx: &Tensor) -> Result<()> {
        let Some(f) = &self.params.embed else { return Ok(()) };
        let g = self.outer_grads("embedding LoRA backward", |a| a.embed.as_deref())?;
        let (n, (r, _, d), s) = (ids.numel(), f.dims("embedding LoRA")?, self.params.scalings.outer(Embedding));
        let h = ids_gather(rec, &f.a, ids)?; // (N, r)
        gemm(rec, &Gemm::new(d, r, n, true, false).alpha(s).accumulate(true), dx, &h, &g.b)?; // dB += s·dxᵀ·h
        let dh = rec.alloc(&[n, r], DType::F32)?;
        gemm(rec, &Gemm::new(n, r, d, false, false).alpha(s), dx, &f.b, &dh)?; // dh = s·dx·B
        ids_scatter(rec, &dh, ids, &g.a) // dA[:, ids] += dhᵀ
    }

    /// logits (n, V) += s·(x·Aᵀ)·Bᵀ for x (n, D).
    pub(crate) fn head_term(&self, rec: &mut Recorder, x: &Tensor, logits: &Tensor) -> Result<()> {
        let Some(f) = &self.params.head else { return Ok(()) };
        let (n, (r, d, v), s) = (x.shape()[0], f.dims("head LoRA")?, self.params.scalings.outer(Head));
        let h = rec.alloc(&[n, r], DType::F32)?;
        gemm(rec, &Gemm::new(n, r, d, false, true), x, &f.a, &h)?; // h = x·Aᵀ
        gemm(rec, &Gemm::new(n, v, r, false, true).alpha(s).accumulate(true), &h, &f.b, logits)
    }

    /// The head term's backward for dlogits (n, V): its share of dx (n, D) and its gradients.
    pub(crate) fn head_term_backward(
        &self,
        rec: &mut Recorder,
        x: &Tensor,
        dlogits: &Tensor,
        dx: &Tensor,
    ) -> Result<()> {
        let Some(f) = &self.params.head else { return Ok(()) };
        let g = self.outer_grads("head LoRA backward", |a| a.head.as_deref())?;
        let (n, (r, d, v), s) = (x.shape()[0], f.dims("head LoRA")?, self.params.scalings.outer(Head));
        let h = rec.alloc(&[n, r], DType::F32)?;
        gemm(rec, &Gemm::new(n, r, d, false, true), x, &f.a, &h)?; // h = x·Aᵀ
        let dh = rec.alloc(&[n, r], DType::F32)?;
        gemm(rec, &Gemm::new(n, r, v, false, false), dlogits, &f.b, &dh)?; // dh = dlogits·B
        gemm(rec, &Gemm::new(n, d, r, false, false).alpha(s).accumulate(true), &dh, &f.a, dx)?; // dx += s·dh·A
        gemm(rec, &Gemm::new(v, r, n, true, false).alpha(s).accumulate(true), dlogits, &h, &g.b)?; // dB += s·dlogitsᵀ·h
        gemm(rec, &Gemm::new(r, d, n, true, false).alpha(s).accumulate(true), &dh, x, &g.a)
        // dA += s·dhᵀ·x
    }

    fn outer_grads(
        &self,
        op: &'static str,
        pick: impl Fn(&LoraAdapter) -> Option<&LoraFactors>,
    ) -> Result<&LoraFactors> {
        pick(self.grads(op)?).ok_or_else(|| mismatch(op, "the embedding's or the head's LoRA".into()))
    }
}
