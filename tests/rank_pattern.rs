//! PEFT's `rank_pattern` and `alpha_pattern`: per-module ranks and alphas,
//! each key a regex for the module name's tail, the first key in order that
//! matches. Against PEFT (`make_fixtures.py rank_pattern`): every module's
//! rank and scaling; on llama_gqa (all seven projections, the embedding and
//! the head, overlapping o_proj keys) and qwen2_tied (rsLoRA with DoRA), on
//! both kernel families: logits, loss, every gradient, 10 AdamW steps,
//! greedy decoding through the KV cache, the files byte for byte, the merged
//! model, and PEFT loading what webpeft saves. Then a fresh adapter's
//! shapes, PiSSA at per-module ranks and its converted save, and what is
//! refused.

mod common;
use common::{adapted_logits, block_on, fixture_batch, fixture_model, gpu, max_abs_diff, Fixture};
use serde_json::{json, Value};
use webpeft::peft::adapter::AdapterConfig;
use webpeft::peft::lora::merge::{merge_lora, unmerge_lora};
use webpeft::peft::{Adapter, InitLoraWeights, LoraConfig, TargetModules};
use webpeft::Error;

const CASES: [&str; 2] = ["llama_gqa", "qwen2_tied"];

fn load(gpu: &webpeft::Gpu, model: &webpeft::model::Model, case: &str) -> Adapter {
    common::fixture_adapter(gpu, model, &format!("rank_pattern/{case}/initial_adapter"), "lora")
}

fn config_json(case: &str) -> Value {
    let path = common::fixture(&format!("rank_pattern/{case}/initial_adapter/adapter_config.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Each module's rank and scaling are the ones PEFT's layers got.
#[test]
fn every_module_s_rank_and_scaling_are_pefts() {
    for case in CASES {
        let c = LoraConfig::from_value(&config_json(case)).unwrap();
        let path = common::fixture(&format!("rank_pattern/{case}/scalings.json"));
        let peft: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        let peft = peft.as_object().unwrap();
        let mut differs = 0;
        for (module, want) in peft {
            let (r, s) = (want["r"].as_u64().unwrap() as usize, want["scaling"].as_f64().unwrap());
            assert_eq!(c.rank_of(module), r, "{case} {module}");
            assert!(
                (c.scaling_of(module) - s).abs() <= 1e-12 * s.abs(),
                "{case} {module}: {} vs {s}",
                c.scaling_of(module)
            );
            differs += usize::from(r != c.r || s != c.scaling_of("no such module"));
        }
        assert!(differs >= 3, "{case}: the patterns must change some modules");
        // Written back as PEFT wrote them (ints where whole, keys sorted).
        let ours = c.to_value();
        for key in ["rank_pattern", "alpha_pattern"] {
            assert_eq!(ours[key], config_json(case)[key], "{case} {key}");
        }
    }
}

/// Against PEFT, on both kernel families.
#[test]
fn rank_pattern_matches_peft() {
    for gpu in [gpu(), common::gpu_family()] {
        for case in CASES {
            let model = fixture_model(gpu, case);
            let fx = Fixture::open(&format!("rank_pattern/{case}/reference.safetensors"));
            let initial = || load(gpu, &model, case);
            let Adapter::Lora(l) = initial() else { unreachable!() };
            let ranks: std::collections::BTreeSet<usize> =
                l.layers.iter().flatten().flatten().map(|f| f.a.shape()[0]).collect();
            assert!(ranks.len() >= 3, "{case}: ranks {ranks:?}");
            eprintln!("{case}:");
            common::check_logits_training_and_greedy(gpu, &model, case, &initial, &fx, &fx.f32("logits"), 0);
        }
    }
}

/// The folders PEFT wrote, byte for byte (less PEFT's copies of the
/// embedding's and the head's base weights, which webpeft does not write).
#[test]
fn the_files_are_pefts() {
    let gpu = gpu();
    for case in CASES {
        let model = fixture_model(gpu, case);
        let dir = format!("rank_pattern/{case}/initial_adapter");
        common::assert_files_are_peft_less_base_copies(gpu, &load(gpu, &model, case), &model.config, &dir);
    }
}

/// Merged, each module at its own scaling, the model gives PEFT's
/// merge_and_unload logits; unmerged, the base's.
#[test]
fn merging_gives_peft_s_merged_model() {
    let gpu = gpu();
    for case in CASES {
        let mut model = fixture_model(gpu, case);
        let fx = Fixture::open(&format!("rank_pattern/{case}/reference.safetensors"));
        let ids = fixture_batch(&fx, 0..2).input_ids;
        let Adapter::Lora(lora) = load(gpu, &model, case) else { unreachable!() };
        let base = adapted_logits(gpu, &model, None, &ids);
        let kept = merge_lora(gpu, &mut model, &lora).unwrap();
        let d = max_abs_diff(&adapted_logits(gpu, &model, None, &ids), &fx.f32("merged_logits"));
        unmerge_lora(gpu, &mut model, &lora, &kept).unwrap();
        let back = max_abs_diff(&adapted_logits(gpu, &model, None, &ids), &base);
        eprintln!("{case}: merged vs PEFT's merged {d:e}; unmerged vs base {back:e}");
        assert!(d <= 1e-4 && back <= 1e-5, "{case}: {d:e} / {back:e}");
    }
}

/// What webpeft saves after 10 steps loads in PEFT (`rank_pattern/webpeft_saved`,
/// see [`common::check_saved_cases_in_peft`]).
#[test]
fn peft_loads_what_webpeft_saves() {
    common::check_saved_cases_in_peft(gpu(), "rank_pattern", &CASES);
}

fn patterned(rank: Value, alpha: Value) -> webpeft::Result<LoraConfig> {
    let mut v = config_json("llama_gqa");
    v["rank_pattern"] = rank;
    v["alpha_pattern"] = alpha;
    LoraConfig::from_value(&v)
}

/// A fresh adapter has each module's own rank; PiSSA starts each module at
/// its own rank (the model unchanged) and saves the rank-2r conversion with
/// the patterns doubled, as PEFT's save_pretrained.
#[test]
fn fresh_and_pissa_adapters_take_each_module_s_rank() {
    let gpu = gpu();
    let mut model = fixture_model(gpu, "llama_gqa");
    let mut c = LoraConfig::new(4, 8.0, TargetModules::AllLinear).unwrap();
    c.rank_pattern = [("q_proj".to_string(), 2), (r"layers\.1\..*".to_string(), 3)].into();
    c.alpha_pattern = [("down_proj".to_string(), 12.0)].into();
    let fresh = Adapter::new(gpu, AdapterConfig::Lora(c.clone()), &model.config, 1).unwrap();
    let Adapter::Lora(l) = &fresh else { unreachable!() };
    let shape = |layer: usize, proj: usize| l.layers[layer][proj].as_ref().unwrap().a.shape().to_vec();
    // Layer 1's q_proj takes "layers\.1\..*", the first key in order that matches it.
    assert_eq!(
        (shape(0, 0), shape(0, 1), shape(1, 0), shape(1, 6)),
        (vec![2, 64], vec![4, 64], vec![3, 64], vec![3, 128])
    );
    let files = block_on(fresh.to_files(gpu, &model.config)).unwrap();
    let back = common::load_files(gpu, &files, &model.config);
    assert_eq!(common::adapter_values(gpu, &back), common::adapter_values(gpu, &fresh));

    let ids = vec![vec![5u32, 17, 99, 3, 250, 7, 64]];
    let base = adapted_logits(gpu, &model, None, &ids);
    c.init_lora_weights = InitLoraWeights::Pissa;
    let files = webpeft::model::DirFiles::new(common::fixture("llama_gqa")).unwrap();
    let pissa =
        block_on(Adapter::new_adjusting_base(gpu, AdapterConfig::Lora(c), &mut model, Some(&files), None, 0)).unwrap();
    let Adapter::Lora(p) = &pissa else { unreachable!() };
    assert_eq!(p.layers[0][0].as_ref().unwrap().a.shape(), [2, 64]);
    assert_eq!(p.layers[1][0].as_ref().unwrap().a.shape(), [3, 64]);
    assert_eq!(p.layers[1][6].as_ref().unwrap().a.shape(), [3, 128]);
    // W_res + s·B·A is W, module by module at its own rank and scaling.
    let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&pissa), &ids), &base);
    eprintln!("PiSSA at per-module ranks: adapted residual vs base {d:e}");
    assert!(d <= 1e-4, "{d:e}");
    let saved = block_on(pissa.to_files(gpu, &model.config)).unwrap();
    let config: Value =
        serde_json::from_slice(&saved.iter().find(|(n, _)| n == "adapter_config.json").unwrap().1).unwrap();
    assert_eq!(config["rank_pattern"], json!({"q_proj": 4, r"layers\.1\..*": 6}));
    assert_eq!(config["alpha_pattern"], json!({"down_proj": 24}));
    assert_eq!((config["r"].clone(), config["lora_alpha"].clone()), (json!(8), json!(16)));
}

fn field_error(r: webpeft::Result<LoraConfig>) -> (String, String) {
    match r {
        Err(e @ (Error::AdapterConfig { .. } | Error::AdapterUnsupported { .. })) => {
            eprintln!("ROW | {e}");
            match e {
                Error::AdapterConfig { field, detail } | Error::AdapterUnsupported { field, detail } => (field, detail),
                _ => unreachable!(),
            }
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}

/// Bad patterns are typed errors naming the key.
#[test]
fn bad_patterns_are_typed_errors() {
    let (f, d) = field_error(patterned(json!({"q_proj": 0}), json!({})));
    assert_eq!((f.as_str(), d.contains("at least 1")), ("rank_pattern.q_proj", true), "{d}");
    let (f, d) = field_error(patterned(json!({"q_proj": "8"}), json!({})));
    assert_eq!((f.as_str(), d.contains("non-negative integer")), ("rank_pattern.q_proj", true), "{d}");
    let (f, d) = field_error(patterned(json!({"(q_proj": 2}), json!({})));
    assert_eq!((f.as_str(), d.contains("regular expression")), ("rank_pattern.(q_proj", true), "{d}");
    let (f, _) = field_error(patterned(json!({}), json!({"o_proj": true})));
    assert_eq!(f, "alpha_pattern.o_proj");
    let (f, _) = field_error(patterned(json!([2]), json!({})));
    assert_eq!(f, "rank_pattern");
    // rsLoRA with patterns cannot be saved converted to the original base (PEFT refuses it).
    let mut v = config_json("llama_gqa");
    v["use_rslora"] = json!(true);
    v["init_lora_weights"] = json!("pissa");
    v["target_modules"] = json!(["q_proj"]);
    let (f, d) = field_error(LoraConfig::from_value(&v));
    assert_eq!((f.as_str(), d.contains("rsLoRA")), ("rank_pattern", true), "{d}");
    // A module's rank above its smaller side.
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let mut c = LoraConfig::new(4, 8.0, TargetModules::List(vec!["k_proj".into()])).unwrap();
    c.rank_pattern = [("layers.1.self_attn.k_proj".to_string(), 49)].into();
    let e = Adapter::new(gpu, AdapterConfig::Lora(c), &model.config, 0).unwrap_err();
    assert!(matches!(&e, Error::AdapterConfig { field, .. } if field == "rank_pattern"), "{e}");
    // Weights at another rank than the pattern gives: the tensor is named.
    let mut v = config_json("llama_gqa");
    v["rank_pattern"]["q_proj"] = json!(3);
    let mut files = webpeft::model::MemoryFiles::new();
    files.insert("adapter_config.json", serde_json::to_vec(&v).unwrap());
    let st =
        std::fs::read(common::fixture("rank_pattern/llama_gqa/initial_adapter/adapter_model.safetensors")).unwrap();
    files.insert("adapter_model.safetensors", st);
    let e = block_on(Adapter::load(gpu, &files, &model.config)).unwrap_err();
    eprintln!("ROW | {e}");
    assert!(matches!(&e, Error::AdapterTensor { tensor, .. } if tensor.contains("q_proj.lora_A")), "{e}");
}
