//! `rope_scaling` of types linear, dynamic and yarn against transformers
//! (tests/fixtures/rope_scaling, `make_fixtures.py rope_scaling`): for each
//! case over a fixture model, the parsed config gives transformers'
//! `rotary_emb.inv_freq`, its cos and sin (YaRN's times its attention
//! factor) at positions 0..127, and the model's logits of 40 tokens; then the
//! refusals.

mod common;
use common::{block_on, fixture, fixture_files_with, gpu, logits_and_loss, max_abs_diff, Fixture};
use serde_json::{json, Value};
use webpeft::model::llama::rope::rope_cos_sin;
use webpeft::model::llama::NoHooks;
use webpeft::model::{Config, Model, RopeScaling};
use webpeft::train::data::Batch;
use webpeft::Error;

fn cases() -> serde_json::Map<String, Value> {
    let text = std::fs::read(fixture("rope_scaling/cases.json")).unwrap();
    serde_json::from_slice::<Value>(&text).unwrap().as_object().unwrap().clone()
}

/// Within `ulps` units in the last place of the larger magnitude (and of 1e-7 near 0).
fn assert_ulps(what: &str, got: &[f32], want: &[f32], ulps: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = ulps * f32::EPSILON * g.abs().max(w.abs()).max(1e-7);
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn scaled_rope_matches_transformers() {
    let fx = Fixture::open("rope_scaling/reference.safetensors");
    let ids: Vec<u32> = fx.i64("input_ids").iter().map(|&v| v as u32).collect();
    let batch = Batch::new(vec![ids.clone()], vec![vec![-100; ids.len()]]);
    for (case, c) in cases() {
        let name = c["model"].as_str().unwrap();
        let files = fixture_files_with(name, &json!({ "rope_scaling": c["rope_scaling"] }));
        let model = block_on(Model::load(gpu(), &files, webpeft::quant::QuantFormat::F32)).unwrap();
        let scaling = model.config.rope_scaling.unwrap_or_else(|| panic!("{case}: no scaling parsed"));
        let kind = match scaling {
            RopeScaling::Linear { .. } => "linear",
            RopeScaling::Dynamic { .. } => "dynamic",
            RopeScaling::Yarn(_) => "yarn",
            RopeScaling::Llama3(_) => "llama3",
        };
        assert_eq!(kind, c["rope_type"], "{case}");
        let attention = c["attention_scaling"].as_f64().unwrap() as f32;
        assert_eq!(scaling.attention_factor(), attention, "{case}: attention factor");
        // pow is correctly rounded here and within an ulp in torch.
        assert_ulps(&format!("{case} inv_freq"), model.rope_inv_freq(), &fx.f32(&format!("{case}.inv_freq")), 1.5);
        let positions: Vec<u32> = (0..128).collect();
        let (cos, sin) = rope_cos_sin(model.rope_inv_freq(), &positions, attention);
        let (dc, ds) =
            (max_abs_diff(&cos, &fx.f32(&format!("{case}.cos"))), max_abs_diff(&sin, &fx.f32(&format!("{case}.sin"))));
        let (logits, _) = logits_and_loss(&model, &batch, &NoHooks);
        let d = max_abs_diff(&logits, &fx.f32(&format!("{case}.logits")));
        eprintln!("{case}: cos {dc:e}, sin {ds:e}, logits {d:e}");
        // Angles up to 127 rad in f32 (one product, as torch's) whose cos and sin round within an ulp or two.
        assert!(dc <= 4e-7 && ds <= 4e-7, "{case}: cos {dc:e}, sin {ds:e}");
        assert!(d <= 1e-4, "{case}: logits max |diff| {d:e}");
    }
}

fn parse(rope_scaling: Value) -> Result<Config, Error> {
    let files = fixture_files_with("llama_gqa", &json!({ "rope_scaling": rope_scaling }));
    block_on(Config::load(&files))
}

fn assert_field_error(r: Result<Config, Error>, want_field: &str, want: &str) {
    match r {
        Err(Error::Config { field, detail }) => {
            assert_eq!(field, want_field, "{detail}");
            assert!(detail.contains(want), "{field}: {detail:?} lacks {want:?}");
        }
        other => panic!("expected an error on {want_field}, got {other:?}"),
    }
}

#[test]
fn yarn_defaults_and_refusals() {
    let Some(RopeScaling::Yarn(y)) = parse(json!({"rope_type": "yarn", "factor": 4.0})).unwrap().rope_scaling else {
        panic!("yarn")
    };
    // original_max_position_embeddings: the config's 128; get_mscale(4) = 0.1·ln 4 + 1; betas 32 and 1; truncate.
    assert_eq!(y.original_max_position_embeddings, 128.0);
    assert_eq!(y.attention_factor, 0.1 * 4f64.ln() + 1.0);
    assert_eq!((y.beta_fast, y.beta_slow, y.truncate), (32.0, 1.0, true));
    // `beta_fast or 32`: 0 is the default; mscale 0 drops the ratio.
    let z = json!({"rope_type": "yarn", "factor": 4.0, "beta_fast": 0, "mscale": 0, "mscale_all_dim": 1});
    let Some(RopeScaling::Yarn(z)) = parse(z).unwrap().rope_scaling else { panic!("yarn") };
    assert_eq!((z.beta_fast, z.attention_factor), (32.0, y.attention_factor));

    assert_field_error(parse(json!({"rope_type": "longrope", "factor": 4.0})), "rope_scaling.rope_type", "yarn");
    assert_field_error(parse(json!({"type": "linear", "factor": 0.0})), "rope_scaling.factor", "positive");
    assert_field_error(parse(json!({"rope_type": "dynamic"})), "rope_scaling.factor", "");
    let bad = json!({"rope_type": "yarn", "factor": 2.0, "attention_factor": -1.0});
    assert_field_error(parse(bad), "rope_scaling.attention_factor", "≥ 0");
    let bad = json!({"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": -3});
    assert_field_error(parse(bad), "rope_scaling.original_max_position_embeddings", "positive");
}
