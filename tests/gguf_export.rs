//! GGUF export against llama.cpp's own converters (tests/fixtures/gguf/reference.json, written by
//! `make_fixtures.py gguf` with the convert_hf_to_gguf.py / convert_lora_to_gguf.py of llama-cpp-python
//! 0.3.36's vendored llama.cpp, read back with the `gguf` package): every field with its type and value,
//! every tensor's name, type, shape, offset and sha256, and the whole file's sha256. No GPU needed.

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use sha2::{Digest, Sha256};
use webpeft::export::gguf::vocab::pre_tokenizer_hash;
use webpeft::export::gguf::{export_lora, export_model, GgmlType, GgufOptions};
use webpeft::model::source::DirFiles;
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::MemoryFiles;
use webpeft::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn reference() -> Json {
    serde_json::from_slice(&std::fs::read(fixtures().join("gguf/reference.json")).unwrap()).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A small GGUF reader for the test: fields as [key, gguf-py type name, value] and tensors as
/// [name, type name, ne, offset, sha256], the shape gguf_summary writes.
struct Cursor<'a>(&'a [u8], usize);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        self.1 += n;
        &self.0[self.1 - n..self.1]
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn str(&mut self) -> String {
        let n = self.u64() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn scalar(&mut self, ty: u32) -> (String, Json) {
        match ty {
            4 => ("UINT32".into(), self.u32().into()),
            5 => ("INT32".into(), (self.u32() as i32).into()),
            6 => ("FLOAT32".into(), (f32::from_bits(self.u32()) as f64).into()),
            7 => ("BOOL".into(), (self.take(1)[0] != 0).into()),
            8 => ("STRING".into(), self.str().into()),
            _ => panic!("value type {ty}"),
        }
    }
}

fn summary(bytes: &[u8]) -> Json {
    let mut c = Cursor(bytes, 0);
    assert_eq!(c.take(4), b"GGUF");
    let version = c.u32();
    let (n_tensors, n_kv) = (c.u64(), c.u64());
    let mut fields = Vec::new();
    for _ in 0..n_kv {
        let key = c.str();
        let ty = c.u32();
        let (name, value) = if ty == 9 {
            let item = c.u32();
            let n = c.u64();
            let items: Vec<(String, Json)> = (0..n).map(|_| c.scalar(item)).collect();
            (format!("ARRAY:{}", items[0].0), Json::Array(items.into_iter().map(|i| i.1).collect()))
        } else {
            c.scalar(ty)
        };
        fields.push(serde_json::json!([key, name, value]));
    }
    let mut infos = Vec::new();
    for _ in 0..n_tensors {
        let name = c.str();
        let dims = c.u32();
        let ne: Vec<u64> = (0..dims).map(|_| c.u64()).collect();
        let ty = c.u32();
        let offset = c.u64();
        infos.push((name, ne, ty, offset));
    }
    let data = c.1.div_ceil(32) * 32;
    let tensors: Vec<Json> = infos
        .iter()
        .map(|(name, ne, ty, offset)| {
            let numel: u64 = ne.iter().product();
            let (tname, len) = match ty {
                0 => ("F32", numel * 4),
                1 => ("F16", numel * 2),
                8 => ("Q8_0", numel / 32 * 34),
                _ => panic!("tensor type {ty}"),
            };
            let start = data + *offset as usize;
            serde_json::json!([name, tname, ne, offset, hex(&bytes[start..start + len as usize])])
        })
        .collect();
    serde_json::json!({"version": version, "fields": fields, "tensors": tensors, "bytes": bytes.len(), "sha256": hex(bytes)})
}

fn ty(case: &Json) -> GgmlType {
    match case["type"].as_str().unwrap() {
        "f32" => GgmlType::F32,
        "f16" => GgmlType::F16,
        "q8_0" => GgmlType::Q8_0,
        other => panic!("type {other}"),
    }
}

/// Field by field, tensor by tensor, then the whole file.
fn compare(case_name: &str, ours: &[u8], want: &Json) {
    let got = summary(ours);
    assert_eq!(got["version"], want["version"], "{case_name}: version");
    let (gf, wf) = (got["fields"].as_array().unwrap(), want["fields"].as_array().unwrap());
    for (g, w) in gf.iter().zip(wf) {
        assert_eq!(g, w, "{case_name}: field");
    }
    assert_eq!(gf.len(), wf.len(), "{case_name}: field count");
    let (gt, wt) = (got["tensors"].as_array().unwrap(), want["tensors"].as_array().unwrap());
    for (g, w) in gt.iter().zip(wt) {
        assert_eq!(g, w, "{case_name}: tensor");
    }
    assert_eq!(gt.len(), wt.len(), "{case_name}: tensor count");
    assert_eq!(got["bytes"], want["bytes"], "{case_name}: file size");
    assert_eq!(got["sha256"], want["sha256"], "{case_name}: file sha256");
}

#[test]
fn models_match_convert_hf_to_gguf() {
    let reference = reference();
    let cases = reference["cases"].as_object().unwrap();
    let mut checked = 0;
    for (name, case) in cases.iter().filter(|(_, c)| c.get("pre").is_some()) {
        check_model_case(name, case);
        checked += 1;
    }
    assert_eq!(checked, 7);
}

/// Qwen3 (arch qwen3: attn_q_norm and attn_k_norm beside qwen2's tensors),
/// against `make_fixtures.py qwen3`'s run of the same converter.
#[test]
fn qwen3_matches_convert_hf_to_gguf() {
    let reference: Json = serde_json::from_slice(&std::fs::read(fixtures().join("qwen3/gguf.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 2);
    for (name, case) in cases {
        let names: Vec<&str> = case["tensors"].as_array().unwrap().iter().map(|t| t[0].as_str().unwrap()).collect();
        assert!(names.contains(&"blk.1.attn_k_norm.weight"), "{name}: {names:?}");
        check_model_case(name, case);
    }
}

/// SmolLM3 (arch smollm3, the converter's LlamaModel: q/k rows permuted,
/// tied), against `make_fixtures.py smollm3`'s run of the same converter.
#[test]
fn smollm3_matches_convert_hf_to_gguf() {
    let reference: Json =
        serde_json::from_slice(&std::fs::read(fixtures().join("smollm3/gguf.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 1);
    for (name, case) in cases {
        check_model_case(name, case);
    }
}

/// webpeft's export of a case's model (with lora/final_adapter merged for
/// the lora_merged cases) is the converter's file, byte for byte.
fn check_model_case(name: &str, case: &Json) {
    let model = case["model"].as_str().unwrap();
    let files = DirFiles::new(fixtures().join(model)).unwrap();
    let adapter = name.contains("lora_merged").then(|| DirFiles::new(fixtures().join("lora/final_adapter")).unwrap());
    let tokenizer = pollster::block_on(Tokenizer::load(&files)).unwrap();
    assert_eq!(
        pollster::block_on(async { pre_tokenizer_hash(&tokenizer) }).unwrap(),
        case["chkhsh"].as_str().unwrap(),
        "{name}: chkhsh"
    );
    let opts = GgufOptions {
        ty: ty(case),
        name: model.to_string(),
        tokenizer_pre: Some(case["pre"].as_str().unwrap().to_string()),
    };
    let mut out = Vec::new();
    let len = pollster::block_on(export_model(&files, adapter.as_ref(), &opts, &mut out)).unwrap();
    assert_eq!(len as usize, out.len());
    compare(name, &out, case);
}

/// What llama.cpp itself computed from the merged files when the fixtures
/// were made (the files the test above shows webpeft writes byte for byte):
/// the same greedy token as transformers at every position, and logits
/// within what its f16 KV cache and its f16 (Q8_0) activations allow.
#[test]
fn llama_cpp_runs_the_merged_files() {
    let reference = reference();
    for (ty, bound) in [("f16", 5e-3), ("q8_0", 0.15)] {
        for kv in ["kv_f16", "kv_f32"] {
            let r = &reference["llama_cpp"][ty][kv];
            let diff = r["max_abs_logits_diff"].as_f64().unwrap();
            eprintln!("llama.cpp {ty} ({kv}): max |dlogits| {diff:.2e} of logits up to {:.2}", r["max_abs_logit"]);
            assert_eq!(r["greedy_equal"], Json::Bool(true), "{ty} {kv}: greedy tokens");
            assert!(diff <= bound, "{ty} {kv}: {diff}");
        }
    }
}

#[test]
fn lora_adapter_matches_convert_lora_to_gguf() {
    let reference = reference();
    for t in ["f32", "f16"] {
        let name = format!("lora_adapter_{t}");
        let case = &reference["cases"][&name];
        let base = DirFiles::new(fixtures().join("llama_gqa")).unwrap();
        let adapter = DirFiles::new(fixtures().join("lora/final_adapter")).unwrap();
        // The converter's default name is its heuristic on the folder name (final_adapter -> Final_Adapter).
        let opts = GgufOptions { ty: ty(case), name: "Final_Adapter".into(), tokenizer_pre: None };
        let mut out = Vec::new();
        pollster::block_on(export_lora(&base, &adapter, &opts, &mut out)).unwrap();
        compare(&name, &out, case);
    }
}

/// The error's `what: detail`, after printing the README bad-input row it shows.
fn gguf_error(row: &str, e: Error) -> String {
    eprintln!("ROW | {row} | {e}");
    match e {
        Error::GgufExport { what, detail } => format!("{what}: {detail}"),
        other => panic!("expected Error::GgufExport, got {other}"),
    }
}

#[test]
fn what_llama_cpp_cannot_take_is_a_typed_error() {
    let base = DirFiles::new(fixtures().join("llama_gqa")).unwrap();
    let opts = |ty| GgufOptions { ty, name: "x".into(), tokenizer_pre: None };
    let lora_only = |row: &str, dir: &str| {
        let adapter = DirFiles::new(fixtures().join(dir)).unwrap();
        let e = pollster::block_on(export_lora(&base, &adapter, &opts(GgmlType::F32), Vec::new())).unwrap_err();
        gguf_error(row, e)
    };
    // DoRA: llama.cpp's adapters have no magnitude vector; (IA)^3 is not LoRA.
    assert!(lora_only("a DoRA adapter as GGUF", "dora/llama_gqa/final_adapter").contains("DoRA"));
    assert!(lora_only("an (IA)³ adapter as GGUF", "ia3/llama_gqa/final_adapter").contains("peft_type \"IA3\""));
    // The fixture tokenizer's pre-tokenizer hash is not in llama.cpp's table: refused unless named.
    let e = gguf_error(
        "a tokenizer llama.cpp's pre-tokenizer table lacks",
        pollster::block_on(export_model::<_, DirFiles, _>(&base, None, &opts(GgmlType::F16), Vec::new())).unwrap_err(),
    );
    assert!(e.contains("chkhsh 9441b621"), "{e}");
    // A model is f16 or q8_0.
    let e = gguf_error(
        "a merged model as f32 GGUF",
        pollster::block_on(export_model::<_, DirFiles, _>(&base, None, &opts(GgmlType::F32), Vec::new())).unwrap_err(),
    );
    assert!(e.contains("f16 or q8_0"), "{e}");
    // An architecture llama.cpp's converter maps elsewhere (or not at all).
    let mut files = MemoryFiles::new();
    for f in [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        files.insert(f, std::fs::read(fixtures().join("llama_gqa").join(f)).unwrap());
    }
    let mut config: Json =
        serde_json::from_slice(&std::fs::read(fixtures().join("llama_gqa/config.json")).unwrap()).unwrap();
    config["architectures"] = serde_json::json!(["LlamaForSequenceClassification"]);
    files.insert("config.json", serde_json::to_vec(&config).unwrap());
    let e = gguf_error(
        "an architecture llama.cpp's converter does not map",
        pollster::block_on(export_model::<_, DirFiles, _>(&files, None, &opts(GgmlType::F16), Vec::new())).unwrap_err(),
    );
    assert!(e.contains("LlamaForSequenceClassification"), "{e}");
}

/// A merged model whose adapter trains outside the layers (modules_to_save's
/// copies, trainable token rows of the embedding and of an untied head, LoRA
/// on the embedding and the head; on a
/// tied model the shared copy and the token rows) is the converter's file
/// for what PEFT's `merge_and_unload` saved, byte for byte
/// (`gguf/merged_adapters.json`, `make_fixtures.py gguf_merged`); what a tied
/// model's one table cannot hold is refused, as `merge` refuses it.
#[test]
fn merged_adapters_outside_the_layers_match_convert_hf_to_gguf() {
    let reference: Json =
        serde_json::from_slice(&std::fs::read(fixtures().join("gguf/merged_adapters.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 7);
    for (name, case) in cases {
        let model = case["model"].as_str().unwrap();
        let files = DirFiles::new(fixtures().join(model)).unwrap();
        let adapter = DirFiles::new(fixtures().join(case["adapter"].as_str().unwrap())).unwrap();
        let opts = GgufOptions {
            ty: ty(case),
            name: model.to_string(),
            tokenizer_pre: Some(case["pre"].as_str().unwrap().to_string()),
        };
        let mut out = Vec::new();
        pollster::block_on(export_model(&files, Some(&adapter), &opts, &mut out)).unwrap();
        compare(name, &out, case);
        // Not the base model's file: the adapter is in it.
        let base = reference_base(model);
        assert_ne!(case["sha256"], base["sha256"], "{name}");
    }
    let tied = DirFiles::new(fixtures().join("qwen2_tied")).unwrap();
    let opts = GgufOptions { ty: GgmlType::F16, name: "x".into(), tokenizer_pre: Some("qwen2".into()) };
    for (dir, says) in [("modules_to_save/qwen2_tied", "untie"), ("lora_outer/qwen2_tied", "change both")] {
        let adapter = DirFiles::new(fixtures().join(dir).join("initial_adapter")).unwrap();
        let e = pollster::block_on(export_model(&tied, Some(&adapter), &opts, Vec::new())).unwrap_err().to_string();
        assert!(e.contains(says), "{dir}: {e}");
    }
    // An untied head's own rows named for a tied model's head.
    let mut adapter = MemoryFiles::new();
    let dir = fixtures().join("trainable_tokens/qwen2_tied/initial_adapter");
    let mut config: Json = serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    config["trainable_token_indices"] = serde_json::json!({"lm_head": [5]});
    adapter.insert("adapter_config.json", serde_json::to_vec(&config).unwrap());
    adapter.insert("adapter_model.safetensors", std::fs::read(dir.join("adapter_model.safetensors")).unwrap());
    let e = pollster::block_on(export_model(&tied, Some(&adapter), &opts, Vec::new())).unwrap_err().to_string();
    assert!(e.contains("lm_head is its embedding"), "{e}");
    // A LoRA-only file still cannot hold them.
    let base = DirFiles::new(fixtures().join("llama_gqa")).unwrap();
    for (dir, says) in
        [("modules_to_save/llama_gqa", "modules_to_save"), ("trainable_tokens/llama_gqa", "trainable_token")]
    {
        let adapter = DirFiles::new(fixtures().join(dir).join("initial_adapter")).unwrap();
        let e = pollster::block_on(export_lora(&base, &adapter, &opts, Vec::new())).unwrap_err().to_string();
        assert!(e.contains(says) && e.contains("export the merged model"), "{dir}: {e}");
    }
}

/// gguf/reference.json's f16 case of `model` alone.
fn reference_base(model: &str) -> Json {
    reference()["cases"][format!("{model}_f16")].clone()
}

/// A LoRA of the embedding and the head as a llama.cpp adapter
/// (`token_embd.weight.lora_a` holds Aᵀ, the ids' rows) is
/// convert_lora_to_gguf.py's file byte for byte; on a tied model, whose one
/// tensor llama.cpp uses for both, it is refused.
#[test]
fn lora_on_the_embedding_and_the_head_matches_convert_lora_to_gguf() {
    let reference: Json =
        serde_json::from_slice(&std::fs::read(fixtures().join("gguf/merged_adapters.json")).unwrap()).unwrap();
    let cases = reference["lora_adapters"].as_object().unwrap();
    assert_eq!(cases.len(), 3);
    for (name, case) in cases {
        let base = DirFiles::new(fixtures().join("llama_gqa")).unwrap();
        // The folder, with the case's `edit` of its config (rank_pattern's: no alpha_pattern).
        let dir = fixtures().join(case["adapter"].as_str().unwrap());
        let mut adapter = MemoryFiles::new();
        let mut config: Json =
            serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
        for (k, v) in case["edit"].as_object().into_iter().flatten() {
            config[k] = v.clone();
        }
        adapter.insert("adapter_config.json", serde_json::to_vec(&config).unwrap());
        let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
        adapter.insert("adapter_model.safetensors", weights);
        // The converter's default name is its heuristic on the folder name.
        let name_in_file = if case["edit"].is_null() { "Initial_Adapter" } else { "Rank_Pattern_Adapter" };
        let opts = GgufOptions { ty: ty(case), name: name_in_file.into(), tokenizer_pre: None };
        let mut out = Vec::new();
        pollster::block_on(export_lora(&base, &adapter, &opts, &mut out)).unwrap();
        compare(name, &out, case);
    }
    // Its own alphas (alpha_pattern) cannot share llama.cpp's one: refused, not rescaled.
    let base = DirFiles::new(fixtures().join("llama_gqa")).unwrap();
    let with_alphas = DirFiles::new(fixtures().join("rank_pattern/llama_gqa/initial_adapter")).unwrap();
    let opts = GgufOptions { ty: GgmlType::F32, name: "x".into(), tokenizer_pre: None };
    let e = gguf_error(
        "a LoRA whose modules need alphas of their own (alpha_pattern) as a GGUF adapter",
        pollster::block_on(export_lora(&base, &with_alphas, &opts, Vec::new())).unwrap_err(),
    );
    assert!(e.contains("one alpha") && e.contains("lm_head needs lora_alpha 2.5"), "{e}");
    let tied = DirFiles::new(fixtures().join("qwen2_tied")).unwrap();
    let adapter = DirFiles::new(fixtures().join("lora_outer/qwen2_tied/initial_adapter")).unwrap();
    let opts = GgufOptions { ty: GgmlType::F32, name: "x".into(), tokenizer_pre: None };
    let e = pollster::block_on(export_lora(&tied, &adapter, &opts, Vec::new())).unwrap_err().to_string();
    assert!(e.contains("lm_head is the embedding"), "{e}");
}

/// rope_scaling linear, dynamic and yarn (`gguf/rope_scaling.json`,
/// `make_fixtures.py gguf_rope`): the converter's files byte for byte. Where
/// yarn's config lacks `original_max_position_embeddings` (which the converter
/// needs), webpeft writes transformers' fallback, `max_position_embeddings`:
/// the converter's file of the config that says so.
#[test]
fn rope_scaling_matches_convert_hf_to_gguf() {
    let reference: Json =
        serde_json::from_slice(&std::fs::read(fixtures().join("gguf/rope_scaling.json")).unwrap()).unwrap();
    let cases = reference["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 5);
    for (name, case) in cases {
        let model = case["model"].as_str().unwrap();
        let files = common::fixture_files_with(model, &serde_json::json!({ "rope_scaling": case["rope_scaling"] }));
        let opts = GgufOptions {
            ty: ty(case),
            name: model.to_string(),
            tokenizer_pre: Some(case["pre"].as_str().unwrap().to_string()),
        };
        let mut out = Vec::new();
        pollster::block_on(export_model(&files, None::<&DirFiles>, &opts, &mut out)).unwrap();
        compare(name, &out, case);
    }
}
