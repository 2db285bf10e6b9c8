//! DoRA (`use_dora: true`) against PEFT 0.21.2 (tests/fixtures/dora, made by
//! `make_fixtures.py dora`): LoRA r 4 with a magnitude on all seven
//! projections of a tiny Llama and a tiny Qwen2 (q/k/v biases, tied
//! embeddings). The logits with PEFT's adapter, the loss and every gradient
//! (A, B and the magnitude; with and without gradient checkpointing), 10 AdamW
//! steps, the files both ways, the merged model; on an NF4 base the loss and
//! gradients of an f32 model holding the dequantized weights; the kernels
//! against their CPU references; bad input as typed errors.
//!
//! Tolerances as for LoRA: logits and gradients 1e-4 abs, loss 1e-5,
//! per-step losses 1e-4, final tensors 1e-4.

mod common;
mod finite_diff;

use common::{
    adapted_logits, adapter_values, assert_files_are_peft, block_on, cached_vs_full, check_peft_training,
    dequantized_twin, fixture, fixture_adapter, fixture_batch, fixture_model, gpu, load_files, max_abs_diff, randn,
    uniform, Fixture,
};
use webpeft::gpu::Recorder;
use webpeft::kernels::dora::{magnitude_scale, scale_rows, Scales};
use webpeft::kernels::reference::{assert_close, dora as cpu};
use webpeft::model::{DirFiles, MemoryFiles, Model};
use webpeft::peft::adapter::Adapter;
use webpeft::peft::lora::LoraConfig;
use webpeft::quant::QuantFormat;
use webpeft::{DType, Error, Tensor};

const MODELS: [&str; 2] = ["llama_gqa", "qwen2_tied"];

fn adapter(gpu: &webpeft::Gpu, model: &Model, dir: &str) -> Adapter {
    fixture_adapter(gpu, model, dir, "lora")
}

fn read(t: &Tensor) -> Vec<f32> {
    block_on(t.to_vec(gpu())).unwrap()
}

#[test]
fn magnitude_scale_matches_the_reference_on_odd_shapes() {
    let gpu = gpu();
    // (rows of the block, in, the Linear's out, the block's first row): blocks
    // of a chunked weight, rows over one workgroup's stride, a single column.
    for (seed, (rows, cols, out, off)) in
        [(37, 83, 37, 0), (5, 1, 9, 3), (130, 200, 300, 170), (1, 1000, 1, 0)].into_iter().enumerate()
    {
        let seed = seed as u64;
        let w = randn(10 + seed, rows * cols);
        let m = uniform(20 + seed, out, 0.5, 2.0);
        let t = |shape: &[usize], v: &[f32]| Tensor::from_slice(gpu, shape, v).unwrap();
        let (wt, mt) = (t(&[rows, cols], &w), t(&[out], &m));
        let canary = vec![-7.0f32; out]; // rows outside the block stay as they were
        let s = Scales { n: t(&[out], &canary), g: t(&[out], &canary), inv_n: t(&[out], &canary) };
        let mut rec = Recorder::new(gpu);
        magnitude_scale(&mut rec, &wt, off, &mt, &s).unwrap();
        rec.submit().unwrap();
        let (n, g, inv_n) = cpu::magnitude_scale(&w, rows, cols, &m[off..off + rows]);
        let what = format!("{rows}x{cols} at row {off} of {out}");
        for (name, got, want) in [("n", &s.n, n), ("g", &s.g, g), ("inv_n", &s.inv_n, inv_n)] {
            let got = read(got);
            // f32 sums of a few values per invocation, then a tree: a few 1e-7 relative.
            assert_close(&format!("{name} {what}"), &got[off..off + rows], &want, 0.0, 2e-6);
            assert!(
                got[..off].iter().chain(&got[off + rows..]).all(|&v| v == -7.0),
                "{name} {what}: outside the block"
            );
        }
    }
}

#[test]
fn scale_rows_matches_the_reference_on_odd_shapes() {
    let gpu = gpu();
    for (seed, (rows, cols, out, off)) in [(37, 83, 40, 2), (1, 1, 1, 0), (70, 129, 70, 0)].into_iter().enumerate() {
        let seed = seed as u64;
        let w = randn(30 + seed, rows * cols);
        let g = uniform(40 + seed, out, 0.5, 2.0);
        for divide in [false, true] {
            let wt = Tensor::from_slice(gpu, &[rows, cols], &w).unwrap();
            let gt = Tensor::from_slice(gpu, &[out], &g).unwrap();
            let mut rec = Recorder::new(gpu);
            scale_rows(&mut rec, &wt, off, &gt, divide).unwrap();
            rec.submit().unwrap();
            let want = cpu::scale_rows(&w, cols, &g[off..off + rows], divide);
            // One product or quotient per element: exact as the CPU's.
            assert_close(&format!("{rows}x{cols} at {off}, divide {divide}"), &read(&wt), &want, 0.0, 0.0);
        }
    }
}

#[test]
fn kernels_refuse_bad_shapes() {
    let gpu = gpu();
    let z = |shape: &[usize]| Tensor::zeros(gpu, shape, DType::F32).unwrap();
    let (w, m) = (z(&[4, 3]), z(&[5]));
    let mut rec = Recorder::new(gpu);
    let s = Scales { n: z(&[5]), g: z(&[5]), inv_n: z(&[5]) };
    assert!(matches!(magnitude_scale(&mut rec, &w, 2, &m, &s), Err(Error::Shape { .. })), "rows 2..6 of 5");
    let aliased = Scales { n: s.n.clone(), g: s.n.clone(), inv_n: z(&[5]) };
    assert!(magnitude_scale(&mut rec, &w, 0, &m, &aliased).is_err(), "n and g aliased");
    assert!(matches!(scale_rows(&mut rec, &w, 0, &z(&[3]), false), Err(Error::Shape { .. })), "g too short");
}

#[test]
fn logits_with_peft_adapters_match() {
    let gpu = gpu();
    for name in MODELS {
        let model = fixture_model(gpu, name);
        let fx = Fixture::open(&format!("dora/{name}/reference.safetensors"));
        let ad = adapter(gpu, &model, &format!("dora/{name}/initial_adapter"));
        let ids = fixture_batch(&fx, 0..2).input_ids;
        let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &ids), &fx.f32("logits"));
        eprintln!("{name}: logits max |diff| {d:e}");
        assert!(d <= 1e-4, "{name}: {d:e}");
    }
}

#[test]
fn loss_every_gradient_and_ten_adamw_steps_match_peft() {
    let gpu = gpu();
    for name in MODELS {
        let model = fixture_model(gpu, name);
        let fx = Fixture::open(&format!("dora/{name}/reference.safetensors"));
        let initial = format!("dora/{name}/initial_adapter");
        assert_eq!(adapter(gpu, &model, &initial).tensors().len(), 42, "{name}: A, B and m on 2 × 7 Linears");
        check_peft_training(gpu, &model, &|| adapter(gpu, &model, &initial), &fx, &|ad| adapter_values(gpu, ad));
    }
}

#[test]
fn files_we_write_are_peft_files() {
    let gpu = gpu();
    for name in MODELS {
        let model = fixture_model(gpu, name);
        for dir in ["initial_adapter", "final_adapter"] {
            let dir = format!("dora/{name}/{dir}");
            let ad = adapter(gpu, &model, &dir);
            assert_files_are_peft(gpu, &ad, &model.config, &dir);
            // And they load back with the same logits.
            let back = load_files(gpu, &block_on(ad.to_files(gpu, &model.config)).unwrap(), &model.config);
            let ids = vec![vec![5u32, 17, 99, 200, 3]];
            let logits = |a: &Adapter| adapted_logits(gpu, &model, Some(a), &ids);
            assert_eq!(logits(&back), logits(&ad), "{dir}");
        }
    }
}

#[test]
fn the_kv_cache_forward_matches_the_full_forward() {
    let gpu = gpu();
    for name in MODELS {
        let model = fixture_model(gpu, name);
        let ad = adapter(gpu, &model, &format!("dora/{name}/final_adapter"));
        let ids: Vec<u32> = vec![7, 300, 12, 45, 99, 3, 150, 8];
        let d = cached_vs_full(gpu, &model, &ad, &ids, 5, 0);
        assert!(d <= 1e-4, "{name}: cached vs full logits {d:e}");
    }
}

/// A generation computes DoRA's weight norms once (`Hooks::frozen`, what
/// `generate` runs through) and applies them as g ⊙ (x·Wᵀ + b + s·x·Aᵀ·Bᵀ) +
/// (1 − g) ⊙ b, the term fused into the frozen product and the rest one
/// launch in place: a prefill and three steps through the frozen hooks give the
/// logits of the adapter's own pass (PEFT's order of the same sum) within
/// f32 rounding, the steps launch no norm (the prefill's are kept), and
/// greedy generation picks the tokens of the full forward's argmax. Qwen2's
/// q, k and v have biases.
#[test]
fn generation_computes_dora_s_norms_once() {
    use webpeft::model::llama::{argmax, GenerationConfig, Hooks};
    // A device of its own: profiling is the device's, and other tests run meanwhile.
    let gpu = &block_on(webpeft::Gpu::new()).unwrap();
    for name in MODELS {
        let model = fixture_model(gpu, name);
        let ad = adapter(gpu, &model, &format!("dora/{name}/final_adapter"));
        let frozen = ad.frozen().expect("a DoRA adapter keeps its norms");
        let ids: Vec<u32> = vec![7, 300, 12, 45, 99, 3, 150, 8];
        let run = |hooks: &dyn Hooks| common::prefill_and_steps(gpu, &model, hooks, true);
        let calls = |steps: &[webpeft::gpu::KernelTime], part: &str| -> u64 {
            steps.iter().filter(|k| k.kernel.contains(part)).map(|k| k.calls).sum()
        };
        let (own, own_steps) = run(&ad);
        let (kept, kept_steps) = run(frozen.as_ref());
        let (own_norms, kept_norms) = (calls(&own_steps, "magnitude"), calls(&kept_steps, "magnitude"));
        // Each of the 3 steps' 14 DoRA Linears: its product with the term
        // fused and one in-place rescale, no other elementwise pass.
        let rescales = calls(&kept_steps, "_columns");
        assert_eq!(rescales, 3 * 14, "{name}: rescales in the frozen steps");
        // Besides them, the residual joins' adds (DoRA rescales o_proj's and
        // down_proj's outputs, so they do not add into the stream): 2 a layer.
        let other: Vec<_> = kept_steps
            .iter()
            .filter(|k| k.kernel.starts_with("elementwise/") && !k.kernel.contains("_columns"))
            .filter(|k| k.kernel != "elementwise/add")
            .collect();
        assert!(other.is_empty(), "{name}: other elementwise launches {other:?}");
        assert_eq!(calls(&kept_steps, "elementwise/add"), 3 * 2 * 2, "{name}: residual adds");
        let d = max_abs_diff(&kept, &own);
        eprintln!("{name}: the frozen hooks' logits against the pass's own: {d:e}");
        assert!(d <= 1e-5, "{name}: the frozen hooks' logits differ by {d}");
        assert!(
            own_norms > 0 && kept_norms == 0,
            "{name}: norms launched by the steps: {own_norms}, frozen {kept_norms}"
        );
        let v = model.config.vocab_size;
        let mut want = Vec::new();
        let mut seq = ids[..5].to_vec();
        for _ in 0..4 {
            let logits = adapted_logits(gpu, &model, Some(&ad), &[seq.clone()]);
            let next = argmax(&logits[(seq.len() - 1) * v..]).unwrap() as u32;
            want.push(next);
            seq.push(next);
        }
        let got =
            block_on(model.generate_adapted(gpu, &ids[..5], &GenerationConfig::greedy(4), &ad, |_| true)).unwrap();
        assert_eq!(got, want, "{name}: greedy tokens");
    }
}

#[test]
fn a_fresh_dora_adapter_starts_as_the_base_model_with_peft_s_magnitude() {
    let gpu = gpu();
    let model = fixture_model(gpu, "qwen2_tied");
    let fx = Fixture::open("dora/qwen2_tied/reference.safetensors");
    let ids = fixture_batch(&fx, 0..2).input_ids;
    let mut config = LoraConfig::new(4, 8.0, webpeft::peft::lora::TargetModules::AllLinear).unwrap();
    config.use_dora = true;
    let config = webpeft::peft::adapter::AdapterConfig::Lora(config);
    // Without the model's weights there is no magnitude to start from.
    assert!(Adapter::new(gpu, config.clone(), &model.config, 5).is_err());
    let ad = Adapter::new_for_model(gpu, config, &model, None, 5).unwrap();
    let d = max_abs_diff(&adapted_logits(gpu, &model, Some(&ad), &ids), &adapted_logits(gpu, &model, None, &ids));
    eprintln!("fresh DoRA vs base logits {d:e}");
    assert!(d <= 1e-5, "a fresh DoRA adapter (B = 0, m = ‖W‖) changes the logits by {d:e}");
    // m = ‖W‖ per row (B = 0), as PEFT's update_layer.
    let Adapter::Lora(l) = &ad else { unreachable!() };
    let q = &model.layers[0].self_attn.q_proj.weight;
    let w = block_on(q.to_f32(gpu)).unwrap();
    let (n, _, _) = cpu::magnitude_scale(&w, q.rows, q.cols, &vec![1.0; q.rows]);
    let m = read(l.layers[0][0].as_ref().unwrap().m.as_ref().unwrap());
    assert_close("m = ‖W‖", &m, &n, 0.0, 2e-6);
}

#[test]
fn on_an_nf4_base_loss_and_gradients_equal_the_dequantized_f32_model_s() {
    use webpeft::train::trainer::{OptimizerConfig, Trainer};
    let gpu = gpu();
    let nf4 = block_on(Model::load(gpu, &DirFiles::new(fixture("llama_gqa")).unwrap(), QuantFormat::Nf4)).unwrap();
    let twin = dequantized_twin(gpu, &nf4, "llama_gqa");
    let fx = Fixture::open("dora/llama_gqa/reference.safetensors");
    let batch = fixture_batch(&fx, 0..2);
    let run = |model: &Model| {
        let opt = OptimizerConfig { max_grad_norm: 0.0, ..Default::default() };
        let ad = adapter(gpu, model, "dora/llama_gqa/initial_adapter");
        let mut t = Trainer::new(gpu, ad, opt, 0).unwrap();
        let s = block_on(t.step(gpu, model, std::slice::from_ref(&batch), 0.0)).unwrap();
        (s.loss, adapter_values(gpu, t.gradients()))
    };
    let ((loss_q, grads_q), (loss_f, grads_f)) = (run(&nf4), run(&twin));
    let worst = grads_q.iter().zip(&grads_f).map(|((_, a), (_, b))| max_abs_diff(a, b)).fold(0.0f32, f32::max);
    eprintln!("NF4: loss {loss_q} vs dequantized f32 {loss_f}; gradients max |diff| {worst:e}");
    assert!((loss_q - loss_f).abs() <= 1e-5, "{loss_q} vs {loss_f}");
    assert!(worst <= 1e-4, "{worst:e}");
    assert!((loss_q - fx.f32("loss")[0]).abs() > 1e-4, "the NF4 base differs from the f32 one");
}

#[test]
fn a_dora_folder_missing_a_magnitude_names_the_tensor() {
    let gpu = gpu();
    let model = fixture_model(gpu, "llama_gqa");
    let dir = fixture("dora/llama_gqa/initial_adapter");
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let gone = "base_model.model.model.layers.1.mlp.up_proj.lora_magnitude_vector";
    let kept: Vec<_> = st.tensors().into_iter().filter(|(k, _)| k != gone).collect();
    let mut files = MemoryFiles::new();
    files.insert("adapter_config.json", std::fs::read(dir.join("adapter_config.json")).unwrap());
    files.insert("adapter_model.safetensors", safetensors::serialize(kept, None).unwrap());
    match block_on(Adapter::load(gpu, &files, &model.config)) {
        Err(Error::AdapterTensor { tensor, detail, .. }) => {
            assert_eq!(tensor, gone);
            assert!(detail.contains("use_dora"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    // A magnitude with use_dora false: the hint says so.
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("adapter_config.json")).unwrap()).unwrap();
    config["use_dora"] = false.into();
    files.insert("adapter_config.json", serde_json::to_vec(&config).unwrap());
    files.insert("adapter_model.safetensors", bytes);
    match block_on(Adapter::load(gpu, &files, &model.config)) {
        Err(Error::AdapterTensor { tensor, detail, .. }) => {
            assert!(tensor.ends_with("lora_magnitude_vector"), "{tensor}");
            assert!(detail.contains("use_dora"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn merging_gives_peft_s_merged_model_and_unmerging_the_base() {
    use webpeft::peft::lora::merge::{merge_lora, unmerge_lora};
    let gpu = gpu();
    for name in MODELS {
        let mut model = fixture_model(gpu, name);
        let fx = Fixture::open(&format!("dora/{name}/reference.safetensors"));
        let ids = fixture_batch(&fx, 0..2).input_ids;
        let Adapter::Lora(lora) = adapter(gpu, &model, &format!("dora/{name}/initial_adapter")) else { unreachable!() };
        let base = adapted_logits(gpu, &model, None, &ids);
        let kept = merge_lora(gpu, &mut model, &lora).unwrap();
        let merged = adapted_logits(gpu, &model, None, &ids);
        let d = max_abs_diff(&merged, &fx.f32("merged_logits"));
        let a = max_abs_diff(&merged, &fx.f32("logits"));
        unmerge_lora(gpu, &mut model, &lora, &kept).unwrap();
        let back = max_abs_diff(&adapted_logits(gpu, &model, None, &ids), &base);
        eprintln!("{name}: merged vs PEFT's merged {d:e}, vs PEFT's adapted {a:e}; unmerged vs base {back:e}");
        assert!(d <= 1e-4 && a <= 1e-4 && back <= 1e-5, "{name}: {d:e} / {a:e} / {back:e}");
    }
}

/// DoRA's Linear on the CPU for x (m, inp) with d = drop(x) (x itself
/// without dropout) and n held fixed (detached, as PEFT):
/// y = x·Wᵀ + b + (g − 1)·(d·Wᵀ) + g·s·(d·Aᵀ)·Bᵀ, g = mag / n.
struct CpuDora<'a> {
    w: &'a [f32],
    bias: &'a [f32],
    n: &'a [f32],
    dims: (usize, usize, usize, usize), // (m, inp, out, r)
    s: f32,
    drop: Option<(f32, u32)>,
}

impl CpuDora<'_> {
    fn forward(&self, x: &[f32], a: &[f32], b: &[f32], mag: &[f32]) -> Vec<f32> {
        let (m, inp, out, r) = self.dims;
        let d = match self.drop {
            Some((p, seed)) => webpeft::kernels::reference::dropout::dropout(x, p, seed),
            None => x.to_vec(),
        };
        let dot = |u: &[f32], v: &[f32]| u.iter().zip(v).map(|(p, q)| *p as f64 * *q as f64).sum::<f64>();
        let mut y = vec![0.0f32; m * out];
        for i in 0..m {
            let (xi, di) = (&x[i * inp..(i + 1) * inp], &d[i * inp..(i + 1) * inp]);
            let xa: Vec<f64> = (0..r).map(|k| dot(di, &a[k * inp..(k + 1) * inp])).collect();
            for j in 0..out {
                let wj = &self.w[j * inp..(j + 1) * inp];
                let g = (mag[j] / self.n[j]) as f64;
                let lora: f64 = (0..r).map(|k| b[j * r + k] as f64 * xa[k]).sum();
                let v = dot(xi, wj) + self.bias[j] as f64 + (g - 1.0) * dot(di, wj) + g * self.s as f64 * lora;
                y[i * out + j] = v as f32;
            }
        }
        y
    }
}

#[test]
fn the_layer_s_backward_matches_finite_differences_with_and_without_dropout() {
    use finite_diff::{dot64, gather, numeric_grad, sample};
    use webpeft::kernels::qmatmul::{qlinear, qlinear_write, QWeight};
    use webpeft::model::llama::block::Linear;
    use webpeft::peft::lora::dora::{dora_backward, dora_backward_dy, dora_forward, magnitude_scales};
    use webpeft::peft::lora::{LoraDropout, LoraFactors};
    let gpu = gpu();
    let (m, inp, out, r, s) = (5, 11, 7, 3, 2.0f32);
    let (w, bias, x, a, b, dy) = (
        randn(1, out * inp),
        randn(2, out),
        randn(3, m * inp),
        randn(4, r * inp),
        randn(5, out * r),
        randn(6, m * out),
    );
    let mag = uniform(7, out, 2.0, 4.0);
    let t = |shape: &[usize], v: &[f32]| Tensor::from_slice(gpu, shape, v).unwrap();
    let base = Linear {
        weight: QWeight::from_f32(gpu, &w, out, inp, QuantFormat::F32).unwrap(),
        bias: Some(t(&[out], &bias)),
    };
    let f = LoraFactors { a: t(&[r, inp], &a), b: t(&[out, r], &b), m: Some(t(&[out], &mag)) };
    for drop in [None, Some(LoraDropout { p: 0.3, seed: 99 })] {
        let grads = f.zeros_like(gpu).unwrap();
        let mut rec = Recorder::new(gpu);
        let xt = t(&[m, inp], &x);
        let y = qlinear(&mut rec, &xt, &base.weight).unwrap();
        webpeft::kernels::output_op::add_bias(&mut rec, &y, base.bias.as_ref().unwrap()).unwrap();
        let scales = magnitude_scales(&mut rec, &base.weight, &f, s).unwrap();
        let n = scales.n.clone();
        let saved = dora_forward(&mut rec, &base, &xt, &f, s, drop, &y, scales).unwrap();
        let dyt = t(&[m, out], &dy);
        let dropped = drop.is_some();
        let dy_w = dora_backward_dy(&mut rec, &dyt, &saved, dropped).unwrap().unwrap_or(dyt.clone());
        let dx = rec.alloc(&[m, inp], DType::F32).unwrap();
        qlinear_write(&mut rec, &dy_w, &base.weight, &dx, true).unwrap();
        dora_backward(&mut rec, &base, &dyt, &saved, &f, s, drop, &grads, &dx).unwrap();
        rec.submit().unwrap();
        let n = read(&n);
        let cpu = CpuDora { w: &w, bias: &bias, n: &n, dims: (m, inp, out, r), s, drop: drop.map(|d| (d.p, d.seed)) };
        let what = if dropped { "with dropout" } else { "without dropout" };
        assert_close(&format!("y {what}"), &read(&y), &cpu.forward(&x, &a, &b, &mag), 1e-5, 1e-5);
        let loss = |x: &[f32], a: &[f32], b: &[f32], mag: &[f32]| dot64(&cpu.forward(x, a, b, mag), &dy);
        // The loss is linear in each value but through x's dropout mask, so
        // the differences are exact up to f32 rounding of the forward.
        let h = 1e-2;
        let checks: [(&str, &Tensor, &[f32], Vec<f32>); 4] = [
            ("dx", &dx, &x, numeric_grad(&x, &sample(x.len(), 30, 11), h, |v| loss(v, &a, &b, &mag))),
            ("dA", &grads.a, &a, numeric_grad(&a, &sample(a.len(), 30, 12), h, |v| loss(&x, v, &b, &mag))),
            ("dB", &grads.b, &b, numeric_grad(&b, &sample(b.len(), 30, 13), h, |v| loss(&x, &a, v, &mag))),
            (
                "dm",
                grads.m.as_ref().unwrap(),
                &mag,
                numeric_grad(&mag, &sample(out, 30, 14), h, |v| loss(&x, &a, &b, v)),
            ),
        ];
        for (i, (name, got, v, numeric)) in checks.into_iter().enumerate() {
            let idx = sample(v.len(), 30, 11 + i as u64);
            assert_close(
                &format!("{name} {what} vs finite differences"),
                &gather(&read(got), &idx),
                &numeric,
                2e-3,
                2e-3,
            );
        }
    }
}
