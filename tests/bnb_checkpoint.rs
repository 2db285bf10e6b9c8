//! bitsandbytes 4-bit checkpoints (tests/fixtures/bnb4: what `save_pretrained`
//! writes for llama_gqa loaded with `BitsAndBytesConfig(load_in_4bit=True)`,
//! NF4 and FP4, with and without double quantization) load with their bytes as
//! stored: every weight dequantizes exactly as bitsandbytes' `dequantize_4bit`,
//! the logits match transformers on those weights, LoRA and DoRA train
//! through them as through their dequantized twin, and each broken part is a
//! typed error naming the tensor.

mod common;
use common::{block_on, dequantized_twin, fixture, fixture_adapter, gpu, lora_batch, max_abs_diff, Fixture};
use std::collections::BTreeMap;
use webpeft::kernels::quant::Layout;
use webpeft::model::{DirFiles, MemoryFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::quant::{quantize_4bit, FourBit, QuantFormat};
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::{Error, Gpu};

const FOLDERS: [(&str, FourBit, bool); 4] = [
    ("nf4", FourBit::Nf4, false),
    ("nf4_dq", FourBit::Nf4, true),
    ("fp4", FourBit::Fp4, false),
    ("fp4_dq", FourBit::Fp4, true),
];
const WEIGHTS: [&str; 2] = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"];

fn load(gpu: &Gpu, folder: &str) -> Model {
    let files = DirFiles::new(fixture(&format!("bnb4/{folder}"))).unwrap();
    block_on(Model::load(gpu, &files, QuantFormat::Nf4)).unwrap_or_else(|e| panic!("{folder}: {e}"))
}

/// The weight `name` of a loaded model.
fn weight<'m>(model: &'m Model, name: &str) -> &'m webpeft::kernels::qmatmul::QWeight {
    let i: usize = name.split('.').nth(2).unwrap().parse().unwrap();
    let l = &model.layers[i];
    if name.contains("q_proj") {
        &l.self_attn.q_proj.weight
    } else {
        &l.mlp.down_proj.weight
    }
}

#[test]
fn every_folder_loads_its_bytes_and_gives_transformers_logits() {
    let gpu = gpu();
    let fx = Fixture::open("bnb4/reference.safetensors");
    let ids: Vec<u32> = fx.i64("input_ids").iter().map(|&v| v as u32).collect();
    for (folder, kind, double) in FOLDERS {
        let model = load(gpu, folder);
        assert_eq!(model.format, QuantFormat::Nf4);
        for name in WEIGHTS {
            let w = weight(&model, name);
            let webpeft::kernels::qmatmul::ChunkData::Quant(p) = &w.chunks[0].data else { panic!("{name} is f32") };
            assert_eq!(p.layout, Layout::four_bit(kind, double), "{folder} {name}");
            let got = block_on(w.to_f32(gpu)).unwrap();
            assert_eq!(got, fx.f32(&format!("{folder}.{name}")), "{folder} {name}: bitsandbytes' dequantize_4bit");
        }
        let rows: Vec<Vec<u32>> = ids.chunks(fx.shape("input_ids")[1]).map(|r| r.to_vec()).collect();
        let (logits, _) = block_on(model.logits_and_loss(gpu, &rows, None)).unwrap();
        let d = max_abs_diff(&logits, &fx.f32(&format!("{folder}.logits")));
        eprintln!("{folder}: logits max |diff| vs transformers {d:.2e}");
        assert!(d <= 5e-6, "{folder}: logits differ by {d:e}");
    }
}

/// Quantizing llama_gqa's f32 weights on load as bitsandbytes' CPU quantizer
/// does: the 4-bit codes and f32 absmaxes equal the NF4 and FP4 folders'
/// bytes exactly, and with double quantization the offset, the nested scales
/// and every 8-bit absmax code too.
#[test]
fn quantizing_on_load_gives_bitsandbytes_bytes() {
    let f32_files = DirFiles::new(fixture("llama_gqa")).unwrap();
    let f32_ckpt = block_on(webpeft::model::Checkpoint::open(&f32_files)).unwrap();
    let mut checked = 0;
    for (folder, kind, double) in FOLDERS {
        let files = DirFiles::new(fixture(&format!("bnb4/{folder}"))).unwrap();
        let ckpt = block_on(webpeft::model::Checkpoint::open(&files)).unwrap();
        for i in 0..2 {
            for p in [
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                let name = format!("model.layers.{i}.{p}.weight");
                let w = block_on(f32_ckpt.read_f32(&name)).unwrap();
                let ours = quantize_4bit(&w, kind, double);
                let info = f32_ckpt.get(&name).unwrap();
                let (out, inp) = (info.shape[0], info.shape[1]);
                let theirs = block_on(webpeft::model::bnb::read_4bit(&ckpt, &name, out, inp)).unwrap();
                assert_eq!(ours.codes, theirs.codes, "{folder} {name}: 4-bit codes");
                match (&ours.double, &theirs.double) {
                    (None, None) => assert_eq!(ours.absmax, theirs.absmax, "{folder} {name}: absmax"),
                    (Some(a), Some(b)) => {
                        assert_eq!(a.map, b.map, "{folder} {name}: the dynamic map");
                        assert_eq!(a.offset.to_bits(), b.offset.to_bits(), "{folder} {name}: offset");
                        assert_eq!(a.nested_absmax, b.nested_absmax, "{folder} {name}: nested absmax");
                        assert_eq!(a.codes, b.codes, "{folder} {name}: 8-bit absmax codes");
                        checked += a.codes.len();
                    }
                    _ => panic!("{folder} {name}: double quantization differs"),
                }
            }
        }
    }
    assert_eq!(checked, 2688, "double-quantized absmaxes compared (14 weights of two folders)");
}

/// PEFT's LoRA (all seven projections) or DoRA fixture adapter for llama_gqa.
fn lora(gpu: &Gpu, model: &Model, dora: bool) -> Adapter {
    let dir = if dora { "dora/llama_gqa/initial_adapter" } else { "lora/initial_adapter" };
    fixture_adapter(gpu, model, dir, "lora")
}

fn first_step(gpu: &Gpu, model: &Model, dora: bool) -> (f32, Vec<Vec<f32>>) {
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut t = Trainer::new(gpu, lora(gpu, model, dora), opt, 0).unwrap();
    let s = block_on(t.step(gpu, model, &[lora_batch()], 1e-2)).unwrap();
    let s2 = block_on(t.step(gpu, model, &[lora_batch()], 1e-2)).unwrap();
    assert!(s2.loss.is_finite());
    (s.loss, t.gradients().tensors().iter().map(|(_, g)| block_on(g.to_vec::<f32>(gpu)).unwrap()).collect())
}

/// LoRA and DoRA (whose norm reads the dequantized weight) on the
/// double-quantized FP4 base: loss and gradients equal those on the f32
/// model holding the same dequantized weights.
#[test]
fn lora_and_dora_train_through_a_double_quantized_base() {
    let gpu = gpu();
    let quant = load(gpu, "fp4_dq");
    let twin = dequantized_twin(gpu, &quant, "llama_gqa");
    for dora in [false, true] {
        let (lq, gq) = first_step(gpu, &quant, dora);
        let (lf, gf) = first_step(gpu, &twin, dora);
        let worst = gq.iter().zip(&gf).map(|(a, b)| max_abs_diff(a, b)).fold(0.0f32, f32::max);
        eprintln!("dora={dora}: loss {lq} vs {lf}, gradients max |diff| {worst:e}");
        assert!((lq - lf).abs() <= 1e-5 && worst <= 1e-4, "dora={dora}: {lq} vs {lf}, {worst:e}");
    }
}

/// The folder nf4_dq in memory with `edit` applied to its tensors.
fn edited(edit: impl Fn(&mut BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>)) -> MemoryFiles {
    let dir = fixture("bnb4/nf4_dq");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: BTreeMap<_, _> =
        st.tensors().into_iter().map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec()))).collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let mut files = MemoryFiles::new();
    files.insert("config.json", std::fs::read(dir.join("config.json")).unwrap());
    files.insert("model.safetensors", safetensors::serialize(views, None).unwrap());
    files
}

fn load_err(files: &MemoryFiles) -> Error {
    block_on(Model::load(gpu(), files, QuantFormat::Nf4)).unwrap_err()
}

#[test]
fn broken_parts_are_typed_errors_naming_the_tensor() {
    let q = "model.layers.0.self_attn.q_proj.weight";
    let cases: Vec<(&str, MemoryFiles, String)> = vec![
        (
            "missing quant_state",
            edited(|t| {
                t.remove(&format!("{q}.quant_state.bitsandbytes__nf4"));
            }),
            q.to_string(),
        ),
        (
            "absmax of the wrong length",
            edited(|t| {
                let e = t.get_mut(&format!("{q}.absmax")).unwrap();
                e.1 = vec![e.1[0] - 1];
                e.2.pop();
            }),
            format!("{q}.absmax"),
        ),
        (
            "unknown quant type",
            edited(|t| {
                let e = t.get_mut(&format!("{q}.quant_state.bitsandbytes__nf4")).unwrap();
                let json = String::from_utf8(e.2.clone()).unwrap().replace("\"nf4\"", "\"int4\"");
                e.1 = vec![json.len()];
                e.2 = json.into_bytes();
            }),
            format!("{q}.quant_state.bitsandbytes__nf4"),
        ),
        (
            "a quant_map that is not NF4's",
            edited(|t| {
                let e = t.get_mut(&format!("{q}.quant_map")).unwrap();
                e.2[0] ^= 1;
            }),
            format!("{q}.quant_map"),
        ),
        (
            "missing nested absmax",
            edited(|t| {
                t.remove(&format!("{q}.nested_absmax"));
            }),
            format!("{q}.nested_absmax"),
        ),
        (
            "an 8-bit (LLM.int8) weight",
            edited(|t| {
                t.insert(format!("{q}.SCB"), (safetensors::Dtype::F32, vec![1], vec![0; 4]));
            }),
            format!("{q}.SCB"),
        ),
    ];
    for (what, files, tensor) in cases {
        let err = load_err(&files);
        eprintln!("{what}: {err}");
        match &err {
            Error::Checkpoint { tensor: t, .. } => assert_eq!(t, &tensor, "{what}: {err}"),
            other => panic!("{what}: {other}"),
        }
    }
}

/// Quantizing a float checkpoint on load with bitsandbytes' options: FP4 and
/// double quantization land in the kernels' layouts with exactly the CPU
/// quantizer's values, the memory plan counts the bytes the GPU holds, and
/// the options are refused where they cannot apply.
#[test]
fn fp4_and_double_quant_on_load() {
    use webpeft::quant::FourBitOptions;
    use webpeft::train::plan::{weight_bytes, weight_bytes_with};
    let gpu = gpu();
    let files = DirFiles::new(fixture("llama_gqa")).unwrap();
    let ckpt = block_on(webpeft::model::Checkpoint::open(&files)).unwrap();
    for (kind, double_quant) in [(FourBit::Fp4, false), (FourBit::Nf4, true), (FourBit::Fp4, true)] {
        let opts = FourBitOptions { kind, double_quant };
        let model = block_on(Model::load_with_options(gpu, &files, QuantFormat::Nf4, opts, &mut |_| {})).unwrap();
        for name in WEIGHTS {
            let w = weight(&model, name);
            let webpeft::kernels::qmatmul::ChunkData::Quant(p) = &w.chunks[0].data else { panic!("{name} is f32") };
            assert_eq!(p.layout, Layout::four_bit(kind, double_quant));
            let want = quantize_4bit(&block_on(ckpt.read_f32(name)).unwrap(), kind, double_quant).dequantize();
            assert_eq!(block_on(w.to_f32(gpu)).unwrap(), want, "{kind:?} dq={double_quant} {name}");
        }
        assert_eq!(model.bytes(), weight_bytes_with(&model.config, QuantFormat::Nf4, opts), "{opts:?}");
    }
    let plain = weight_bytes(&block_on(webpeft::model::Config::load(&files)).unwrap(), QuantFormat::Nf4);
    eprintln!("llama_gqa NF4 weights: {plain} bytes");
    let dq = FourBitOptions { double_quant: true, ..Default::default() };
    let err = block_on(Model::load_with_options(gpu, &files, QuantFormat::Q8_0, dq, &mut |_| {})).unwrap_err();
    assert!(err.to_string().contains("load as nf4"), "{err}");
    let bnb = DirFiles::new(fixture("bnb4/nf4")).unwrap();
    let err = block_on(Model::load_with_options(gpu, &bnb, QuantFormat::Nf4, dq, &mut |_| {})).unwrap_err();
    assert!(err.to_string().contains("already quantized"), "{err}");
}

/// `bnb_4bit_compute_dtype` is read from the folder's quantization_config.
#[test]
fn the_folder_names_its_compute_dtype() {
    use webpeft::quant::ComputeDtype;
    let files = DirFiles::new(fixture("bnb4/nf4")).unwrap();
    let config = block_on(webpeft::model::Config::load(&files)).unwrap();
    assert_eq!(config.bnb_4bit_compute_dtype.as_deref(), Some("float32"));
    assert_eq!(config.bnb_compute_dtype(), Some(ComputeDtype::F32));
    let json = std::fs::read_to_string(fixture("bnb4/nf4/config.json")).unwrap().replace("\"float32\"", "\"float16\"");
    assert_eq!(
        webpeft::model::Config::from_json(json.as_bytes()).unwrap().bnb_compute_dtype(),
        Some(ComputeDtype::F16)
    );
    let plain = block_on(webpeft::model::Config::load(&DirFiles::new(fixture("llama_gqa")).unwrap())).unwrap();
    assert_eq!(plain.bnb_compute_dtype(), None);
}
