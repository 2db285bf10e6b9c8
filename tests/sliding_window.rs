//! Sliding-window attention against transformers (tests/fixtures/sliding_window,
//! `make_fixtures.py sliding_window`): mistral_f16 with a window of 5 on every
//! layer and qwen2_tied with `use_sliding_window` on its second layer only,
//! each shorter than every sequence here. Per model: the logits and loss, a
//! LoRA's loss and every gradient (with and without checkpointing), its
//! greedy tokens (decoding steps past the window) and the KV cache against
//! the full forward, packed rows (the window within each example), and PEFT
//! prefix tuning (the window over the prefix's keys too).

mod common;
use common::{
    block_on, cached_vs_full, check_greedy_and_cache, check_lora_step_gradients, fixture, fixture_files_with, gpu,
    logits_and_loss, max_abs_diff, Fixture,
};
use webpeft::model::llama::{GenerationConfig, NoHooks};
use webpeft::model::{Config, MemoryFiles, Model};
use webpeft::peft::adapter::hooks_of;
use webpeft::peft::Adapter;
use webpeft::train::data::Batch;

const MODELS: [&str; 2] = ["mistral_f16", "qwen2_tied"];
const TOL: f32 = 1e-4;

/// The fixture folder `name` with `sliding_window/<name>/config_overrides.json`
/// over its config.json, in memory.
fn windowed_files(name: &str) -> MemoryFiles {
    let path = fixture(&format!("sliding_window/{name}/config_overrides.json"));
    fixture_files_with(name, &serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap())
}

fn windowed_model(name: &str) -> Model {
    block_on(Model::load(gpu(), &windowed_files(name), webpeft::quant::QuantFormat::F32)).unwrap()
}

fn adapter(model: &Model, name: &str, dir: &str) -> Adapter {
    let files = webpeft::model::DirFiles::new(fixture(&format!("sliding_window/{name}/{dir}"))).unwrap();
    block_on(Adapter::load(gpu(), &files, &model.config)).unwrap()
}

fn batch(fx: &Fixture, prefix: &str) -> Batch {
    let key = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
    let t = fx.shape(&key("input_ids"))[1];
    let rows = |k: &str| -> Vec<Vec<i64>> { fx.i64(&key(k)).chunks(t).map(<[i64]>::to_vec).collect() };
    let ids: Vec<Vec<u32>> = rows("input_ids").iter().map(|r| r.iter().map(|&v| v as u32).collect()).collect();
    let labels = match prefix {
        "" => rows("labels").iter().map(|r| r.iter().map(|&v| v as i32).collect()).collect(),
        _ => ids.iter().map(|r| vec![-100; r.len()]).collect(),
    };
    let mut batch = Batch::new(ids, labels);
    if prefix == "packed" {
        batch.position_ids = Some(rows("position_ids").iter().map(|r| r.iter().map(|&v| v as u32).collect()).collect());
    }
    batch
}

fn reference(name: &str) -> Fixture {
    Fixture::open(&format!("sliding_window/{name}/reference.safetensors"))
}

#[test]
fn configs_read_the_window_as_transformers() {
    let mistral = block_on(Config::load(&windowed_files("mistral_f16"))).unwrap();
    assert_eq!((0..2).map(|i| mistral.attention_window(i)).collect::<Vec<_>>(), [Some(5), Some(5)]);
    let qwen = block_on(Config::load(&windowed_files("qwen2_tied"))).unwrap();
    assert_eq!((0..2).map(|i| qwen.attention_window(i)).collect::<Vec<_>>(), [None, Some(5)]);
}

#[test]
fn windowed_logits_and_packed_rows_match_transformers() {
    for name in MODELS {
        let fx = reference(name);
        let model = windowed_model(name);
        let (logits, loss) = logits_and_loss(&model, &batch(&fx, ""), &NoHooks);
        let d = max_abs_diff(&logits, &fx.f32("logits"));
        let want = fx.f32("loss")[0];
        // The same model without the window: the fixture's sequences are long enough to tell.
        let (full, _) = logits_and_loss(&common::fixture_model(gpu(), name), &batch(&fx, ""), &NoHooks);
        let unwindowed = max_abs_diff(&full, &fx.f32("logits"));
        eprintln!("{name}: logits max |diff| {d:e} (without the window {unwindowed:e}), loss {loss} vs {want}");
        assert!(d <= TOL, "{name}: logits max |diff| {d:e}");
        assert!(unwindowed > 1e-2, "{name}: the window changes nothing ({unwindowed:e})");
        assert!((loss - want).abs() <= TOL, "{name}: loss {loss} vs {want}");

        let (packed, _) = logits_and_loss(&model, &batch(&fx, "packed"), &NoHooks);
        let d = max_abs_diff(&packed, &fx.f32("packed.logits"));
        eprintln!("{name}: packed rows' logits max |diff| {d:e}");
        assert!(d <= TOL, "{name}: packed logits max |diff| {d:e}");
    }
}

#[test]
fn windowed_lora_gradients_greedy_tokens_and_cache_match_peft() {
    let gpu = gpu();
    for name in MODELS {
        let fx = reference(name);
        let model = windowed_model(name);
        let batch = batch(&fx, "");
        let ad = adapter(&model, name, "lora");
        let (logits, _) = logits_and_loss(&model, &batch, hooks_of(Some(&ad)));
        let d = max_abs_diff(&logits, &fx.f32("lora.logits"));
        assert!(d <= TOL, "{name}: LoRA logits max |diff| {d:e}");
        check_lora_step_gradients(&model, &batch, &|| adapter(&model, name, "lora"), &fx, TOL, name);
        // 6 prompt tokens, 14 decoding steps: every step past the window.
        check_greedy_and_cache(gpu, &model, &ad, &fx, 0);
    }
}

#[test]
fn windowed_prefix_tuning_matches_peft() {
    let gpu = gpu();
    for name in MODELS {
        let fx = reference(name);
        let model = windowed_model(name);
        let ad = adapter(&model, name, "prefix");
        let (logits, _) = logits_and_loss(&model, &batch(&fx, ""), hooks_of(Some(&ad)));
        let d = max_abs_diff(&logits, &fx.f32("prefix.logits"));
        eprintln!("{name}: prefix tuning logits max |diff| {d:e}");
        assert!(d <= TOL, "{name}: prefix logits max |diff| {d:e}");
        let prompt: Vec<u32> = fx.i64("greedy_prompt").iter().map(|&v| v as u32).collect();
        let want: Vec<u32> = fx.i64("prefix.greedy_tokens").iter().map(|&v| v as u32).collect();
        let got = block_on(model.generate_adapted(gpu, &prompt, &GenerationConfig::greedy(want.len()), &ad, |_| true))
            .unwrap();
        assert_eq!(got, want, "{name}: prefix greedy tokens");
        let ids: Vec<u32> = prompt.iter().chain(&want).copied().collect();
        let d = cached_vs_full(gpu, &model, &ad, &ids, prompt.len(), 3);
        assert!(d <= TOL, "{name}: prefix cached vs full {d:e}");
    }
}
