//! Model loading on the CPU: config.json parsing, safetensors headers, single
//! and sharded checkpoints, every tensor of the three fixture models
//! (tests/fixtures/{llama_gqa,qwen2_tied,mistral_f16}, written by transformers),
//! and each kind of bad input as its own typed error. No GPU.
//!
//! Bad files are built here in memory from the fixtures, never committed.

mod common;

use common::{block_on, fixture, Fixture};
use serde_json::{json, Value};
use webpeft::model::llama::rope::rope_inv_freq;
use webpeft::model::{
    ByteSource, Checkpoint, Config, DirFiles, MemoryFiles, MemorySource, ModelType, RopeScaling, SafetensorsFile,
};
use webpeft::Error;

const MODELS: [&str; 5] = ["llama_gqa", "qwen2_tied", "mistral_f16", "qwen3_tiny", "smollm3_tiny"];

fn dir(model: &str) -> DirFiles {
    DirFiles::new(fixture(model)).unwrap()
}

fn config(model: &str) -> Config {
    block_on(Config::load(&dir(model))).unwrap_or_else(|e| panic!("{model}: {e}"))
}

fn config_json(model: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(model).join("config.json")).unwrap()).unwrap()
}

/// llama_gqa's config.json with `edit` applied.
fn edited_config(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Result<Config, Error> {
    let mut v = config_json("llama_gqa");
    edit(v.as_object_mut().unwrap());
    Config::from_value(&v)
}

fn assert_config_error(result: Result<Config, Error>, want_field: &str, want_text: &str) {
    match result {
        Err(Error::Config { ref field, ref detail }) if field == want_field => {
            assert!(detail.contains(want_text), "{want_field}: {detail:?} lacks {want_text:?}")
        }
        other => panic!("expected a config error on `{want_field}`, got {other:?}"),
    }
}

fn assert_tensor_error<T: std::fmt::Debug>(result: Result<T, Error>, want_tensor: &str, want_text: &str) {
    match result {
        Err(Error::Checkpoint { ref tensor, ref detail, .. }) if tensor == want_tensor => {
            assert!(detail.contains(want_text), "{want_tensor}: {detail:?} lacks {want_text:?}")
        }
        other => panic!("expected an error on tensor `{want_tensor}`, got {other:?}"),
    }
}

fn assert_file_error<T: std::fmt::Debug>(result: Result<T, Error>, want_file: &str, want_text: &str) {
    match result {
        Err(Error::File { ref file, ref detail }) if file == want_file => {
            assert!(detail.contains(want_text), "{want_file}: {detail:?} lacks {want_text:?}")
        }
        other => panic!("expected an error on file `{want_file}`, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Building safetensors files by hand.

/// One tensor to write: the dtype is a free string so tests can write garbage.
#[derive(Clone)]
struct Raw {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// A safetensors file holding `tensors` back to back, header padded to 8 bytes.
fn safetensors_bytes(tensors: &[Raw]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0;
    for t in tensors {
        let end = offset + t.data.len();
        header.insert(t.name.clone(), json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, end]}));
        offset = end;
    }
    with_header(
        &serde_json::to_string(&header).unwrap(),
        &tensors.iter().flat_map(|t| t.data.clone()).collect::<Vec<_>>(),
    )
}

/// `header` as the JSON, then `data`.
fn with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(h);
    bytes.extend(data);
    bytes
}

/// The tensors of a fixture file, in file order, read with the `safetensors` crate.
fn fixture_tensors(path: &str) -> Vec<Raw> {
    let bytes = std::fs::read(fixture(path)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut list: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    list.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    list.into_iter()
        .map(|(name, v)| Raw { name, dtype: v.dtype().to_string(), shape: v.shape().to_vec(), data: v.data().to_vec() })
        .collect()
}

/// mistral_f16's config.json plus its model.safetensors with `edit` applied.
fn mistral_with(edit: impl FnOnce(&mut Vec<Raw>)) -> MemoryFiles {
    let mut tensors = fixture_tensors("mistral_f16/model.safetensors");
    edit(&mut tensors);
    let mut files = MemoryFiles::new();
    files.insert("config.json", std::fs::read(fixture("mistral_f16/config.json")).unwrap());
    files.insert("model.safetensors", safetensors_bytes(&tensors));
    files
}

fn open_checked(files: &MemoryFiles) -> Result<Checkpoint<MemorySource>, Error> {
    let config = block_on(Config::load(files))?;
    block_on(Checkpoint::open_for(files, &config))
}

fn open_file(bytes: Vec<u8>) -> Result<SafetensorsFile<MemorySource>, Error> {
    block_on(SafetensorsFile::open(MemorySource::new("bad.safetensors", bytes)))
}

// ---------------------------------------------------------------------------
// Configs.

#[test]
fn llama_gqa_config() {
    let c = config("llama_gqa");
    assert_eq!(c.model_type, ModelType::Llama);
    assert_eq!((c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers), (384, 64, 128, 2));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (4, 2, 24));
    assert_eq!((c.q_dim(), c.kv_dim()), (96, 48));
    assert_eq!((c.rms_norm_eps, c.rope_theta, c.max_position_embeddings), (1e-5, 1e4, 128));
    let Some(RopeScaling::Llama3(s)) = c.rope_scaling else { panic!("llama3 rope scaling") };
    assert_eq!(
        (s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position_embeddings),
        (8.0, 1.0, 4.0, 32)
    );
    assert!(!c.tie_word_embeddings && !c.qkv_bias && !c.o_bias);
    assert_eq!(c.torch_dtype, Some(safetensors::Dtype::F32));
    assert_eq!((c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id), (Some(381), vec![382], Some(383)));
    // The index's own count (transformers' num_parameters()).
    assert_eq!(c.parameter_count(), 135_488);
}

#[test]
fn qwen2_tied_config() {
    let c = config("qwen2_tied");
    assert_eq!(c.model_type, ModelType::Qwen2);
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (4, 2, 16));
    assert_eq!((c.rms_norm_eps, c.rope_theta, c.rope_scaling), (1e-6, 1e6, None));
    assert!(c.tie_word_embeddings && c.qkv_bias && !c.o_bias);
    assert_eq!(c.torch_dtype, Some(safetensors::Dtype::BF16));
    let names: Vec<String> = c.tensor_names().into_iter().map(|t| t.name).collect();
    assert!(names.contains(&"model.layers.1.self_attn.v_proj.bias".to_string()));
    assert!(!names.iter().any(|n| n == "lm_head.weight" || n.ends_with("o_proj.bias")));
}

#[test]
fn mistral_f16_config() {
    let c = config("mistral_f16");
    assert_eq!(c.model_type, ModelType::Mistral);
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim), (4, 1, 16));
    assert!(!c.tie_word_embeddings && !c.qkv_bias && !c.o_bias);
    assert_eq!(c.torch_dtype, Some(safetensors::Dtype::F16));
}

/// The parsed RoPE fields give transformers' own `rotary_emb.inv_freq`
/// (llama3-scaled for llama_gqa, theta 1e6 for qwen2), to the reference's ~1 ulp.
#[test]
fn rope_fields_reproduce_transformers_inv_freq() {
    for model in MODELS {
        let c = config(model);
        let got = rope_inv_freq(c.head_dim, c.rope_theta, c.rope_scaling.as_ref());
        let want = Fixture::open(&format!("refs/{model}/reference.safetensors")).f32("rope_inv_freq");
        assert_eq!(got.len(), want.len(), "{model}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1.5 * f32::EPSILON * w.abs(), "{model} inv_freq[{i}]: {g} vs {w}");
        }
    }
}

#[test]
fn config_old_and_default_rope_spellings() {
    let old = edited_config(|c| {
        let mut s = c["rope_scaling"].as_object().unwrap().clone();
        s.remove("rope_type");
        s.insert("type".into(), json!("llama3"));
        c.insert("rope_scaling".into(), Value::Object(s));
    })
    .unwrap();
    assert_eq!(old.rope_scaling, config("llama_gqa").rope_scaling);
    for default in [json!({"rope_type": "default"}), json!({"type": "default"}), json!(null)] {
        let c = edited_config(|c| {
            c.insert("rope_scaling".into(), default.clone());
        })
        .unwrap();
        assert_eq!(c.rope_scaling, None, "{default}");
    }
}

#[test]
fn config_defaults_when_fields_are_absent() {
    let c = edited_config(|c| {
        for key in [
            "num_key_value_heads",
            "head_dim",
            "rope_theta",
            "rope_scaling",
            "tie_word_embeddings",
            "rms_norm_eps",
            "dtype",
        ] {
            c.remove(key);
        }
        c.insert("eos_token_id".into(), json!([382, 383]));
    })
    .unwrap();
    assert_eq!((c.num_key_value_heads, c.head_dim), (4, 16));
    assert_eq!((c.rope_theta, c.rms_norm_eps, c.rope_scaling, c.tie_word_embeddings), (1e4, 1e-6, None, false));
    assert_eq!((c.torch_dtype, c.eos_token_ids), (None, vec![382, 383]));
    let c = edited_config(|c| {
        c.remove("dtype");
        c.insert("torch_dtype".into(), json!("bfloat16"));
        c.insert("attention_bias".into(), json!(true));
    })
    .unwrap();
    assert_eq!(c.torch_dtype, Some(safetensors::Dtype::BF16));
    // transformers' LlamaAttention gives o_proj a bias too when attention_bias is set.
    assert!(c.qkv_bias && c.o_bias);
    assert!(c.tensor_names().iter().any(|t| t.name == "model.layers.0.self_attn.o_proj.bias" && t.shape == [64]));
}

#[test]
fn config_heads_not_dividing_hidden_size() {
    let r = edited_config(|c| {
        c.remove("head_dim");
        c.insert("num_attention_heads".into(), json!(5));
        c.insert("num_key_value_heads".into(), json!(5));
    });
    assert_config_error(r, "num_attention_heads", "do not divide hidden_size 64");
}

#[test]
fn config_unsupported_model_type() {
    let r = edited_config(|c| {
        c.insert("model_type".into(), json!("gpt2"));
    });
    assert_config_error(r, "model_type", "unsupported model_type \"gpt2\"");
    assert_config_error(edited_config(|c| drop(c.remove("model_type"))), "model_type", "missing");
}

#[test]
fn config_kv_heads_not_dividing_heads() {
    let r = edited_config(|c| {
        c.insert("num_key_value_heads".into(), json!(3));
    });
    assert_config_error(r, "num_key_value_heads", "do not divide num_attention_heads 4");
}

#[test]
fn config_zero_and_missing_sizes() {
    for key in
        ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "head_dim"]
    {
        assert_config_error(edited_config(|c| drop(c.insert(key.into(), json!(0)))), key, "at least 1");
    }
    assert_config_error(edited_config(|c| drop(c.remove("hidden_size"))), "hidden_size", "missing");
    assert_config_error(
        edited_config(|c| drop(c.insert("hidden_size".into(), json!("64")))),
        "hidden_size",
        "expected a non-negative integer",
    );
}

#[test]
fn config_unsupported_options() {
    let r = edited_config(|c| drop(c.insert("rope_scaling".into(), json!({"rope_type": "longrope", "factor": 4.0}))));
    assert_config_error(r, "rope_scaling.rope_type", "unsupported RoPE scaling \"longrope\"");
    let r = edited_config(|c| drop(c.insert("rope_scaling".into(), json!({"type": "su", "factor": 2.0}))));
    assert_config_error(r, "rope_scaling.type", "\"su\"");
    let r = edited_config(|c| drop(c["rope_scaling"].as_object_mut().unwrap().remove("factor")));
    assert_config_error(r, "rope_scaling.factor", "missing");
    let r = edited_config(|c| drop(c.insert("hidden_act".into(), json!("gelu"))));
    assert_config_error(r, "hidden_act", "\"gelu\"");
    let r = edited_config(|c| drop(c.insert("mlp_bias".into(), json!(true))));
    assert_config_error(r, "mlp_bias", "not supported");
    let r = edited_config(|c| drop(c.insert("dtype".into(), json!("int8"))));
    assert_config_error(r, "dtype", "\"int8\"");
    let r = edited_config(|c| drop(c.insert("head_dim".into(), json!(23))));
    assert_config_error(r, "head_dim", "even");
}

#[test]
fn config_sliding_window() {
    let windows = |c: &Config| (0..c.num_hidden_layers).map(|i| c.attention_window(i)).collect::<Vec<_>>();
    let mut m = config_json("mistral_f16");
    assert_eq!(windows(&Config::from_value(&m).unwrap()), [None, None]); // null: no window
    m["sliding_window"] = json!(64);
    assert_eq!(windows(&Config::from_value(&m).unwrap()), [Some(64), Some(64)]); // Mistral: every layer
    m.as_object_mut().unwrap().remove("sliding_window"); // transformers' default
    assert_eq!(windows(&Config::from_value(&m).unwrap()), [Some(4096), Some(4096)]);
    m["sliding_window"] = json!(0);
    assert_config_error(Config::from_value(&m), "sliding_window", "at least 1");

    let mut q = config_json("qwen2_tied");
    q["sliding_window"] = json!(16); // ignored: use_sliding_window is false
    assert_eq!(Config::from_value(&q).unwrap().sliding_window, None);
    q["use_sliding_window"] = json!(true); // the file's layer_types: only full_attention layers
    assert_eq!(Config::from_value(&q).unwrap().sliding_window, None);
    q["layer_types"] = json!(["full_attention", "sliding_attention"]);
    assert_eq!(windows(&Config::from_value(&q).unwrap()), [None, Some(16)]);
    q.as_object_mut().unwrap().remove("layer_types"); // from max_window_layers on
    q["max_window_layers"] = json!(1);
    assert_eq!(windows(&Config::from_value(&q).unwrap()), [None, Some(16)]);
    q["layer_types"] = json!(["full_attention"]);
    assert_config_error(Config::from_value(&q), "layer_types", "1 entries for 2 layers");
    q["layer_types"] = json!(["full_attention", "chunked_attention"]);
    assert_config_error(Config::from_value(&q), "layer_types[1]", "unsupported layer type");
    q["layer_types"] = json!(["sliding_attention", "full_attention"]);
    q["use_sliding_window"] = json!(false); // transformers fails at the first forward
    assert_config_error(Config::from_value(&q), "layer_types", "no window");
}

/// Qwen3 as transformers' Qwen3Config builds it: head_dim 128 where the file
/// gives none, every projection's bias from attention_bias, q_norm and k_norm
/// (hd) in each layer, and the sliding window as Qwen2's.
#[test]
fn config_qwen3_defaults() {
    let mut q = config_json("qwen3_tiny");
    let c = Config::from_value(&q).unwrap();
    assert_eq!((c.model_type.name(), c.head_dim, c.qk_norm, c.qkv_bias, c.o_bias), ("qwen3", 32, true, false, false));
    for norm in ["q_norm", "k_norm"] {
        let name = format!("model.layers.1.self_attn.{norm}.weight");
        assert!(c.tensor_names().iter().any(|t| t.name == name && t.shape == [32]), "{name}");
    }
    q.as_object_mut().unwrap().remove("head_dim");
    q["attention_bias"] = json!(true);
    let c = Config::from_value(&q).unwrap();
    assert_eq!((c.head_dim, c.qkv_bias, c.o_bias), (128, true, true));
    q["use_sliding_window"] = json!(true);
    q["sliding_window"] = json!(16);
    q["layer_types"] = json!(["full_attention", "sliding_attention"]);
    let c = Config::from_value(&q).unwrap();
    assert_eq!((c.attention_window(0), c.attention_window(1)), (None, Some(16)));
    let llama = Config::from_value(&config_json("llama_gqa")).unwrap();
    assert!(!llama.qk_norm && !llama.tensor_names().iter().any(|t| t.name.contains("q_norm")));
}

// ---------------------------------------------------------------------------
// Loading every tensor of the fixtures.

/// Every tensor of each model: the config's list matches the checkpoint, and
/// each tensor read as f32 equals the stored value widened exactly (bf16: the
/// 16 bits shifted up; f16 and f32 through the `safetensors` crate's view).
#[test]
fn every_tensor_of_every_fixture_loads() {
    for model in MODELS {
        let files = dir(model);
        let c = config(model);
        let ckpt = block_on(Checkpoint::open_for(&files, &c)).unwrap_or_else(|e| panic!("{model}: {e}"));
        let specs = c.tensor_names();
        assert_eq!(ckpt.names().count(), specs.len(), "{model}");
        let mut total = 0u64;
        for spec in &specs {
            let got = block_on(ckpt.read_f32(&spec.name)).unwrap();
            assert_eq!(got.len(), spec.numel(), "{model} {}", spec.name);
            let shard = ckpt.shard_name(&spec.name).unwrap();
            let raw = std::fs::read(fixture(model).join(shard)).unwrap();
            let st = safetensors::SafeTensors::deserialize(&raw).unwrap();
            let view = st.tensor(&spec.name).unwrap();
            let want: Vec<u32> = match view.dtype() {
                safetensors::Dtype::BF16 => {
                    view.data().chunks_exact(2).map(|b| (u16::from_le_bytes([b[0], b[1]]) as u32) << 16).collect()
                }
                safetensors::Dtype::F16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32().to_bits())
                    .collect(),
                safetensors::Dtype::F32 => {
                    view.data().chunks_exact(4).map(|b| u32::from_le_bytes(b.try_into().unwrap())).collect()
                }
                other => panic!("{model} {}: {other}", spec.name),
            };
            assert!(got.iter().map(|x| x.to_bits()).eq(want), "{model} {}", spec.name);
            total += got.len() as u64;
        }
        assert_eq!(total, c.parameter_count(), "{model}");
    }
}

/// llama_gqa's projections equal the f32 copies the fixture script saved
/// separately (tests/fixtures/quant/llama_gqa_weights.safetensors).
#[test]
fn llama_gqa_projections_match_the_saved_copies() {
    let fx = Fixture::open("quant/llama_gqa_weights.safetensors");
    let ckpt = block_on(Checkpoint::open(&dir("llama_gqa"))).unwrap();
    let mut n = 0;
    for l in 0..2 {
        for proj in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ] {
            let name = format!("model.layers.{l}.{proj}.weight");
            assert_eq!(ckpt.get(&name).unwrap().shape, fx.shape(&name), "{name}");
            let got = block_on(ckpt.read_f32(&name)).unwrap();
            assert!(got.iter().map(|x| x.to_bits()).eq(fx.f32(&name).iter().map(|x| x.to_bits())), "{name}");
            n += 1;
        }
    }
    assert_eq!(n, 14);
}

/// The embedding rows of the reference batch equal transformers' embedding
/// output, and one position's logits equal final_norm · headᵀ, where the head
/// is `lm_head.weight`, or the embedding for the tied qwen2.
#[test]
fn embeddings_and_head_match_transformers() {
    for model in MODELS {
        let c = config(model);
        let ckpt = block_on(Checkpoint::open(&dir(model))).unwrap();
        let refs = Fixture::open(&format!("refs/{model}/reference.safetensors"));
        let d = c.hidden_size;
        let embed = block_on(ckpt.read_f32("model.embed_tokens.weight")).unwrap();
        let ids = refs.i64("input_ids");
        let hidden = refs.f32("hidden.embed");
        for (p, &id) in ids.iter().enumerate() {
            let row = &embed[id as usize * d..][..d];
            assert_eq!(row, &hidden[p * d..][..d], "{model}: embedding of token {id}");
        }

        let head_name = if c.tie_word_embeddings { "model.embed_tokens.weight" } else { "lm_head.weight" };
        let head = block_on(ckpt.read_f32(head_name)).unwrap();
        let x = &refs.f32("hidden.final_norm")[..d];
        let logits = &refs.f32("logits")[..c.vocab_size];
        for (v, &want) in logits.iter().enumerate() {
            let got: f32 = head[v * d..][..d].iter().zip(x).map(|(w, x)| w * x).sum();
            assert!((got - want).abs() <= 1e-4, "{model} logit {v}: {got} vs {want}");
        }
    }
}

#[test]
fn sharded_index_is_followed() {
    let ckpt = block_on(Checkpoint::open(&dir("llama_gqa"))).unwrap();
    assert_eq!(ckpt.shards().len(), 2);
    let index: Value =
        serde_json::from_slice(&std::fs::read(fixture("llama_gqa/model.safetensors.index.json")).unwrap()).unwrap();
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(ckpt.names().count(), map.len());
    for (tensor, shard) in map {
        assert_eq!(ckpt.shard_name(tensor), shard.as_str(), "{tensor}");
    }
    // Layer 1's q_proj sits in the first shard, the rest of layer 1 in the second.
    assert_eq!(ckpt.shard_name("model.layers.1.self_attn.q_proj.weight"), Some("model-00001-of-00002.safetensors"));
    assert_eq!(ckpt.shard_name("model.layers.1.self_attn.k_proj.weight"), Some("model-00002-of-00002.safetensors"));
}

/// The same sharded model from memory, and the index's failure modes.
#[test]
fn sharded_index_errors() {
    let folder = fixture("llama_gqa");
    let mut files = MemoryFiles::new();
    for name in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ] {
        files.insert(name, std::fs::read(folder.join(name)).unwrap());
    }
    open_checked(&files).unwrap();

    let index: Value =
        serde_json::from_slice(&std::fs::read(folder.join("model.safetensors.index.json")).unwrap()).unwrap();
    let with_index = |edit: &dyn Fn(&mut Value)| {
        let mut files = files.clone();
        let mut idx = index.clone();
        edit(&mut idx);
        files.insert("model.safetensors.index.json", serde_json::to_vec(&idx).unwrap());
        files
    };

    let f = with_index(&|i| i["weight_map"]["model.norm.weight"] = json!("model-00001-of-00002.safetensors"));
    assert_tensor_error(open_checked(&f), "model.norm.weight", "the shard has no such tensor");
    let f = with_index(&|i| drop(i["weight_map"].as_object_mut().unwrap().remove("model.norm.weight")));
    assert_tensor_error(open_checked(&f), "model.norm.weight", "not listed in model.safetensors.index.json");
    let f = with_index(&|i| i["weight_map"]["model.norm.weight"] = json!("model-00003-of-00003.safetensors"));
    assert_file_error(open_checked(&f), "model-00003-of-00003.safetensors", "not found");
    let f = with_index(&|i| i["weight_map"]["model.norm.weight"] = json!("../model.safetensors"));
    assert_file_error(open_checked(&f), "../model.safetensors", "not a plain file name");

    let mut f = files.clone();
    f.remove("model.safetensors.index.json");
    assert_file_error(open_checked(&f), "memory", "no model.safetensors");
}

// ---------------------------------------------------------------------------
// Bad safetensors files, each its own typed error.

#[test]
fn truncated_safetensors_file() {
    let mut bytes = std::fs::read(fixture("mistral_f16/model.safetensors")).unwrap();
    bytes.truncate(bytes.len() - 100); // cuts into model.norm.weight, the last tensor
    let mut files = mistral_with(|_| ());
    files.insert("model.safetensors", bytes.clone());
    assert_tensor_error(open_checked(&files), "model.norm.weight", "the file is truncated");

    bytes.truncate(1000); // inside the header
    assert_file_error(open_file(bytes), "bad.safetensors", "runs past the end of the file (1000 bytes)");
    assert_file_error(open_file(vec![1, 2, 3]), "bad.safetensors", "only 3 bytes");
}

#[test]
fn header_length_beyond_the_file() {
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend(b"{}      ");
    assert_file_error(open_file(bytes), "bad.safetensors", "header length 1000000 bytes runs past the end");

    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend(b"{}      ");
    assert_file_error(open_file(bytes), "bad.safetensors", "over the 100000000-byte limit");
}

#[test]
fn header_not_json() {
    assert_file_error(open_file(with_header("{\"a\": ", &[])), "bad.safetensors", "not a JSON object");
    assert_file_error(
        open_file(with_header(r#"{"__metadata__": {"format": 1}}"#, &[])),
        "bad.safetensors",
        "__metadata__",
    );
}

#[test]
fn tensor_with_the_wrong_shape() {
    let name = "model.layers.0.self_attn.k_proj.weight"; // (16, 64) for this config
    let files = mistral_with(|ts| ts.iter_mut().find(|t| t.name == name).unwrap().shape = vec![64, 16]);
    assert_tensor_error(open_checked(&files), name, "shape [64, 16], but this config needs [16, 64]");
}

#[test]
fn missing_tensor() {
    let name = "model.layers.1.mlp.down_proj.weight";
    let files = mistral_with(|ts| ts.retain(|t| t.name != name));
    assert_tensor_error(open_checked(&files), name, "missing");
    let files = mistral_with(|ts| ts.retain(|t| t.name != "lm_head.weight"));
    assert_tensor_error(open_checked(&files), "lm_head.weight", "missing");
}

#[test]
fn unexpected_tensor() {
    let extra = |name: &str| Raw { name: name.into(), dtype: "F32".into(), shape: vec![8], data: vec![0; 32] };
    let files = mistral_with(|ts| ts.push(extra("model.layers.0.mlp.extra.weight")));
    assert_tensor_error(open_checked(&files), "model.layers.0.mlp.extra.weight", "unexpected");
    // Old exports saved RoPE buffers: ignored.
    let files = mistral_with(|ts| ts.push(extra("model.layers.0.self_attn.rotary_emb.inv_freq")));
    open_checked(&files).unwrap();
    // Mistral has no attention biases.
    let files = mistral_with(|ts| ts.push(extra("model.layers.0.self_attn.q_proj.bias")));
    assert_tensor_error(open_checked(&files), "model.layers.0.self_attn.q_proj.bias", "unexpected");
}

#[test]
fn unknown_dtype() {
    let name = "model.layers.0.self_attn.k_proj.weight"; // 16 x 64 = 1024 values
    let files = mistral_with(|ts| ts.iter_mut().find(|t| t.name == name).unwrap().dtype = "garbage".into());
    assert_tensor_error(open_checked(&files), name, "unknown dtype \"garbage\"");

    // Real safetensors dtypes that are not model weights: the header is fine,
    // the checkpoint check and the f32 read name the tensor and dtype.
    for (dtype, bytes) in [("I8", 1), ("F64", 8)] {
        let files = mistral_with(|ts| {
            let t = ts.iter_mut().find(|t| t.name == name).unwrap();
            t.dtype = dtype.into();
            t.data = vec![0; 1024 * bytes];
        });
        assert_tensor_error(open_checked(&files), name, &format!("dtype {dtype} is not supported"));
        let ckpt = block_on(Checkpoint::open(&files)).unwrap();
        assert_tensor_error(block_on(ckpt.read_f32(name)), name, &format!("dtype {dtype} cannot be read as f32"));
    }
}

#[test]
fn overlapping_offsets() {
    let header = r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                     "b":{"dtype":"F32","shape":[4],"data_offsets":[12,28]}}"#;
    assert_tensor_error(open_file(with_header(header, &[0; 28])), "b", "overlap those of `a` [0, 16)");
}

#[test]
fn byte_range_not_matching_shape_and_dtype() {
    let header = r#"{"a":{"dtype":"BF16","shape":[3,4],"data_offsets":[0,16]}}"#;
    assert_tensor_error(open_file(with_header(header, &[0; 16])), "a", "needs 24 bytes");
}

/// Reads are by range: a 3-tensor file read back tensor by tensor, with f16
/// and bf16 widened exactly.
#[test]
fn reads_each_tensor_from_its_range() {
    let f16s: Vec<u8> = [1.5f32, -2.0, 65504.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
    let bf16s: Vec<u8> = [3.0f32, -0.5].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
    let f32s: Vec<u8> = [7.25f32].iter().flat_map(|x| x.to_le_bytes()).collect();
    let bytes = safetensors_bytes(&[
        Raw { name: "h".into(), dtype: "F16".into(), shape: vec![3], data: f16s },
        Raw { name: "b".into(), dtype: "BF16".into(), shape: vec![1, 2], data: bf16s },
        Raw { name: "f".into(), dtype: "F32".into(), shape: vec![], data: f32s },
    ]);
    let file = open_file(bytes).unwrap();
    assert_eq!(file.metadata().get("format").map(String::as_str), Some("pt"));
    assert_eq!(block_on(file.read_f32("h")).unwrap(), [1.5, -2.0, 65504.0]);
    assert_eq!(block_on(file.read_f32("b")).unwrap(), [3.0, -0.5]);
    assert_eq!(block_on(file.read_f32("f")).unwrap(), [7.25]);
    assert_eq!(block_on(file.read_bytes("f")).unwrap(), 7.25f32.to_le_bytes());
    assert_tensor_error(block_on(file.read_f32("nope")), "nope", "not in this file");
    let source = MemorySource::new("x", vec![0u8; 4]);
    assert!(block_on(source.read(2, 4)).is_err());
}

/// SmolLM3 as SmolLM3Config builds it: `no_rope_layers` (1: RoPE, 0: NoPE),
/// by default 0 on every `no_rope_layer_interval`-th layer; tied embeddings
/// when the file says nothing; with `use_sliding_window`, the NoPE layers
/// slide unless `layer_types` says otherwise.
#[test]
fn config_smollm3_rope_layers_and_defaults() {
    let mut s = config_json("smollm3_tiny");
    let c = Config::from_value(&s).unwrap();
    assert_eq!(
        (c.model_type.name(), c.rope_layers.clone(), c.tie_word_embeddings),
        ("smollm3", vec![true, false], true)
    );
    s.as_object_mut().unwrap().remove("no_rope_layers");
    s["no_rope_layer_interval"] = json!(4); // both layers before the fourth: RoPE on each
    assert_eq!(Config::from_value(&s).unwrap().rope_layers, [true, true]);
    s["no_rope_layer_interval"] = json!(1);
    assert_eq!(Config::from_value(&s).unwrap().rope_layers, [false, false]);
    s["no_rope_layer_interval"] = json!(0);
    assert_config_error(Config::from_value(&s), "no_rope_layer_interval", "at least 1");
    s["no_rope_layers"] = json!([1]);
    assert_config_error(Config::from_value(&s), "no_rope_layers", "1 entries for 2 layers");
    s["no_rope_layers"] = json!([1, 2]);
    assert_config_error(Config::from_value(&s), "no_rope_layers[1]", "0 or 1");
    s["no_rope_layers"] = json!([1, 0]);
    s["tie_word_embeddings"] = json!(false);
    assert!(!Config::from_value(&s).unwrap().tie_word_embeddings);
    s.as_object_mut().unwrap().remove("layer_types");
    s["use_sliding_window"] = json!(true);
    s["sliding_window"] = json!(8);
    let c = Config::from_value(&s).unwrap();
    assert_eq!((c.attention_window(0), c.attention_window(1)), (None, Some(8)));
}

/// A huge num_hidden_layers is refused before any per-layer list is made
/// (the sliding window's, SmolLM3's NoPE flags): a fuzz run was killed for
/// memory when they were made first.
#[test]
fn config_huge_layer_counts_are_refused_before_per_layer_lists() {
    for name in ["mistral_f16", "smollm3_tiny", "qwen2_tied"] {
        let mut c = config_json(name);
        c["num_hidden_layers"] = json!(1u64 << 40);
        c["use_sliding_window"] = json!(true);
        c.as_object_mut().unwrap().remove("layer_types");
        c.as_object_mut().unwrap().remove("no_rope_layers");
        assert_config_error(Config::from_value(&c), "num_hidden_layers", "more than the 4096");
    }
}

/// A `…ForSequenceClassification` config.json: a score head of `len(id2label)` labels (2 without it, as
/// transformers), its problem_type; a bad id2label or problem_type is named; the checkpoint's tensors are
/// the body and `score.weight`, and one without its score is refused by name.
#[test]
fn config_of_a_sequence_classifier() {
    use webpeft::model::config::ModelHead;
    let c = config("llama_gqa_cls");
    assert_eq!(c.head, ModelHead::SequenceClassification { num_labels: 3, problem_type: None });
    let names: Vec<String> = c.tensor_names().into_iter().map(|t| t.name).collect();
    assert!(names.contains(&"score.weight".to_string()) && !names.contains(&"lm_head.weight".to_string()));
    let classifier = |edit: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        edited_config(|c| {
            c.insert("architectures".into(), json!(["LlamaForSequenceClassification"]));
            edit(c);
        })
    };
    let two = classifier(&|_| {}).unwrap();
    assert_eq!(two.head, ModelHead::SequenceClassification { num_labels: 2, problem_type: None });
    let regression = classifier(&|c| drop(c.insert("problem_type".into(), json!("regression"))));
    assert_eq!(regression.unwrap().head.num_labels(), Some(2), "a problem_type beside the default labels");
    assert_config_error(
        classifier(&|c| drop(c.insert("id2label".into(), json!(["a"])))),
        "id2label",
        "must be an object",
    );
    assert_config_error(
        classifier(&|c| drop(c.insert("problem_type".into(), json!("ranking")))),
        "problem_type",
        "\"ranking\": transformers knows regression",
    );
    // llama_gqa's causal-LM weights under a classifier's config: no score head.
    let files = dir("llama_gqa");
    let cls = classifier(&|_| {}).unwrap();
    let e = block_on(Checkpoint::open_for(&files, &cls)).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("score.weight") || e.contains("lm_head.weight"), "{e}");
}
