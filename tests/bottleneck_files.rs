//! AdapterHub bottleneck-adapter files on the CPU: `adapter_config.json` and
//! `adapter.safetensors` as `adapters` 1.3 writes them (tests/fixtures/bottleneck/
//! {seq_bn,double_seq_bn,par_bn}), checked against the llama_gqa config; round
//! trips; each kind of bad input as its own typed error; and the statistics of
//! AdapterHub's and PEFT's initialisations. No GPU.

mod common;

use std::collections::BTreeMap;

use common::{block_on, fixture, Fixture};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Map, Value};
use webpeft::kernels::reference::swiglu::Activation;
use webpeft::model::{Config, DirFiles, MemoryFiles};
use webpeft::peft::init_lora;
use webpeft::peft::{
    BnInit, BnPart, BnSite, BottleneckConfig, BottleneckKind, BottleneckWeights, InitLoraWeights, LoraConfig,
    LoraWeights, TargetModules, BN_CONFIG_FILE, BN_WEIGHTS_FILE,
};
use webpeft::util::rng::Rng;
use webpeft::Error;

const KINDS: [(&str, BottleneckKind); 3] = [
    ("seq_bn", BottleneckKind::SeqBn),
    ("double_seq_bn", BottleneckKind::DoubleSeqBn),
    ("par_bn", BottleneckKind::ParBn),
];

fn model_config() -> Config {
    block_on(Config::load(&DirFiles::new(fixture("llama_gqa")).unwrap())).unwrap()
}

fn dir(kind: &str, which: &str) -> String {
    format!("bottleneck/{kind}/{which}")
}

fn config_bytes(kind: &str) -> Vec<u8> {
    std::fs::read(fixture(&dir(kind, "initial_adapter")).join(BN_CONFIG_FILE)).unwrap()
}

fn config_json(kind: &str) -> Value {
    serde_json::from_slice(&config_bytes(kind)).unwrap()
}

fn bn_config(kind: &str) -> BottleneckConfig {
    block_on(BottleneckConfig::load(&DirFiles::new(fixture(&dir(kind, "initial_adapter"))).unwrap()))
        .unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// The fixture adapter_config.json of `kind` with `edit` applied to its `config` object.
fn edited(kind: &str, edit: impl FnOnce(&mut Map<String, Value>)) -> Result<BottleneckConfig, Error> {
    let mut v = config_json(kind);
    edit(v["config"].as_object_mut().unwrap());
    BottleneckConfig::from_value(&v)
}

fn field_of(r: Result<BottleneckConfig, Error>) -> String {
    match r {
        Err(Error::BottleneckConfig { field, .. }) => field,
        other => panic!("expected a BottleneckConfig error, got {other:?}"),
    }
}

/// Every tensor of a safetensors file: name → (dtype, shape, bytes).
type Tensors = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

fn tensors_of(path: &str) -> Tensors {
    let bytes = std::fs::read(fixture(path)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect()
}

/// An adapter folder in memory: the fixture's config of `kind` and `tensors`.
fn memory_adapter(kind: &str, tensors: &Tensors) -> MemoryFiles {
    let views: Vec<(String, TensorView<'_>)> =
        tensors.iter().map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    let mut files = MemoryFiles::new();
    files.insert(BN_CONFIG_FILE, config_bytes(kind));
    files.insert(BN_WEIGHTS_FILE, safetensors::serialize(views, None).unwrap());
    files
}

fn load(files: &MemoryFiles, cfg: &BottleneckConfig) -> Result<BottleneckWeights, Error> {
    block_on(BottleneckWeights::load(files, cfg, &model_config()))
}

fn tensor_error(r: Result<BottleneckWeights, Error>) -> (String, String) {
    match r {
        Err(Error::AdapterTensor { tensor, detail, .. }) => (tensor, detail),
        other => panic!("expected an AdapterTensor error, got {other:?}"),
    }
}

/// Every tensor of `w`, keyed as in the file.
fn flat(w: &BottleneckWeights, name: &str) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    for (&i, l) in &w.layers {
        for site in [BnSite::Attention, BnSite::Output] {
            if let Some(u) = l.site(site) {
                for part in BnPart::ALL {
                    out.insert(webpeft::peft::bottleneck::file::key(i, site, name, part), u.part(part).to_vec());
                }
            }
        }
    }
    out
}

// ---- adapter_config.json

#[test]
fn fixture_configs_parse() {
    let model = model_config();
    for (name, kind) in KINDS {
        let c = bn_config(name);
        assert_eq!(c.kind, kind, "{name}");
        assert_eq!(c.name, "bn");
        assert_eq!(c.model_name.as_deref(), Some("llama_gqa"));
        assert_eq!(c.hidden_size, Some(64));
        assert!(c.leave_out.is_empty());
        assert_eq!(c.dropout, 0.0);
        c.check(&model).unwrap();
        // AdapterHub's presets are what the fixtures were made with.
        let mut preset = BottleneckConfig::new(kind);
        preset.model_name = Some("llama_gqa".into());
        preset.hidden_size = Some(64);
        assert_eq!(c, preset, "{name}");
    }
    let seq = bn_config("seq_bn");
    assert_eq!((seq.reduction_factor, seq.non_linearity, seq.scaling), (16.0, Activation::Relu, 1.0));
    assert_eq!(seq.init_weights, BnInit::Bert);
    let dbl = bn_config("double_seq_bn");
    assert_eq!((dbl.reduction_factor, dbl.non_linearity, dbl.scaling), (16.0, Activation::Silu, 1.0));
    let par = bn_config("par_bn");
    assert_eq!((par.reduction_factor, par.non_linearity, par.scaling), (2.0, Activation::Relu, 4.0));
    assert_eq!(par.init_weights, BnInit::MamAdapter);
    assert_eq!(seq.bottleneck_size(64), 4);
    assert_eq!(par.bottleneck_size(64), 32);
}

#[test]
fn config_round_trips_and_matches_adapterhub_output() {
    let model = model_config();
    for (name, _) in KINDS {
        let c = bn_config(name);
        let text = c.to_json(&model);
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), config_json(name), "{name}");
        // Byte for byte what json.dump(indent=2, sort_keys=True) writes (the fixture
        // script re-wrote the file the same way, adding a final newline).
        assert_eq!(format!("{text}\n").as_bytes(), config_bytes(name).as_slice(), "{name}");
        assert_eq!(BottleneckConfig::from_json(text.as_bytes()).unwrap(), c, "{name}");
    }
    // A config made in webpeft (no model_name) writes null and reads back.
    let mut c = BottleneckConfig::new(BottleneckKind::DoubleSeqBn);
    c.leave_out = vec![1];
    c.reduction_factor = 2.5;
    c.dropout = 0.1;
    c.name = "houlsby_task".into();
    let v = c.to_value(&model);
    assert_eq!(v["model_name"], Value::Null);
    assert_eq!(v["config"]["reduction_factor"], json!(2.5));
    assert_eq!(v["config"]["non_linearity"], json!("swish"));
    let mut back = BottleneckConfig::from_value(&v).unwrap();
    assert_eq!(back.hidden_size, Some(64));
    back.hidden_size = None;
    assert_eq!(back, c);
}

#[test]
fn model_class_follows_the_model() {
    let mut model = model_config();
    model.model_type = webpeft::model::ModelType::Qwen2;
    let v = BottleneckConfig::new(BottleneckKind::SeqBn).to_value(&model);
    assert_eq!(v["model_class"], json!("Qwen2ForCausalLM"));
    assert_eq!(v["model_type"], json!("qwen2"));
    assert_eq!(v["version"], json!("adapters.1.3.0"));
}

#[test]
fn short_form_and_aliases() {
    for (s, kind) in
        [("seq_bn", BottleneckKind::SeqBn), ("houlsby", BottleneckKind::DoubleSeqBn), ("par_bn", BottleneckKind::ParBn)]
    {
        let c = BottleneckConfig::from_value(&json!({"config": s, "name": "a"})).unwrap();
        assert_eq!(c.kind, kind);
        assert_eq!(c.name, "a");
    }
    let r = BottleneckConfig::from_value(&json!({"config": "lora"}));
    assert_eq!(field_of(r), "config");
    let r = BottleneckConfig::from_value(&json!({"config": "compacter"}));
    assert_eq!(field_of(r), "config");
}

#[test]
fn bottleneck_size_is_python_floor_division() {
    let mut c = BottleneckConfig::new(BottleneckKind::SeqBn);
    for (rf, want) in [(16.0, 4), (3.0, 21), (2.5, 25), (0.5, 128), (0.1, 639), (100.0, 1), (64.0, 1), (65.0, 1)] {
        c.reduction_factor = rf;
        assert_eq!(c.bottleneck_size(64), want, "64 // {rf}");
    }
}

#[test]
fn leave_out_is_honoured() {
    let model = model_config();
    let c = edited("seq_bn", |m| {
        m.insert("leave_out".into(), json!([1, 1]));
    })
    .unwrap();
    assert_eq!(c.leave_out, vec![1]);
    assert_eq!(c.adapted_layers(2), vec![0]);
    let keys = BottleneckWeights::expected_keys(&c, &model);
    assert_eq!(keys.len(), 4);
    assert!(keys.keys().all(|k| k.starts_with("model.layers.0.output_adapters.adapters.bn.")));
    // The full fixture has layer 1's tensors: unexpected for this config.
    let files = DirFiles::new(fixture(&dir("seq_bn", "initial_adapter"))).unwrap();
    let r = block_on(BottleneckWeights::load(&files, &c, &model));
    let (tensor, detail) = tensor_error(r);
    assert!(tensor.starts_with("model.layers.1."), "{tensor}");
    assert!(detail.contains("leave_out"), "{detail}");
    // Saved and re-read with the layer left out.
    let w = BottleneckWeights::init(&c, &model, &mut Rng::new(3)).unwrap();
    assert_eq!(w.layers.keys().copied().collect::<Vec<_>>(), vec![0]);
    let mut mem = MemoryFiles::new();
    mem.insert(BN_WEIGHTS_FILE, w.to_safetensors_bytes(&c).unwrap());
    assert_eq!(block_on(BottleneckWeights::load(&mem, &c, &model)).unwrap(), w);
    // Every layer left out, or a layer that does not exist.
    for (lo, want) in [(json!([0, 1]), "leave_out"), (json!([2]), "leave_out")] {
        let c = edited("seq_bn", |m| {
            m.insert("leave_out".into(), lo);
        })
        .unwrap();
        match c.check(&model) {
            Err(Error::BottleneckConfig { field, .. }) => assert_eq!(field, want),
            other => panic!("{other:?}"),
        }
    }
    // A reduction factor so small the bottleneck would not fit in memory.
    let c = edited("seq_bn", |m| {
        m.insert("reduction_factor".into(), json!(1e-12));
    })
    .unwrap();
    match BottleneckWeights::zeros(&c, &model) {
        Err(Error::BottleneckConfig { field, .. }) => assert_eq!(field, "config.reduction_factor"),
        other => panic!("{:?}", other.map(|w| w.size)),
    }
    let r = edited("seq_bn", |m| {
        m.insert("leave_out".into(), json!([-1]));
    });
    assert_eq!(field_of(r), "config.leave_out[0]");
}

#[test]
fn unsupported_options_are_typed_errors() {
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        ("seq_bn", "ln_before", json!(true), "config.ln_before"),
        ("seq_bn", "ln_after", json!(true), "config.ln_after"),
        ("seq_bn", "use_gating", json!(true), "config.use_gating"),
        ("double_seq_bn", "phm_layer", json!(true), "config.phm_layer"),
        ("seq_bn", "stochastic_depth", json!(0.1), "config.stochastic_depth"),
        ("seq_bn", "residual_before_ln", json!("post_add"), "config.residual_before_ln"),
        ("par_bn", "residual_before_ln", json!(false), "config.residual_before_ln"),
        ("seq_bn", "original_ln_before", json!(false), "config.original_ln_before"),
        ("double_seq_bn", "original_ln_before", json!(true), "config.original_ln_before"),
        ("seq_bn", "original_ln_after", json!(false), "config.original_ln_after"),
        ("seq_bn", "non_linearity", json!("leakyrelu"), "config.non_linearity"),
        ("seq_bn", "non_linearity", json!("gelu_new"), "config.non_linearity"),
        ("seq_bn", "architecture", json!("lora"), "config.architecture"),
        ("seq_bn", "architecture", json!("union"), "config.architecture"),
        ("seq_bn", "architecture", json!("prefix_tuning"), "config.architecture"),
        ("seq_bn", "reduction_factor", json!(0), "config.reduction_factor"),
        ("seq_bn", "reduction_factor", json!(-4), "config.reduction_factor"),
        ("seq_bn", "reduction_factor", json!({"1": 8, "default": 16}), "config.reduction_factor"),
        ("seq_bn", "reduction_factor", json!("16"), "config.reduction_factor"),
        ("par_bn", "scaling", json!("learned"), "config.scaling"),
        ("par_bn", "scaling", json!("channel"), "config.scaling"),
        ("seq_bn", "inv_adapter", json!("nice"), "config.inv_adapter"),
        ("seq_bn", "init_weights", json!("xavier"), "config.init_weights"),
        ("seq_bn", "dropout", json!(1.0), "config.dropout"),
        ("seq_bn", "mh_adapter", json!("yes"), "config.mh_adapter"),
        ("seq_bn", "output_adapter", json!(false), "config.mh_adapter"),
        ("par_bn", "mh_adapter", json!(true), "config.mh_adapter"),
    ];
    for (kind, key, value, field) in cases {
        let r = edited(kind, |m| {
            m.insert(key.into(), value.clone());
        });
        assert_eq!(field_of(r), field, "{kind}: {key} = {value}");
    }
    // Missing required flags.
    let r = edited("seq_bn", |m| {
        m.remove("mh_adapter");
    });
    assert_eq!(field_of(r), "config.mh_adapter");
    // Not a wrapper object / not JSON / bad names.
    assert_eq!(field_of(BottleneckConfig::from_json(b"{")), "(file)");
    assert_eq!(field_of(BottleneckConfig::from_json(b"[]")), "(file)");
    assert_eq!(field_of(BottleneckConfig::from_value(&json!({"r": 8}))), "config");
    for bad in [json!(""), json!("a.b"), json!(3)] {
        let mut v = config_json("seq_bn");
        v["name"] = bad;
        assert_eq!(field_of(BottleneckConfig::from_value(&v)), "name");
    }
}

#[test]
fn accepted_variants() {
    // Other activations, scalings, reduction factors and inits that webpeft implements.
    let c = edited("seq_bn", |m| {
        m.insert("non_linearity".into(), json!("gelu"));
        m.insert("scaling".into(), json!(2.0));
        m.insert("reduction_factor".into(), json!(8));
        m.insert("init_weights".into(), json!("houlsby"));
        m.insert("init_weights_seed".into(), json!(42));
        m.insert("unknown_future_key".into(), json!(1));
    })
    .unwrap();
    assert_eq!(c.non_linearity, Activation::Gelu);
    assert_eq!(
        (c.scaling, c.reduction_factor, c.init_weights, c.init_weights_seed),
        (2.0, 8.0, BnInit::Houlsby, Some(42))
    );
    assert_eq!(c.bottleneck_size(64), 8);
    // Legacy files (no "version"): "gelu" meant gelu_new, "gelu_orig" exact GELU.
    let mut v = config_json("seq_bn");
    v.as_object_mut().unwrap().remove("version");
    v["config"]["non_linearity"] = json!("gelu_orig");
    assert_eq!(BottleneckConfig::from_value(&v).unwrap().non_linearity, Activation::Gelu);
    v["config"]["non_linearity"] = json!("gelu");
    assert_eq!(field_of(BottleneckConfig::from_value(&v)), "config.non_linearity");
    // Inert PHM options are kept as read.
    let c = edited("double_seq_bn", |m| {
        m.insert("phm_dim".into(), json!(8));
    })
    .unwrap();
    assert_eq!(c.to_value(&model_config())["config"]["phm_dim"], json!(8));
}

#[test]
fn wrong_hidden_size_is_a_config_error() {
    let mut v = config_json("seq_bn");
    v["hidden_size"] = json!(128);
    let c = BottleneckConfig::from_value(&v).unwrap();
    let model = model_config();
    match c.check(&model) {
        Err(Error::BottleneckConfig { field, .. }) => assert_eq!(field, "hidden_size"),
        other => panic!("{other:?}"),
    }
    let files = DirFiles::new(fixture(&dir("seq_bn", "initial_adapter"))).unwrap();
    assert!(matches!(block_on(BottleneckWeights::load(&files, &c, &model)), Err(Error::BottleneckConfig { .. })));
    v["hidden_size"] = json!(0);
    assert_eq!(field_of(BottleneckConfig::from_value(&v)), "hidden_size");
}

// ---- adapter.safetensors

#[test]
fn fixture_weights_load_exactly() {
    let model = model_config();
    for (name, kind) in KINDS {
        let cfg = bn_config(name);
        for which in ["initial_adapter", "final_adapter"] {
            let files = DirFiles::new(fixture(&dir(name, which))).unwrap();
            let cfg_here = block_on(BottleneckConfig::load(&files)).unwrap();
            assert_eq!(cfg_here, cfg);
            let w = block_on(BottleneckWeights::load(&files, &cfg, &model)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!((w.hidden, w.size), (64, cfg.bottleneck_size(64)));
            assert_eq!(w.layers.len(), 2);
            for l in w.layers.values() {
                assert_eq!(l.attention.is_some(), kind == BottleneckKind::DoubleSeqBn, "{name}");
                assert!(l.output.is_some());
            }
            let file = Fixture::open(&format!("{}/{BN_WEIGHTS_FILE}", dir(name, which)));
            let ours = flat(&w, "bn");
            let mut names = file.names();
            names.sort();
            assert_eq!(ours.keys().cloned().collect::<Vec<_>>(), names, "{name}/{which}");
            for (k, v) in &ours {
                assert_eq!(v, &file.f32(k), "{name}/{which}: {k}");
            }
            if which == "final_adapter" {
                // The trained values the reference run recorded.
                let reference = Fixture::open(&format!("bottleneck/{name}/reference.safetensors"));
                for (k, v) in &ours {
                    assert_eq!(v, &reference.f32(&format!("final.{k}")), "{name}: final.{k}");
                }
            }
        }
    }
}

#[test]
fn save_and_reload() {
    let model = model_config();
    for (name, _) in KINDS {
        let cfg = bn_config(name);
        let d = dir(name, "initial_adapter");
        let files = DirFiles::new(fixture(&d)).unwrap();
        let w = block_on(BottleneckWeights::load(&files, &cfg, &model)).unwrap();
        let bytes = w.to_safetensors_bytes(&cfg).unwrap();
        // The same bytes as adapters' save_file (no metadata, f32, same layout).
        assert_eq!(bytes, std::fs::read(fixture(&d).join(BN_WEIGHTS_FILE)).unwrap(), "{name}");
        let mut mem = MemoryFiles::new();
        mem.insert(BN_WEIGHTS_FILE, bytes);
        assert_eq!(load(&mem, &cfg).unwrap(), w, "{name}");
    }
}

#[test]
fn half_precision_files_load() {
    let cfg = bn_config("double_seq_bn");
    for dtype in [Dtype::F16, Dtype::BF16] {
        let mut t = tensors_of(&format!("{}/{BN_WEIGHTS_FILE}", dir("double_seq_bn", "initial_adapter")));
        let mut want = BTreeMap::new();
        for (k, (d, _, b)) in t.iter_mut() {
            let v: Vec<f32> = bytemuck::pod_collect_to_vec(b);
            let (bytes, back): (Vec<u8>, Vec<f32>) = if dtype == Dtype::F16 {
                let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
                (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|x| x.to_f32()).collect())
            } else {
                let h: Vec<half::bf16> = v.iter().map(|&x| half::bf16::from_f32(x)).collect();
                (bytemuck::cast_slice(&h).to_vec(), h.iter().map(|x| x.to_f32()).collect())
            };
            *d = dtype;
            *b = bytes;
            want.insert(k.clone(), back);
        }
        let w = load(&memory_adapter("double_seq_bn", &t), &cfg).unwrap();
        assert_eq!(flat(&w, "bn"), want, "{dtype:?}");
    }
}

#[test]
fn bad_tensors_are_typed_errors() {
    let name = "double_seq_bn";
    let cfg = bn_config(name);
    let path = format!("{}/{BN_WEIGHTS_FILE}", dir(name, "initial_adapter"));
    let k = "model.layers.1.attention_adapters.adapters.bn.adapter_up.weight";

    // Wrong shape.
    let mut t = tensors_of(&path);
    t.get_mut(k).unwrap().1 = vec![32, 8];
    let (tensor, detail) = tensor_error(load(&memory_adapter(name, &t), &cfg));
    assert_eq!(tensor, k);
    assert!(detail.contains("shape"), "{detail}");

    // Missing key.
    let mut t = tensors_of(&path);
    t.remove(k);
    let (tensor, detail) = tensor_error(load(&memory_adapter(name, &t), &cfg));
    assert_eq!(tensor, k);
    assert!(detail.contains("missing"), "{detail}");

    // Extra key: another adapter name, a stray tensor.
    for extra in ["model.layers.0.output_adapters.adapters.other.adapter_up.bias", "model.layers.0.mlp.up_proj.weight"]
    {
        let mut t = tensors_of(&path);
        t.insert(extra.into(), (Dtype::F32, vec![64], vec![0; 256]));
        let (tensor, detail) = tensor_error(load(&memory_adapter(name, &t), &cfg));
        assert_eq!(tensor, extra);
        assert!(detail.contains("unexpected"), "{detail}");
    }

    // Wrong dtype.
    let mut t = tensors_of(&path);
    let e = t.get_mut(k).unwrap();
    e.0 = Dtype::I32;
    let (tensor, detail) = tensor_error(load(&memory_adapter(name, &t), &cfg));
    assert_eq!(tensor, k);
    assert!(detail.contains("dtype"), "{detail}");

    // A seq_bn config over double_seq_bn weights: the attention-side tensors are unexpected.
    let t = tensors_of(&path);
    let (tensor, detail) = tensor_error(load(&memory_adapter(name, &t), &bn_config("seq_bn")));
    assert!(tensor.contains(".attention_adapters."), "{tensor}");
    assert!(detail.contains("double_seq_bn"), "{detail}");

    // A par_bn config (m = 32) over seq_bn weights (m = 4): wrong shapes.
    let t = tensors_of(&format!("{}/{BN_WEIGHTS_FILE}", dir("seq_bn", "initial_adapter")));
    let (_, detail) = tensor_error(load(&memory_adapter("seq_bn", &t), &bn_config("par_bn")));
    assert!(detail.contains("shape"), "{detail}");

    // No weights file at all.
    let mut files = MemoryFiles::new();
    files.insert(BN_CONFIG_FILE, config_bytes(name));
    assert!(matches!(load(&files, &cfg), Err(Error::File { .. })));

    // Not a safetensors file.
    let mut files = MemoryFiles::new();
    files.insert(BN_WEIGHTS_FILE, b"garbage".to_vec());
    assert!(load(&files, &cfg).is_err());
}

#[test]
fn saving_checks_lengths_and_sites() {
    let model = model_config();
    let cfg = bn_config("double_seq_bn");
    let mut w = BottleneckWeights::zeros(&cfg, &model).unwrap();
    // The wrong kind: double_seq_bn weights under a seq_bn config.
    assert!(matches!(w.to_safetensors_bytes(&bn_config("seq_bn")), Err(Error::AdapterTensor { .. })));
    w.layers.get_mut(&0).unwrap().output.as_mut().unwrap().up_b.pop();
    match w.to_safetensors_bytes(&cfg) {
        Err(Error::AdapterTensor { tensor, .. }) => {
            assert_eq!(tensor, "model.layers.0.output_adapters.adapters.bn.adapter_up.bias")
        }
        other => panic!("{other:?}"),
    }
    w.layers.get_mut(&0).unwrap().output = None;
    assert!(matches!(w.to_safetensors_bytes(&cfg), Err(Error::AdapterTensor { .. })));
}

// ---- initialisation

fn stats(v: &[f32]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// All down/up weights and biases of every unit of `w`.
fn collect(w: &BottleneckWeights) -> [Vec<f32>; 4] {
    let mut out: [Vec<f32>; 4] = Default::default();
    for l in w.layers.values() {
        for u in [&l.attention, &l.output].into_iter().flatten() {
            for (i, part) in BnPart::ALL.into_iter().enumerate() {
                out[i].extend_from_slice(u.part(part));
            }
        }
    }
    out
}

#[test]
fn bert_init_statistics() {
    // 64 → 4 (seq_bn on llama_gqa): N(0, 0.02²) weights, zero biases.
    let model = model_config();
    let cfg = BottleneckConfig::new(BottleneckKind::DoubleSeqBn);
    let w = BottleneckWeights::init(&cfg, &model, &mut Rng::new(7)).unwrap();
    assert_eq!(w.size, 4);
    assert_eq!(w.layers.len(), 2);
    let [dw, db, uw, ub] = collect(&w);
    assert_eq!(dw.len(), 4 * 256);
    for v in [&dw, &uw] {
        let (mean, std) = stats(v);
        // 1024 samples: the mean's std is 0.02/32 = 6.3e-4; the std's is ~2.2 %.
        assert!(mean.abs() < 2.5e-3, "mean {mean}");
        assert!((std - 0.02).abs() < 0.002, "std {std}");
        assert!(v.iter().all(|x| x.abs() < 0.02 * 6.0));
    }
    assert!(db.iter().chain(&ub).all(|&x| x == 0.0));
    // Units differ from each other (one stream of draws), and a seed fixes them.
    let l = &w.layers[&0];
    assert_ne!(l.attention.as_ref().unwrap().down_w, l.output.as_ref().unwrap().down_w);
    assert_eq!(BottleneckWeights::init(&cfg, &model, &mut Rng::new(7)).unwrap(), w);
}

#[test]
fn mam_adapter_init_statistics() {
    let model = model_config();
    let mut cfg = BottleneckConfig::new(BottleneckKind::ParBn);
    cfg.reduction_factor = 16.0; // 64 → 4
    let w = BottleneckWeights::init(&cfg, &model, &mut Rng::new(11)).unwrap();
    assert_eq!(w.size, 4);
    let [dw, db, uw, ub] = collect(&w);
    let bound = 1.0 / 8.0; // kaiming_uniform(a=√5), fan_in 64: 1/√64
    assert!(dw.iter().all(|x| x.abs() <= bound));
    let (mean, std) = stats(&dw);
    assert!(mean.abs() < 0.012, "mean {mean}");
    assert!((std - bound as f64 / 3f64.sqrt()).abs() < 0.006, "std {std}");
    assert!(dw.iter().any(|x| x.abs() > 0.9 * bound), "fills its range");
    assert!(uw.iter().chain(&db).chain(&ub).all(|&x| x == 0.0), "up and biases are zero");
}

#[test]
fn houlsby_init_statistics() {
    let model = model_config();
    let mut cfg = BottleneckConfig::new(BottleneckKind::SeqBn);
    cfg.init_weights = BnInit::Houlsby;
    let w = BottleneckWeights::init(&cfg, &model, &mut Rng::new(5)).unwrap();
    let [dw, db, uw, ub] = collect(&w);
    for v in [&dw, &uw] {
        assert!(v.iter().all(|x| x.abs() <= 0.02));
        // N(0, 0.01²) truncated at ±2σ has std 0.01 · 0.8796.
        let (mean, std) = stats(v);
        assert!(mean.abs() < 1.5e-3, "mean {mean}");
        assert!((std - 0.008796).abs() < 0.0012, "std {std}");
    }
    assert!(db.iter().chain(&ub).all(|&x| x == 0.0));
}

fn lora_weights(r: usize) -> LoraWeights {
    let lora = LoraConfig::new(r, 16.0, TargetModules::List(vec!["q_proj".into(), "down_proj".into()])).unwrap();
    LoraWeights::zeros(&lora, &model_config()).unwrap()
}

#[test]
fn lora_kaiming_init_as_peft() {
    let mut w = lora_weights(8);
    init_lora(&mut w, InitLoraWeights::Kaiming, &mut Rng::new(1)).unwrap();
    for (name, p) in &w.modules {
        let bound = 1.0 / (p.in_features as f32).sqrt();
        assert!(p.a.iter().all(|x| x.abs() <= bound), "{name}");
        let (mean, std) = stats(&p.a);
        let want = bound as f64 / 3f64.sqrt();
        assert!(mean.abs() < 0.1 * want, "{name}: mean {mean}");
        assert!((std - want).abs() < 0.06 * want, "{name}: std {std} vs {want}");
        assert!(p.b.iter().all(|&x| x == 0.0), "{name}: B is zero");
    }
    // down_proj has in = 128 (intermediate), q_proj in = 64.
    assert_eq!(w.modules["model.layers.0.mlp.down_proj"].in_features, 128);
}

#[test]
fn lora_gaussian_init_as_peft() {
    let r = 4;
    let mut w = lora_weights(r);
    init_lora(&mut w, InitLoraWeights::Gaussian, &mut Rng::new(2)).unwrap();
    let a: Vec<f32> = w.modules.values().flat_map(|p| p.a.iter().copied()).collect();
    let (mean, std) = stats(&a);
    // normal_(std = 1/r).
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((std - 0.25).abs() < 0.01, "std {std}");
    assert!(w.modules.values().all(|p| p.b.iter().all(|&x| x == 0.0)));
}

#[test]
fn lora_random_init_as_nn_linear() {
    let r = 8;
    let mut w = lora_weights(r);
    init_lora(&mut w, InitLoraWeights::Random, &mut Rng::new(3)).unwrap();
    let bound_b = 1.0 / (r as f32).sqrt();
    for (name, p) in &w.modules {
        let bound_a = 1.0 / (p.in_features as f32).sqrt();
        assert!(p.a.iter().all(|x| x.abs() <= bound_a), "{name}");
        assert!(p.b.iter().all(|x| x.abs() <= bound_b), "{name}");
        let (_, std) = stats(&p.b);
        let want = bound_b as f64 / 3f64.sqrt();
        assert!((std - want).abs() < 0.08 * want, "{name}: B std {std} vs {want}");
    }
    // Deterministic per seed.
    let mut again = lora_weights(r);
    init_lora(&mut again, InitLoraWeights::Random, &mut Rng::new(3)).unwrap();
    assert_eq!(again, w);
}
