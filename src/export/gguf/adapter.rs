//! A PEFT LoRA adapter as llama.cpp's `convert_lora_to_gguf.py` writes it:
//! `general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`,
//! and per adapted Linear `<gguf name>.lora_a` (ne (in, r)) and `.lora_b`
//! (ne (r, out), q/k rows in the llama order). llama.cpp scales each pair by
//! alpha / r, r read off lora_b; an rsLoRA adapter (alpha / √r) is written
//! with alpha·√r so the product is PEFT's scaling. `rank_pattern` needs
//! nothing more (r is read per tensor); modules that would need alphas of
//! their own are refused. A LoRA on the embedding (PEFT's `lora_embedding_A` (r, vocab)) is `token_embd.weight.lora_a`
//! with ne (r, vocab), the ids' rows, as llama.cpp gathers it; one on an
//! untied `lm_head` is `output.weight`'s, as any Linear's.

use std::io::Write;

use super::model::{architecture, read_lora, GgufOptions};
use super::names::{gguf_name, permute_heads, permute_rows};
use super::writer::{GgufWriter, TensorInfo, Value};
use super::{encode, tensor_type, unsupported, QUANTIZATION_VERSION};
use crate::model::{ByteSource, Config, ModelFiles};
use crate::peft::lora::config::OuterModule;
use crate::peft::lora::{LoraConfig, LoraWeights};
use crate::Result;

/// Writes `adapter` (plain LoRA on the model whose config.json `base` holds)
/// as a GGUF LoRA adapter. Returns the file's length.
pub async fn export_lora<F: ModelFiles, A: ModelFiles, W: Write>(
    base: &F,
    adapter: &A,
    opts: &GgufOptions,
    out: W,
) -> Result<u64> {
    let raw_bytes = base.open("config.json").await?.read_all().await?;
    let raw: serde_json::Value = serde_json::from_slice(&raw_bytes)
        .map_err(|e| crate::Error::File { file: "config.json".into(), detail: format!("invalid JSON: {e}") })?;
    let (arch, permute) = architecture(&raw)?;
    let config = Config::from_json(&raw_bytes)?;
    let (lora, weights) = read_lora(adapter, &config, false).await?;
    let alpha = one_alpha(&lora, &weights)?;

    let mut tensors = Vec::new();
    for (module, pair) in &weights.modules {
        let name = gguf_name(&format!("{module}.weight")).ok_or_else(|| {
            unsupported("adapter_model.safetensors", format!("module `{module}` has no llama.cpp name"))
        })?;
        let r = pair.a.len() / pair.in_features;
        let b = match permute_heads(&format!("{module}.weight"), config.num_attention_heads, config.num_key_value_heads)
            .filter(|_| permute)
        {
            Some(heads) => permute_rows(&pair.b, pair.out_features, r, heads),
            None => pair.b.clone(),
        };
        if module == OuterModule::Embedding.name() {
            // llama.cpp gathers the embedding's A by token id: its rows are the ids, (vocab, r) as Aᵀ.
            let (v, a) = (pair.in_features, &pair.a);
            let a_t: Vec<f32> = (0..v * r).map(|i| a[(i % r) * v + i / r]).collect();
            tensors.push((format!("{name}.lora_a"), vec![r as u64, v as u64], a_t));
        } else {
            tensors.push((format!("{name}.lora_a"), vec![pair.in_features as u64, r as u64], pair.a.clone()));
        }
        tensors.push((format!("{name}.lora_b"), vec![r as u64, pair.out_features as u64], b));
    }
    if tensors.is_empty() {
        return Err(unsupported("adapter_model.safetensors", "the adapter adapts no module"));
    }
    let infos: Vec<TensorInfo> = tensors
        .iter()
        .map(|(name, ne, _)| TensorInfo { name: name.clone(), ty: tensor_type(name, ne, opts.ty), ne: ne.clone() })
        .collect();
    let kv = vec![
        ("general.architecture".to_string(), Value::Str(arch.into())),
        ("general.type".to_string(), Value::Str("adapter".into())),
        ("adapter.type".to_string(), Value::Str("lora".into())),
        ("general.name".to_string(), Value::Str(opts.name.clone())),
        ("adapter.lora.alpha".to_string(), Value::F32(alpha as f32)),
        ("general.quantization_version".to_string(), Value::U32(QUANTIZATION_VERSION)),
    ];
    let mut writer = GgufWriter::begin(out, &kv, infos.clone())?;
    for ((_, ne, values), info) in tensors.iter().zip(&infos) {
        writer.tensor(&encode(values, ne[0] as usize, info.ty)?)?;
    }
    Ok(writer.finish()?.1)
}

/// llama.cpp's one `adapter.lora.alpha`: it scales each tensor pair by
/// alpha / its rank, so a module's scaling s at rank r needs alpha = s·r:
/// `lora_alpha`, or `lora_alpha`·√r with rsLoRA. Modules that need different
/// alphas (`alpha_pattern`, or rsLoRA with `rank_pattern`) cannot share one
/// file: a typed error, not a silently rescaled adapter.
fn one_alpha(lora: &LoraConfig, weights: &LoraWeights) -> Result<f64> {
    let need = |name: &str, r: usize| {
        let alpha = lora.alpha_of(name);
        if lora.use_rslora {
            alpha * (r as f64).sqrt()
        } else {
            alpha
        }
    };
    let mut modules = weights.modules.iter().map(|(name, p)| (name, need(name, p.r)));
    let Some((first, alpha)) = modules.next() else { return Ok(need("", lora.r)) };
    match modules.find(|(_, a)| *a != alpha) {
        None => Ok(alpha),
        Some((other, a)) => Err(unsupported(
            "adapter_config.json",
            format!(
                "{first} needs lora_alpha {alpha} and {other} {a} (alpha_pattern, or rsLoRA with rank_pattern), \
                 but a GGUF LoRA adapter has one alpha: merge the adapter and export the merged model instead"
            ),
        )),
    }
}
