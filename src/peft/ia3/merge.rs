//! Merging an (IA)³ adapter into the frozen base, as PEFT's `IA3Layer.merge`
//! / `unmerge`: a module whose output is scaled gets `W[o, :] ← l[o]·W[o, :]`
//! and `b[o] ← l[o]·b[o]`; a feed-forward module `W[:, i] ← l[i]·W[:, i]`.
//! Unmerging divides by `l + 1e-8`, as PEFT does. An f32 base is updated on
//! the GPU; a Q8_0 or NF4 base is dequantized, scaled and quantized again,
//! which rounds (as merging into bitsandbytes layers does).

use super::adapter::{Ia3Adapter, Ia3Vector};
use crate::error::{Error, Result};
use crate::gpu::{DType, Gpu, Recorder, Tensor};
use crate::kernels::elementwise::{copy, mul};
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::qmatmul::ChunkData;
use crate::kernels::quant::{dequantize, quantize};
use crate::model::llama::{Linear, Model, Proj};

/// The Linear `proj` of a layer.
fn linear(layer: &mut crate::model::llama::Block, proj: Proj) -> &mut Linear {
    let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
    match proj {
        Proj::Q => &mut a.q_proj,
        Proj::K => &mut a.k_proj,
        Proj::V => &mut a.v_proj,
        Proj::O => &mut a.o_proj,
        Proj::Gate => &mut m.gate_proj,
        Proj::Up => &mut m.up_proj,
        Proj::Down => &mut m.down_proj,
    }
}

/// Scales `lin` by the vector `l` (the adapter's, or its reciprocal).
fn scale(gpu: &Gpu, lin: &mut Linear, v: &Ia3Vector, l: &Tensor) -> Result<()> {
    let w = &mut lin.weight;
    let (rows, cols, format) = (w.rows, w.cols, w.format);
    if l.numel() != if v.module.feedforward { cols } else { rows } {
        return Err(Error::shape(
            "merge_ia3",
            format!("a vector of {} values for a ({rows}, {cols}) weight", l.numel()),
        ));
    }
    for chunk in &mut w.chunks {
        let n = chunk.rows;
        let mut rec = Recorder::new(gpu);
        // The vector spread over the chunk (n, cols): along columns for a
        // scaled output (row o gets l[o]), along rows for a scaled input.
        let spread = rec.alloc(&[n, cols], DType::F32)?;
        if v.module.feedforward {
            let ones = rec.gpu().ones(n)?.reshape(&[n, 1])?;
            gemm(&mut rec, &Gemm::new(n, cols, 1, false, false), &ones, &l.reshape(&[1, cols])?, &spread)?;
        } else {
            let ones = rec.gpu().ones(cols)?.reshape(&[1, cols])?;
            let mut g = Gemm::new(n, cols, 1, false, false);
            g.a_off = chunk.row_start;
            gemm(&mut rec, &g, &l.reshape(&[rows, 1])?, &ones, &spread)?;
        }
        match &chunk.data {
            ChunkData::F32(t) => {
                let scaled = mul(&mut rec, &t.reshape(&[n, cols])?, &spread)?;
                copy(&mut rec, &scaled, t)?;
                rec.submit()?;
            }
            ChunkData::Quant(packed) => {
                let dense = dequantize(&mut rec, packed)?.reshape(&[n, cols])?;
                let scaled = mul(&mut rec, &dense, &spread)?;
                let repacked = quantize(&mut rec, &scaled.reshape(&[n * cols])?, format)?;
                rec.submit()?;
                chunk.data = ChunkData::Quant(repacked);
            }
        }
    }
    if let (Some(b), false) = (&lin.bias, v.module.feedforward) {
        let mut rec = Recorder::new(gpu);
        let scaled = mul(&mut rec, b, &l.reshape(b.shape())?)?;
        copy(&mut rec, &scaled, b)?;
        rec.submit()?;
    }
    Ok(())
}

fn check(model: &Model, ia3: &Ia3Adapter) -> Result<()> {
    if ia3.layers.len() != model.layers.len() {
        return Err(Error::invalid(
            "merge_ia3",
            format!("the adapter has {} layers, the model {}", ia3.layers.len(), model.layers.len()),
        ));
    }
    Ok(())
}

/// PEFT's `merge_adapter` for (IA)³: the base now computes what base +
/// adapter did; run it without the adapter afterwards.
pub fn merge_ia3(gpu: &Gpu, model: &mut Model, ia3: &Ia3Adapter) -> Result<()> {
    check(model, ia3)?;
    for (layer, vectors) in model.layers.iter_mut().zip(&ia3.layers) {
        for v in vectors.iter().flatten() {
            scale(gpu, linear(layer, v.module.proj), v, &v.l)?;
        }
    }
    gpu.check("merge_ia3")
}

/// PEFT's `unmerge_adapter` for (IA)³: divides by `l + 1e-8` what
/// [`merge_ia3`] multiplied (the reciprocal is taken on the CPU in f32).
pub async fn unmerge_ia3(gpu: &Gpu, model: &mut Model, ia3: &Ia3Adapter) -> Result<()> {
    check(model, ia3)?;
    for (layer, vectors) in model.layers.iter_mut().zip(&ia3.layers) {
        for v in vectors.iter().flatten() {
            let inv: Vec<f32> = v.l.to_vec::<f32>(gpu).await?.iter().map(|&x| 1.0 / (x + 1e-8)).collect();
            let inv = Tensor::from_slice(gpu, v.l.shape(), &inv)?;
            scale(gpu, linear(layer, v.module.proj), v, &inv)?;
        }
    }
    gpu.check("unmerge_ia3")
}
