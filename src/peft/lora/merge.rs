//! Merging a LoRA adapter into the frozen base, as PEFT's `merge_adapter` /
//! `unmerge_adapter`: `W ← W ± scaling·B·A` for every adapted Linear (DoRA:
//! then each row times m / ‖W + ΔW‖, divided back before the unmerge), and
//! trainable token rows copied into the embedding (the originals back), and
//! `modules_to_save`'s copies put in the model's place (the originals back,
//! as PEFT's `merge_and_unload` keeps the trained module). An f32
//! base is updated in place on the GPU (one accumulate-GEMM per row chunk);
//! a Q8_0 or NF4 base is dequantized, updated and quantized again, which
//! rounds (PEFT does the same for bitsandbytes layers, with a warning).
//!
//! [`export_safetensors`] then writes the (merged) model as one f32
//! `model.safetensors` with the checkpoint's own names, and
//! [`export_loftq_base`] the base a LoftQ adapter belongs with.

use std::collections::HashMap;

use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::adapter::LoraAdapter;
use super::config::OuterModule;
use super::dora::magnitude_scales;
use super::layer::LoraFactors;
use super::InitLoraWeights;
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Recorder, Tensor};
use crate::kernels::dora::scale_rows;
use crate::kernels::matmul::{gemm, Gemm};
use crate::kernels::qmatmul::{ChunkData, QWeight};
use crate::kernels::quant::{dequantize, quantize};
use crate::model::llama::block::Block;
use crate::model::llama::Model;
use crate::model::source::{ByteSource, MemorySource};
use crate::model::{Checkpoint, ModelFiles};
use crate::quant::QuantFormat;

/// What [`merge_lora`] keeps for [`unmerge_lora`]: each merged DoRA
/// Linear's row factors g = m / ‖W + ΔW‖ (out), computed from the weight
/// before the merge (PEFT caches the weight norm for the same reason: the
/// merged weight's rows have norm |m|, which no longer tells n).
#[derive(Clone, Debug, Default)]
pub struct Merged {
    /// Per layer, in [`LORA_MODULES`](super::LORA_MODULES) order; `None` for
    /// plain LoRA layers.
    pub dora_scales: Vec<[Option<Tensor>; 7]>,
    /// The embedding's own rows (k, D) that trainable token rows replaced.
    pub token_rows: Option<Tensor>,
    /// An untied head's own rows that its trainable rows replaced.
    pub head_token_rows: Option<Tensor>,
    /// The model's own `embed_tokens` and `lm_head` that `modules_to_save`'s
    /// copies replaced.
    pub replaced: Option<(QWeight, QWeight)>,
}

/// Adds `sign·scaling·B·A` to every Linear `lora` adapts; a DoRA Linear's
/// rows are then scaled by g (merge), or divided by `merged`'s g first (unmerge).
fn apply(gpu: &Gpu, model: &mut Model, lora: &LoraAdapter, sign: f32, merged: Option<&Merged>) -> Result<Merged> {
    if lora.layers.len() != model.layers.len() {
        return Err(Error::invalid(
            "merge",
            format!("the adapter has {} layers, the model {}", lora.layers.len(), model.layers.len()),
        ));
    }
    let mut out = Merged::default();
    for (i, (layer, factors)) in model.layers.iter_mut().zip(&lora.layers).enumerate() {
        let mut scales: [Option<Tensor>; 7] = Default::default();
        for (j, (w, f)) in linear_weights(layer).into_iter().zip(factors).enumerate() {
            let Some(f) = f else { continue };
            let s = lora.scalings.at(i, j);
            let rows = match (&f.m, merged) {
                (None, _) => None,
                (Some(_), None) => {
                    let mut rec = Recorder::new(gpu);
                    let s = magnitude_scales(&mut rec, w, f, s)?;
                    rec.submit()?;
                    scales[j] = Some(s.g.clone());
                    Some(RowScale::After(s.g))
                }
                (Some(_), Some(m)) => {
                    let g = m.dora_scales.get(i).and_then(|l| l[j].clone()).ok_or_else(|| {
                        Error::invalid("unmerge", format!("layer {i} module {j}: no DoRA scale from the merge"))
                    })?;
                    Some(RowScale::Before(g))
                }
            };
            update(gpu, w, f, sign * s, rows.as_ref())?;
        }
        out.dora_scales.push(scales);
    }
    if (lora.embed.is_some() || lora.head.is_some()) && model.lm_head_is_tied() {
        return Err(Error::invalid(
            "merge",
            "LoRA on the embedding or the head of a model whose lm_head is the embedding: merging would change both",
        ));
    }
    if let Some(m) = &lora.modules_to_save {
        match merged {
            None => {
                let tied = model.lm_head_is_tied();
                if tied && !m.head_is_embed {
                    return Err(Error::invalid(
                        "merge",
                        "modules_to_save on a model whose lm_head is the embedding, each trained on its own \
                         (ensure_weight_tying false): merging would untie them",
                    ));
                }
                out.replaced = Some((model.embed_tokens.clone(), model.lm_head.clone()));
                if let Some(e) = &m.embed {
                    model.embed_tokens = e.f32_copy(gpu)?;
                }
                match m.head_weight() {
                    Some(_) if m.head_is_embed => model.lm_head = model.embed_tokens.clone(), // still one table
                    Some(h) => model.lm_head = h.f32_copy(gpu)?,
                    None => {}
                }
            }
            Some(done) => {
                let (embed, head) = done
                    .replaced
                    .clone()
                    .ok_or_else(|| Error::invalid("unmerge", "no replaced modules from the merge"))?;
                (model.embed_tokens, model.lm_head) = (embed, head);
            }
        }
    }
    if let Some(f) = &lora.head {
        update(gpu, &mut model.lm_head, f, sign * lora.scalings.outer(OuterModule::Head), None)?;
        // W (vocab, hidden) += s·B·A
    }
    if let Some(f) = &lora.embed {
        add_embedding_delta(gpu, &model.embed_tokens, f, sign * lora.scalings.outer(OuterModule::Embedding))?;
    }
    for (t, slot) in [(lora.tokens.as_ref(), 0), (lora.head_tokens.as_deref(), 1)] {
        let Some(t) = t else { continue };
        match merged {
            None => *[&mut out.token_rows, &mut out.head_token_rows][slot] = Some(t.merge_into(gpu, model)?),
            Some(m) => {
                let own = [&m.token_rows, &m.head_token_rows][slot]
                    .as_ref()
                    .ok_or_else(|| Error::invalid("unmerge", "no token rows from the merge"))?;
                t.unmerge_from(gpu, model, own)?;
            }
        }
    }
    gpu.check("merge")?;
    Ok(out)
}

/// The embedding (vocab, hidden) += alpha·Aᵀ·Bᵀ for LoRA's A (r, vocab) and
/// B (hidden, r), chunk by chunk (a chunk of rows r0..r0+n takes A's columns
/// r0..r0+n). The table must be f32.
fn add_embedding_delta(gpu: &Gpu, table: &QWeight, f: &LoraFactors, alpha: f32) -> Result<()> {
    let (r, vocab, d) = f.dims("merge")?;
    if (vocab, d) != (table.rows, table.cols) {
        return Err(Error::shape(
            "merge",
            format!("embedding LoRA ({vocab}, {d}) does not fit the table ({}, {})", table.rows, table.cols),
        ));
    }
    for chunk in &table.chunks {
        let ChunkData::F32(t) = &chunk.data else {
            return Err(Error::invalid(
                "merge",
                "LoRA into an embedding stored in 16 bits: load the model with an f32 base",
            ));
        };
        let mut g = Gemm::new(chunk.rows, d, r, true, true).alpha(alpha).accumulate(true);
        (g.lda, g.a_off) = (vocab, chunk.row_start);
        let mut rec = Recorder::new(gpu);
        gemm(&mut rec, &g, &f.a, &f.b, t)?;
        rec.submit()?;
    }
    Ok(())
}

/// DoRA's per-row factor in a merge (after adding ΔW) or an unmerge
/// (divided out before subtracting it).
enum RowScale {
    After(Tensor),
    Before(Tensor),
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
    update(gpu, w, f, alpha, None)
}

/// [`add_delta`], with DoRA's row factors where `rows` says.
fn update(gpu: &Gpu, w: &mut QWeight, f: &LoraFactors, alpha: f32, rows: Option<&RowScale>) -> Result<()> {
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
        let dense = match &chunk.data {
            ChunkData::F32(t) => t.clone(), // updated in place
            ChunkData::Quant(packed) => dequantize(&mut rec, packed)?.reshape(&[n, inp])?,
        };
        if let Some(RowScale::Before(s)) = rows {
            scale_rows(&mut rec, &dense, chunk.row_start, s, true)?;
        }
        gemm(&mut rec, &g, &f.b, &f.a, &dense)?;
        if let Some(RowScale::After(s)) = rows {
            scale_rows(&mut rec, &dense, chunk.row_start, s, false)?;
        }
        if let ChunkData::Quant(_) = &chunk.data {
            let repacked = quantize(&mut rec, &dense.reshape(&[n * inp])?, format)?;
            rec.submit()?;
            chunk.data = ChunkData::Quant(repacked);
        } else {
            rec.submit()?;
        }
    }
    Ok(())
}

/// PEFT's `merge_adapter`: the base now computes what base + adapter did;
/// run it without the adapter afterwards. A DoRA Linear becomes
/// `(m / ‖W + ΔW‖)·(W + ΔW)` per row, as PEFT's `DoraLinearVariant.merge`.
/// Returns what [`unmerge_lora`] needs.
pub fn merge_lora(gpu: &Gpu, model: &mut Model, lora: &LoraAdapter) -> Result<Merged> {
    apply(gpu, model, lora, 1.0, None)
}

/// PEFT's `unmerge_adapter`: subtracts what [`merge_lora`] added (exact up to
/// f32 rounding on an f32 base); a DoRA Linear is first divided by the row
/// factors `merged` kept.
pub fn unmerge_lora(gpu: &Gpu, model: &mut Model, lora: &LoraAdapter, merged: &Merged) -> Result<()> {
    apply(gpu, model, lora, -1.0, Some(merged)).map(|_| ())
}

/// A SEQ_CLS adapter's head on `model`, as PEFT's `merge_and_unload` leaves
/// a sequence classifier: the trained `score` copy becomes the model's
/// score head (a causal LM then is a classifier: `config.head` says so,
/// and the export writes `score.weight` and no lm_head). Merge the LoRA
/// factors with [`merge_lora`] as for any adapter.
pub fn merge_score_head(gpu: &Gpu, model: &mut Model, lora: &LoraAdapter) -> Result<()> {
    let copy = lora.modules_to_save.as_ref().and_then(|m| m.score.as_ref()).ok_or_else(|| {
        Error::invalid("merge_score_head", "the adapter has no score head (its task_type is not SEQ_CLS)")
    })?;
    let problem_type = match model.config.head {
        crate::model::config::ModelHead::SequenceClassification { problem_type, .. } => problem_type,
        crate::model::config::ModelHead::CausalLm => None,
    };
    model.score = Some(copy.f32_copy(gpu)?);
    model.config.head = crate::model::config::ModelHead::SequenceClassification { num_labels: copy.rows, problem_type };
    Ok(())
}

/// The `config.json` of a causal LM's (or classifier's) folder made a
/// sequence classifier's of `num_labels`, as transformers saves one:
/// `architectures` `…ForSequenceClassification` (in place of
/// `…ForCausalLM`), `id2label` and `label2id` (the folder's own where it
/// has as many, else `LABEL_i`) and `pad_token_id` (where it has none; the
/// pad id the pooling skipped). Every other key is kept as it was.
pub fn classifier_config_json(config_json: &[u8], num_labels: usize, pad_token_id: u32) -> Result<Vec<u8>> {
    use serde_json::{json, Map, Value};
    let bad = |detail: String| Error::File { file: "config.json".into(), detail };
    let mut config: Map<String, Value> =
        serde_json::from_slice(config_json).map_err(|e| bad(format!("not a JSON object: {e}")))?;
    let arch = config.get("architectures").and_then(|a| a.get(0)).and_then(Value::as_str).unwrap_or("");
    let family = arch.strip_suffix("ForCausalLM").or_else(|| arch.strip_suffix("ForSequenceClassification"));
    let family = family.filter(|f| !f.is_empty()).ok_or_else(|| {
        bad(format!("architectures {arch:?}: neither a …ForCausalLM nor a …ForSequenceClassification"))
    })?;
    config.insert("architectures".into(), json!([format!("{family}ForSequenceClassification")]));
    let own = config.get("id2label").and_then(Value::as_object).filter(|l| l.len() == num_labels).cloned();
    let id2label: Map<String, Value> =
        own.unwrap_or_else(|| (0..num_labels).map(|i| (i.to_string(), json!(format!("LABEL_{i}")))).collect());
    let label2id: Map<String, Value> = id2label
        .iter()
        .map(|(i, name)| (name.as_str().unwrap_or(i).to_string(), json!(i.parse::<u64>().unwrap_or(0))))
        .collect();
    config.insert("id2label".into(), Value::Object(id2label));
    config.insert("label2id".into(), Value::Object(label2id));
    if config.get("pad_token_id").is_none_or(Value::is_null) {
        config.insert("pad_token_id".into(), json!(pad_token_id));
    }
    serde_json::to_vec_pretty(&Value::Object(config)).map_err(|e| bad(e.to_string()))
}

/// The model's weights as one f32 `model.safetensors` (Hugging Face names;
/// a tied head is written once, as transformers does; quantized Linears are
/// written dequantized). Reads the GPU tensor by tensor.
pub async fn export_safetensors(gpu: &Gpu, model: &Model) -> Result<Vec<u8>> {
    export_weights::<MemorySource>(gpu, model, None).await
}

/// The folder, beside a LoftQ adapter's files, the CLI writes its base into.
pub const LOFTQ_BASE_DIR: &str = "loftq_base";

/// The base a LoftQ adapter trains on, as one f32 `model.safetensors` for
/// `PeftModel.from_pretrained` (PEFT's LoftQ example saves its base model
/// the same way): the Linears `lora` adapts as the model holds them (LoftQ's
/// NF4(W − B·A), dequantized), every other tensor as in the checkpoint. On
/// a quantized base the Linears `lora` does not adapt are read from `files`
/// (their float weights), not from the model's quantized copies.
pub async fn export_loftq_base<F: ModelFiles>(
    gpu: &Gpu,
    model: &Model,
    lora: &LoraAdapter,
    files: &F,
) -> Result<Vec<u8>> {
    if !matches!(lora.config.init_lora_weights, InitLoraWeights::Loftq { .. }) {
        return Err(Error::invalid("export_loftq_base", "the adapter was not initialised with LoftQ"));
    }
    let quantized = matches!(model.format, QuantFormat::Q8_0 | QuantFormat::Nf4);
    let checkpoint = if quantized { Some(Checkpoint::open_for(files, &model.config).await?) } else { None };
    export_weights(gpu, model, checkpoint.as_ref().map(|c| (c, lora))).await
}

/// `key` from `checkpoint` where given, else `w` read back from the GPU.
async fn original_or<S: ByteSource>(
    gpu: &Gpu,
    w: &QWeight,
    key: &str,
    checkpoint: Option<&Checkpoint<S>>,
) -> Result<Vec<f32>> {
    match checkpoint {
        Some(c) => c.read_f32(key).await,
        None => w.to_f32(gpu).await,
    }
}

/// [`export_safetensors`], with the Linears `originals` names not adapted
/// by its adapter read from its checkpoint.
async fn export_weights<S: ByteSource>(
    gpu: &Gpu,
    model: &Model,
    originals: Option<(&Checkpoint<S>, &LoraAdapter)>,
) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, data: Vec<f32>| tensors.push((name, shape, data));
    fn q(w: &QWeight) -> (Vec<usize>, &QWeight) {
        (vec![w.rows, w.cols], w)
    }
    // The embedding and the head: the checkpoint's where the originals are asked for.
    let checkpoint = originals.map(|(c, _)| c);
    let (shape, w) = q(&model.embed_tokens);
    push(
        "model.embed_tokens.weight".into(),
        shape,
        original_or(gpu, w, "model.embed_tokens.weight", checkpoint).await?,
    );
    for (i, l) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        push(
            format!("{p}.input_layernorm.weight"),
            l.input_layernorm.weight.shape().to_vec(),
            l.input_layernorm.weight.to_vec(gpu).await?,
        );
        let pn = &l.post_attention_layernorm.weight;
        push(format!("{p}.post_attention_layernorm.weight"), pn.shape().to_vec(), pn.to_vec(gpu).await?);
        for (name, norm) in [("q_norm", &l.self_attn.q_norm), ("k_norm", &l.self_attn.k_norm)] {
            if let Some(n) = norm {
                push(format!("{p}.self_attn.{name}.weight"), n.weight.shape().to_vec(), n.weight.to_vec(gpu).await?);
            }
        }
        for (j, (name, lin)) in l.linears().into_iter().enumerate() {
            let (shape, w) = q(&lin.weight);
            let key = format!("{p}.{name}.weight");
            let data = match originals {
                Some((c, lora)) if lora.layers[i][j].is_none() => c.read_f32(&key).await?,
                _ => w.to_f32(gpu).await?,
            };
            push(key, shape, data);
            if let Some(b) = &lin.bias {
                push(format!("{p}.{name}.bias"), b.shape().to_vec(), b.to_vec(gpu).await?);
            }
        }
    }
    push("model.norm.weight".into(), model.norm.weight.shape().to_vec(), model.norm.weight.to_vec(gpu).await?);
    if let Some(score) = &model.score {
        // A classifier checkpoint's own head (its lm_head field aliases the embedding).
        let (shape, w) = q(score);
        push(crate::model::config::SCORE_WEIGHT.into(), shape, w.to_f32(gpu).await?);
    } else if !model.lm_head_is_tied() {
        let (shape, w) = q(&model.lm_head);
        push("lm_head.weight".into(), shape, original_or(gpu, w, "lm_head.weight", checkpoint).await?);
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
