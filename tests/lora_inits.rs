//! LoRA's initialisations against PEFT 0.21.2 (tests/fixtures/lora_inits,
//! made by `make_fixtures.py lora_inits`): r 4, alpha 8 on all seven
//! projections of the tiny Llama with `init_lora_weights` "gaussian",
//! "pissa", "pissa_niter_4", "olora" and "loftq" (loftq_iter 1 and 3).
//!
//! - Our PiSSA, OLoRA and LoftQ give PEFT's A and B up to a sign per rank (a
//!   singular or QR vector's sign is arbitrary; flipping row i of A with
//!   column i of B changes neither B·A nor AdamW's trajectory), PEFT's
//!   residual base weights, and PEFT's logits within 1e-4. `pissa_niter_4`
//!   draws its own random test matrix, so it is held only loosely to PEFT's
//!   and to the exact SVD's.
//! - From PEFT's initial adapter on PEFT's base: the loss, every gradient and
//!   10 AdamW steps (the shared check of every method).
//! - On an NF4 base the init is computed from the checkpoint's float weights
//!   and the residual quantized; LoftQ's base is bit-for-bit PEFT's NF4.
//! - The saved PiSSA/OLoRA adapter is PEFT's conversion to a rank-2r LoRA of
//!   the original model, and PEFT loads what we saved with our logits
//!   (`lora_inits/webpeft_saved`, checked by the fixture script; rewrite it
//!   with `WEBPEFT_WRITE_FIXTURES=1 cargo test --test lora_inits`, then
//!   rerun `make_fixtures.py lora_inits`).

mod common;

use std::collections::BTreeMap;

use common::{
    adapted_logits, adapter_with, block_on, check_peft_training, fixture, fixture_batch, fixture_init, fixture_model,
    gpu, load_files, max_abs_diff, Fixture,
};
use webpeft::kernels::qmatmul::QWeight;
use webpeft::model::llama::block::Block;
use webpeft::model::{DirFiles, MemoryFiles, Model};
use webpeft::peft::adapter::{Adapter, AdapterConfig};
use webpeft::peft::lora::LOFTQ_BASE_DIR;
use webpeft::peft::{InitLoraWeights, LoraConfig, TargetModules, LORA_MODULES};
use webpeft::quant::QuantFormat;
use webpeft::train::trainer::{OptimizerConfig, Trainer};
use webpeft::Error;

/// The fixture's inits: (folder, init).
const INITS: [(&str, InitLoraWeights); 6] = [
    ("gaussian", InitLoraWeights::Gaussian),
    ("pissa", InitLoraWeights::Pissa),
    ("pissa_niter_4", InitLoraWeights::PissaNiter(4)),
    ("olora", InitLoraWeights::Olora),
    ("loftq", InitLoraWeights::Loftq { iter: 1 }),
    ("loftq_iter3", InitLoraWeights::Loftq { iter: 3 }),
];

fn config(init: InitLoraWeights) -> LoraConfig {
    let mut c = LoraConfig::new(4, 8.0, TargetModules::List(LORA_MODULES.map(String::from).to_vec())).unwrap();
    c.init_lora_weights = init;
    c
}

fn reference(name: &str) -> Fixture {
    Fixture::open(&format!("lora_inits/{name}/reference.safetensors"))
}

fn weight_mut<'a>(b: &'a mut Block, proj: &str) -> &'a mut QWeight {
    let (a, m) = (&mut b.self_attn, &mut b.mlp);
    match proj {
        "q_proj" => &mut a.q_proj.weight,
        "k_proj" => &mut a.k_proj.weight,
        "v_proj" => &mut a.v_proj.weight,
        "o_proj" => &mut a.o_proj.weight,
        "gate_proj" => &mut m.gate_proj.weight,
        "up_proj" => &mut m.up_proj.weight,
        _ => &mut m.down_proj.weight,
    }
}

/// Every adapted Linear's module name and weight, read back as f32.
fn base_weights(model: &Model) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (i, b) in model.layers.iter().enumerate() {
        for (name, lin) in b.linears() {
            out.push((format!("model.layers.{i}.{name}"), block_on(lin.weight.to_f32(gpu())).unwrap()));
        }
    }
    out
}

/// The f32 model with PEFT's base weights (`base.<module>.weight`) in its Linears.
fn model_with_peft_base(fx: &Fixture) -> Model {
    let mut model = fixture_model(gpu(), "llama_gqa");
    for (i, b) in model.layers.iter_mut().enumerate() {
        for proj in LORA_MODULES {
            let w = weight_mut(b, proj);
            let block = if matches!(proj, "gate_proj" | "up_proj" | "down_proj") { "mlp" } else { "self_attn" };
            let values = fx.f32(&format!("base.model.layers.{i}.{block}.{proj}.weight"));
            *w = QWeight::from_f32(gpu(), &values, w.rows, w.cols, QuantFormat::F32).unwrap();
        }
    }
    model
}

/// Our fresh adapter of `init` on `model` (whose weights it replaces).
fn ours(model: &mut Model, init: InitLoraWeights, files: Option<&DirFiles>) -> webpeft::Result<Adapter> {
    block_on(Adapter::new_adjusting_base(gpu(), AdapterConfig::Lora(config(init)), model, files, None, 7))
}

fn values(ad: &Adapter) -> BTreeMap<String, Vec<f32>> {
    common::adapter_values(gpu(), ad).into_iter().collect()
}

/// The largest difference of our A and B from PEFT's `want` after flipping
/// each rank's sign (row i of A and column i of B together) to PEFT's.
fn factors_up_to_sign(got: &BTreeMap<String, Vec<f32>>, want: &BTreeMap<String, Vec<f32>>, r: usize) -> f32 {
    let mut worst = 0.0f32;
    for (key, a) in got.iter().filter(|(k, _)| k.ends_with("lora_A.weight")) {
        let bkey = key.replace("lora_A", "lora_B");
        let (b, wa, wb) = (&got[&bkey], &want[key], &want[&bkey]);
        let inp = a.len() / r;
        for i in 0..r {
            let row = |v: &[f32]| v[i * inp..(i + 1) * inp].to_vec();
            let dot: f32 = row(a).iter().zip(row(wa)).map(|(x, y)| x * y).sum();
            let s = if dot < 0.0 { -1.0 } else { 1.0 };
            let flipped_a: Vec<f32> = row(a).iter().map(|x| s * x).collect();
            let col = |v: &[f32]| v.iter().skip(i).step_by(r).copied().collect::<Vec<f32>>();
            let flipped_b: Vec<f32> = col(b).iter().map(|x| s * x).collect();
            worst = worst.max(max_abs_diff(&flipped_a, &row(wa))).max(max_abs_diff(&flipped_b, &col(wb)));
        }
    }
    worst
}

#[test]
fn pissa_olora_and_loftq_give_peft_s_factors_residuals_and_logits() {
    let gpu = gpu();
    for (name, init) in INITS.into_iter().filter(|(n, _)| !matches!(*n, "gaussian" | "pissa_niter_4")) {
        let fx = reference(name);
        let mut model = fixture_model(gpu, "llama_gqa");
        let ad = ours(&mut model, init, None).unwrap();
        let want = fixture_init(&fx);
        let ab = factors_up_to_sign(&values(&ad), &want, 4);
        let base = base_weights(&model)
            .iter()
            .map(|(m, w)| max_abs_diff(w, &fx.f32(&format!("base.{m}.weight"))))
            .fold(0.0f32, f32::max);
        let ids = fixture_batch(&fx, 0..2).input_ids;
        let logits = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &ids), &fx.f32("logits"));
        eprintln!("{name}: A, B up to sign max |diff| {ab:e}; base weights {base:e}; logits {logits:e}");
        // f64 decompositions against torch's f32 ones: A and B agree to a few f32 roundings.
        assert!(ab <= 1e-4, "{name}: factors {ab:e}");
        assert!(base <= 1e-5, "{name}: base weights {base:e}");
        assert!(logits <= 1e-4, "{name}: logits {logits:e}");
    }
}

#[test]
fn randomized_pissa_is_close_to_peft_s_and_to_the_exact_svd() {
    // svd_lowrank(W, q = r, niter = 4) without oversampling: both its draws
    // and ours approximate the top-4 subspace; the residuals differ from the
    // exact PiSSA's by what the last singular directions are off.
    let gpu = gpu();
    let fx = reference("pissa_niter_4");
    let exact = reference("pissa");
    let mut model = fixture_model(gpu, "llama_gqa");
    let ad = ours(&mut model, InitLoraWeights::PissaNiter(4), None).unwrap();
    let (mut to_peft, mut to_exact, mut peft_to_exact) = (0.0f32, 0.0f32, 0.0f32);
    for (m, w) in base_weights(&model) {
        let key = format!("base.{m}.weight");
        to_peft = to_peft.max(max_abs_diff(&w, &fx.f32(&key)));
        to_exact = to_exact.max(max_abs_diff(&w, &exact.f32(&key)));
        peft_to_exact = peft_to_exact.max(max_abs_diff(&fx.f32(&key), &exact.f32(&key)));
    }
    let ids = fixture_batch(&fx, 0..2).input_ids;
    let logits = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &ids), &fx.f32("logits"));
    eprintln!(
        "pissa_niter_4 residual: vs PEFT's {to_peft:e}, vs exact PiSSA's {to_exact:e} (PEFT's vs exact {peft_to_exact:e}); logits vs PEFT {logits:e}"
    );
    assert!(to_exact <= 2.0 * peft_to_exact.max(1e-3), "ours is further from the exact SVD than PEFT's: {to_exact:e}");
    // base + s·B·A is W whichever subspace was found: the logits agree as closely as PiSSA's.
    assert!(logits <= 1e-4, "{logits:e}");
}

#[test]
fn gaussian_draws_peft_s_distribution() {
    // N(0, (1/r)²) for A, B zeros: PEFT's draws (torch's generator) and ours
    // (the crate's) have the same standard deviation within sampling error
    // (about 5,000 values: 1 %).
    let gpu = gpu();
    let fx = reference("gaussian");
    let mut model = fixture_model(gpu, "llama_gqa");
    let ad = ours(&mut model, InitLoraWeights::Gaussian, None).unwrap();
    let std = |m: &BTreeMap<String, Vec<f32>>, part: &str| {
        let v: Vec<f64> =
            m.iter().filter(|(k, _)| k.contains(part)).flat_map(|(_, v)| v.iter().map(|&x| x as f64)).collect();
        (v.iter().map(|x| x * x).sum::<f64>() / v.len() as f64).sqrt()
    };
    let (got, want) = (values(&ad), fixture_init(&fx));
    eprintln!("gaussian: std of A ours {:.4}, PEFT's {:.4} (1/r = 0.25)", std(&got, "lora_A"), std(&want, "lora_A"));
    for s in [std(&got, "lora_A"), std(&want, "lora_A")] {
        assert!((s - 0.25).abs() < 0.01, "{s}");
    }
    assert_eq!((std(&got, "lora_B"), std(&want, "lora_B")), (0.0, 0.0));
    let d =
        max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &fixture_batch(&fx, 0..2).input_ids), &fx.f32("logits"));
    assert!(d <= 1e-4, "a gaussian adapter starts as the base model: {d:e}");
}

#[test]
fn training_from_peft_s_initial_adapter_on_peft_s_base_matches() {
    let gpu = gpu();
    for (name, _) in INITS {
        eprintln!("{name}:");
        let fx = reference(name);
        let model = model_with_peft_base(&fx);
        let init = fixture_init(&fx);
        let fresh = || adapter_with(gpu, &model, AdapterConfig::Lora(config(InitLoraWeights::Kaiming)), &init);
        let d = max_abs_diff(
            &adapted_logits(gpu, &model, Some(&fresh()), &fixture_batch(&fx, 0..2).input_ids),
            &fx.f32("logits"),
        );
        assert!(d <= 1e-4, "{name}: logits {d:e}");
        check_peft_training(gpu, &model, &fresh, &fx, &|ad| common::adapter_values(gpu, ad));
    }
}

#[test]
fn on_an_nf4_base_the_init_starts_from_the_float_weights() {
    let gpu = gpu();
    let files = DirFiles::new(fixture("llama_gqa")).unwrap();
    let load = |format| block_on(Model::load(gpu, &files, format)).unwrap();
    // PiSSA: the residual of the float weights, quantized; LoftQ: PEFT's NF4 base exactly.
    for (name, init) in [("pissa", InitLoraWeights::Pissa), ("loftq", InitLoraWeights::Loftq { iter: 1 })] {
        let fx = reference(name);
        let mut model = load(QuantFormat::Nf4);
        let ad = ours(&mut model, init, Some(&files)).unwrap();
        let mut worst = 0.0f32;
        for (m, w) in base_weights(&model) {
            let want = webpeft::quant::quantize_nf4(&fx.f32(&format!("base.{m}.weight"))).dequantize();
            worst = worst.max(max_abs_diff(&w, &want));
        }
        let ab = factors_up_to_sign(&values(&ad), &fixture_init(&fx), 4);
        eprintln!("{name} on NF4: base vs NF4(PEFT's base) max |diff| {worst:e}; A, B {ab:e}");
        // PiSSA's residual differs from PEFT's by f32 roundings, and so do the
        // blocks' absmax; a code that flipped would be off by a whole level.
        let tol = if name == "pissa" { 1e-5 } else { 1e-6 };
        assert!(worst <= tol, "{name}: {worst:e}");
        assert!(ab <= 1e-4, "{name}: {ab:e}");
    }
    // Without the files there are no float weights to start from.
    let mut model = load(QuantFormat::Nf4);
    let e = ours(&mut model, InitLoraWeights::Olora, None).unwrap_err();
    assert!(matches!(&e, Error::AdapterUnsupported { field, .. } if field == "init_lora_weights"), "{e}");
    // LoftQ's base is NF4: a Q8_0 base would quantize it twice.
    let mut model = load(QuantFormat::Q8_0);
    let e = ours(&mut model, InitLoraWeights::Loftq { iter: 1 }, Some(&files)).unwrap_err();
    assert!(e.to_string().contains("q8_0"), "{e}");
    // A pre-quantized folder has no float weights.
    let checkpoint = block_on(webpeft::model::Checkpoint::open(&files)).unwrap();
    let model_config = model.config.clone();
    let packed =
        block_on(webpeft::model::quantized::quantize_checkpoint(&checkpoint, &model_config, QuantFormat::Nf4)).unwrap();
    let mut pre = MemoryFiles::new();
    pre.insert("config.json", std::fs::read(fixture("llama_gqa/config.json")).unwrap());
    pre.insert("model.safetensors", packed);
    let mut model = block_on(Model::load(gpu, &pre, QuantFormat::Nf4)).unwrap();
    let e = block_on(Adapter::new_adjusting_base(
        gpu,
        AdapterConfig::Lora(config(InitLoraWeights::Pissa)),
        &mut model,
        Some(&pre),
        None,
        7,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("pre-quantized"), "{e}");
}

/// The tensors of a `model.safetensors`'s bytes, as f32.
fn tensors_of(bytes: &[u8]) -> BTreeMap<String, Vec<f32>> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            (name, bytemuck::pod_collect_to_vec(view.data()))
        })
        .collect()
}

/// The LoftQ base (`export_loftq_base`): PEFT's replaced weights in every adapted Linear, every other tensor
/// the checkpoint's own (on an NF4 base too, where a Linear left out of the adapter is read from the files,
/// not dequantized), and the folder loads back to the same logits.
#[test]
fn the_loftq_base_is_peft_s_and_the_rest_the_checkpoint_s() {
    use webpeft::peft::lora::merge::export_loftq_base;
    let gpu = gpu();
    let files = DirFiles::new(fixture("llama_gqa")).unwrap();
    let checkpoint = block_on(webpeft::model::Checkpoint::open(&files)).unwrap();
    let original = |name: &str| block_on(checkpoint.read_f32(name)).unwrap();
    let fx = reference("loftq");
    let peft_bases: BTreeMap<String, Vec<f32>> =
        fx.names().into_iter().filter_map(|n| Some((n.strip_prefix("base.")?.to_string(), fx.f32(&n)))).collect();
    assert_eq!(peft_bases.len(), 14);
    let batch = fixture_batch(&fx, 0..2);

    // f32 base, all seven projections: against PEFT's LoftQ base.
    let mut model = fixture_model(gpu, "llama_gqa");
    let Adapter::Lora(lora) = ours(&mut model, InitLoraWeights::Loftq { iter: 1 }, None).unwrap() else { panic!() };
    let bytes = block_on(export_loftq_base(gpu, &model, &lora, &files)).unwrap();
    let written = tensors_of(&bytes);
    assert_eq!(written.len(), checkpoint.names().count(), "every tensor of the checkpoint, once");
    let (mut replaced, mut kept) = (0.0f32, 0usize);
    for (name, values) in &written {
        match peft_bases.get(name) {
            Some(peft) => replaced = replaced.max(max_abs_diff(values, peft)),
            None => {
                assert_eq!(values, &original(name), "{name} is the checkpoint's");
                kept += 1;
            }
        }
    }
    eprintln!("loftq base: 14 replaced Linears vs PEFT's max |diff| {replaced:e}; {kept} tensors the checkpoint's");
    assert!(replaced <= 1e-6 && kept == written.len() - 14, "{replaced:e}, {kept}");
    // As a folder it is the model the adapter trained on.
    let mut folder = MemoryFiles::new();
    folder.insert("config.json", std::fs::read(fixture("llama_gqa/config.json")).unwrap());
    folder.insert("model.safetensors", bytes);
    let reloaded = block_on(Model::load(gpu, &folder, QuantFormat::F32)).unwrap();
    let ad = Adapter::Lora(lora);
    let d = max_abs_diff(
        &adapted_logits(gpu, &reloaded, Some(&ad), &batch.input_ids),
        &adapted_logits(gpu, &model, Some(&ad), &batch.input_ids),
    );
    assert_eq!(d, 0.0, "the reloaded base's logits");

    // NF4 base, q_proj and v_proj only: the other Linears (and the embedding, the head) from the files.
    let mut model = block_on(Model::load(gpu, &files, QuantFormat::Nf4)).unwrap();
    let mut c = config(InitLoraWeights::Loftq { iter: 1 });
    c.target_modules = TargetModules::List(vec!["q_proj".into(), "v_proj".into()]);
    let ad = block_on(Adapter::new_adjusting_base(gpu, AdapterConfig::Lora(c), &mut model, Some(&files), None, 7));
    let Adapter::Lora(lora) = ad.unwrap() else { panic!() };
    let written = tensors_of(&block_on(export_loftq_base(gpu, &model, &lora, &files)).unwrap());
    let held: BTreeMap<String, Vec<f32>> = base_weights(&model).into_iter().collect();
    for (name, values) in &written {
        let module = name.strip_suffix(".weight").unwrap_or(name);
        if module.ends_with("q_proj") || module.ends_with("v_proj") {
            assert_eq!(values, &held[module], "{name}: the NF4 base the adapter trains on");
            assert_ne!(values, &original(name), "{name} was replaced");
        } else {
            assert_eq!(values, &original(name), "{name} is the checkpoint's, not its NF4 copy");
        }
    }
    // Only a LoftQ adapter has a base of its own to write.
    let mut model = fixture_model(gpu, "llama_gqa");
    let Adapter::Lora(pissa) = ours(&mut model, InitLoraWeights::Pissa, None).unwrap() else { panic!() };
    assert!(block_on(export_loftq_base(gpu, &model, &pissa, &files)).is_err());
}

#[test]
fn saved_adapters_load_in_peft_on_the_original_model() {
    let gpu = gpu();
    let root = fixture("lora_inits/webpeft_saved");
    let write = std::env::var_os("WEBPEFT_WRITE_FIXTURES").is_some();
    let fx = reference("pissa");
    let batch = fixture_batch(&fx, 0..2);
    let original = fixture_model(gpu, "llama_gqa");
    let mut logits_out: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    let check: serde_json::Value = if write {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&std::fs::read(root.join("python_check.json")).expect("run make_fixtures.py lora_inits"))
            .unwrap()
    };
    for (name, init) in [
        ("pissa", InitLoraWeights::Pissa),
        ("olora", InitLoraWeights::Olora),
        ("loftq", InitLoraWeights::Loftq { iter: 1 }),
    ] {
        let mut model = fixture_model(gpu, "llama_gqa");
        let ad = ours(&mut model, init, None).unwrap();
        let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 0.0, ..Default::default() };
        let mut trainer = Trainer::new(gpu, ad, opt, 0).unwrap();
        for _ in 0..10 {
            block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
        }
        let trained = adapted_logits(gpu, &model, Some(&trainer.adapter), &batch.input_ids);
        let files = block_on(trainer.adapter.to_files(gpu, &model.config)).unwrap();
        let saved: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
        assert_eq!(saved["init_lora_weights"], serde_json::json!(true), "{name}");
        // PiSSA/OLoRA: a rank-8 LoRA of the original model gives the trained model's logits.
        if name != "loftq" {
            assert_eq!(saved["r"], serde_json::json!(8), "{name}");
            let back = load_files(gpu, &files, &original.config);
            let d = max_abs_diff(&adapted_logits(gpu, &original, Some(&back), &batch.input_ids), &trained);
            eprintln!("{name}: the converted adapter on the original model vs the trained one {d:e}");
            assert!(d <= 1e-4, "{name}: {d:e}");
        }
        let dir = root.join(name);
        // LoftQ's adapter goes with the base it trained on: the folder the CLI writes beside it.
        let base_dir = root.join(LOFTQ_BASE_DIR);
        let mut base_files = Vec::new();
        if name == "loftq" {
            let Adapter::Lora(lora) = &trainer.adapter else { unreachable!() };
            let llama = DirFiles::new(fixture("llama_gqa")).unwrap();
            let base = block_on(webpeft::peft::lora::merge::export_loftq_base(gpu, &model, lora, &llama)).unwrap();
            base_files.push(("model.safetensors".to_string(), base));
            base_files.push(("config.json".to_string(), std::fs::read(fixture("llama_gqa/config.json")).unwrap()));
        }
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            for (file, bytes) in &files {
                std::fs::write(dir.join(file), bytes).unwrap();
            }
            if !base_files.is_empty() {
                std::fs::create_dir_all(&base_dir).unwrap();
                for (file, bytes) in &base_files {
                    std::fs::write(base_dir.join(file), bytes).unwrap();
                }
            }
            logits_out.insert(name.to_string(), trained);
            continue;
        }
        let py = &check["adapters"][name];
        for (file, _) in &files {
            let committed = std::fs::read(dir.join(file)).unwrap();
            assert_eq!(py["sha256"][file].as_str(), Some(common::sha256_hex(&committed).as_str()), "{name}/{file}");
        }
        // The base Python loaded is the one we write now.
        for (file, bytes) in base_files.drain(..) {
            let committed = std::fs::read(base_dir.join(&file)).unwrap();
            assert!(committed == bytes, "{LOFTQ_BASE_DIR}/{file} is what export_loftq_base writes");
            let sha = check["bases"][LOFTQ_BASE_DIR]["sha256"][&file].as_str();
            assert_eq!(sha, Some(common::sha256_hex(&committed).as_str()), "{LOFTQ_BASE_DIR}/{file}");
        }
        // Python loaded the committed folder with the committed logits; ours now are those.
        let want = Fixture::open("lora_inits/webpeft_saved/logits.safetensors").f32(name);
        let d = max_abs_diff(&trained, &want);
        eprintln!("{name}: logits vs committed {d:e}; PeftModel.from_pretrained's max |diff| {}", py["max_abs_diff"]);
        assert!(d <= 1e-4, "{name}: {d:e}");
        assert!(py["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{name}");
    }
    if write {
        let t = fx.shape("input_ids")[1];
        let bytes: BTreeMap<String, Vec<u8>> =
            logits_out.iter().map(|(k, v)| (k.clone(), bytemuck::cast_slice::<f32, u8>(v).to_vec())).collect();
        let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
            .iter()
            .map(|(k, b)| {
                (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, t, 384], b).unwrap())
            })
            .collect();
        std::fs::write(root.join("logits.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    }
}

#[test]
fn init_lora_weights_parses_and_writes_as_peft() {
    let parse = |init: serde_json::Value, loftq: serde_json::Value| {
        let mut v = serde_json::to_value(config(InitLoraWeights::Kaiming).to_value()).unwrap();
        v["init_lora_weights"] = init;
        v["loftq_config"] = loftq;
        LoraConfig::from_value(&v)
    };
    let none = serde_json::json!({});
    for (name, init) in INITS {
        let c = config(init);
        let back = LoraConfig::from_value(&c.to_value()).unwrap();
        assert_eq!(back.init_lora_weights, init, "{name}");
    }
    assert_eq!(
        config(InitLoraWeights::Loftq { iter: 3 }).to_value()["loftq_config"],
        serde_json::json!({"loftq_bits": 4, "loftq_iter": 3})
    );
    assert_eq!(
        parse("pissa_niter_16".into(), none.clone()).unwrap().init_lora_weights,
        InitLoraWeights::PissaNiter(16)
    );
    for other in ["eva", "corda", "orthogonal", "mica", "lora_ga"] {
        match parse(other.into(), none.clone()) {
            Err(Error::AdapterUnsupported { field, detail }) => {
                assert_eq!(field, "init_lora_weights");
                assert!(detail.contains(other), "{detail}");
            }
            r => panic!("{other}: {r:?}"),
        }
    }
    let e = parse("pissa_niter_x".into(), none.clone()).unwrap_err();
    assert!(matches!(&e, Error::AdapterConfig { field, .. } if field == "init_lora_weights"), "{e}");
    let e = parse("loftq".into(), none).unwrap_err();
    assert!(matches!(&e, Error::AdapterConfig { field, .. } if field == "loftq_config"), "{e}");
    let e = parse("loftq".into(), serde_json::json!({"loftq_bits": 8, "loftq_iter": 1})).unwrap_err();
    assert!(matches!(&e, Error::AdapterUnsupported { field, .. } if field == "loftq_config.loftq_bits"), "{e}");
    let e = parse("loftq".into(), serde_json::json!({"loftq_bits": 4, "loftq_iter": 0})).unwrap_err();
    assert!(matches!(&e, Error::AdapterConfig { field, .. } if field == "loftq_config.loftq_iter"), "{e}");
    // DoRA on a replaced base is not supported.
    let mut c = config(InitLoraWeights::Pissa);
    c.use_dora = true;
    assert!(matches!(c.validate(), Err(Error::AdapterUnsupported { .. })));
    // Adapter::new cannot replace a base it does not have.
    let model = fixture_model(gpu(), "llama_gqa");
    assert!(Adapter::new(gpu(), AdapterConfig::Lora(config(InitLoraWeights::Olora)), &model.config, 0).is_err());
}

#[test]
fn the_memory_plan_counts_the_init_s_transient_copies() {
    use webpeft::train::plan::{plan_memory, PlanAdapter, PlanInput};
    let model = fixture_model(gpu(), "llama_gqa");
    let targets: Vec<String> = LORA_MODULES.map(String::from).to_vec();
    let input = |adjusts_base| PlanInput {
        quant: QuantFormat::Nf4,
        four_bit: Default::default(),
        adapter: PlanAdapter::Lora {
            r: 4,
            targets: targets.clone(),
            dropout: false,
            dora: false,
            adjusts_base,
            outer_params: 0,
        },
        batch: 1,
        seq: 8,
        grad_accum: 1,
        checkpointing: false,
        kernels: gpu().kernel_family(),
    };
    let (plain, pissa) =
        (plan_memory(&model.config, &input(false), 1 << 27), plan_memory(&model.config, &input(true), 1 << 27));
    // The widest Linear (gate/up/down, 128 × 64): its NF4 copy and its f32 rows.
    let widest = QuantFormat::Nf4.bytes_for(128, 64) + QuantFormat::F32.bytes_for(128, 64);
    assert_eq!((plain.init_bytes, pissa.init_bytes), (0, widest as u64));
    assert!(pissa.total_bytes >= pissa.weight_bytes + pissa.adapter_bytes + pissa.init_bytes);
}
