//! Merging a LoRA adapter into the frozen base, as PEFT's `merge_adapter` /
//! `unmerge_adapter`: `W ← W ± scaling·B·A` for every adapted Linear. An f32
//! base is updated in place on the GPU (one accumulate-GEMM per row chunk);
//! a Q8_0 or NF4 base is dequantized, updated and quantized again, which
//! rounds (PEFT does the same for bitsandbytes layers, with a warning).
//!
//! [`export_safetensors`] then writes the (merged) model as one f32
//! `model.safetensors` with the checkpoint's own names.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::adapter::LoraAdapter;
use super::layer::LoraFactors;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder};
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::qmatmul::{ChunkData, QWeight};
use crate::kernels::quant::{dequantize, quantize};
use crate::model::llama::block::Block;
use crate::model::llama::Model;

/// Adds `sign·scaling·B·A` to every Linear `lora` adapts.
fn apply(gpu: &Gpu, model: &mut Model, lora: &LoraAdapter, sign: f32) -> Result<()> {
    if lora.layers.len() != model.layers.len() {
        return Err(Error::invalid(
            "merge",
            format!("the adapter has {} layers, the model {}", lora.layers.len(), model.layers.len()),
        ));
    }
    let alpha = sign * lora.scaling();
    for (layer, factors) in model.layers.iter_mut().zip(&lora.layers) {
        for (w, f) in linear_weights(layer).into_iter().zip(factors) {
            if let Some(f) = f {
                add_delta(gpu, w, f, alpha)?;
            }
        }
    }
    gpu.check("merge")
}

/// A block's seven Linear weights in [`LORA_MODULES`](super::LORA_MODULES) order.
pub(crate) fn linear_weights(layer: &mut Block) -> [&mut QWeight; 7] {
    let a = &mut layer.self_attn;
    let m = &mut layer.mlp;
    [
        &mut a.q_proj.weight,
        &mut a.k_proj.weight,
        &mut a.v_proj.weight,
        &mut a.o_proj.weight,
        &mut m.gate_proj.weight,
        &mut m.up_proj.weight,
        &mut m.down_proj.weight,
    ]
}

/// w (out, in) += alpha·B·A, chunk by chunk (a chunk holds rows r0..r0+n:
/// it gets B's rows r0..r0+n).
pub(crate) fn add_delta(gpu: &Gpu, w: &mut QWeight, f: &LoraFactors, alpha: f32) -> Result<()> {
    let (r, inp, out) = f.dims("merge")?;
    if (out, inp) != (w.rows, w.cols) {
        return Err(Error::shape(
            "merge",
            format!("LoRA factors ({out}, {inp}) do not fit the weight ({}, {})", w.rows, w.cols),
        ));
    }
    let format = w.format;
    for chunk in &mut w.chunks {
        let n = chunk.rows;
        let mut g = Gemm::new(n, inp, r, false, false).alpha(alpha).accumulate(true);
        g.a_off = chunk.row_start * r;
        let mut rec = Recorder::new(gpu);
        match &chunk.data {
            ChunkData::F32(t) => {
                gemm(&mut rec, &g, &f.b, &f.a, t)?;
                rec.submit()?;
            }
            ChunkData::Quant(packed) => {
                let dense = dequantize(&mut rec, packed)?.reshape(&[n, inp])?;
                gemm(&mut rec, &g, &f.b, &f.a, &dense)?;
                let repacked = quantize(&mut rec, &dense.reshape(&[n * inp])?, format)?;
                rec.submit()?;
                chunk.data = ChunkData::Quant(repacked);
            }
        }
    }
    Ok(())
}

/// PEFT's `merge_adapter`: the base now computes what base + adapter did;
/// run it without the adapter afterwards.
pub fn merge_lora(gpu: &Gpu, model: &mut Model, lora: &LoraAdapter) -> Result<()> {
    apply(gpu, model, lora, 1.0)
}

/// PEFT's `unmerge_adapter`: subtracts what [`merge_lora`] added (exact up to
/// f32 rounding on an f32 base).
pub fn unmerge_lora(gpu: &Gpu, model: &mut Model, lora: &LoraAdapter) -> Result<()> {
    apply(gpu, model, lora, -1.0)
}

/// The model's weights as one f32 `model.safetensors` (Hugging Face names;
/// a tied head is written once, as transformers does; quantized Linears are
/// written dequantized). Reads the GPU tensor by tensor.
pub async fn export_safetensors(gpu: &Gpu, model: &Model) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, data: Vec<f32>| tensors.push((name, shape, data));
    fn q(w: &QWeight) -> (Vec<usize>, &QWeight) {
        (vec![w.rows, w.cols], w)
    }
    let (shape, w) = q(&model.embed_tokens);
    push("model.embed_tokens.weight".into(), shape, w.to_f32(gpu).await?);
    for (i, l) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        push(
            format!("{p}.input_layernorm.weight"),
            l.input_layernorm.weight.shape().to_vec(),
            l.input_layernorm.weight.to_vec(gpu).await?,
        );
        let pn = &l.post_attention_layernorm.weight;
        push(format!("{p}.post_attention_layernorm.weight"), pn.shape().to_vec(), pn.to_vec(gpu).await?);
        for (name, lin) in l.linears() {
            let (shape, w) = q(&lin.weight);
            push(format!("{p}.{name}.weight"), shape, w.to_f32(gpu).await?);
            if let Some(b) = &lin.bias {
                push(format!("{p}.{name}.bias"), b.shape().to_vec(), b.to_vec(gpu).await?);
            }
        }
    }
    push("model.norm.weight".into(), model.norm.weight.shape().to_vec(), model.norm.weight.to_vec(gpu).await?);
    if !model.lm_head_is_tied() {
        let (shape, w) = q(&model.lm_head);
        push("lm_head.weight".into(), shape, w.to_f32(gpu).await?);
    }
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), bytemuck::cast_slice(data))
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::File { file: "model.safetensors".into(), detail: e.to_string() })
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| Error::File { file: "model.safetensors".into(), detail: e.to_string() })
}
