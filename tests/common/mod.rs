//! Shared by the native GPU tests: one device per test binary, seeded inputs,
//! and blocking on the async API (natively only).
#![allow(dead_code)]

use std::sync::OnceLock;

use webpeft::util::rng::Rng;
use webpeft::Gpu;

/// The test device, created once per test binary. Tests fail (never skip)
/// when no adapter exists, and print which adapter and backend they ran on.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let gpu = pollster::block_on(Gpu::new()).unwrap_or_else(|e| panic!("no GPU for the tests: {e}"));
        // Straight to stderr, past the test harness's capture, so every run
        // shows which adapter and backend it used.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "webpeft tests on: {}", gpu.describe());
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
    webpeft::train::data::Batch {
        input_ids: fx.i64("input_ids").chunks(t).map(|r| r.iter().map(|&v| v as u32).collect()).collect(),
        labels: fx.i64("labels").chunks(t).map(|r| r.iter().map(|&v| v as i32).collect()).collect(),
    }
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
    webpeft::train::data::Batch {
        input_ids: rows.clone().map(|r| ids[r * t..(r + 1) * t].iter().map(|&v| v as u32).collect()).collect(),
        labels: rows.map(|r| labels[r * t..(r + 1) * t].iter().map(|&v| v as i32).collect()).collect(),
    }
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
