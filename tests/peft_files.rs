//! PEFT LoRA files on the CPU: `adapter_config.json` and
//! `adapter_model.safetensors` as PEFT 0.21 writes them (tests/fixtures/lora,
//! lora_rslora), checked against the llama_gqa config; round trips; and each
//! kind of bad input as its own typed error. No GPU.

mod common;

use common::{block_on, fixture, Fixture};
use serde_json::Value;
use webpeft::model::{Config, DirFiles, MemoryFiles};
use webpeft::peft::{InitLoraWeights, LoraConfig, LoraWeights, TargetModules, ADAPTER_WEIGHTS_FILE};
use webpeft::Error;

const LORA: &str = "lora/initial_adapter";
const RSLORA: &str = "lora_rslora/adapter";

fn model_config() -> Config {
    block_on(Config::load(&DirFiles::new(fixture("llama_gqa")).unwrap())).unwrap()
}

fn config_json(dir: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(dir).join("adapter_config.json")).unwrap()).unwrap()
}

fn lora_config(dir: &str) -> LoraConfig {
    block_on(LoraConfig::load(&DirFiles::new(fixture(dir)).unwrap())).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

/// The fixture adapter_config.json of `dir` with `edit` applied.
fn edited(dir: &str, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Result<LoraConfig, Error> {
    let mut v = config_json(dir);
    edit(v.as_object_mut().unwrap());
    LoraConfig::from_value(&v)
}

fn load_weights(dir: &str) -> LoraWeights {
    let files = DirFiles::new(fixture(dir)).unwrap();
    block_on(LoraWeights::load(&files, &lora_config(dir), &model_config())).unwrap_or_else(|e| panic!("{dir}: {e}"))
}

fn assert_field_error(result: Result<impl std::fmt::Debug, Error>, want_field: &str, want_text: &str) {
    match result {
        Err(Error::AdapterConfig { ref field, ref detail }) if field == want_field => {
            assert!(detail.contains(want_text), "{want_field}: {detail:?} lacks {want_text:?}")
        }
        other => panic!("expected AdapterConfig error on `{want_field}`, got {other:?}"),
    }
}

fn seven() -> Vec<String> {
    ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"].map(String::from).to_vec()
}

#[test]
fn parses_the_lora_fixture_config() {
    let c = lora_config(LORA);
    assert_eq!(c.r, 4);
    assert_eq!(c.lora_alpha, 8.0);
    assert_eq!(c.lora_dropout, 0.0);
    assert!(!c.use_rslora);
    assert_eq!(c.init_lora_weights, InitLoraWeights::Kaiming);
    assert_eq!(c.target_modules, TargetModules::List(seven()));
    assert_eq!(c.layers_to_transform, None);
    assert_eq!(c.base_model_name_or_path.as_deref(), Some("llama_gqa"));
    assert_eq!(c.scaling_of("model.layers.0.self_attn.q_proj"), 2.0);
    let targets = c.targets(&model_config()).unwrap();
    assert_eq!(targets.len(), 14);
    assert_eq!(targets[0], "model.layers.0.self_attn.q_proj");
    assert_eq!(targets[6], "model.layers.0.mlp.down_proj");
    assert_eq!(targets[13], "model.layers.1.mlp.down_proj");
}

#[test]
fn parses_the_rslora_fixture_config() {
    let c = lora_config(RSLORA);
    assert_eq!((c.r, c.lora_alpha, c.use_rslora), (4, 8.0, true));
    assert_eq!(c.scaling_of("lm_head"), 4.0);
    assert_eq!(
        c.targets(&model_config()).unwrap(),
        [
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.v_proj",
            "model.layers.1.self_attn.q_proj",
            "model.layers.1.self_attn.v_proj"
        ]
    );
}

#[test]
fn minimal_config_takes_peft_defaults() {
    let c =
        LoraConfig::from_json(br#"{"peft_type":"LORA","task_type":"CAUSAL_LM","r":8,"target_modules":"all-linear"}"#)
            .unwrap();
    assert_eq!((c.r, c.lora_alpha, c.lora_dropout, c.use_rslora), (8, 8.0, 0.0, false));
    assert_eq!(c.target_modules, TargetModules::AllLinear);
    let t = c.targets(&model_config()).unwrap();
    assert_eq!(t.len(), 14);
    assert!(t.iter().all(|n| !n.contains("lm_head")));
}

#[test]
fn layers_to_transform_filters_layers() {
    let c = edited(LORA, |m| {
        m.insert("layers_to_transform".into(), 1.into());
    })
    .unwrap();
    assert_eq!(c.layers_to_transform, Some(vec![1]));
    let t = c.targets(&model_config()).unwrap();
    assert_eq!(t.len(), 7);
    assert!(t.iter().all(|n| n.starts_with("model.layers.1.")));
    let c = edited(LORA, |m| {
        m.insert("layers_to_transform".into(), serde_json::json!([5]));
    })
    .unwrap();
    assert_field_error(c.targets(&model_config()), "layers_to_transform", "layer 5 does not exist");
}

#[test]
fn loads_the_lora_fixture_adapter() {
    let w = load_weights(LORA);
    assert!(w.modules.values().all(|p| p.r == 4));
    assert_eq!(w.modules.len(), 14);
    let raw = Fixture::open(&format!("{LORA}/{ADAPTER_WEIGHTS_FILE}"));
    let p = &w.modules["model.layers.1.self_attn.k_proj"];
    assert_eq!((p.out_features, p.in_features), (48, 64));
    assert_eq!(p.a, raw.f32("base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"));
    assert_eq!(p.b, raw.f32("base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"));
    let p = &w.modules["model.layers.0.mlp.down_proj"];
    assert_eq!((p.out_features, p.in_features, p.a.len(), p.b.len()), (64, 128, 4 * 128, 64 * 4));
    assert_eq!(p.b, raw.f32("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"));
    assert!(p.b.iter().any(|&x| x != 0.0));
}

#[test]
fn loads_the_bf16_rslora_fixture_adapter() {
    let w = load_weights(RSLORA);
    assert_eq!(w.modules.len(), 4);
    let raw = Fixture::open(&format!("{RSLORA}/{ADAPTER_WEIGHTS_FILE}"));
    for key in ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"] {
        let p = &w.modules[key];
        for (which, got) in [("lora_A", &p.a), ("lora_B", &p.b)] {
            let bytes = raw.raw(&format!("base_model.model.{key}.{which}.weight"));
            let want: Vec<f32> =
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
            assert_eq!(got, &want, "{key}.{which}");
        }
    }
    assert_eq!(w.modules["model.layers.0.self_attn.q_proj"].b.len(), 96 * 4);
}

#[test]
fn config_json_round_trips_with_peft_key_set() {
    for dir in [LORA, RSLORA] {
        let c = lora_config(dir);
        let written = c.to_value();
        assert_eq!(LoraConfig::from_json(c.to_json().as_bytes()).unwrap(), c, "{dir}");
        // Exactly the keys and values PEFT wrote (the fixture has target_modules sorted).
        assert_eq!(written, config_json(dir), "{dir}");
    }
    let c = LoraConfig::new(8, 16.0, TargetModules::AllLinear).unwrap();
    let v = c.to_value();
    assert_eq!(v["lora_alpha"], serde_json::json!(16));
    assert_eq!(v["target_modules"], "all-linear");
    assert_eq!(LoraConfig::from_value(&v).unwrap(), c);
}

#[test]
fn weights_round_trip_through_bytes() {
    let (lora, model) = (lora_config(LORA), model_config());
    let w = load_weights(LORA);
    let bytes = w.to_safetensors_bytes().unwrap();
    // The safetensors library reads it, with PEFT's metadata.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 28);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
    let mut files = MemoryFiles::new();
    files.insert(ADAPTER_WEIGHTS_FILE, bytes);
    let back = block_on(LoraWeights::load(&files, &lora, &model)).unwrap();
    assert_eq!(back, w);

    // bf16 → f32 is exact, so the rslora adapter round-trips too.
    let w = load_weights(RSLORA);
    let mut files = MemoryFiles::new();
    files.insert(ADAPTER_WEIGHTS_FILE, w.to_safetensors_bytes().unwrap());
    assert_eq!(block_on(LoraWeights::load(&files, &lora_config(RSLORA), &model)).unwrap(), w);
}

#[test]
fn zeros_has_the_model_shapes() {
    let w = LoraWeights::zeros(&lora_config(LORA), &model_config()).unwrap();
    assert_eq!(w.modules.len(), 14);
    let p = &w.modules["model.layers.0.self_attn.o_proj"];
    assert_eq!((p.out_features, p.in_features), (64, 96));
}

#[test]
fn another_peft_type_is_an_error() {
    let r = edited(LORA, |m| {
        m.insert("peft_type".into(), "IA3".into());
    });
    assert_field_error(r, "peft_type", "\"IA3\"");
}

#[test]
fn rank_zero_is_an_error() {
    let r = edited(LORA, |m| {
        m.insert("r".into(), 0.into());
    });
    assert_field_error(r, "r", "at least 1");
}

#[test]
fn unknown_target_module_is_an_error() {
    let c = edited(LORA, |m| {
        m.insert("target_modules".into(), serde_json::json!(["q_proj", "qkv_proj"]));
    })
    .unwrap();
    let r = c.targets(&model_config());
    assert_field_error(r, "target_modules", "\"qkv_proj\" matches no module");
    // The weights cannot be loaded for it either.
    let files = DirFiles::new(fixture(LORA)).unwrap();
    assert!(matches!(block_on(LoraWeights::load(&files, &c, &model_config())), Err(Error::AdapterConfig { .. })));
}

/// A regex target is matched whole (`re.fullmatch`), written back as given;
/// one that does not compile is a typed error naming the field.
#[test]
fn regex_target_modules_match_whole_names() {
    let c = edited(LORA, |m| {
        m.insert("target_modules".into(), ".*q_proj".into());
    })
    .unwrap();
    assert_eq!(
        c.targets(&model_config()).unwrap(),
        ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    );
    assert_eq!(c.to_value()["target_modules"], Value::from(".*q_proj"));
    let c = edited(LORA, |m| {
        m.insert("target_modules".into(), "q_proj".into()); // whole names only: matches none
    })
    .unwrap();
    assert_field_error(c.targets(&model_config()), "target_modules", "matches no module");
    let r = edited(LORA, |m| {
        m.insert("exclude_modules".into(), "(q_proj".into());
    });
    assert_field_error(r, "exclude_modules", "not a regular expression");
}

#[test]
fn use_dora_is_read_and_written_back() {
    let c = edited(LORA, |m| {
        m.insert("use_dora".into(), true.into());
    })
    .unwrap();
    assert!(c.use_dora);
    assert_eq!(c.to_value()["use_dora"], Value::from(true));
    let r = edited(LORA, |m| {
        m.insert("use_dora".into(), "yes".into());
    });
    assert!(matches!(r, Err(Error::AdapterConfig { ref field, .. }) if field == "use_dora"), "{r:?}");
}

#[test]
fn other_unsupported_options_are_errors() {
    for (key, value) in [
        ("bias", Value::from("all")),
        ("fan_in_fan_out", Value::from(true)),
        ("modules_to_save", serde_json::json!(["lm_head", "model.norm"])),
        ("init_lora_weights", Value::from("eva")),
    ] {
        let r = edited(LORA, |m| {
            m.insert(key.into(), value);
        });
        let named = |field: &str| field == key || field.starts_with(&format!("{key}["));
        assert!(matches!(r, Err(Error::AdapterUnsupported { ref field, .. }) if named(field)), "{key}: {r:?}");
    }
    let r = edited(LORA, |m| {
        m.insert("task_type".into(), "TOKEN_CLS".into());
    });
    assert_field_error(r, "task_type", "TOKEN_CLS");
    // SEQ_CLS is a reward model, whose score head modules_to_save must name (PEFT adds it).
    let r = edited(LORA, |m| {
        m.insert("task_type".into(), "SEQ_CLS".into());
    });
    assert_field_error(r, "modules_to_save", "score");
}

/// The lora fixture's weights with the rslora config's 4 modules: 24 unexpected tensors;
/// the reverse: missing tensors.
#[test]
fn missing_and_unexpected_tensors_are_errors() {
    let model = model_config();
    let files = DirFiles::new(fixture(LORA)).unwrap();
    let r = block_on(LoraWeights::load(&files, &lora_config(RSLORA), &model));
    assert!(matches!(&r, Err(Error::AdapterTensor { detail, .. }) if detail.contains("unexpected")), "{r:?}");
    let files = DirFiles::new(fixture(RSLORA)).unwrap();
    let r = block_on(LoraWeights::load(&files, &lora_config(LORA), &model));
    assert!(
        matches!(&r, Err(Error::AdapterTensor { tensor, detail, .. }) if detail.contains("missing") && tensor.starts_with("base_model.model.model.layers.")),
        "{r:?}"
    );
}

#[test]
fn wrong_tensor_shapes_are_an_error() {
    // The fixture's r=4 tensors against a config that says r=8.
    let lora = edited(LORA, |m| {
        m.insert("r".into(), 8.into());
    })
    .unwrap();
    let files = DirFiles::new(fixture(LORA)).unwrap();
    match block_on(LoraWeights::load(&files, &lora, &model_config())) {
        Err(Error::AdapterTensor { tensor, detail, .. }) => {
            assert!(tensor.starts_with("base_model.model.model.layers."), "{tensor}");
            assert!(detail.contains("shape [") && detail.contains("expected ["), "{detail}");
        }
        other => panic!("expected a shape error, got {other:?}"),
    }
    // A model whose hidden size differs.
    let mut v: Value = serde_json::from_slice(&std::fs::read(fixture("llama_gqa/config.json")).unwrap()).unwrap();
    v["hidden_size"] = 48.into();
    v["head_dim"] = 12.into();
    let model = Config::from_value(&v).unwrap();
    let r = block_on(LoraWeights::load(&files, &lora_config(LORA), &model));
    assert!(matches!(&r, Err(Error::AdapterTensor { detail, .. }) if detail.contains("shape")), "{r:?}");
}

/// What PEFT targets (`make_fixtures.py target_matching`: get_peft_model's
/// `targeted_module_names`) for regex target_modules (`re.fullmatch`,
/// lookahead included), exclude_modules as a list and as a regex,
/// layers_to_transform (refused with a string target; a module named whole
/// skips it, and the embedding, which has no layer index, is dropped by it),
/// and modules_to_save (skipped by the match); where PEFT refuses (a module
/// that is not a Linear, no match, everything excluded), webpeft refuses too.
#[test]
fn target_matching_is_pefts() {
    let cases: Value = serde_json::from_slice(&std::fs::read(fixture("target_matching/cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 18);
    for case in cases {
        let model = block_on(Config::load(&DirFiles::new(fixture(case["model"].as_str().unwrap())).unwrap())).unwrap();
        let mut v = case["config"].clone();
        for (k, x) in [("peft_type", Value::from("LORA")), ("r", 4.into()), ("lora_alpha", 8.into())] {
            v[k] = x;
        }
        let got = LoraConfig::from_value(&v).and_then(|c| {
            let mut t = c.targets(&model)?;
            t.extend(c.outer_targets().iter().map(|m| m.name().to_string()));
            t.sort();
            Ok(t)
        });
        match (&case["targeted"], got) {
            (Value::Array(want), Ok(got)) => {
                let want: Vec<&str> = want.iter().map(|w| w.as_str().unwrap()).collect();
                assert_eq!(got, want, "{}", case["config"]);
            }
            (Value::Null, Err(e)) => eprintln!("{}: PEFT: {}; webpeft: {e}", case["config"], case["error"]),
            (want, got) => panic!("{}: PEFT {want} ({}), webpeft {got:?}", case["config"], case["error"]),
        }
    }
}
