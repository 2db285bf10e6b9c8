//! Prompt tuning against PEFT (tests/fixtures/prompt_tuning, made by
//! `make_fixtures.py prompt_tuning`): 4 virtual tokens on a tiny Llama and a
//! tiny Qwen2 (tied embeddings). The logits of the rows' own positions, the
//! loss and the prompt's gradient, 10 AdamW steps, greedy generation through
//! the KV cache, PEFT's files both ways, the TEXT init, and bad configs.
//!
//! Tolerances as for LoRA: logits and gradients 1e-4 abs, loss 1e-5,
//! per-step losses 1e-4, final embeddings 1e-4; generated tokens equal.

mod common;

use common::{adapted_logits, block_on, fixture, fixture_batch, gpu, max_abs_diff, Fixture};
use webpeft::gpu::Recorder;
use webpeft::model::llama::{GenerationConfig, KvCache};
use webpeft::model::tokenizer::Tokenizer;
use webpeft::model::{Config, DirFiles, Model};
use webpeft::peft::adapter::{Adapter, AdapterConfig};
use webpeft::peft::prompt_tuning::{PromptTuningConfig, PromptTuningInit};
use webpeft::quant::QuantFormat;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{Error, Gpu};

const MODELS: [&str; 2] = ["llama_gqa", "qwen2_tied"];
const V: usize = 4;

fn model(gpu: &Gpu, name: &str) -> Model {
    block_on(Model::load(gpu, &DirFiles::new(fixture(name)).unwrap(), QuantFormat::F32)).unwrap()
}

fn adapter(gpu: &Gpu, model: &Model, dir: &str) -> Adapter {
    let ad = block_on(Adapter::load(gpu, &DirFiles::new(fixture(dir)).unwrap(), &model.config))
        .unwrap_or_else(|e| panic!("{dir}: {e}"));
    assert_eq!(ad.method(), "prompt_tuning", "{dir}");
    ad
}

/// PEFT's logits (B, V+T, vocab) at the rows' own positions, (B, T, vocab).
fn own_positions(logits: &[f32], b: usize, t: usize, vocab: usize) -> Vec<f32> {
    (0..b).flat_map(|i| logits[(i * (V + t) + V) * vocab..(i * (V + t) + V + t) * vocab].to_vec()).collect()
}

#[test]
fn logits_loss_gradient_and_ten_adamw_steps_match_peft() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prompt_tuning/{name}/reference.safetensors"));
        let batch = fixture_batch(&fx, 0..2);
        let initial = format!("prompt_tuning/{name}/initial_adapter");
        let ad = adapter(gpu, &model, &initial);
        let (b, t, vocab) = (2, batch.input_ids[0].len(), model.config.vocab_size);
        let want = own_positions(&fx.f32("logits"), b, t, vocab);
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &batch.input_ids), &want);
        eprintln!("{name}: logits max |diff| {d:e}");
        assert!(d <= 1e-4, "{name}: logits {d:e}");

        for checkpointing in [false, true] {
            let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
            let mut trainer = Trainer::new(gpu, adapter(gpu, &model, &initial), opt, 0).unwrap();
            trainer.gradient_checkpointing = checkpointing;
            let stats = block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 0.0)).unwrap();
            let want = fx.f32("loss")[0];
            assert!((stats.loss - want).abs() <= 1e-5, "{name}: loss {} vs {want}", stats.loss);
            let (key, g) = &trainer.gradients().tensors()[0];
            assert_eq!(key, "prompt_embeddings");
            let d = max_abs_diff(&block_on(g.to_vec::<f32>(gpu)).unwrap(), &fx.f32("prompt_embeddings.grad"));
            eprintln!(
                "{name} (checkpointing {checkpointing}): loss {} (PEFT {want}), gradient max |diff| {d:e}",
                stats.loss
            );
            assert!(d <= 1e-4, "{name}: gradient {d:e}");
        }

        let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 0.0, ..Default::default() };
        let mut trainer = Trainer::new(gpu, adapter(gpu, &model, &initial), opt, 0).unwrap();
        for (i, &w) in fx.f32("losses").iter().enumerate() {
            let s = block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
            assert!((s.loss - w).abs() <= 1e-4, "{name} step {i}: {} vs {w}", s.loss);
        }
        let (_, e) = &trainer.adapter.tensors()[0];
        let d = max_abs_diff(&block_on(e.to_vec::<f32>(gpu)).unwrap(), &fx.f32("final.prompt_embeddings"));
        assert!(d <= 1e-4, "{name}: final prompt {d:e}");
    }
}

#[test]
fn greedy_generation_equals_peft_and_the_cache_equals_the_full_forward() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prompt_tuning/{name}/reference.safetensors"));
        let ad = adapter(gpu, &model, &format!("prompt_tuning/{name}/initial_adapter"));
        let prompt: Vec<u32> = fx.i64("greedy_prompt").iter().map(|&v| v as u32).collect();
        let want: Vec<u32> = fx.i64("greedy_tokens").iter().map(|&v| v as u32).collect();
        let got = block_on(model.generate_adapted(gpu, &prompt, &GenerationConfig::greedy(want.len()), &ad, |_| true))
            .unwrap();
        assert_eq!(got, want, "{name}: greedy tokens");
        // Prefill then one token at a time through the cache = one full forward.
        let ids: Vec<u32> = prompt.iter().chain(&want).copied().collect();
        let full = adapted_logits(gpu, &model, Some(&ad), std::slice::from_ref(&ids));
        let cache = KvCache::new(gpu, &model, 1, V + ids.len()).unwrap();
        let mut rec = Recorder::new(gpu);
        let n = prompt.len();
        let a =
            model.forward_cached_all(&mut rec, &model.input_ids(gpu, &[ids[..n].to_vec()]).unwrap(), &cache, 0, &ad);
        let b =
            model.forward_cached_all(&mut rec, &model.input_ids(gpu, &[ids[n..].to_vec()]).unwrap(), &cache, n, &ad);
        let (a, b) = (a.unwrap(), b.unwrap());
        rec.submit().unwrap();
        let mut cached = block_on(a.to_vec::<f32>(gpu)).unwrap();
        cached.extend(block_on(b.to_vec::<f32>(gpu)).unwrap());
        let d = max_abs_diff(&cached, &full);
        assert!(d <= 1e-4, "{name}: cached vs full {d:e}");
    }
}

#[test]
fn files_both_ways_and_the_text_init() {
    let gpu = gpu();
    for name in MODELS {
        let model = model(gpu, name);
        let fx = Fixture::open(&format!("prompt_tuning/{name}/reference.safetensors"));
        for dir in ["initial_adapter", "final_adapter"] {
            let dir = format!("prompt_tuning/{name}/{dir}");
            let ad = adapter(gpu, &model, &dir);
            let files = block_on(ad.to_files(gpu, &model.config)).unwrap();
            let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
            let theirs = std::fs::read(fixture(&format!("{dir}/adapter_config.json"))).unwrap();
            assert_eq!(json(&files[0].1), json(&theirs), "{dir}: adapter_config.json");
            let peft = std::fs::read(fixture(&format!("{dir}/adapter_model.safetensors"))).unwrap();
            let (ours, peft) = (
                safetensors::SafeTensors::deserialize(&files[1].1).unwrap(),
                safetensors::SafeTensors::deserialize(&peft).unwrap(),
            );
            assert_eq!(ours.names(), peft.names(), "{dir}");
            assert_eq!(
                ours.tensor("prompt_embeddings").unwrap().data(),
                peft.tensor("prompt_embeddings").unwrap().data()
            );
        }
        // TEXT: the embeddings of the tokens of "The book" (with bos), repeated to 4, exactly.
        let tokenizer = block_on(Tokenizer::load(&DirFiles::new(fixture(name)).unwrap())).unwrap();
        let ids: Vec<u32> = fx.i64("text_init.ids").iter().map(|&v| v as u32).collect();
        assert_eq!(tokenizer.encode("The book", true).unwrap(), ids);
        let mut config = PromptTuningConfig::new(V, PromptTuningInit::Text("The book".into()), &model.config).unwrap();
        config.base_model_name_or_path = Some(name.into());
        config.tokenizer_name_or_path = Some(name.into());
        let text =
            Adapter::new_for_model(gpu, AdapterConfig::PromptTuning(config), &model, Some(&tokenizer), 0).unwrap();
        let got = block_on(text.tensors()[0].1.to_vec::<f32>(gpu)).unwrap();
        assert_eq!(got, fx.f32("text_init.prompt_embeddings"), "{name}: TEXT init");
        let theirs = std::fs::read(fixture(&format!("prompt_tuning/{name}/text_adapter/adapter_config.json"))).unwrap();
        let ours: serde_json::Value = serde_json::from_str(&text.config_json(&model.config)).unwrap();
        assert_eq!(ours, serde_json::from_slice::<serde_json::Value>(&theirs).unwrap(), "{name}: TEXT config");
        // SAMPLE_VOCAB: rows of the embedding table.
        let config = PromptTuningConfig::new(V, PromptTuningInit::SampleVocab, &model.config).unwrap();
        let sampled = Adapter::new_for_model(gpu, AdapterConfig::PromptTuning(config), &model, None, 7).unwrap();
        let rows = block_on(sampled.tensors()[0].1.to_vec::<f32>(gpu)).unwrap();
        let table = block_on(model.embed_tokens.to_f32(gpu)).unwrap();
        let d = model.config.hidden_size;
        for row in rows.chunks(d) {
            assert!(table.chunks(d).any(|t| t == row), "{name}: a SAMPLE_VOCAB row is not an embedding row");
        }
    }
}

#[test]
fn bad_prompt_tuning_configs_and_inputs_are_typed_errors() {
    let config = Config::from_json(&std::fs::read(fixture("llama_gqa/config.json")).unwrap()).unwrap();
    let field = |r: webpeft::Result<PromptTuningConfig>, want: &str| match r {
        Err(Error::AdapterConfig { field, .. } | Error::AdapterUnsupported { field, .. }) => assert_eq!(field, want),
        other => panic!("{want}: {other:?}"),
    };
    field(PromptTuningConfig::new(0, PromptTuningInit::Random, &config), "num_virtual_tokens");
    field(
        PromptTuningConfig::new(config.max_position_embeddings, PromptTuningInit::Random, &config),
        "num_virtual_tokens",
    );
    let base = std::fs::read(fixture("prompt_tuning/llama_gqa/initial_adapter/adapter_config.json")).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut v: serde_json::Value = serde_json::from_slice(&base).unwrap();
        v[key] = value;
        PromptTuningConfig::from_value(&v)
    };
    field(with("num_transformer_submodules", serde_json::json!(2)), "num_transformer_submodules");
    field(with("prompt_tuning_init", serde_json::json!("TEXT")), "prompt_tuning_init_text");
    field(with("prompt_tuning_init", serde_json::json!("SOMETHING")), "prompt_tuning_init");
    field(with("token_dim", serde_json::json!(96)).and_then(|c| c.check(&config).map(|_| c)), "token_dim");
    // A row that fits the model alone but not after the virtual tokens.
    let gpu = gpu();
    let model = model(gpu, "llama_gqa");
    let ad = adapter(gpu, &model, "prompt_tuning/llama_gqa/initial_adapter");
    let row = vec![vec![5u32; config.max_position_embeddings - 2]];
    let ids = model.input_ids(gpu, &row).unwrap();
    let mut rec = Recorder::new(gpu);
    let err = model.forward_adapted(&mut rec, &ids, &ad).unwrap_err();
    eprintln!("ROW | a prompt whose virtual tokens push the input past the context | {err}");
    assert!(matches!(err, Error::Shape { .. }) && err.to_string().contains("max_position_embeddings"), "{err}");
    let err =
        block_on(model.generate_adapted(gpu, &[5; 100], &GenerationConfig::greedy(26), &ad, |_| true)).unwrap_err();
    assert!(err.to_string().contains("4 virtual tokens"), "{err}");
}
