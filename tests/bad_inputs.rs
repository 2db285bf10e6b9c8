//! The README's bad-input table, one test per row: each bad input gives a
//! typed error whose message says what was wrong and where. Each test prints
//! the message a user sees (`cargo test --test bad_inputs -- --nocapture`).

mod common;

use common::{block_on, fixture, gpu};
use webpeft::bench::train::{llama_config, random_model_files};
use webpeft::model::{ByteSource, Config, DirFiles, MemoryFiles, Model, ModelFiles};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::{BottleneckConfig, LoraConfig, TargetModules};
use webpeft::quant::{ComputeDtype, QuantFormat};
use webpeft::train::data::{parse_jsonl, parse_jsonl_bytes, Batch, DataOptions, Dataset};
use webpeft::train::run::{Run, RunConfig};
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{Error, Gpu};

fn show<T: std::fmt::Debug>(row: &str, r: Result<T, Error>) -> Error {
    let e = r.expect_err(row);
    eprintln!("ROW | {row} | {e}");
    e
}

/// A tiny random model's files, with `edit` applied to (header JSON, data).
fn model_files(edit: impl FnOnce(&mut serde_json::Value, &mut Vec<u8>)) -> MemoryFiles {
    let config = llama_config(384, 64, 128, 2, 4, 2);
    let files = random_model_files(&config, 1).unwrap();
    let bytes = block_on(async { files.open("model.safetensors").await.unwrap().read_all().await.unwrap() });
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let mut data = bytes[8 + n..].to_vec();
    edit(&mut header, &mut data);
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    let mut files = MemoryFiles::new();
    files.insert("config.json", config.into_bytes());
    files.insert("model.safetensors", out);
    files
}

fn load(files: &MemoryFiles) -> Result<Model, Error> {
    block_on(Model::load(gpu(), files, QuantFormat::F32))
}

fn offsets(h: &serde_json::Value, name: &str) -> (u64, u64) {
    let o = &h[name]["data_offsets"];
    (o[0].as_u64().unwrap(), o[1].as_u64().unwrap())
}

const Q: &str = "model.layers.0.self_attn.q_proj.weight";
const K: &str = "model.layers.0.self_attn.k_proj.weight";

#[test]
fn header_claiming_a_size_beyond_the_file() {
    let mut files = model_files(|_, _| {});
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend(b"{}      ");
    files.insert("model.safetensors", bytes);
    let e = show("a safetensors header claiming a size beyond the file", load(&files));
    assert!(matches!(e, Error::File { .. }) && e.to_string().contains("runs past the end"), "{e}");
}

#[test]
fn tensor_offsets_out_of_range() {
    let files = model_files(|h, _| {
        let (a, b) = offsets(h, Q);
        h[Q]["data_offsets"] = serde_json::json!([a + 1_000_000_000, b + 1_000_000_000]);
    });
    let e = show("tensor offsets past the end of the file", load(&files));
    assert!(e.to_string().contains(Q), "{e}");
}

#[test]
fn overlapping_tensor_offsets() {
    let files = model_files(|h, _| {
        let (a, b) = offsets(h, K);
        let (qa, _) = offsets(h, Q);
        let _ = (a, b);
        h[K]["data_offsets"] = serde_json::json!([qa, qa + (b - a)]);
    });
    let e = show("two tensors whose byte ranges overlap", load(&files));
    assert!(e.to_string().contains("overlap"), "{e}");
}

#[test]
fn nan_or_inf_in_weights() {
    let files = model_files(|h, data| {
        let (a, _) = offsets(h, Q);
        data[a as usize + 40..a as usize + 44].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = show("a NaN (or inf) in a weight", load(&files));
    assert!(matches!(e, Error::Checkpoint { ref tensor, .. } if tensor == Q) && e.to_string().contains("NaN"), "{e}");
}

#[test]
fn a_weight_beyond_f16_range_for_an_f16_base() {
    let files = model_files(|h, data| {
        let (a, _) = offsets(h, Q);
        data[a as usize + 40..a as usize + 44].copy_from_slice(&1e5f32.to_le_bytes());
    });
    // An f32 base holds it; an f16 one would have to store an infinity.
    assert!(load(&files).is_ok());
    let e = show(
        "a weight beyond f16's range, loaded as an f16 base",
        block_on(Model::load(gpu(), &files, QuantFormat::F16)),
    );
    assert!(
        matches!(e, Error::Checkpoint { ref tensor, .. } if tensor == Q) && e.to_string().contains("index 10"),
        "{e}"
    );
}

#[test]
fn f16_compute_for_a_weight_past_its_range() {
    const DOWN: &str = "model.layers.0.mlp.down_proj.weight";
    let files = model_files(|h, data| {
        let (a, _) = offsets(h, DOWN);
        data[a as usize + 40..a as usize + 44].copy_from_slice(&1500f32.to_le_bytes());
    });
    let gpu = gpu();
    let mut model = block_on(Model::load(gpu, &files, QuantFormat::F16)).unwrap();
    if gpu.info().shader_f16 {
        let e =
            show("f16 compute for a Linear with a weight past ±1000", model.set_compute_dtype(gpu, ComputeDtype::F16));
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains(DOWN), "{e}");
    }
    // Nothing changed: the model still computes in f32.
    assert_eq!(model.compute_dtype(), ComputeDtype::F32);
    let e = "bf16".parse::<ComputeDtype>().map_err(Error::from);
    let e = show("an unknown compute dtype", e);
    assert!(e.to_string().contains("\"bf16\""), "{e}");
}

#[test]
fn a_dtype_that_is_not_a_float() {
    let files = model_files(|h, _| h[Q]["dtype"] = serde_json::json!("I32"));
    let e = show("a weight stored as an integer dtype", load(&files));
    assert!(e.to_string().contains(Q), "{e}");
}

#[test]
fn an_empty_model_file() {
    let mut files = model_files(|_, _| {});
    files.insert("model.safetensors", Vec::new());
    let e = show("an empty model.safetensors", load(&files));
    assert!(matches!(e, Error::File { .. }), "{e}");
}

#[test]
fn unsupported_model_type_in_config() {
    let json = llama_config(384, 64, 128, 2, 4, 2).replace("\"llama\"", "\"gpt2\"");
    let e = show("config.json of an unsupported architecture", Config::from_json(json.as_bytes()));
    assert!(matches!(e, Error::Config { .. }), "{e}");
}

#[test]
fn absurd_sizes_in_config() {
    let json =
        llama_config(384, 64, 128, 2, 4, 2).replace("\"num_hidden_layers\":2", "\"num_hidden_layers\":4294967295");
    assert!(json.contains("4294967295"), "{json}");
    let e = show("config.json declaring 4,294,967,295 layers", Config::from_json(json.as_bytes()));
    assert!(matches!(e, Error::Config { ref field, .. } if field == "num_hidden_layers"), "{e}");
    let json = llama_config(1 << 40, 1 << 20, 128, 2, 4, 2);
    let e = show("config.json whose embedding would hold 2^60 values", Config::from_json(json.as_bytes()));
    assert!(matches!(e, Error::Config { ref field, .. } if field == "vocab_size"), "{e}");
}

#[test]
fn tokenizer_vocab_bigger_than_the_embedding() {
    let tok =
        block_on(webpeft::model::tokenizer::Tokenizer::load(&DirFiles::new(fixture("tokenizer")).unwrap())).unwrap();
    let config = Config::from_json(llama_config(300, 64, 128, 2, 4, 2).as_bytes()).unwrap();
    let e = show("a tokenizer with more tokens than the model's embedding", tok.check_model(&config));
    assert!(matches!(e, Error::Tokenizer { .. }) && e.to_string().contains("384 tokens"), "{e}");
}

fn llama() -> Model {
    block_on(Model::load(gpu(), &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::F32)).unwrap()
}

#[test]
fn a_sequence_longer_than_max_position_embeddings() {
    let m = llama();
    let e = show("a sequence longer than max_position_embeddings", m.input_ids(gpu(), &[vec![1; 129]]));
    assert!(matches!(e, Error::Shape { .. }) && e.to_string().contains("128"), "{e}");
}

#[test]
fn a_token_id_outside_the_vocabulary() {
    let m = llama();
    let e = show("a token id ≥ vocab_size in pre-tokenized data", m.input_ids(gpu(), &[vec![1, 2, 384]]));
    assert!(e.to_string().contains("384"), "{e}");
}

#[test]
fn an_adapter_trained_for_another_base() {
    // The fixture LoRA was trained for hidden 64; this base has hidden 128.
    let gpu = gpu();
    let files = random_model_files(&llama_config(384, 128, 256, 2, 4, 2), 2).unwrap();
    let other = block_on(Model::load(gpu, &files, QuantFormat::F32)).unwrap();
    let dir = DirFiles::new(fixture("lora/initial_adapter")).unwrap();
    let e = show(
        "a LoRA adapter trained for another base (hidden 64 vs 128)",
        block_on(Adapter::load(gpu, &dir, &other.config)),
    );
    assert!(matches!(e, Error::AdapterTensor { .. }), "{e}");
}

#[test]
fn a_lora_target_the_model_lacks() {
    let m = llama();
    let c = LoraConfig::new(4, 8.0, TargetModules::List(vec!["c_attn".into()])).unwrap();
    let e = show("a LoRA on a module the model lacks", Adapter::new_lora(gpu(), c, &m.config, 0));
    assert!(matches!(e, Error::AdapterConfig { .. }) && e.to_string().contains("c_attn"), "{e}");
}

#[test]
fn lora_rank_zero() {
    let e = show("LoRA r = 0", LoraConfig::new(0, 8.0, TargetModules::AllLinear));
    assert!(matches!(e, Error::AdapterConfig { ref field, .. } if field == "r"), "{e}");
}

#[test]
fn an_absurd_lora_rank() {
    let m = llama();
    let c = LoraConfig::new(1000, 8.0, TargetModules::AllLinear).unwrap();
    let e = show("LoRA r larger than the layer", Adapter::new_lora(gpu(), c, &m.config, 0));
    assert!(
        matches!(e, Error::AdapterConfig { ref field, .. } if field == "r") && e.to_string().contains("1000"),
        "{e}"
    );
}

#[test]
fn an_adapter_config_of_another_peft_type() {
    let e = show(
        "adapter_config.json of a PEFT method read as LoRA (IA3)",
        LoraConfig::from_json(br#"{"peft_type": "IA3", "r": 8}"#),
    );
    assert!(matches!(e, Error::AdapterConfig { ref field, .. } if field == "peft_type"), "{e}");
}

#[test]
fn an_adapter_folder_of_a_method_webpeft_does_not_load() {
    let gpu = gpu();
    let config = Config::from_json(&std::fs::read(fixture("llama_gqa/config.json")).unwrap()).unwrap();
    let mut files = MemoryFiles::new();
    files.insert("adapter_config.json", br#"{"peft_type": "LOHA", "r": 8}"#.to_vec());
    files.insert(
        "adapter_model.safetensors",
        std::fs::read(fixture("lora/initial_adapter/adapter_model.safetensors")).unwrap(),
    );
    let e = show(
        "an adapter folder of a PEFT method webpeft does not load (LoHa)",
        block_on(Adapter::load(gpu, &files, &config)),
    );
    assert!(matches!(e, Error::AdapterUnsupported { ref field, .. } if field == "peft_type"), "{e}");
}

#[test]
fn a_p_tuning_folder_with_an_lstm_encoder() {
    let gpu = gpu();
    let config = Config::from_json(&std::fs::read(fixture("llama_gqa/config.json")).unwrap()).unwrap();
    let dir = fixture("p_tuning/llama_gqa/initial_adapter");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    json["encoder_reparameterization_type"] = "LSTM".into();
    let mut files = MemoryFiles::new();
    files.insert("adapter_config.json", serde_json::to_vec(&json).unwrap());
    files.insert("adapter_model.safetensors", std::fs::read(dir.join("adapter_model.safetensors")).unwrap());
    let e = show("a P-tuning folder with PEFT's LSTM encoder", block_on(Adapter::load(gpu, &files, &config)));
    assert!(
        matches!(e, Error::AdapterUnsupported { ref field, .. } if field == "encoder_reparameterization_type"),
        "{e}"
    );
}

#[test]
fn a_zero_reduction_factor() {
    let mut v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("bottleneck/seq_bn/initial_adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    v["config"]["reduction_factor"] = serde_json::json!(0);
    let e = show("a bottleneck reduction_factor of 0", BottleneckConfig::from_value(&v));
    assert!(matches!(e, Error::BottleneckConfig { ref field, .. } if field.contains("reduction_factor")), "{e}");
}

#[test]
fn a_malformed_jsonl_line() {
    let e = show(
        "a malformed JSONL line",
        parse_jsonl("data.jsonl", "{\"input_ids\": [1, 2]}\n{\"input_ids\": [1,\n", None),
    );
    assert!(matches!(e, Error::Data { line: 2, .. }), "{e}");
}

#[test]
fn invalid_utf8_in_text_data() {
    let bytes = b"{\"input_ids\": [1, 2]}\n{\"text\": \"caf\xe9\"}\n";
    let e = show("text data that is not UTF-8", parse_jsonl_bytes("data.jsonl", bytes, None));
    assert!(matches!(e, Error::Data { line: 2, .. }) && e.to_string().contains("UTF-8"), "{e}");
}

#[test]
fn an_empty_dataset_file() {
    let e = show("an empty dataset file", parse_jsonl("data.jsonl", "", None));
    assert!(matches!(e, Error::EmptyDataset { .. }), "{e}");
}

#[test]
fn a_dataset_whose_every_label_is_masked() {
    let e = show(
        "a dataset whose every label is masked",
        parse_jsonl("data.jsonl", "{\"input_ids\": [1, 2, 3], \"labels\": [-100, -100, -100]}\n", None),
    );
    assert!(matches!(e, Error::EmptyDataset { .. }), "{e}");
}

fn run_with(lr: f64, batch_size: usize) -> Result<Run, Error> {
    let gpu = gpu();
    let m = llama();
    let examples = parse_jsonl("d", "{\"input_ids\": [1, 2, 3, 4]}\n{\"input_ids\": [5, 6, 7]}\n", None).unwrap();
    let opts = DataOptions { seq_len: 8, batch_size, ..Default::default() };
    let ds = Dataset::new("d", examples, &opts, 0).unwrap();
    let a = Adapter::new_lora(gpu, LoraConfig::new(2, 4.0, TargetModules::AllLinear).unwrap(), &m.config, 0).unwrap();
    let t = Trainer::new(gpu, a, OptimizerConfig::default(), 0).unwrap();
    Run::new(ds, t, &RunConfig { lr, steps: Some(2), ..Default::default() })
}

#[test]
fn a_learning_rate_of_zero_or_below() {
    for lr in [0.0, -1e-4] {
        let e = show(&format!("learning rate {lr}"), run_with(lr, 1));
        assert!(matches!(e, Error::InvalidArgument { .. }) && e.to_string().contains("learning rate"), "{e}");
    }
}

#[test]
fn a_batch_bigger_than_the_dataset() {
    let e = show("a batch bigger than the dataset", run_with(1e-3, 5));
    assert!(e.to_string().contains("larger than the dataset's 2 rows"), "{e}");
}

#[test]
fn a_training_checkpoint_for_another_model() {
    let gpu = gpu();
    let m = llama();
    let a = Adapter::new_lora(gpu, LoraConfig::new(2, 4.0, TargetModules::AllLinear).unwrap(), &m.config, 0).unwrap();
    let t = Trainer::new(gpu, a, OptimizerConfig::default(), 0).unwrap();
    let bytes =
        block_on(webpeft::train::checkpoint::save_checkpoint(gpu, &t, &m.config, &serde_json::json!({}))).unwrap();
    let other = Config::from_json(llama_config(384, 128, 256, 2, 4, 2).as_bytes()).unwrap();
    let e = show(
        "a training checkpoint for another model",
        webpeft::train::checkpoint::load_checkpoint(gpu, &bytes, &other),
    );
    assert!(matches!(e, Error::File { .. }), "{e}");
}

#[test]
fn an_unknown_quantization_name() {
    let e = show("an unknown quantization name", "q3".parse::<QuantFormat>().map_err(Error::from));
    assert!(e.to_string().contains("q3"), "{e}");
}

#[test]
fn labels_outside_the_vocabulary_in_a_batch() {
    let gpu = gpu();
    let m = llama();
    let a = Adapter::new_lora(gpu, LoraConfig::new(2, 4.0, TargetModules::AllLinear).unwrap(), &m.config, 0).unwrap();
    let mut t = Trainer::new(gpu, a, OptimizerConfig::default(), 0).unwrap();
    let b = Batch::new(vec![vec![1, 2, 3]], vec![vec![1, 2, 999]]);
    let e = show("a label outside the vocabulary", block_on(t.step(gpu, &m, &[b], 1e-3)));
    assert!(e.to_string().contains("999"), "{e}");
}

#[test]
fn a_model_too_big_for_the_device_is_refused_before_loading() {
    let json = llama_config(128256, 2048, 8192, 16, 32, 8);
    let config = Config::from_json(json.as_bytes()).unwrap();
    let plan = webpeft::train::plan::plan_memory(
        &config,
        &webpeft::train::plan::PlanInput {
            quant: QuantFormat::Nf4,
            four_bit: Default::default(),
            adapter: webpeft::train::plan::PlanAdapter::Lora {
                r: 8,
                targets: vec!["q_proj".into()],
                dropout: false,
                dora: false,
                adjusts_base: false,
                outer_params: 0,
            },
            batch: 8,
            seq: 2048,
            grad_accum: 1,
            checkpointing: false,
            kernels: gpu().kernel_family(),
        },
        Gpu::max_binding_bytes(gpu()),
    );
    eprintln!(
        "ROW | a model and batch too big for the device's limits | plan: fits false, largest buffer {} B over the {} B binding limit",
        plan.largest_buffer_bytes, plan.binding_limit_bytes
    );
    assert!(!plan.fits);
}

/// The RoPE scalings transformers has and webpeft does not compute, and
/// sliding layers a config gives no window.
#[test]
fn a_rope_scaling_or_sliding_layers_webpeft_cannot_follow() {
    let mut config: serde_json::Value = serde_json::from_str(&llama_config(384, 64, 128, 2, 4, 2)).unwrap();
    config["rope_scaling"] = serde_json::json!({"rope_type": "longrope", "factor": 4.0});
    let e = show("a RoPE scaling webpeft does not compute", Config::from_value(&config));
    assert!(e.to_string().contains("\"longrope\""), "{e}");
    config["rope_scaling"] = serde_json::Value::Null;
    config["model_type"] = serde_json::json!("qwen2");
    config["layer_types"] = serde_json::json!(["sliding_attention", "full_attention"]);
    let e = show("sliding layers with no window", Config::from_value(&config));
    assert!(e.to_string().contains("there is no window"), "{e}");
}
