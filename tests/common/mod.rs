//! Shared by the native GPU tests: one device per test binary, seeded inputs,
//! and blocking on the async API (natively only).
#![allow(dead_code)]

pub mod attention;

use std::sync::OnceLock;

use webpeft::util::rng::Rng;
use webpeft::Gpu;

/// The test device, created once per test binary. Tests fail (never skip)
/// when no adapter exists, and print which adapter and backend they ran on.
/// `WEBPEFT_TEST_KERNELS=gpu` gives it the real-GPU kernel family, so a
/// whole test file checks those kernels against its fixtures too.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let kernels = match std::env::var("WEBPEFT_TEST_KERNELS").as_deref() {
            Ok("gpu") => webpeft::KernelFamily::Gpu,
            Ok("cpu") => webpeft::KernelFamily::Cpu,
            _ => webpeft::KernelFamily::Auto,
        };
        let options = webpeft::GpuOptions { kernels, ..Default::default() };
        let gpu = block_on(Gpu::with_options(options)).unwrap_or_else(|e| panic!("no GPU for the tests: {e}"));
        // Straight to stderr, past the test harness's capture, so every run
        // shows which adapter and backend it used.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "webpeft tests on: {}, {:?} kernels", gpu.describe(), gpu.kernel_family());
        gpu
    })
}

/// A second device that runs the real-GPU kernel family
/// ([`webpeft::KernelFamily::Gpu`]: blocked GEMM, GEMV, flash attention)
/// whatever the adapter is, so lavapipe checks those kernels too.
pub fn gpu_family() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let options = webpeft::GpuOptions { kernels: webpeft::KernelFamily::Gpu, ..Default::default() };
        let gpu = block_on(Gpu::with_options(options)).unwrap_or_else(|e| panic!("no GPU for the tests: {e}"));
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "webpeft tests on: {}, {:?} kernels", gpu.describe(), gpu.kernel_family());
        gpu
    })
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    pollster::block_on(f)
}

/// `n` values from N(0, 1), seeded.
pub fn randn(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// `n` values uniform in [lo, hi), seeded.
pub fn uniform(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| lo + (hi - lo) * rng.uniform() as f32).collect()
}

/// Asserts |got − want| ≤ abs + rel·|want| everywhere, after printing the largest difference.
pub fn close_to(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got.iter().zip(want).map(|(g, w)| (g - w).abs() / (abs + rel * w.abs())).fold(0.0, f32::max);
    eprintln!("{what}: max |diff| {:e}", max_abs_diff(got, want));
    assert!(worst <= 1.0, "{what}: got {got:?}, want {want:?}");
}

/// Path of a committed fixture under tests/fixtures.
pub fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(path)
}

/// A tensor from a fixture safetensors file: its shape and raw bytes.
pub struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    pub fn open(path: &str) -> Fixture {
        let p = fixture(path);
        Fixture { bytes: std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display())) }
    }

    fn view(&self, name: &str) -> safetensors::tensor::TensorView<'_> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("fixture parses");
        st.tensor(name).unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"))
    }

    pub fn names(&self) -> Vec<String> {
        let st = safetensors::SafeTensors::deserialize(&self.bytes).expect("fixture parses");
        st.names().into_iter().map(|s| s.to_string()).collect()
    }

    pub fn shape(&self, name: &str) -> Vec<usize> {
        self.view(name).shape().to_vec()
    }

    pub fn raw(&self, name: &str) -> Vec<u8> {
        self.view(name).data().to_vec()
    }

    pub fn f32(&self, name: &str) -> Vec<f32> {
        let v = self.view(name);
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
        bytemuck::pod_collect_to_vec(v.data())
    }

    pub fn i64(&self, name: &str) -> Vec<i64> {
        let v = self.view(name);
        assert_eq!(v.dtype(), safetensors::Dtype::I64, "{name}");
        bytemuck::pod_collect_to_vec(v.data())
    }
}

/// The batch of the LoRA fixture (tests/fixtures/lora/reference.safetensors).
pub fn lora_batch() -> webpeft::train::data::Batch {
    let fx = Fixture::open("lora/reference.safetensors");
    let t = fx.shape("input_ids")[1];
    webpeft::train::data::Batch::new(
        fx.i64("input_ids").chunks(t).map(|r| r.iter().map(|&v| v as u32).collect()).collect(),
        fx.i64("labels").chunks(t).map(|r| r.iter().map(|&v| v as i32).collect()).collect(),
    )
}

/// The largest |a[i] − b[i]| (the slices must have one length).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A fixture's training batch: rows `rows` of its `input_ids` and `labels` (B, T).
pub fn fixture_batch(fx: &Fixture, rows: std::ops::Range<usize>) -> webpeft::train::data::Batch {
    let t = fx.shape("input_ids")[1];
    let (ids, labels) = (fx.i64("input_ids"), fx.i64("labels"));
    webpeft::train::data::Batch::new(
        rows.clone().map(|r| ids[r * t..(r + 1) * t].iter().map(|&v| v as u32).collect()).collect(),
        rows.map(|r| labels[r * t..(r + 1) * t].iter().map(|&v| v as i32).collect()).collect(),
    )
}

/// The logits (B·T·V) of `ids` through `model`, with `adapter` when given.
pub fn adapted_logits(
    gpu: &Gpu,
    model: &webpeft::model::Model,
    adapter: Option<&webpeft::peft::Adapter>,
    ids: &[Vec<u32>],
) -> Vec<f32> {
    let ids = model.input_ids(gpu, ids).unwrap();
    let mut rec = webpeft::gpu::Recorder::new(gpu);
    let (logits, _) = model.forward_adapted(&mut rec, &ids, webpeft::peft::adapter::hooks_of(adapter)).unwrap();
    rec.submit().unwrap();
    block_on(logits.to_vec::<f32>(gpu)).unwrap()
}

/// The logits of `ids` through the KV cache, `split` tokens first and the
/// rest after (positions before the row's own, `before`, are the adapter's:
/// prompt or prefix tuning), against one full forward: the largest difference.
pub fn cached_vs_full(
    gpu: &Gpu,
    model: &webpeft::model::Model,
    adapter: &webpeft::peft::Adapter,
    ids: &[u32],
    split: usize,
    before: usize,
) -> f32 {
    let full = adapted_logits(gpu, model, Some(adapter), &[ids.to_vec()]);
    let cache = webpeft::model::llama::KvCache::new(gpu, model, 1, before + ids.len()).unwrap();
    let mut rec = webpeft::gpu::Recorder::new(gpu);
    let part = |rec: &mut webpeft::gpu::Recorder, from: usize, to: usize| {
        let t = model.input_ids(gpu, &[ids[from..to].to_vec()]).unwrap();
        model.forward_cached_all(rec, &t, &cache, from, adapter).unwrap()
    };
    let (a, b) = (part(&mut rec, 0, split), part(&mut rec, split, ids.len()));
    rec.submit().unwrap();
    let mut cached = block_on(a.to_vec::<f32>(gpu)).unwrap();
    cached.extend(block_on(b.to_vec::<f32>(gpu)).unwrap());
    max_abs_diff(&cached, &full)
}

/// The files `adapter` writes against PEFT's folder `dir`: the same
/// `adapter_config.json` (as JSON) and tensor names; `each` gets every
/// tensor's name, ours and PEFT's. Returns our files.
fn compare_files_with_peft(
    gpu: &Gpu,
    adapter: &webpeft::peft::Adapter,
    model: &webpeft::model::Config,
    dir: &str,
    each: &mut dyn FnMut(&str, &safetensors::tensor::TensorView, &safetensors::tensor::TensorView),
) -> Vec<(String, Vec<u8>)> {
    compare_files_less(gpu, adapter, model, dir, &|_| false, each).0
}

/// [`compare_files_with_peft`] where PEFT's file may also hold tensors
/// `peft_only` names, which webpeft does not write; returns our files and
/// those names, sorted.
fn compare_files_less(
    gpu: &Gpu,
    adapter: &webpeft::peft::Adapter,
    model: &webpeft::model::Config,
    dir: &str,
    peft_only: &dyn Fn(&str) -> bool,
    each: &mut dyn FnMut(&str, &safetensors::tensor::TensorView, &safetensors::tensor::TensorView),
) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let files = block_on(adapter.to_files(gpu, model)).unwrap();
    let json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    let theirs = std::fs::read(fixture(&format!("{dir}/adapter_config.json"))).unwrap();
    assert_eq!(json(&files[0].1), json(&theirs), "{dir}: adapter_config.json");
    let peft = std::fs::read(fixture(&format!("{dir}/adapter_model.safetensors"))).unwrap();
    let (ours, peft) = (
        safetensors::SafeTensors::deserialize(&files[1].1).unwrap(),
        safetensors::SafeTensors::deserialize(&peft).unwrap(),
    );
    let (mut a, mut b) = (ours.names(), peft.names());
    a.sort();
    b.sort();
    let extra: Vec<String> = b.iter().filter(|k| !a.contains(k) && peft_only(k)).map(|k| k.to_string()).collect();
    b.retain(|k| !extra.iter().any(|e| e == *k));
    assert_eq!(a, b, "{dir}: tensor names");
    for k in a {
        each(k, &ours.tensor(k).unwrap(), &peft.tensor(k).unwrap());
    }
    (files, extra)
}

/// Asserts that the files `adapter` writes are the PEFT folder `dir`'s: the
/// same `adapter_config.json` (as JSON) and the same tensors, byte for byte.
pub fn assert_files_are_peft(gpu: &Gpu, adapter: &webpeft::peft::Adapter, model: &webpeft::model::Config, dir: &str) {
    compare_files_with_peft(gpu, adapter, model, dir, &mut |k, x, y| {
        assert_eq!((x.shape(), x.data()), (y.shape(), y.data()), "{dir}: {k}");
    });
}

/// The files `adapter` writes against PEFT's folder `dir`: the same
/// `adapter_config.json` and tensors, byte for byte, less PEFT's copies of
/// the embedding's and the head's base weights (`….base_layer.weight`, which
/// PEFT saves beside a LoRA on them and webpeft does not write). Returns the
/// names of those copies, sorted.
pub fn assert_files_are_peft_less_base_copies(
    gpu: &Gpu,
    adapter: &webpeft::peft::Adapter,
    model: &webpeft::model::Config,
    dir: &str,
) -> Vec<String> {
    let base_copy = |k: &str| k.ends_with(".base_layer.weight");
    compare_files_less(gpu, adapter, model, dir, &base_copy, &mut |k, x, y| {
        assert_eq!((x.shape(), x.data()), (y.shape(), y.data()), "{dir}: {k}");
    })
    .1
}

/// The files `adapter` writes against PEFT's folder `dir` of the same
/// state (PEFT's reparametrised methods save the prompt their MLP made, which
/// webpeft's MLP makes within float rounding): the same
/// `adapter_config.json`, the same tensor names, shapes and dtypes, values
/// within `tol`. Returns the files and the largest difference.
pub fn assert_files_near_peft(
    gpu: &Gpu,
    adapter: &webpeft::peft::Adapter,
    model: &webpeft::model::Config,
    dir: &str,
    tol: f32,
) -> (Vec<(String, Vec<u8>)>, f32) {
    let mut worst = 0.0f32;
    let files = compare_files_with_peft(gpu, adapter, model, dir, &mut |k, x, y| {
        assert_eq!((x.shape(), x.dtype()), (y.shape(), y.dtype()), "{dir}: {k}");
        let f = |d: &[u8]| bytemuck::pod_collect_to_vec::<u8, f32>(d);
        worst = worst.max(max_abs_diff(&f(x.data()), &f(y.data())));
    });
    assert!(worst <= tol, "{dir}: saved values max |diff| {worst:e}");
    (files, worst)
}

/// A fixture model folder loaded with an f32 base.
/// The fixture model a case folder `<model>_<variant>` runs on.
pub fn model_of(case: &str) -> &str {
    case.strip_suffix("_shared").unwrap_or(case)
}

pub fn fixture_model(gpu: &Gpu, name: &str) -> webpeft::model::Model {
    let files = webpeft::model::DirFiles::new(fixture(name)).unwrap();
    block_on(webpeft::model::Model::load(gpu, &files, webpeft::quant::QuantFormat::F32)).unwrap()
}

/// A fixture adapter folder, which must hold a `method` adapter.
pub fn fixture_adapter(gpu: &Gpu, model: &webpeft::model::Model, dir: &str, method: &str) -> webpeft::peft::Adapter {
    let files = webpeft::model::DirFiles::new(fixture(dir)).unwrap();
    let ad =
        block_on(webpeft::peft::Adapter::load(gpu, &files, &model.config)).unwrap_or_else(|e| panic!("{dir}: {e}"));
    assert_eq!(ad.method(), method, "{dir}");
    ad
}

/// A sequence classifier webpeft saved, checked against what PEFT made of
/// it. With `WEBPEFT_WRITE_FIXTURES` set, writes `files` and `outputs`
/// (webpeft's scores of the rows, as `outputs_file`) into the fixture
/// folder `dir` and returns `None` (then `make_fixtures.py <dir>_saved`
/// loads them in PEFT). Otherwise asserts the folder's python_check.json:
/// PEFT's outputs within 1e-5 of webpeft's, every key placed, each file's
/// sha256 the committed one's, the JSON files byte for byte this run's; and
/// returns the committed outputs, for the caller to compare with this run's.
pub fn saved_classifier_checked_in_peft(
    dir: &str,
    files: &[(String, Vec<u8>)],
    (outputs_file, outputs): (&str, serde_json::Value),
) -> Option<serde_json::Value> {
    let root = fixture(dir);
    if std::env::var_os("WEBPEFT_WRITE_FIXTURES").is_some() {
        std::fs::create_dir_all(&root).unwrap();
        for (file, bytes) in files {
            std::fs::write(root.join(file), bytes).unwrap();
        }
        std::fs::write(root.join(outputs_file), serde_json::to_string(&outputs).unwrap()).unwrap();
        return None;
    }
    let check: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("python_check.json")).unwrap_or_else(|e| panic!("{dir}: run make_fixtures.py: {e}")),
    )
    .unwrap();
    eprintln!("{dir}: PEFT's outputs of webpeft's saved adapter: max |diff| {}", check["max_abs_diff"]);
    assert!(check["max_abs_diff"].as_f64().unwrap() <= 1e-5, "{check}");
    assert_eq!(check["missing_keys"], serde_json::json!([]), "{check}");
    assert_eq!(check["unexpected_keys"], serde_json::json!([]), "{check}");
    for (file, bytes) in files {
        let committed = std::fs::read(root.join(file)).unwrap();
        assert_eq!(check["sha256"][file].as_str(), Some(sha256_hex(&committed).as_str()), "{file}");
        if file.ends_with(".json") {
            assert_eq!(bytes, &committed, "{file}");
        }
    }
    Some(serde_json::from_slice(&std::fs::read(root.join(outputs_file)).unwrap()).unwrap())
}

/// The checks of a method against its PEFT training reference `fx` (the
/// batch of rows 0..2): the loss and every gradient at `initial()` (with and
/// without gradient checkpointing) within 1e-5 and 1e-4, then 10 AdamW steps
/// (lr 1e-2, weight decay 0.01) whose losses and final tensors are within
/// 1e-4 (1e-3 where the first gradient is under 1e-6). `values` lists an adapter's (or gradient's) tensors as the fixture
/// names them (`<key>.grad`, `final.<key>`).
pub fn check_peft_training(
    gpu: &Gpu,
    model: &webpeft::model::Model,
    initial: &dyn Fn() -> webpeft::peft::Adapter,
    fx: &Fixture,
    values: &dyn Fn(&webpeft::peft::Adapter) -> Named,
) {
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let batch = fixture_batch(fx, 0..2);
    for checkpointing in [false, true] {
        let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
        let mut trainer = Trainer::new(gpu, initial(), opt, 0).unwrap();
        trainer.gradient_checkpointing = checkpointing;
        let stats = block_on(trainer.step(gpu, model, std::slice::from_ref(&batch), 0.0)).unwrap();
        let want = fx.f32("loss")[0];
        eprintln!("checkpointing {checkpointing}: loss |diff| {:e}", (stats.loss - want).abs());
        assert!((stats.loss - want).abs() <= 1e-5, "loss {} vs PEFT {want}", stats.loss);
        for (key, got) in values(trainer.gradients()) {
            let d = max_abs_diff(&got, &fx.f32(&format!("{key}.grad")));
            eprintln!("checkpointing {checkpointing}: {key} gradient max |diff| {d:e}");
            assert!(d <= 1e-4, "{key}: gradient max |diff| {d:e}");
        }
    }
    let opt = OptimizerConfig { weight_decay: 0.01, max_grad_norm: 0.0, ..Default::default() };
    let mut trainer = Trainer::new(gpu, initial(), opt, 0).unwrap();
    let mut worst = 0.0f32;
    for (i, &w) in fx.f32("losses").iter().enumerate() {
        let s = block_on(trainer.step(gpu, model, std::slice::from_ref(&batch), 1e-2)).unwrap();
        assert!((s.loss - w).abs() <= 1e-4, "step {i}: {} vs PEFT {w}", s.loss);
        worst = worst.max((s.loss - w).abs());
    }
    eprintln!("10 AdamW steps: loss max |diff| {worst:e}");
    for (key, got) in values(&trainer.adapter) {
        // Where the first gradient is below 1e-6, AdamW's step m/(√v + ε)
        // (ε = 1e-8) turns float rounding of g into a visible change of the
        // update: those elements are held to 1e-3 (e.g. prefix_projection's
        // one weight whose gradient is 9e-9 ends 2.4e-4 from PEFT's).
        let (want, g0) = (fx.f32(&format!("final.{key}")), fx.f32(&format!("{key}.grad")));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let tol = if g0[i].abs() < 1e-6 { 1e-3 } else { 1e-4 };
            assert!((a - b).abs() <= tol, "final {key}[{i}]: {a} vs PEFT {b} (first gradient {:e})", g0[i]);
        }
        let d = max_abs_diff(&got, &want);
        eprintln!("final {key}: max |diff| {d:e}");
    }
}

/// Tensors' values by name.
pub type Named = Vec<(String, Vec<f32>)>;

/// Every tensor of an adapter with its key, read back.
pub fn adapter_values(gpu: &Gpu, ad: &webpeft::peft::Adapter) -> Named {
    ad.tensors().into_iter().map(|(k, t)| (k, block_on(t.to_vec::<f32>(gpu)).unwrap())).collect()
}

/// Greedy decoding of the fixture's `greedy_prompt` through `adapter` must
/// give its `greedy_tokens` (PEFT's `generate`); then, through the KV cache,
/// the prompt and the tokens must give the full forward's logits (`before`:
/// the adapter's positions before the row's).
pub fn check_greedy_and_cache(
    gpu: &Gpu,
    model: &webpeft::model::Model,
    adapter: &webpeft::peft::Adapter,
    fx: &Fixture,
    before: usize,
) {
    let prompt: Vec<u32> = fx.i64("greedy_prompt").iter().map(|&v| v as u32).collect();
    let want: Vec<u32> = fx.i64("greedy_tokens").iter().map(|&v| v as u32).collect();
    let config = webpeft::model::llama::GenerationConfig::greedy(want.len());
    let got = block_on(model.generate_adapted(gpu, &prompt, &config, adapter, |_| true)).unwrap();
    assert_eq!(got, want, "greedy tokens");
    let ids: Vec<u32> = prompt.iter().chain(&want).copied().collect();
    let d = cached_vs_full(gpu, model, adapter, &ids, prompt.len(), before);
    assert!(d <= 1e-4, "cached vs full {d:e}");
}

/// The fixture model `name` in f32 with its block Linears holding `quant`'s
/// dequantized weights: the reference a quantized base's run must equal.
pub fn dequantized_twin(gpu: &Gpu, quant: &webpeft::model::Model, name: &str) -> webpeft::model::Model {
    use webpeft::kernels::qmatmul::QWeight;
    use webpeft::quant::QuantFormat;
    let mut m = fixture_model(gpu, name);
    for (dst, src) in m.layers.iter_mut().zip(&quant.layers) {
        let pairs = [
            (&mut dst.self_attn.q_proj.weight, &src.self_attn.q_proj.weight),
            (&mut dst.self_attn.k_proj.weight, &src.self_attn.k_proj.weight),
            (&mut dst.self_attn.v_proj.weight, &src.self_attn.v_proj.weight),
            (&mut dst.self_attn.o_proj.weight, &src.self_attn.o_proj.weight),
            (&mut dst.mlp.gate_proj.weight, &src.mlp.gate_proj.weight),
            (&mut dst.mlp.up_proj.weight, &src.mlp.up_proj.weight),
            (&mut dst.mlp.down_proj.weight, &src.mlp.down_proj.weight),
        ];
        for (d, s) in pairs {
            let values = block_on(s.to_f32(gpu)).unwrap();
            *d = QWeight::from_f32(gpu, &values, s.rows, s.cols, QuantFormat::F32).unwrap();
        }
    }
    m
}

/// The fixture's `init.<key>` tensors by key: PEFT's initial values of
/// every trainable tensor, under PEFT's names.
pub fn fixture_init(fx: &Fixture) -> std::collections::BTreeMap<String, Vec<f32>> {
    fx.names().into_iter().filter_map(|n| n.strip_prefix("init.").map(|k| (k.to_string(), fx.f32(&n)))).collect()
}

/// A fresh adapter of `config` for `model` whose trainable tensors are
/// `tensors` (every name and shape must be the adapter's own).
pub fn adapter_with(
    gpu: &Gpu,
    model: &webpeft::model::Model,
    config: webpeft::peft::adapter::AdapterConfig,
    tensors: &std::collections::BTreeMap<String, Vec<f32>>,
) -> webpeft::peft::Adapter {
    let fresh = webpeft::peft::Adapter::new(gpu, config, &model.config, 0).unwrap();
    fresh.with_tensors(gpu, tensors).unwrap()
}

/// An adapter folder held in memory, loaded for `model`.
pub fn load_files(gpu: &Gpu, files: &[(String, Vec<u8>)], model: &webpeft::model::Config) -> webpeft::peft::Adapter {
    let mut mem = webpeft::model::MemoryFiles::new();
    for (name, bytes) in files {
        mem.insert(name.clone(), bytes.clone());
    }
    block_on(webpeft::peft::Adapter::load(gpu, &mem, model)).unwrap()
}

/// A step that fails (`bad`: an adapter whose loss is not finite) must put
/// the trained tensors back and leave what the hooks read made from them:
/// `derived` (read back) equal, bit for bit, to a fresh adapter's of the
/// same tensors.
pub fn check_failed_step_keeps_derived(
    gpu: &Gpu,
    model: &webpeft::model::Model,
    bad: webpeft::peft::Adapter,
    batch: &webpeft::train::data::Batch,
    derived: &dyn Fn(&webpeft::peft::Adapter) -> Vec<f32>,
) {
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let before = adapter_values(gpu, &bad);
    let want: Vec<u32> = derived(&bad).iter().map(|f| f.to_bits()).collect();
    let mut trainer = Trainer::new(gpu, bad, OptimizerConfig::default(), 0).unwrap();
    let err = block_on(trainer.step(gpu, model, std::slice::from_ref(batch), 1e-2)).unwrap_err();
    assert!(matches!(err, webpeft::Error::NonFinite { .. }), "{err:?}");
    // Bit patterns, so that NaN and infinity compare too.
    let bits = |n: &Named| -> Vec<(String, Vec<u32>)> {
        n.iter().map(|(k, v)| (k.clone(), v.iter().map(|f| f.to_bits()).collect())).collect()
    };
    let now = bits(&adapter_values(gpu, &trainer.adapter));
    assert_eq!(now, bits(&before), "the failed step changed the trained tensors");
    let got: Vec<u32> = derived(&trainer.adapter).iter().map(|f| f.to_bits()).collect();
    assert_eq!(got, want, "the failed step left the derived prompt of other tensors");
}

/// A method against its PEFT fixture `fx` from `fresh()`: the logits of the
/// rows' own positions within 1e-4 of `want`, then [`check_peft_training`]
/// on every trainable tensor and [`check_greedy_and_cache`] (`before`: the
/// adapter's positions before the row's). `name` labels the output.
pub fn check_logits_training_and_greedy(
    gpu: &Gpu,
    model: &webpeft::model::Model,
    name: &str,
    fresh: &dyn Fn() -> webpeft::peft::Adapter,
    fx: &Fixture,
    want: &[f32],
    before: usize,
) {
    let ad = fresh();
    let d = max_abs_diff(&adapted_logits(gpu, model, Some(&ad), &fixture_batch(fx, 0..2).input_ids), want);
    eprintln!("{name}: logits max |diff| {d:e}");
    assert!(d <= 1e-4, "{name}: logits {d:e}");
    check_peft_training(gpu, model, fresh, fx, &|ad| adapter_values(gpu, ad));
    check_greedy_and_cache(gpu, model, &ad, fx, before);
}

/// The sha256 of `bytes` in hex (as Python's `hashlib.sha256(…).hexdigest()`).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// y = x·Wᵀ and dx = dy·W through the frozen weight `qw` with `variant`,
/// against the CPU reference on `deq`, its (rows, cols) values as the kernels
/// must see them; x and dy are seeded normals.
pub fn check_weight_matmul(
    gpu: &Gpu,
    qw: &webpeft::kernels::qmatmul::QWeight,
    deq: &[f32],
    m: usize,
    variant: webpeft::kernels::qmatmul::QVariant,
    seed: u64,
    label: &str,
) {
    use webpeft::kernels::reference::{assert_close, matmul as cpu};
    let (rows, cols) = (qw.rows, qw.cols);
    let x = randn(seed + 1, m * cols);
    let dy = randn(seed + 2, m * rows);
    let tx = webpeft::Tensor::from_slice(gpu, &[m, cols], &x).unwrap();
    let tdy = webpeft::Tensor::from_slice(gpu, &[m, rows], &dy).unwrap();
    let y = webpeft::Tensor::zeros(gpu, &[m, rows], webpeft::DType::F32).unwrap();
    let dx = webpeft::Tensor::zeros(gpu, &[m, cols], webpeft::DType::F32).unwrap();
    let mut rec = webpeft::gpu::Recorder::new(gpu);
    webpeft::kernels::qmatmul::qgemm_with(&mut rec, &tx, qw, &y, false, variant).unwrap();
    webpeft::kernels::qmatmul::qgemm_with(&mut rec, &tdy, qw, &dx, true, variant).unwrap();
    rec.submit().unwrap();
    let mut want_y = vec![0.0; m * rows];
    cpu::matmul(&x, deq, &mut want_y, m, rows, cols, false, true, false);
    let mut want_dx = vec![0.0; m * cols];
    cpu::matmul(&dy, deq, &mut want_dx, m, cols, rows, false, false, false);
    let label = format!("{label} {m}x{rows}x{cols} {variant:?} chunks={}", qw.chunks.len());
    let tol = 1e-4 * (cols.max(rows) as f32).sqrt();
    assert_close(&format!("{label} forward"), &block_on(y.to_vec::<f32>(gpu)).unwrap(), &want_y, tol, 1e-4);
    assert_close(&format!("{label} backward"), &block_on(dx.to_vec::<f32>(gpu)).unwrap(), &want_dx, tol, 1e-4);
}

/// Ids [7, 300, 12, 45, 99, 3, 150, 8] through `hooks` with the KV cache: a
/// prefill of 5, then 3 one-token steps, with `profile` profiled (then `gpu`
/// must be a device of the test's own: profiling is the device's). Returns
/// every position's logits and the steps' kernels.
pub fn prefill_and_steps(
    gpu: &Gpu,
    model: &webpeft::model::Model,
    hooks: &dyn webpeft::model::llama::Hooks,
    profile: bool,
) -> (Vec<f32>, Vec<webpeft::gpu::KernelTime>) {
    let ids: Vec<u32> = vec![7, 300, 12, 45, 99, 3, 150, 8];
    let cache = webpeft::model::llama::KvCache::new(gpu, model, 1, ids.len()).unwrap();
    let (mut out, mut steps) = (Vec::new(), Vec::new());
    for (from, to) in [(0, 5), (5, 6), (6, 7), (7, 8)] {
        gpu.set_profiling(profile && from > 0).unwrap();
        let mut rec = webpeft::gpu::Recorder::new(gpu);
        let input = model.input_ids(gpu, &[ids[from..to].to_vec()]).unwrap();
        let logits = model.forward_cached_all(&mut rec, &input, &cache, from, hooks).unwrap();
        rec.submit().unwrap();
        out.extend(block_on(logits.to_vec::<f32>(gpu)).unwrap());
        if profile {
            gpu.set_profiling(false).unwrap();
            steps.extend(block_on(gpu.take_profile()).unwrap());
        }
    }
    (out, steps)
}

/// The quantized kernels a product of `m` rows to `n` outputs can run, each
/// reaching its own store (the fused term's and the output op's tests).
pub fn store_variants(m: usize, n: usize) -> Vec<webpeft::kernels::qmatmul::QVariant> {
    use webpeft::kernels::blocked::{Blocks, GemvTiles};
    use webpeft::kernels::qmatmul::QVariant;
    vec![
        QVariant::Tiled,
        QVariant::Naive,
        QVariant::subgroup(),
        QVariant::Blocked(Blocks::for_shape(m, n, 1)),
        QVariant::BlockedSplit(Blocks::MEDIUM, 3),
        QVariant::Gemv(GemvTiles::DEFAULT),
        QVariant::Gemv(GemvTiles::SUBGROUP),
    ]
}

/// What webpeft saves after training loads in PEFT: 10 AdamW steps from
/// PEFT's initial adapter `{part}/<model>/initial_adapter` on llama_gqa and
/// qwen2_tied, written with `Adapter::to_files` into
/// `{part}/webpeft_saved/<model>/` (rewrite with
/// `WEBPEFT_WRITE_FIXTURES=1 cargo test --test {part}`, then run
/// `make_fixtures.py {part}_saved`, which loads each folder with
/// `PeftModel.from_pretrained`, asserts no missing or unexpected keys and
/// the logits within 1e-4 of webpeft's, and records the files' sha256 in
/// `python_check.json`). The files trained now must hold the committed
/// values and give the committed logits.
pub fn check_saved_in_peft(gpu: &Gpu, part: &str) {
    check_saved_cases_in_peft(gpu, part, &["llama_gqa", "qwen2_tied"]);
}

/// [`check_saved_in_peft`] for the folders `cases` of `part` (a case named
/// `<model>_<variant>` runs on `<model>`, e.g. `qwen2_tied_shared`).
pub fn check_saved_cases_in_peft(gpu: &Gpu, part: &str, cases: &[&str]) {
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let root = fixture(&format!("{part}/webpeft_saved"));
    let write = std::env::var_os("WEBPEFT_WRITE_FIXTURES").is_some();
    let check: serde_json::Value = if write {
        serde_json::Value::Null
    } else {
        let text = std::fs::read(root.join("python_check.json"))
            .unwrap_or_else(|e| panic!("run make_fixtures.py {part}_saved: {e}"));
        serde_json::from_slice(&text).unwrap()
    };
    let load_initial = |model: &webpeft::model::Model, dir: &str| {
        let files = webpeft::model::DirFiles::new(fixture(dir)).unwrap();
        block_on(webpeft::peft::Adapter::load(gpu, &files, &model.config)).unwrap_or_else(|e| panic!("{dir}: {e}"))
    };
    let same_family = gpu.kernel_family() == webpeft::KernelFamily::Cpu;
    for &name in cases {
        let model = fixture_model(gpu, model_of(name));
        let fx = Fixture::open(&format!("{part}/{name}/reference.safetensors"));
        let batch = fixture_batch(&fx, 0..2);
        let opt = OptimizerConfig { weight_decay: 0.01, ..Default::default() };
        let mut trainer =
            Trainer::new(gpu, load_initial(&model, &format!("{part}/{name}/initial_adapter")), opt, 0).unwrap();
        for _ in 0..10 {
            block_on(trainer.step(gpu, &model, std::slice::from_ref(&batch), 1e-2)).unwrap();
        }
        let files = block_on(trainer.adapter.to_files(gpu, &model.config)).unwrap();
        let logits = adapted_logits(gpu, &model, Some(&trainer.adapter), &batch.input_ids);
        let dir = root.join(name);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            for (file, bytes) in &files {
                std::fs::write(dir.join(file), bytes).unwrap();
            }
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                vec![2, batch.input_ids[0].len(), 384],
                bytemuck::cast_slice(&logits),
            )
            .unwrap();
            std::fs::write(dir.join("logits.safetensors"), safetensors::serialize([("logits", view)], None).unwrap())
                .unwrap();
            continue;
        }
        let py = &check["adapters"][name];
        assert!(py["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{name}: PEFT's logits {}", py["max_abs_diff"]);
        assert_eq!(py["missing_keys"], serde_json::json!([]), "{name}");
        assert_eq!(py["unexpected_keys"], serde_json::json!([]), "{name}");
        for (file, bytes) in &files {
            let committed = std::fs::read(dir.join(file)).unwrap();
            assert_eq!(py["sha256"][file].as_str(), Some(sha256_hex(&committed).as_str()), "{name}/{file}");
            if file.ends_with(".safetensors") {
                let (now, then) = (
                    safetensors::SafeTensors::deserialize(bytes).unwrap(),
                    safetensors::SafeTensors::deserialize(&committed).unwrap(),
                );
                // The folders were written through the CPU family's kernels; the other
                // family's sums round differently, and 10 AdamW steps at 1e-2 grow that
                // where a gradient is small (1.3e-4 on modules_to_save's qwen2_tied), so
                // there the logits below are what is compared.
                for (key, t) in then.tensors().into_iter().filter(|_| same_family) {
                    let f = |d: &[u8]| bytemuck::pod_collect_to_vec::<u8, f32>(d);
                    let d = max_abs_diff(&f(now.tensor(&key).unwrap().data()), &f(t.data()));
                    assert!(d <= 1e-5, "{name}: {key} now vs committed {d:e}");
                }
            } else {
                assert_eq!(bytes, &committed, "{name}/{file}");
            }
        }
        let want = Fixture::open(&format!("{part}/webpeft_saved/{name}/logits.safetensors")).f32("logits");
        let d = max_abs_diff(&logits, &want);
        eprintln!("{name}: logits vs committed {d:e}; PeftModel.from_pretrained's max |diff| {}", py["max_abs_diff"]);
        // Through the other family, 10 steps that train a whole embedding and head
        // to a loss of 0.4 reach 2e-4 on logits of magnitude ~10.
        let tol = if same_family { 1e-4 } else { 1e-3 };
        assert!(d <= tol, "{name}: {d:e}");
    }
}

/// TRL's `precompute_ref_log_probs` changes no step: `data` trained from
/// `adapter` under `objective` for 3 steps of 2 accumulated micro-batches
/// (across an epoch when the data is 4 batches), scoring the reference in
/// every step and precomputed once; the losses and the final tensors must
/// agree bit for bit. Returns the losses.
pub fn check_precomputed_reference(
    gpu: &Gpu,
    model: &webpeft::model::Model,
    data: webpeft::train::data::Dataset,
    adapter: impl Fn() -> webpeft::peft::Adapter,
    objective: webpeft::train::preference::Objective,
) -> Vec<f32> {
    use webpeft::train::run::{Run, RunConfig};
    let runs: Vec<(Vec<f32>, Named)> = [false, true]
        .into_iter()
        .map(|precompute| {
            let mut trainer = webpeft::train::trainer::Trainer::new(gpu, adapter(), Default::default(), 0).unwrap();
            trainer.objective = objective;
            let config = RunConfig {
                steps: Some(3),
                grad_accum: 2,
                lr: 1e-2,
                precompute_ref_log_probs: precompute,
                ..RunConfig::default()
            };
            let mut run = Run::new(data.clone(), trainer, &config).unwrap();
            let mut losses = Vec::new();
            while let Some(s) = block_on(run.step(gpu, model)).unwrap() {
                losses.push(s.loss);
            }
            assert_eq!(run.dataset.has_reference(), precompute);
            (losses, adapter_values(gpu, &run.trainer.adapter))
        })
        .collect();
    eprintln!("each step's reference: {:?}; precomputed: {:?}", runs[0].0, runs[1].0);
    assert_eq!(runs[0].0.len(), 3);
    assert_eq!(runs[0].0, runs[1].0, "the losses differ");
    assert!(runs[0].1 == runs[1].1, "the final tensors differ");
    runs[0].0.clone()
}

/// Logits (B·T·V) and loss of `batch` (packed when it has position ids)
/// through `hooks`, one submission.
pub fn logits_and_loss(
    model: &webpeft::model::Model,
    batch: &webpeft::train::data::Batch,
    hooks: &dyn webpeft::model::llama::Hooks,
) -> (Vec<f32>, f32) {
    use webpeft::model::llama::{causal_lm_loss, CausalTargets};
    let gpu = gpu();
    let ids = model.input_ids(gpu, &batch.input_ids).unwrap();
    let targets = CausalTargets::new(gpu, &batch.labels, model.config.vocab_size).unwrap();
    let mut rec = webpeft::gpu::Recorder::new(gpu);
    let (logits, _) = model.forward_packed(&mut rec, &ids, batch.position_ids.as_deref(), hooks).unwrap();
    let loss = causal_lm_loss(&mut rec, &logits, &targets).unwrap();
    rec.submit().unwrap();
    (block_on(logits.to_vec::<f32>(gpu)).unwrap(), block_on(loss.to_vec::<f32>(gpu)).unwrap()[0])
}

/// A LoRA's step on `batch` at lr 0, with and without gradient
/// checkpointing: the loss and each of the 28 gradients within `tol` of the
/// fixture's `lora.loss` and `lora.<key>.grad`, and the two runs' gradients
/// equal bit for bit. `what` names the case in messages.
pub fn check_lora_step_gradients(
    model: &webpeft::model::Model,
    batch: &webpeft::train::data::Batch,
    adapter: &dyn Fn() -> webpeft::peft::Adapter,
    fx: &Fixture,
    tol: f32,
    what: &str,
) {
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let gpu = gpu();
    let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
    let mut grads_of = Vec::new();
    for checkpointing in [false, true] {
        let mut trainer = Trainer::new(gpu, adapter(), opt.clone(), 0).unwrap();
        trainer.gradient_checkpointing = checkpointing;
        let stats = block_on(trainer.step(gpu, model, std::slice::from_ref(batch), 0.0)).unwrap();
        let want = fx.f32("lora.loss")[0];
        assert!((stats.loss - want).abs() <= tol, "{what}: step loss {} vs {want}", stats.loss);
        let grads = trainer.gradients().tensors();
        assert_eq!(grads.len(), 28, "{what}");
        let mut worst = 0f32;
        let mut values = Vec::new();
        for (key, g) in grads {
            let got = block_on(g.to_vec::<f32>(gpu)).unwrap();
            let d = max_abs_diff(&got, &fx.f32(&format!("lora.{key}.grad")));
            assert!(d <= tol, "{what} {key}: max |diff| {d:e}");
            worst = worst.max(d);
            values.push(got);
        }
        eprintln!("{what} (checkpointing {checkpointing}): loss {} vs {want}, gradients worst {worst:e}", stats.loss);
        grads_of.push(values);
    }
    assert_eq!(grads_of[0], grads_of[1], "{what}: gradient checkpointing changes the gradients");
}

/// The fixture model folder `name` in memory, with `overrides`' keys laid
/// over its config.json.
pub fn fixture_files_with(name: &str, overrides: &serde_json::Value) -> webpeft::model::MemoryFiles {
    let mut files = webpeft::model::MemoryFiles::new();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let path = entry.unwrap().path();
        files.insert(path.file_name().unwrap().to_str().unwrap(), std::fs::read(&path).unwrap());
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("{name}/config.json"))).unwrap()).unwrap();
    for (k, v) in overrides.as_object().unwrap() {
        config[k] = v.clone();
    }
    files.insert("config.json", serde_json::to_vec(&config).unwrap());
    files
}

/// `got` within `rel` of the reference stack's `want` (relative, or absolute below 1).
pub fn close_rel(what: &str, got: f64, want: f64, rel: f64) {
    assert!((got - want).abs() <= rel * want.abs().max(1.0), "{what}: {got} vs TRL's {want}");
}
