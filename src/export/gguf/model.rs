//! The merged model as llama.cpp's `convert_hf_to_gguf.py` writes it: the
//! `general.*` fields, the architecture's hyperparameters, the tokenizer
//! ([`super::vocab`]), then every checkpoint tensor in checkpoint order
//! (shards by name, each in data order) under its llama.cpp name, after a
//! llama3 model's `rope_freqs.weight`.

use std::io::Write;

use serde_json::Value as Json;

use super::names::{gguf_name, llama3_rope_factors, permute_heads, permute_rows};
use super::vocab::{tokenizer_kv, VocabFiles};
use super::writer::{GgmlType, GgufWriter, TensorInfo, Value};
use super::{encode, file_type, ne_of, size_label, tensor_type, unsupported, QUANTIZATION_VERSION};
use crate::model::tokenizer::Tokenizer;
use crate::model::{ByteSource, Checkpoint, Config, ModelFiles};
use crate::peft::lora::config::OuterModule;
use crate::peft::lora::{LoraConfig, LoraWeights};
use crate::peft::modules_to_save;
use crate::Result;

/// What the export writes besides the weights.
#[derive(Debug, Clone)]
pub struct GgufOptions {
    /// The 2-D weights' type: F16 or Q8_0 for a model (F32 too for an adapter).
    pub ty: GgmlType,
    /// `general.name` (the converter's `--model-name`; its default is a
    /// heuristic on the folder name).
    pub name: String,
    /// `tokenizer.ggml.pre` when llama.cpp's table does not know the
    /// tokenizer's hash.
    pub tokenizer_pre: Option<String>,
}

/// The llama.cpp architecture of a config.json (`architectures[0]`), and
/// whether its q/k rows are permuted.
pub(crate) fn architecture(config: &Json) -> Result<(&'static str, bool)> {
    let arch = config.get("architectures").and_then(|a| a.get(0)).and_then(Json::as_str).unwrap_or("");
    match arch {
        "LlamaForCausalLM" | "MistralForCausalLM" => Ok(("llama", true)),
        "Qwen2ForCausalLM" => Ok(("qwen2", false)),
        "Qwen3ForCausalLM" => Ok(("qwen3", false)),
        "SmolLM3ForCausalLM" => Ok(("smollm3", true)),
        _ => Err(unsupported(
            "config.json",
            format!(
                "architecture {arch:?}: the export knows LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, \
                 Qwen3ForCausalLM and SmolLM3ForCausalLM"
            ),
        )),
    }
}

/// The converter's `LlamaModel` and its subclasses (`SmolLM3Model`): the
/// architectures that get its hyperparameters, vocabulary rules and llama3
/// `rope_freqs.weight`.
fn llama_converter(arch: &str) -> bool {
    matches!(arch, "llama" | "smollm3")
}

async fn read_json<F: ModelFiles>(files: &F, name: &str) -> Result<Option<Json>> {
    let Some(source) = files.try_open(name).await? else { return Ok(None) };
    let bytes = source.read_all().await?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| crate::Error::File { file: name.into(), detail: format!("invalid JSON: {e}") })
}

/// A base LoRA adapter to fold in: only plain LoRA (PEFT `LORA`, no DoRA).
pub(crate) async fn read_lora<A: ModelFiles>(
    adapter: &A,
    config: &Config,
    merging: bool,
) -> Result<(LoraConfig, LoraWeights)> {
    let raw = read_json(adapter, "adapter_config.json")
        .await?
        .ok_or_else(|| unsupported(adapter.location(), "no adapter_config.json"))?;
    let peft_type = raw.get("peft_type").and_then(Json::as_str).unwrap_or("");
    if peft_type != "LORA" {
        let hint = if merging { "; fold it in with `webpeft merge` first and export the merged folder" } else { "" };
        return Err(unsupported(
            "adapter_config.json",
            format!("peft_type {peft_type:?}: GGUF adapters are LoRA only{hint}"),
        ));
    }
    let lora = LoraConfig::from_value(&raw)?;
    if lora.task_type == crate::peft::TaskType::SeqCls {
        return Err(unsupported(
            "adapter_config.json",
            "task_type SEQ_CLS: a reward model's or classifier's score head has no place in llama.cpp's causal-LM GGUF",
        ));
    }
    if lora.use_dora {
        let detail = if merging {
            "DoRA (use_dora): fold it in with `webpeft merge` first and export the merged folder"
        } else {
            "DoRA (use_dora): llama.cpp's LoRA adapters have no magnitude vector"
        };
        return Err(unsupported("adapter_config.json", detail));
    }
    if merging {
        // Folded into a merged model: everything but a head apart from a tied model's embedding.
        if let Some(detail) = untied_head(&lora, config) {
            return Err(unsupported("adapter_config.json", detail));
        }
    } else {
        if let Some(m) = lora.outer_targets().first().filter(|_| config.tie_word_embeddings) {
            let detail = format!(
                "{}: on a model whose lm_head is the embedding llama.cpp has one tensor for both, which a LoRA \
                 of either would change in both places; export the merged model of an untied one",
                m.name()
            );
            return Err(unsupported("adapter_config.json", detail));
        }
        // What llama.cpp's LoRA adapters cannot hold (a merged model can).
        let outside = [
            (
                lora.trainable_token_indices.is_some() || lora.trainable_head_token_indices.is_some(),
                "trainable_token_indices: llama.cpp's LoRA adapters have no embedding rows; export the merged model",
            ),
            (
                lora.modules_to_save.is_some(),
                "modules_to_save: llama.cpp's LoRA adapters hold no whole embedding or head; export the merged model",
            ),
        ];
        if let Some((_, detail)) = outside.into_iter().find(|(present, _)| *present) {
            return Err(unsupported("adapter_config.json", detail));
        }
    }
    let weights = LoraWeights::load(adapter, &lora, config).await?;
    Ok((lora, weights))
}

/// Why `lora` cannot be merged into a model whose `lm_head` is its
/// embedding (`tie_word_embeddings`), as [`crate::peft::lora::merge`]
/// refuses: the merged file holds one table, which would need to be two.
fn untied_head(lora: &LoraConfig, config: &Config) -> Option<String> {
    if !config.tie_word_embeddings {
        return None;
    }
    if let Some(m) = lora.outer_targets().first() {
        return Some(format!(
            "{}: a LoRA on the embedding or the head of a model whose lm_head is the embedding: merging would change both",
            m.name()
        ));
    }
    if lora.trainable_head_token_indices.is_some() {
        return Some(
            "trainable_token_indices.lm_head: this model's lm_head is its embedding, whose rows it shares".into(),
        );
    }
    let list = lora.modules_to_save.as_deref().unwrap_or_default();
    let keys = modules_to_save::file_keys(list, lora.ensure_weight_tying, config);
    // A shared copy (ensure_weight_tying) is saved under the head's key too; copies of their own are not.
    let own_copies = !keys.is_empty() && keys.iter().all(|(key, m)| *key == modules_to_save::key(*m));
    own_copies.then(|| {
        "modules_to_save on a model whose lm_head is the embedding, each trained on its own \
         (ensure_weight_tying false): merging would untie them"
            .to_string()
    })
}

/// The trained parts outside the layers folded into `hf`'s values `x`
/// (rows, cols) as PEFT's `merge_and_unload` leaves them: modules_to_save's
/// copies in place of the embedding and the head, trainable token rows (the
/// embedding's, an untied head's own) in place of theirs, LoRA on the embedding added (`(s·B·A)ᵀ`; the head's is a
/// Linear's, folded with the layers').
fn fold_outer(hf: &str, x: &mut [f32], lora: &LoraConfig, w: &LoraWeights, config: &Config) {
    let (vocab, d) = (config.vocab_size, config.hidden_size);
    let module = match hf {
        "model.embed_tokens.weight" => OuterModule::Embedding,
        "lm_head.weight" => OuterModule::Head,
        _ => return,
    };
    if let Some((_, values)) = w.saved.get(modules_to_save::key(module)) {
        x.copy_from_slice(values);
    }
    let token_rows = match module {
        OuterModule::Embedding => (&lora.trainable_token_indices, &w.tokens),
        OuterModule::Head => (&lora.trainable_head_token_indices, &w.head_tokens),
    };
    if let (Some(ids), Some(rows)) = token_rows {
        for (j, &id) in ids.iter().enumerate() {
            x[id as usize * d..(id as usize + 1) * d].copy_from_slice(&rows.values[j * d..(j + 1) * d]);
        }
    }
    if module != OuterModule::Embedding {
        return;
    }
    if let Some(pair) = w.modules.get(OuterModule::Embedding.name()) {
        let (r, s) = (pair.r, lora.scaling_of(OuterModule::Embedding.name()) as f32);
        for v in 0..vocab {
            for c in 0..d {
                let mut t = 0.0f32;
                for k in 0..r {
                    t = pair.b[c * r + k].mul_add(pair.a[k * vocab + v], t);
                }
                x[v * d + c] += t * s;
            }
        }
    }
}

fn f32_of(v: Option<&Json>) -> Option<f32> {
    v.and_then(Json::as_f64).map(|x| x as f32)
}

/// `TextModel.set_gguf_parameters` (+ `LlamaModel`'s additions) for the
/// fields a Llama-family config has.
fn hyperparameters(arch: &str, c: &Json, ty: GgmlType) -> Result<Vec<(String, Value)>> {
    let key = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| c.get(k).and_then(Json::as_u64).map(|v| Value::U32(v as u32));
    let mut kv = Vec::new();
    let mut push = |k: String, v: Option<Value>| {
        if let Some(v) = v {
            kv.push((k, v));
        }
    };
    push(key("block_count"), u("num_hidden_layers"));
    push(key("context_length"), u("max_position_embeddings"));
    push(key("embedding_length"), u("hidden_size"));
    push(key("feed_forward_length"), u("intermediate_size"));
    push(key("attention.head_count"), u("num_attention_heads"));
    push(key("attention.head_count_kv"), u("num_key_value_heads"));
    let scaling = c.get("rope_parameters").or(c.get("rope_scaling")).filter(|v| !v.is_null());
    let rope_type = scaling.and_then(|s| s.get("rope_type").or(s.get("type"))).and_then(Json::as_str);
    let scaled = |k: &str| scaling.and_then(|s| s.get(k));
    match rope_type {
        None | Some("default") => {}
        Some("llama3") => {}  // rope_freqs.weight
        Some("dynamic") => {} // the converter writes nothing for it (llama.cpp's llama and qwen2 have no NTK)
        Some(kind @ ("linear" | "yarn")) => {
            let factor = f32_of(scaled("factor"))
                .ok_or_else(|| unsupported("config.json", format!("{kind} rope_scaling without a factor")))?;
            push(key("rope.scaling.type"), Some(Value::Str(kind.into())));
            push(key("rope.scaling.factor"), Some(Value::F32(factor)));
            if kind == "yarn" {
                // transformers' fallback where the converter needs the key.
                let context = scaled("original_max_position_embeddings")
                    .or(c.get("original_max_position_embeddings"))
                    .or(c.get("max_position_embeddings"))
                    .and_then(Json::as_u64);
                push(key("rope.scaling.original_context_length"), context.map(|n| Value::U32(n as u32)));
                let attention = scaled("attention_factor").or(scaled("attn_factor"));
                for (field, value) in [
                    ("yarn_ext_factor", scaled("extrapolation_factor")),
                    ("yarn_attn_factor", attention),
                    ("yarn_beta_fast", scaled("beta_fast")),
                    ("yarn_beta_slow", scaled("beta_slow")),
                ] {
                    push(key(&format!("rope.scaling.{field}")), f32_of(value).map(Value::F32));
                }
            }
        }
        Some(other) => return Err(unsupported("config.json", format!("rope_scaling type {other:?}"))),
    }
    let theta = scaling.and_then(|s| s.get("rope_theta")).or(c.get("rope_theta"));
    push(key("rope.freq_base"), f32_of(theta).map(Value::F32));
    push(key("attention.layer_norm_rms_epsilon"), f32_of(c.get("rms_norm_eps")).map(Value::F32));
    if let Some(hd) = u("head_dim") {
        push(key("attention.key_length"), Some(hd.clone()));
        push(key("attention.value_length"), Some(hd));
    }
    push("general.file_type".into(), Some(Value::U32(file_type(ty))));
    if llama_converter(arch) {
        push(key("vocab_size"), u("vocab_size"));
        let heads = c.get("num_attention_heads").and_then(Json::as_u64).unwrap_or(1);
        let rope_dim = c
            .get("head_dim")
            .and_then(Json::as_u64)
            .unwrap_or_else(|| c.get("hidden_size").and_then(Json::as_u64).unwrap_or(0) / heads.max(1));
        push(key("rope.dimension_count"), Some(Value::U32(rope_dim as u32)));
    }
    Ok(kv)
}

/// generation_config.json's sampling fields as `general.sampling.*`
/// (gguf-py's `Metadata`, in its order).
fn sampling(gen: Option<&Json>) -> Vec<(String, Value)> {
    let Some(g) = gen else { return Vec::new() };
    let mut kv = Vec::new();
    if let Some(k) = g.get("top_k").and_then(Json::as_i64) {
        kv.push(("general.sampling.top_k".into(), Value::I32(k as i32)));
    }
    for (field, key) in
        [("top_p", "top_p"), ("min_p", "min_p"), ("temperature", "temp"), ("repetition_penalty", "penalty_repeat")]
    {
        if let Some(v) = f32_of(g.get(field)) {
            kv.push((format!("general.sampling.{key}"), Value::F32(v)));
        }
    }
    kv
}

/// Where a tensor's values come from.
enum Source {
    RopeFreqs(Vec<f32>),
    Checkpoint { hf: String, shape: Vec<usize> },
}

/// Writes base + LoRA (`adapter`, plain LoRA) as llama.cpp's converter
/// would from the merged Hugging Face folder. Returns the file's length.
pub async fn export_model<F: ModelFiles, A: ModelFiles, W: Write>(
    files: &F,
    adapter: Option<&A>,
    opts: &GgufOptions,
    out: W,
) -> Result<u64> {
    if opts.ty == GgmlType::F32 {
        return Err(unsupported("--type", "a model is exported as f16 or q8_0"));
    }
    let raw = read_json(files, "config.json").await?.ok_or_else(|| unsupported(files.location(), "no config.json"))?;
    let (arch, permute) = architecture(&raw)?;
    let config = Config::load(files).await?;
    let checkpoint = Checkpoint::open_for(files, &config).await?;
    let lora = match adapter {
        Some(a) => Some(read_lora(a, &config, true).await?),
        None => None,
    };

    let mut sources = Vec::new();
    let scaling = raw.get("rope_parameters").or(raw.get("rope_scaling")).filter(|v| !v.is_null());
    if llama_converter(arch) && scaling.and_then(|s| s.get("rope_type")).and_then(Json::as_str) == Some("llama3") {
        let s = scaling.unwrap_or(&Json::Null);
        let g = |k: &str, d: f32| f32_of(s.get(k)).unwrap_or(d);
        let base = f32_of(s.get("rope_theta").or(raw.get("rope_theta"))).unwrap_or(10000.0);
        sources.push((
            "rope_freqs.weight".to_string(),
            Source::RopeFreqs(llama3_rope_factors(
                base,
                config.head_dim,
                g("factor", 8.0),
                g("low_freq_factor", 1.0),
                g("high_freq_factor", 4.0),
                g("original_max_position_embeddings", 8192.0),
            )),
        ));
    }
    let mut shards: Vec<_> = checkpoint.shards().iter().collect();
    shards.sort_by(|a, b| a.name().cmp(b.name()));
    for shard in shards {
        for t in shard.tensors() {
            if t.name.ends_with(".rotary_emb.inv_freq") {
                continue;
            }
            let name = gguf_name(&t.name)
                .ok_or_else(|| unsupported(shard.name(), format!("tensor `{}` has no llama.cpp name", t.name)))?;
            sources.push((name, Source::Checkpoint { hf: t.name.clone(), shape: t.shape.clone() }));
        }
    }
    let infos: Vec<TensorInfo> = sources
        .iter()
        .map(|(name, s)| {
            let ne = match s {
                Source::RopeFreqs(v) => vec![v.len() as u64],
                Source::Checkpoint { shape, .. } => ne_of(shape),
            };
            TensorInfo { name: name.clone(), ty: tensor_type(name, &ne, opts.ty), ne }
        })
        .collect();

    let generation = read_json(files, "generation_config.json").await?;
    let params: u64 = infos.iter().map(|i| i.numel() as u64).sum();
    let mut kv = vec![
        ("general.architecture".to_string(), Value::Str(arch.into())),
        ("general.type".to_string(), Value::Str("model".into())),
    ];
    kv.extend(sampling(generation.as_ref()));
    kv.push(("general.name".into(), Value::Str(opts.name.clone())));
    kv.push(("general.size_label".into(), Value::Str(size_label(params))));
    kv.extend(hyperparameters(arch, &raw, opts.ty)?);
    kv.push(("general.quantization_version".into(), Value::U32(QUANTIZATION_VERSION)));
    if llama_converter(arch) {
        if let Some(b) = read_json(files, "tokenizer_config.json")
            .await?
            .and_then(|t| t.get("add_prefix_space").and_then(Json::as_bool))
        {
            kv.push(("tokenizer.ggml.add_space_prefix".into(), Value::Bool(b)));
        }
    }
    kv.extend(vocabulary(files, &raw, config.vocab_size, opts.tokenizer_pre.as_deref()).await?);
    if llama_converter(arch) && config.vocab_size == 49152 {
        // LlamaModel.set_vocab: "granite small models" (it also catches SmolLM's 49152).
        set(&mut kv, "tokenizer.ggml.add_bos_token", Value::Bool(false));
    }

    let mut writer = GgufWriter::begin(out, &kv, infos.clone())?;
    for ((_, source), info) in sources.iter().zip(&infos) {
        let values = match source {
            Source::RopeFreqs(v) => v.clone(),
            Source::Checkpoint { hf, shape } => {
                let mut x = checkpoint.read_f32(hf).await?;
                let module = hf.trim_end_matches(".weight");
                if let Some((lc, w)) = &lora {
                    fold_outer(hf, &mut x, lc, w, &config);
                    let layer_or_head = module != OuterModule::Embedding.name();
                    if let Some(pair) = w.modules.get(module).filter(|_| hf.ends_with(".weight") && layer_or_head) {
                        let s = lc.scaling_of(module) as f32;
                        fold_lora(&mut x, &pair.a, &pair.b, pair.out_features, pair.in_features, s);
                    }
                }
                match permute_heads(hf, config.num_attention_heads, config.num_key_value_heads).filter(|_| permute) {
                    Some(heads) => {
                        let cols = shape.get(1).copied().unwrap_or(1);
                        permute_rows(&x, shape[0], cols, heads)
                    }
                    None => x,
                }
            }
        };
        writer.tensor(&encode(&values, info.ne[0] as usize, info.ty)?)?;
    }
    Ok(writer.finish()?.1)
}

/// Replaces `key`'s value where it stands, or appends it (a Python dict's
/// assignment, which is how gguf-py overwrites a key).
fn set(kv: &mut Vec<(String, Value)>, key: &str, v: Value) {
    match kv.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => kv.push((key.to_string(), v)),
    }
}

/// The tokenizer fields of the model folder.
async fn vocabulary<F: ModelFiles>(
    files: &F,
    config: &Json,
    vocab_size: usize,
    pre: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    if files.try_open("tokenizer.model").await?.is_some() {
        return Err(unsupported(
            "tokenizer.model",
            "sentencepiece vocabularies are not exported (only byte-level BPE)",
        ));
    }
    let tokenizer = Tokenizer::load(files).await?;
    let tokenizer_json = read_json(files, "tokenizer.json").await?.unwrap_or(Json::Null);
    let tokenizer_config = read_json(files, "tokenizer_config.json").await?;
    let chat_template = match files.try_open("chat_template.jinja").await? {
        Some(s) => Some(String::from_utf8_lossy(&s.read_all().await?).into_owned()),
        None => None,
    };
    let vf = VocabFiles {
        tokenizer_json: &tokenizer_json,
        tokenizer_config: tokenizer_config.as_ref(),
        config,
        chat_template_file: chat_template.as_deref(),
    };
    tokenizer_kv(&tokenizer, &vf, vocab_size, pre)
}

/// PEFT's merge in f32: W (out, in) += (B·A)·scaling, B (out, r), A (r, in);
/// each dot product over r accumulates in order with fused multiply-adds, as
/// the BLAS under PyTorch's `B @ A` does (the merged f16/Q8_0 files then equal
/// the converter's bit for bit), then is scaled, then added.
pub fn fold_lora(w: &mut [f32], a: &[f32], b: &[f32], out: usize, inp: usize, scaling: f32) {
    let r = a.len() / inp;
    for o in 0..out {
        let brow = &b[o * r..(o + 1) * r];
        for i in 0..inp {
            let mut s = 0.0f32;
            for k in 0..r {
                s = brow[k].mul_add(a[k * inp + i], s);
            }
            w[o * inp + i] += s * scaling;
        }
    }
}
